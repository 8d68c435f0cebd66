//! Registration tokens (Muster's): an agent registers a worker with a token instead of an API key.
//! A token names its space and pools, how many workers it may register (`Uses`, default 1: a
//! one-time token) and when it expires; only its hash is kept. `POST /api/workerregistrations`
//! (no API key) registers with one, on behalf of the user who made it, with that user's
//! permissions as they are then.

use super::{empty_ok, events, page, workers};
use crate::access::{Access, SpaceScope};
use crate::auth::CurrentUser;
use crate::http::{ApiError, ApiResult, JsonBody, Params, created};
use crate::state::App;
use axum::Extension;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use muster_core::IdKind;
use muster_core::enums::WorkerPoolType;
use muster_core::resources::{RegistrationToken, Space, User, Worker, WorkerPool};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Instant;

/// The prefix of a token, so that one found in a log or a file is recognized for what it is.
const PREFIX: &str = "MRT-";
const MAX_USES: u64 = 1000;
/// A week: a token is for installing, not a credential to keep.
const MAX_MINUTES: u64 = 7 * 24 * 60;

fn new_token() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    let body: String = (0..32)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{PREFIX}{body}")
}

/// What clients see of a token: never its value, except once in the answer that made it.
fn resource(token: &RegistrationToken) -> Value {
    json!({
        "Id": token.id,
        "SpaceId": token.space_id,
        "WorkerPoolIds": token.worker_pool_ids,
        "UsesLeft": token.uses_left,
        "ExpiresOn": muster_core::time::format_date(&token.expires_on),
        "Hint": token.hint,
        "CreatedBy": token.created_by,
        "CreatedOn": muster_core::time::format_date(&token.created_on),
        "Links": {"Self": format!("/api/{}/registrationtokens/{}", token.space_id, token.id)},
    })
}

fn whole(body: &Value, name: &str, default: u64, max: u64) -> Result<u64, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(value) => value
            .as_u64()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{name} must be a whole number from 1 to {max}, got {value}"
                ))
            }),
    }
}

/// `POST /api/{space}/registrationtokens`: `{WorkerPoolIds, Uses?, ExpiresInMinutes?}`.
pub async fn create(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    SpaceScope(space): SpaceScope,
    body: JsonBody,
) -> ApiResult {
    let body = body.object()?;
    let wanted: Vec<String> = match body.get("WorkerPoolIds") {
        Some(Value::Array(ids)) if !ids.is_empty() => ids
            .iter()
            .map(|id| {
                id.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::bad_request("WorkerPoolIds must be a list of worker pool ids")
                })
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::bad_request(
                "WorkerPoolIds is required: the pools the registered workers join",
            ));
        }
    };
    let pools = app.store.list::<WorkerPool>(&space.id).await?;
    let mut pool_ids = Vec::new();
    for id in &wanted {
        let pool = pools
            .iter()
            .find(|p| p.id.eq_ignore_ascii_case(id))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "WorkerPoolIds: there is no pool {id} in {}",
                    space.name
                ))
            })?;
        if pool.worker_pool_type == WorkerPoolType::DynamicWorkerPool {
            return Err(ApiError::bad_request(format!(
                "WorkerPoolIds: {} is a dynamic pool, whose workers its provider makes; a registered worker joins a static pool",
                pool.name
            )));
        }
        if !pool_ids.contains(&pool.id) {
            pool_ids.push(pool.id.clone());
        }
    }
    let uses = whole(body, "Uses", 1, MAX_USES)?;
    let minutes = whole(body, "ExpiresInMinutes", 60, MAX_MINUTES)?;
    let value = new_token();
    let now = muster_core::time::now();
    let token = RegistrationToken {
        id: app.store.next_id(IdKind::RegistrationToken).await?,
        space_id: space.id.clone(),
        worker_pool_ids: pool_ids,
        uses_left: u32::try_from(uses).unwrap_or(1),
        expires_on: now + chrono::Duration::minutes(minutes as i64),
        token_hash: crate::auth::hash_key(&value),
        hint: crate::auth::hint(&value),
        created_by: user.0.id.clone(),
        created_on: now,
    };
    app.store.put(&token).await?;
    events::record(
        &app,
        Some(&user.0),
        Some(&space.id),
        events::CREATED,
        format!(
            "Registration token {} made for {} worker(s), expiring {}",
            token.id,
            token.uses_left,
            muster_core::time::format_date(&token.expires_on)
        ),
        token.worker_pool_ids.clone(),
    )
    .await;
    let mut shown = resource(&token);
    shown["Token"] = json!(value);
    created(&shown)
}

/// The space's tokens that are still good (expired ones are removed as they are seen).
async fn live(app: &App, space: &Space) -> Result<Vec<RegistrationToken>, ApiError> {
    let now = muster_core::time::now();
    let mut kept = Vec::new();
    for token in app.store.list::<RegistrationToken>(&space.id).await? {
        if token.expires_on <= now {
            app.store.delete::<RegistrationToken>(&token.id).await?;
        } else {
            kept.push(token);
        }
    }
    Ok(kept)
}

pub async fn list(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    params: Params,
) -> ApiResult {
    let items = live(&app, &space).await?.iter().map(resource).collect();
    page(
        "RegistrationToken",
        items,
        &params,
        &format!("/api/{}/registrationtokens", space.id),
        "skip,take",
        30,
    )
}

pub async fn delete(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    let token = live(&app, &space)
        .await?
        .into_iter()
        .find(|t| t.id.eq_ignore_ascii_case(&id))
        .ok_or_else(|| ApiError::not_found(&id))?;
    app.store.delete::<RegistrationToken>(&token.id).await?;
    events::record(
        &app,
        Some(&user.0),
        Some(&space.id),
        events::DELETED,
        format!("Registration token {} revoked", token.id),
        vec![],
    )
    .await;
    empty_ok()
}

/// One registration at a time on this node: a token's last use is not given twice.
static REGISTERING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `POST /api/workerregistrations` (no API key): `{Token, Name, Endpoint, MachinePolicyId?}`. The
/// worker joins the token's pools in its space; the answer is the worker, with the server's
/// certificate thumbprint in `X-Muster-Server-Thumbprint`. An agent that registers again with the
/// same name and certificate (a restarted pod) gets its worker back without using the token up.
pub async fn register(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    if let Some(wait) = app.key_failures.retry_after(peer.ip(), Instant::now()) {
        return Ok(crate::auth::too_many_failures(wait));
    }
    let mut body = body.object()?.clone();
    let fields = body.as_object_mut().expect("an object");
    let presented = fields
        .remove("Token")
        .and_then(|t| t.as_str().map(str::trim).map(str::to_string))
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::bad_request("Token is required: the registration token"))?;
    let _one = REGISTERING.lock().await;
    // Logged, not counted against the address as a wrong API key is: a token's 32 characters
    // (165 bits) cannot be guessed, and an installer's address should not be locked out of the
    // API by a stale token.
    let refused = |why: &str| {
        tracing::warn!(from = %peer, "refused a registration: {why}");
        ApiError::unauthorized(
            "The registration token is not known: it was never made, or was used up, revoked or expired.",
        )
    };
    let token = app
        .store
        .find_by_ext::<RegistrationToken>(&crate::auth::hash_key(&presented))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| refused("an unknown registration token"))?;
    if token.expires_on <= muster_core::time::now() {
        app.store.delete::<RegistrationToken>(&token.id).await?;
        return Err(refused("an expired registration token"));
    }
    // On behalf of its maker, as that user may act now.
    let maker: User = app
        .store
        .get(&token.created_by)
        .await?
        .filter(|u: &User| u.is_active)
        .ok_or_else(|| {
            ApiError::forbidden("The user who made this registration token is no longer active.")
        })?;
    let access = Access::load(&app, &maker).await?;
    if !access.has(&token.space_id, "WorkerEdit") {
        return Err(ApiError::forbidden(
            "The user who made this registration token may no longer add workers to its space.",
        ));
    }
    let space: Space = app
        .store
        .get(&token.space_id)
        .await?
        .ok_or_else(|| ApiError::not_found(&token.space_id))?;
    let name = body
        .get("Name")
        .and_then(|n| n.as_str())
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    let style = body
        .get("Endpoint")
        .and_then(|e| e.get("CommunicationStyle"))
        .and_then(|s| s.as_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !["tentacleactive", "tentaclepassive", "kubernetestentacle"].contains(&style.as_str()) {
        return Err(ApiError::bad_request(
            "Endpoint.CommunicationStyle must be TentacleActive, TentaclePassive or KubernetesTentacle: a registration token registers agents",
        ));
    }
    // A restarted agent: the same name and certificate.
    let thumbprint = body
        .get("Endpoint")
        .and_then(|e| {
            e.get("Thumbprint")
                .or_else(|| e.get("TentacleEndpointConfiguration")?.get("Thumbprint"))
        })
        .and_then(|t| t.as_str())
        .unwrap_or_default()
        .to_ascii_uppercase();
    let existing = app
        .store
        .list::<Worker>(&space.id)
        .await?
        .into_iter()
        .find(|w| w.name.eq_ignore_ascii_case(&name));
    if let Some(worker) = existing {
        if !thumbprint.is_empty()
            && worker
                .thumbprint
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case(&thumbprint))
        {
            return Ok(answer(
                &app,
                StatusCode::OK,
                workers::resource(&app, worker).await?,
            ));
        }
        return Err(ApiError::bad_request(format!(
            "A worker named '{name}' is already registered in {} for another agent: give this one its own name",
            space.name
        )));
    }
    if let Some(fields) = body.as_object_mut() {
        fields.insert("WorkerPoolIds".into(), json!(token.worker_pool_ids));
        fields.remove("SpaceId");
    }
    let user = CurrentUser(maker);
    let worker = workers::register(&app, &user, &access, &space, &body).await?;
    if token.uses_left <= 1 {
        app.store.delete::<RegistrationToken>(&token.id).await?;
    } else {
        let mut left = token.clone();
        left.uses_left -= 1;
        app.store.put(&left).await?;
    }
    events::record(
        &app,
        Some(&user.0),
        Some(&space.id),
        events::CREATED,
        format!(
            "Worker '{name}' registered with registration token {} (from {})",
            token.id,
            peer.ip()
        ),
        vec![worker["Id"].as_str().unwrap_or_default().to_string()],
    )
    .await;
    Ok(answer(&app, StatusCode::CREATED, worker))
}

fn answer(app: &App, status: StatusCode, worker: Value) -> Response {
    let mut response = (status, axum::Json(worker)).into_response();
    if let Ok(value) =
        HeaderValue::from_str(&muster_proto::thumbprint_sha256(&app.certificate.cert_der))
    {
        response
            .headers_mut()
            .insert("x-muster-server-thumbprint", value);
    }
    response
}
