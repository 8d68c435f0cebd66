//! The collection envelope of contract 1.5: `ItemsPerPage` is the effective take, `Page.Next` exists only
//! when there is a next page.

use serde::Serialize;
use serde_json::{Map, Value, json};

pub const DEFAULT_TAKE: u64 = 30;
/// The largest take a client sends (npm sends it to mean "everything").
pub const MAX_TAKE: u64 = i32::MAX as u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub skip: u64,
    pub take: u64,
}

impl PageRequest {
    /// Parses `skip` and `take` from query values; absurd values are errors the caller answers with 400.
    pub fn parse(
        skip: Option<&str>,
        take: Option<&str>,
        default_take: u64,
    ) -> Result<Self, String> {
        let number = |name: &str, text: Option<&str>, default: u64| -> Result<u64, String> {
            match text.map(str::trim) {
                None | Some("") => Ok(default),
                Some(text) => match text.parse::<i64>() {
                    Ok(n) if n < 0 => Err(format!("{name} must not be negative, got {n}")),
                    Ok(n) if n as u64 > MAX_TAKE => {
                        Err(format!("{name} must be at most {MAX_TAKE}, got {n}"))
                    }
                    Ok(n) => Ok(n as u64),
                    Err(_) => Err(format!("{name} must be a whole number, got '{text}'")),
                },
            }
        };
        Ok(PageRequest {
            skip: number("skip", skip, 0)?,
            take: number("take", take, default_take)?,
        })
    }

    /// The range of a list of `total` items that this page covers.
    pub fn range(&self, total: usize) -> std::ops::Range<usize> {
        let start = (self.skip as usize).min(total);
        let end = start.saturating_add(self.take as usize).min(total);
        start..end
    }
}

/// Builds the envelope. `path` is the collection's path; `filters` are the other query parameters,
/// already encoded, kept in the paging links so that a client following `Page.Next` keeps its filter.
pub fn envelope<T: Serialize>(
    item_type: &str,
    items: &[T],
    total: u64,
    page: PageRequest,
    path: &str,
    template_params: &str,
    filters: &str,
) -> Value {
    let take = page.take;
    let pages = if take == 0 { 0 } else { total.div_ceil(take) };
    let last_page = pages.saturating_sub(1);
    let link = |skip: u64, take: u64| {
        if filters.is_empty() {
            format!("{path}?skip={skip}&take={take}")
        } else {
            format!("{path}?{filters}&skip={skip}&take={take}")
        }
    };
    let mut links = Map::new();
    links.insert("Self".into(), json!(link(page.skip, take)));
    links.insert(
        "Template".into(),
        json!(format!("{path}{{?{template_params}}}")),
    );
    links.insert("Page.All".into(), json!(link(0, MAX_TAKE)));
    if page.skip > 0 && take > 0 {
        links.insert(
            "Page.Previous".into(),
            json!(link(page.skip.saturating_sub(take), take)),
        );
    }
    if take > 0 && page.skip.saturating_add(take) < total {
        links.insert("Page.Next".into(), json!(link(page.skip + take, take)));
    }
    links.insert("Page.Current".into(), json!(link(page.skip, take)));
    links.insert("Page.Last".into(), json!(link(last_page * take, take)));
    json!({
        "ItemType": item_type,
        "TotalResults": total,
        "ItemsPerPage": take,
        "NumberOfPages": pages,
        "LastPageNumber": last_page,
        "Items": items,
        "Links": links,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_per_page_is_the_take_and_next_only_before_the_last_page() {
        let items: Vec<u32> = (0..5).collect();
        let page = PageRequest { skip: 0, take: 5 };
        let body = envelope("Space", &items, 12, page, "/api/spaces", "skip,take", "");
        assert_eq!(body["ItemsPerPage"], 5);
        assert_eq!(body["NumberOfPages"], 3);
        assert_eq!(body["LastPageNumber"], 2);
        assert_eq!(body["Links"]["Page.Next"], "/api/spaces?skip=5&take=5");
        let last = envelope(
            "Space",
            &items[..2],
            12,
            PageRequest { skip: 10, take: 5 },
            "/api/spaces",
            "",
            "",
        );
        assert!(last["Links"].get("Page.Next").is_none());
        assert_eq!(last["Links"]["Page.Last"], "/api/spaces?skip=10&take=5");
    }

    #[test]
    fn absurd_paging_values_are_refused() {
        assert!(PageRequest::parse(Some("-1"), None, 30).is_err());
        assert!(PageRequest::parse(None, Some("x"), 30).is_err());
        assert!(PageRequest::parse(None, Some("99999999999999"), 30).is_err());
        assert_eq!(
            PageRequest::parse(None, Some("2147483647"), 30)
                .unwrap()
                .take,
            MAX_TAKE
        );
        assert_eq!(PageRequest { skip: 50, take: 10 }.range(12), 12..12);
    }
}
