//! Spaces (contract 2.1). Every new space gets its own default worker pool and machine policy, and
//! exactly one space is the default.

use super::{actor, empty_ok, events, filter_named, page, path_id};
use crate::access::Access;
use crate::auth::CurrentUser;
use crate::http::{ApiError, ApiResult, JsonBody, Params, created, ok};
use crate::links;
use crate::state::App;
use axum::Extension;
use axum::extract::{Path, State};
use muster_core::resources::{Space, apply};
use muster_core::{IdKind, TaskState};
use muster_store::Row;

/// The spaces the user can see, by name.
pub async fn visible_spaces(app: &App, access: &Access) -> Result<Vec<Space>, ApiError> {
    let mut spaces: Vec<Space> = app.store.list("").await?;
    spaces.retain(|s| access.sees_space(&s.id));
    spaces.sort_by_key(|s| s.name.to_lowercase());
    Ok(spaces)
}

pub async fn list(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    params: Params,
) -> ApiResult {
    let spaces = filter_named(
        visible_spaces(&app, &access).await?,
        &params,
        |s| &s.id,
        |s| &s.name,
    );
    let items = spaces.iter().map(links::space).collect();
    page(
        "Space",
        items,
        &params,
        "/api/spaces",
        "skip,ids,take,partialName,name",
        30,
    )
}

pub async fn all(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    params: Params,
) -> ApiResult {
    let spaces = filter_named(
        visible_spaces(&app, &access).await?,
        &params,
        |s| &s.id,
        |s| &s.name,
    );
    ok(&spaces.iter().map(links::space).collect::<Vec<_>>())
}

pub async fn find(app: &App, id: &str) -> Result<Space, ApiError> {
    let id = path_id(IdKind::Space, id)?;
    app.store
        .get::<Space>(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(&id))
}

pub async fn get_one(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    Path(id): Path<String>,
) -> ApiResult {
    let space = find(&app, &id).await?;
    if !access.sees_space(&space.id) {
        return Err(ApiError::not_found(&space.id));
    }
    ok(&links::space(&space))
}

fn validate(space: &mut Space) -> Result<(), ApiError> {
    space.name = space.name.trim().to_string();
    let mut errors = Vec::new();
    errors.extend(muster_core::ids::check_name(&space.name));
    space.slug = muster_core::ids::slugify(if space.slug.trim().is_empty() {
        &space.name
    } else {
        &space.slug
    });
    // A slug must not shadow a route: `/api/spaces/all`, or another space's id.
    let own_id = space.id.to_ascii_lowercase();
    if space.slug == "all"
        || (muster_core::parse_id(IdKind::Space, &space.slug).is_some() && space.slug != own_id)
    {
        errors.push(format!(
            "Slug '{}' is reserved; choose another.",
            space.slug
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

async fn check_slug_free(app: &App, space: &Space) -> Result<(), ApiError> {
    let taken = app
        .store
        .find_by_ext::<Space>(&space.slug)
        .await?
        .into_iter()
        .any(|other| other.id != space.id);
    if taken {
        return Err(ApiError::bad_request(format!(
            "Another space already has the slug '{}'.",
            space.slug
        )));
    }
    Ok(())
}

/// Makes `space` the one default space, clearing the flag on the old one in the same transaction.
async fn write_with_default(app: &App, space: &Space) -> Result<(), ApiError> {
    let mut rows = vec![Row::of(space)];
    let mut old_defaults = Vec::new();
    if space.is_default {
        for mut other in app.store.list::<Space>("").await? {
            if other.is_default && other.id != space.id {
                other.is_default = false;
                old_defaults.push(other);
            }
        }
    }
    rows.extend(old_defaults.iter().map(Row::of));
    app.store.put_rows(rows).await?;
    Ok(())
}

pub async fn create(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    body: JsonBody,
) -> ApiResult {
    let mut space = apply(&Space::default(), body.object()?).map_err(ApiError::bad_request)?;
    validate(&mut space)?;
    check_slug_free(&app, &space).await?;
    let wants_default = space.is_default;
    space.is_default = false;
    let mut space =
        crate::bootstrap::create_space(&app.store, space, &actor(&user).unwrap_or_default())
            .await?;
    if wants_default {
        space.is_default = true;
        write_with_default(&app, &space).await?;
    }
    events::resource(
        &app,
        &user.0,
        None,
        events::CREATED,
        "Space",
        &space.name,
        &space.id,
    )
    .await;
    created(&links::space(&space))
}

pub async fn update(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    Path(id): Path<String>,
    body: JsonBody,
) -> ApiResult {
    let existing = find(&app, &id).await?;
    let mut space = apply(&existing, body.object()?).map_err(ApiError::bad_request)?;
    space.id = existing.id.clone();
    // There is always one default space: the flag moves by setting it on another space.
    if existing.is_default {
        space.is_default = true;
    }
    validate(&mut space)?;
    check_slug_free(&app, &space).await?;
    space.last_modified_on = Some(muster_core::time::now());
    space.last_modified_by = actor(&user);
    write_with_default(&app, &space).await?;
    // A restarted task queue may let tasks start.
    app.signals.dispatch.notify_one();
    events::resource(
        &app,
        &user.0,
        Some(&space.id),
        events::MODIFIED,
        "Space",
        &space.name,
        &space.id,
    )
    .await;
    ok(&links::space(&space))
}

pub async fn delete(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    Path(id): Path<String>,
) -> ApiResult {
    let space = find(&app, &id).await?;
    if space.is_default {
        return Err(ApiError::bad_request(
            "The default space cannot be deleted; make another space the default first.",
        ));
    }
    if !space.task_queue_stopped {
        return Err(ApiError::bad_request(
            "Stop the space's task queue before deleting it: PUT the space with TaskQueueStopped set to true.",
        ));
    }
    let query = muster_store::TaskQuery {
        space_ids: Some(vec![space.id.clone()]),
        states: Some(vec![TaskState::Executing, TaskState::Cancelling]),
        take: 1,
        ..Default::default()
    };
    let (running, _) = app.store.list_tasks(&query).await?;
    if running > 0 {
        return Err(ApiError::bad_request(format!(
            "The space has {running} task(s) executing; cancel them or wait for them to finish."
        )));
    }
    app.store.delete_space(&space.id).await?;
    // Its artifacts' records went with its documents; their files go now.
    app.artifacts.remove_space(&space.id).await;
    // A system event: the space's own events went with it.
    events::resource(
        &app,
        &user.0,
        None,
        events::DELETED,
        "Space",
        &space.name,
        &space.id,
    )
    .await;
    empty_ok()
}
