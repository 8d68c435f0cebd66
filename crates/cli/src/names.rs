//! Tables and fields show names, not ids. Each kind of name is one list call, made only when a
//! table needs it; an id the caller may not see (or a failed call) is shown as the id.

use crate::client::Client;
use crate::output;
use serde_json::Value;
use std::collections::HashMap;

#[derive(Default)]
pub struct Names(HashMap<String, String>);

impl Names {
    /// The names of the resources at `path`, an `…/all` list.
    pub async fn of(client: &Client, path: &str) -> Names {
        let Ok(list) = client.get(path).await else {
            return Names::default();
        };
        let map = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r["Id"].as_str()?.to_string(), output::text(&r["Name"]))))
            .collect();
        Names(map)
    }

    pub async fn spaces(client: &Client) -> Names {
        Names::of(client, "/api/spaces/all").await
    }

    pub async fn pools(client: &Client, space_id: &str) -> Names {
        Names::of(client, &format!("/api/{space_id}/workerpools/all")).await
    }

    /// An id's name, or each name of a list of ids, comma-separated.
    pub fn name(&self, ids: &Value) -> String {
        match ids {
            Value::Array(items) => items
                .iter()
                .map(|id| self.name(id))
                .collect::<Vec<_>>()
                .join(","),
            Value::String(id) => match self.0.get(id) {
                Some(name) => name.clone(),
                None => output::text(ids),
            },
            other => output::text(other),
        }
    }
}
