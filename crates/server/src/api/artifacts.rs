//! Artifacts (Octopus's `/api/{space}/artifacts`): the files tasks' scripts announced and the
//! server collected (see `crate::artifacts`). Listed newest first, read, downloaded as a stream and
//! deleted; they are created only by scripts, through their task.

use super::{empty_ok, filter_named, page};
use crate::access::SpaceScope;
use crate::http::{ApiError, ApiResult, Params, ok};
use crate::links;
use crate::state::App;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use muster_core::IdKind;
use muster_core::resources::{Artifact, Space};

async fn find(app: &App, space: &Space, id: &str) -> Result<Artifact, ApiError> {
    super::find_in_space(app, space, IdKind::Artifact, id).await
}

/// `regarding` (a task's id, or any id an artifact relates to), `ids` and `partialName` (of the
/// file name); newest first.
pub async fn list(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    params: Params,
) -> ApiResult {
    let mut artifacts: Vec<Artifact> = match params.get("regarding") {
        Some(regarding) => {
            let regarding = regarding.trim();
            match muster_core::ids::canonical_id(IdKind::ServerTask, regarding) {
                Some(task) => app.store.find_by_ext::<Artifact>(&task).await?,
                None => {
                    let mut all: Vec<Artifact> = app.store.list(&space.id).await?;
                    all.retain(|a| {
                        a.related_document_ids
                            .iter()
                            .any(|d| d.eq_ignore_ascii_case(regarding))
                    });
                    all
                }
            }
        }
        None => app.store.list(&space.id).await?,
    };
    artifacts.retain(|a| a.space_id == space.id);
    artifacts.sort_by_key(|a| {
        std::cmp::Reverse(muster_core::ids::parse_id(IdKind::Artifact, &a.id).unwrap_or(0))
    });
    let artifacts = filter_named(artifacts, &params, |a| &a.id, |a| &a.filename);
    page(
        "Artifact",
        artifacts.iter().map(links::artifact).collect(),
        &params,
        &format!("/api/{}/artifacts", space.id),
        "skip,take,regarding,ids,partialName",
        30,
    )
}

pub async fn get_one(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    ok(&links::artifact(&find(&app, &space, &id).await?))
}

/// The file's bytes, streamed from disk, as an attachment named after the artifact.
pub async fn content(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    let artifact = find(&app, &space, &id).await?;
    let path = app.artifacts.path_of(&artifact);
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                format!("The file of {} is no longer on the server.", artifact.id),
            ));
        }
        Err(error) => return Err(ApiError::internal(error)),
    };
    let length = file.metadata().await.map_err(ApiError::internal)?.len();
    let body = axum::body::Body::from_stream(crate::artifacts::file_chunks(file, length));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if let Ok(value) = HeaderValue::from_str(&disposition(&artifact.filename)) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// `attachment; filename="…"` (ASCII, quotes and backslashes replaced) and, for any other name,
/// RFC 6266's `filename*=UTF-8''…` too.
fn disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| match c {
            '"' | '\\' => '_',
            c if c.is_ascii() && !c.is_ascii_control() => c,
            _ => '_',
        })
        .collect();
    if ascii == name {
        return format!("attachment; filename=\"{ascii}\"");
    }
    let mut encoded = String::new();
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

pub async fn delete(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    let artifact = find(&app, &space, &id).await?;
    app.store.delete::<Artifact>(&artifact.id).await?;
    let path = app.artifacts.path_of(&artifact);
    if let Err(error) = tokio::fs::remove_file(&path).await
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {error}", path.display());
    }
    empty_ok()
}

#[cfg(test)]
mod tests {
    use super::disposition;

    #[test]
    fn a_disposition_names_the_file_safely() {
        assert_eq!(
            disposition("report.txt"),
            "attachment; filename=\"report.txt\""
        );
        assert_eq!(
            disposition("a \"b\".txt"),
            "attachment; filename=\"a _b_.txt\"; filename*=UTF-8''a%20%22b%22.txt"
        );
        assert_eq!(
            disposition("ü.txt"),
            "attachment; filename=\"_.txt\"; filename*=UTF-8''%C3%BC.txt"
        );
    }
}
