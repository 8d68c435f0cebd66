//! Machines (Octopus's deployment targets, `/api/{space}/machines`): Muster has none, so it answers
//! as an Octopus without deployment targets, and clients that list machines work: an empty page, an
//! empty array, 404 for any id. `machines/discover` is `workers/discover`.

use super::page;
use crate::access::SpaceScope;
use crate::http::{ApiError, ApiResult, Params, ok};
use axum::extract::Path;

pub async fn list(SpaceScope(space): SpaceScope, params: Params) -> ApiResult {
    page(
        "DeploymentTarget",
        Vec::new(),
        &params,
        &format!("/api/{}/machines", space.id),
        "skip,take,name,ids,partialName,roles,isDisabled,healthStatuses,commStyles,tenantIds,tenantTags,environmentIds,thumbprint,deploymentId,shellNames",
        30,
    )
}

pub async fn all(SpaceScope(_): SpaceScope) -> ApiResult {
    ok(&Vec::<serde_json::Value>::new())
}

pub async fn get_one(
    SpaceScope(_): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    Err(ApiError::not_found(id))
}
