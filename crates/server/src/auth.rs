//! API keys: generated with a CSPRNG, shown once, stored only as a SHA-256 hash. A request carries its
//! key in `X-Octopus-ApiKey`, `?apikey=` or `Authorization: Bearer`.

use crate::http::ApiError;
use crate::state::App;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use muster_core::resources::{ApiKeyRecord, User};
use rand::Rng;
use sha2::Digest;
use std::time::Instant;

/// The user a request acts as.
#[derive(Clone)]
pub struct CurrentUser(pub User);

pub fn new_api_key() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    let body: String = (0..27)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("API-{body}")
}

/// `API-` then upper-case letters and digits (contract 1.1); bootstrap keys need 26 or more.
pub fn valid_key_format(key: &str) -> bool {
    key.strip_prefix("API-").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    })
}

pub fn hash_key(key: &str) -> String {
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// What a client may see of a key after its creation.
pub fn hint(key: &str) -> String {
    format!("{}…", &key[..key.len().min(8)])
}

/// Requests that need no key: the root document (clients probe it first), the OpenAPI document
/// and the load balancer's ping (as in Octopus). Paths are canonical (lower case) here.
fn is_anonymous(method: &Method, path: &str) -> bool {
    (*method == Method::GET || *method == Method::HEAD)
        && (path == "/api" || path == "/api/openapi.json" || path == "/api/octopusservernodes/ping")
        // A registration token is its own credential, checked by its handler.
        || (*method == Method::POST && path == "/api/workerregistrations")
}

fn presented_key(request: &Request) -> Option<String> {
    if let Some(value) = request
        .headers()
        .get("x-octopus-apikey")
        .and_then(|v| v.to_str().ok())
        && !value.trim().is_empty()
    {
        return Some(value.trim().to_string());
    }
    if let Some(value) = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        && let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
    {
        return Some(token.trim().to_string());
    }
    let query = request.uri().query()?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).ok()?;
    pairs
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("apikey"))
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

pub async fn authenticate(State(app): State<App>, mut request: Request, next: Next) -> Response {
    if is_anonymous(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0);
    if let Some(wait) = peer.and_then(|p| app.key_failures.retry_after(p.ip(), Instant::now())) {
        return too_many_failures(wait);
    }
    let key = presented_key(&request);
    let tried = key.is_some();
    let user = match user_for(&app, key).await {
        Ok(user) => user,
        Err(error) => {
            if tried && error.status == axum::http::StatusCode::UNAUTHORIZED {
                key_failed(&app, peer, &error.message);
                if let Some(peer) = peer {
                    crate::api::events::sign_in_failed(&app, peer.ip()).await;
                }
            }
            return error.into_response();
        }
    };
    let access = match crate::access::Access::load(&app, &user).await {
        Ok(access) => access,
        Err(error) => return error.into_response(),
    };
    // The route's own rule is checked once the router has matched it (`access::check`).
    request.extensions_mut().insert(CurrentUser(user));
    request.extensions_mut().insert(access);
    next.run(request).await
}

/// A presented key was refused: logged with where it came from (never the key), and counted
/// against that address.
fn key_failed(app: &App, peer: Option<std::net::SocketAddr>, why: &str) {
    let from = peer.map_or_else(|| "an unknown address".to_string(), |p| p.to_string());
    tracing::warn!(from = %from, "refused an API key from {from}: {why}");
    if let Some(peer) = peer
        && app.key_failures.failed(peer.ip(), Instant::now())
    {
        tracing::warn!(
            "{} failed API keys from {} within {} s: its requests are refused for a while",
            crate::key_failures::LIMIT,
            peer.ip(),
            crate::key_failures::WINDOW.as_secs()
        );
    }
}

/// 429 with the contract's error body, and when to try again.
pub(crate) fn too_many_failures(wait: std::time::Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut response = ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        format!(
            "Too many requests with a wrong API key came from this address; try again in {seconds} s."
        ),
    )
    .into_response();
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from(seconds),
    );
    response
}

async fn user_for(app: &App, key: Option<String>) -> Result<User, ApiError> {
    let Some(key) = key else {
        return Err(ApiError::unauthorized(
            "You must be authenticated: send an API key in the X-Octopus-ApiKey header.",
        ));
    };
    if !valid_key_format(&key) {
        return Err(ApiError::unauthorized(
            "The API key is not in the form API-XXXX.",
        ));
    }
    let invalid = || ApiError::unauthorized("The API key you provided was not valid.");
    let records: Vec<ApiKeyRecord> = app.store.find_by_ext(&hash_key(&key)).await?;
    let record = records.into_iter().next().ok_or_else(invalid)?;
    if record
        .expires
        .is_some_and(|expires| expires <= muster_core::time::now())
    {
        return Err(ApiError::unauthorized(
            "The API key you provided has expired.",
        ));
    }
    let user: User = app.store.get(&record.user_id).await?.ok_or_else(invalid)?;
    if !user.is_active {
        return Err(ApiError::unauthorized(
            "The user of this API key is not active.",
        ));
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_keys_have_the_contract_format() {
        let key = new_api_key();
        assert!(valid_key_format(&key), "{key}");
        assert_eq!(key.len(), 31);
        assert_ne!(new_api_key(), key);
        assert!(!valid_key_format("API-abc"));
        assert!(!valid_key_format("API-"));
        assert!(!valid_key_format("KEY-ABC"));
    }
}
