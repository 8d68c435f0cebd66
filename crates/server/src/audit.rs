//! Recording events (Octopus's audit trail): who did what, written right after the change. The
//! API serves them (`api::events`); every layer above this one records them, the dynamic pools'
//! scaler too (its provisioning log).

use crate::state::App;
use muster_core::IdKind;
use muster_core::resources::{Event, User};

pub const CREATED: &str = "Created";
pub const MODIFIED: &str = "Modified";
pub const DELETED: &str = "Deleted";
pub const CANCELED: &str = "Canceled";
pub const LOGIN_FAILED: &str = "LoginFailed";
/// A dynamic worker could not be provisioned or destroyed (the pool's provisioning log).
pub const DYNAMIC_WORKER_FAILED: &str = "DynamicWorkerFailed";

/// Every category Muster records, for `eventCategories` and the document.
pub const CATEGORIES: &[&str] = &[
    CREATED,
    MODIFIED,
    DELETED,
    CANCELED,
    LOGIN_FAILED,
    DYNAMIC_WORKER_FAILED,
];

/// Records an event by `user` (None: nobody signed in), in `space_id` (None: a system event),
/// about `related` (the changed document first). The change is already stored: a failure to
/// record is logged, not answered.
pub async fn record(
    app: &App,
    user: Option<&User>,
    space_id: Option<&str>,
    category: &str,
    message: String,
    related: Vec<String>,
) -> Option<String> {
    let result = async {
        let event = Event {
            id: app.store.next_id(IdKind::Event).await?,
            ..new(user, space_id, category, message, related)
        };
        app.store.put(&event).await?;
        Ok::<_, muster_store::StoreError>(event.id)
    }
    .await;
    match result {
        Ok(id) => Some(id),
        Err(error) => {
            tracing::warn!("cannot record an event ({category}): {error}");
            None
        }
    }
}

/// An event not yet given its id: for a change whose commit writes its event too (a new task).
pub fn new(
    user: Option<&User>,
    space_id: Option<&str>,
    category: &str,
    message: String,
    related: Vec<String>,
) -> Event {
    Event {
        id: String::new(),
        space_id: space_id.map(str::to_string),
        category: category.to_string(),
        user_id: user.map(|u| u.id.clone()),
        username: user.map(|u| u.username.clone()),
        is_service: user.is_some_and(|u| u.is_service),
        identity_established_with: user.map(|_| "API key".to_string()),
        occurred: muster_core::time::now(),
        message_html: escape_html(&message),
        message,
        related_document_ids: with_space(related, space_id),
        comments: None,
        details: None,
    }
}

/// The event of a resource created, changed or deleted by `user`: "Worker pool 'Agents' created".
pub async fn resource(
    app: &App,
    user: &User,
    space_id: Option<&str>,
    category: &str,
    noun: &str,
    name: &str,
    id: &str,
) {
    let verb = match category {
        CREATED => "created",
        DELETED => "deleted",
        _ => "changed",
    };
    let message = format!("{noun} '{name}' {verb}");
    record(
        app,
        Some(user),
        space_id,
        category,
        message,
        vec![id.to_string()],
    )
    .await;
}

/// The related documents, the space last (Octopus relates an event to its space too).
fn with_space(mut related: Vec<String>, space_id: Option<&str>) -> Vec<String> {
    if let Some(space) = space_id
        && !related.iter().any(|r| r == space)
    {
        related.push(space.to_string());
    }
    related
}

pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped_and_the_space_is_related_once() {
        assert_eq!(
            escape_html("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(
            with_space(vec!["Workers-1".into()], Some("Spaces-1")),
            ["Workers-1", "Spaces-1"]
        );
        assert_eq!(
            with_space(vec!["Spaces-1".into()], Some("Spaces-1")),
            ["Spaces-1"]
        );
        assert_eq!(with_space(vec![], None), Vec::<String>::new());
    }
}
