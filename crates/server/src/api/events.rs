//! Events (Octopus's `/api/events` and `/api/{space}/events`): who did what. The handlers that
//! change what events audit call [`record`] right after the change is stored: a worker registered,
//! changed or deleted; a share added or removed; a task created or canceled; a role granted or
//! revoked; a runbook, its process or its variables changed (names only, never a value); a user or
//! an API key created or revoked. Failed sign-ins (refused API keys) are summarized: one event per
//! address (as `key_failures` counts addresses) and minute, its count kept up to date
//! ([`sign_in_failed`]).
//!
//! A space's events are visible to whoever sees the space; system events (users, keys, sign-ins) to
//! administrators only. Listed newest first.

use super::path_id;
use crate::access::{Access, SpaceScope};
use crate::http::{ApiError, ApiResult, Params, ok};
use crate::links;
use crate::state::App;
use axum::Extension;
use axum::extract::{Path, State};
use muster_core::IdKind;
use muster_core::resources::{Event, Space};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

pub use crate::audit::{
    CANCELED, CATEGORIES, CREATED, DELETED, LOGIN_FAILED, MODIFIED, escape_html, new, record,
    resource,
};

/// The sign-in failures being summarized: per address (as `key_failures` counts them), the event
/// of the current minute and its count. Held across the event's write, so one minute of one
/// address is one event.
#[derive(Default)]
pub struct FailedSignIns {
    current: tokio::sync::Mutex<HashMap<IpAddr, Summary>>,
}

struct Summary {
    since: Instant,
    event: Event,
    count: u64,
}

/// Addresses summarized at once, at most; older summaries are forgotten first.
const MAX_SUMMARIES: usize = 1_000;

/// Counts a refused API key from `address` into its minute's `LoginFailed` event: the first
/// failure creates it, later ones within the minute rewrite its count.
pub async fn sign_in_failed(app: &App, address: IpAddr) {
    let address = crate::key_failures::bucket(address);
    let now = Instant::now();
    let mut current = app.failed_sign_ins.current.lock().await;
    current.retain(|_, s| now.duration_since(s.since) < crate::key_failures::WINDOW);
    if current.len() >= MAX_SUMMARIES
        && !current.contains_key(&address)
        && let Some(oldest) = current.iter().min_by_key(|(_, s)| s.since).map(|(a, _)| *a)
    {
        current.remove(&oldest);
    }
    let message = |count: u64| {
        let times = if count == 1 {
            "once".to_string()
        } else {
            format!("{count} times")
        };
        format!("A wrong API key was sent from {address} {times} within a minute")
    };
    if let Some(summary) = current.get_mut(&address) {
        summary.count += 1;
        summary.event.message = message(summary.count);
        summary.event.message_html = escape_html(&summary.event.message);
        summary.event.occurred = muster_core::time::now();
        if let Err(error) = app.store.put(&summary.event).await {
            tracing::warn!("cannot record an event (LoginFailed): {error}");
        }
        return;
    }
    let Some(id) = record(app, None, None, LOGIN_FAILED, message(1), Vec::new()).await else {
        return;
    };
    if let Ok(Some(event)) = app.store.get::<Event>(&id).await {
        current.insert(
            address,
            Summary {
                since: now,
                event,
                count: 1,
            },
        );
    }
}

/// An event is visible where its space is visible to the reader; a system event to
/// administrators.
fn visible(access: &Access, event: &Event) -> bool {
    match event.space_id.as_deref() {
        Some(space) => access.sees_space(space),
        None => access.admin,
    }
}

const TEMPLATE: &str = "skip,take,regarding,users,from,to,eventCategories,spaces,includeSystem";

/// Keeps the events that match `regarding`, `users`, `eventCategories` (each comma-joined: any of
/// them), `from` and `to` (inclusive dates), `ids`; newest first.
fn filter(mut events: Vec<Event>, params: &Params) -> Result<Vec<Event>, ApiError> {
    let lower = |name: &str| {
        params
            .list(name)
            .map(|v| v.iter().map(|i| i.to_lowercase()).collect::<Vec<_>>())
    };
    let date = |name: &str| {
        params
            .get(name)
            .map(|text| {
                muster_core::time::parse_date(text).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "The parameter '{name}' must be a date such as 2024-01-01T00:00:00+00:00, got '{text}'."
                    ))
                })
            })
            .transpose()
    };
    let (from, to) = (date("from")?, date("to")?);
    let regarding = lower("regarding");
    let users = lower("users");
    let categories = lower("eventcategories");
    let ids = lower("ids");
    let any = |wanted: &Option<Vec<String>>, value: Option<&str>| {
        wanted
            .as_ref()
            .is_none_or(|w| value.is_some_and(|v| w.contains(&v.to_lowercase())))
    };
    events.retain(|e| {
        any(&ids, Some(&e.id))
            && any(&users, e.user_id.as_deref())
            && any(&categories, Some(&e.category))
            && regarding.as_ref().is_none_or(|w| {
                e.related_document_ids
                    .iter()
                    .any(|d| w.contains(&d.to_lowercase()))
            })
            && from.is_none_or(|f| e.occurred >= f)
            && to.is_none_or(|t| e.occurred <= t)
    });
    events.sort_by_key(|e| std::cmp::Reverse(muster_core::ids::parse_id(IdKind::Event, &e.id)));
    Ok(events)
}

/// The filters read from each event; without them a page is read from the database alone.
const FILTERS: &[&str] = &["ids", "regarding", "users", "eventcategories", "from", "to"];

/// A page of the events of `spaces` ('' for system events; None: every event), newest first.
async fn respond(app: &App, params: &Params, spaces: Option<Vec<String>>, path: &str) -> ApiResult {
    let request = params.page(30)?;
    let (total, events) = if FILTERS.iter().any(|name| params.get(name).is_some()) {
        let events: Vec<Event> = match &spaces {
            None => app.store.list_all().await?,
            Some(spaces) => {
                let mut events = Vec::new();
                for space in spaces {
                    events.extend(app.store.list::<Event>(space).await?);
                }
                events
            }
        };
        let events = filter(events, params)?;
        let range = request.range(events.len());
        (events.len() as u64, events[range].to_vec())
    } else {
        app.store
            .page_newest::<Event>(spaces.as_deref(), request.skip, request.take)
            .await?
    };
    let items: Vec<serde_json::Value> = events.iter().map(links::event).collect();
    ok(&muster_core::paging::envelope(
        "Event",
        &items,
        total,
        request,
        path,
        TEMPLATE,
        &params.filters(),
    ))
}

/// `GET /api/events`: the events of every space the user sees (`spaces` narrows them), and
/// system events for administrators (`includeSystem=false` leaves them out).
pub async fn list_all(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    params: Params,
) -> ApiResult {
    let asked: Option<Vec<String>> = params.list("spaces").map(|ids| {
        ids.iter()
            .map(|id| {
                muster_core::ids::canonical_id(IdKind::Space, id).unwrap_or_else(|| id.clone())
            })
            .collect()
    });
    let include_system = params.bool("includesystem")?.unwrap_or(true);
    let spaces = match asked {
        Some(asked) => Some(asked.into_iter().filter(|s| access.sees_space(s)).collect()),
        None if access.admin && include_system => None,
        None => {
            // Every space the reader sees; an administrator's without the system events.
            let seen = app
                .store
                .list::<Space>("")
                .await?
                .into_iter()
                .map(|s| s.id)
                .filter(|s| access.sees_space(s))
                .collect();
            Some(seen)
        }
    };
    respond(&app, &params, spaces, "/api/events").await
}

/// `GET /api/{space}/events`: the space's events.
pub async fn list_in_space(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    params: Params,
) -> ApiResult {
    let path = format!("/api/{}/events", space.id);
    respond(&app, &params, Some(vec![space.id]), &path).await
}

pub async fn get_any(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> ApiResult {
    let id = path_id(IdKind::Event, &id)?;
    let event = app
        .store
        .get::<Event>(&id)
        .await?
        .filter(|e| visible(&access, e))
        .ok_or_else(|| ApiError::not_found(&id))?;
    ok(&links::event(&event))
}

pub async fn get_in_space(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    let id = path_id(IdKind::Event, &id)?;
    let event = app
        .store
        .get::<Event>(&id)
        .await?
        .filter(|e| e.space_id.as_deref() == Some(space.id.as_str()))
        .ok_or_else(|| ApiError::not_found(&id))?;
    ok(&links::event(&event))
}

/// `GET /api/events/categories`: the categories Muster records.
pub async fn categories() -> ApiResult {
    ok(&CATEGORIES
        .iter()
        .map(|c| serde_json::json!({ "Id": c, "Name": c }))
        .collect::<Vec<_>>())
}
