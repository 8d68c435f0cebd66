//! `muster events`: who did what, newest first (`/api/events`, or a space's `/api/{s}/events`).

use crate::client::{Client, encode};
use crate::{SpaceOption, array, id_of, output, resolve_space};
use anyhow::anyhow;
use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// Only this space's events (name, slug or id); default: every space you may see, and the
    /// server's own events (users, API keys, sign-ins) if you are an administrator.
    #[arg(long)]
    pub space: Option<String>,
    /// Only events since then: a date (2024-05-01, 2024-05-01T12:00:00Z) or a time ago (30m, 2h,
    /// 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many events.
    #[arg(long, default_value_t = 50)]
    pub take: u32,
}

pub async fn events(client: &Client, json: bool, args: EventsArgs) -> anyhow::Result<i32> {
    let base = match &args.space {
        Some(key) => {
            let space = resolve_space(
                client,
                &SpaceOption {
                    space: Some(key.clone()),
                },
            )
            .await?;
            format!("/api/{}/events", id_of(&space))
        }
        None => "/api/events".to_string(),
    };
    let mut path = format!("{base}?take={}", args.take);
    if let Some(since) = &args.since {
        let from = since_date(since, chrono::Utc::now())?;
        path.push_str(&format!(
            "&from={}",
            encode(&from.to_rfc3339_opts(chrono::SecondsFormat::Millis, false))
        ));
    }
    let page = client.get(&path).await?;
    if json {
        output::json(&page["Items"]);
        return Ok(0);
    }
    let rows = array(&page["Items"])
        .iter()
        .map(|e| {
            vec![
                output::text(&e["Occurred"]),
                output::text(&e["Username"]),
                output::text(&e["Category"]),
                output::text(&e["Message"]),
            ]
        })
        .collect();
    output::table(&["TIME", "USER", "CATEGORY", "MESSAGE"], rows);
    Ok(0)
}

/// `--since`: an RFC 3339 date, a day (`2024-05-01`, midnight UTC), or a time ago (`90s`, `30m`,
/// `2h`, `7d`).
fn since_date(
    text: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    let text = text.trim();
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&chrono::Utc));
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    let split = text.len().saturating_sub(1);
    let (number, unit) = text.split_at(split);
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => 0,
    };
    match number.parse::<i64>() {
        Ok(n) if seconds > 0 && n >= 0 => Ok(now - chrono::Duration::seconds(n * seconds)),
        _ => Err(anyhow!(
            "--since takes a date (2024-05-01 or 2024-05-01T12:00:00Z) or a time ago (30m, 2h, 7d), not '{text}'"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_reads_dates_and_times_ago() {
        let now = chrono::DateTime::parse_from_rfc3339("2024-05-02T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let at = |t: &str| since_date(t, now).unwrap().to_rfc3339();
        assert_eq!(at("2h"), "2024-05-02T08:00:00+00:00");
        assert_eq!(at("1d"), "2024-05-01T10:00:00+00:00");
        assert_eq!(at("2024-05-01"), "2024-05-01T00:00:00+00:00");
        assert_eq!(at("2024-05-01T12:00:00+02:00"), "2024-05-01T10:00:00+00:00");
        assert!(since_date("soon", now).is_err());
        assert!(since_date("5w", now).is_err());
    }
}
