//! The HTTP conventions of the contract (section 1) in one place: path normalization, the error body,
//! JSON bodies read whatever their Content-Type, case-insensitive query parameters, and JSON answers.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use muster_core::ErrorBody;
use muster_core::paging::PageRequest;
use serde::Serialize;
use serde_json::Value;

/// The largest request body accepted; more answers 413.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// How a normalized path names the default space: `~` never appears in a slug, so no space can
/// shadow it.
pub const DEFAULT_SPACE: &str = "~default";

/// Space-scoped collections that, unprefixed, mean the default space (contract 1.2).
pub const SCOPED_COLLECTIONS: &[&str] = &[
    "workerpools",
    "workers",
    "machines",
    "machinepolicies",
    "runbooks",
    "runbookprocesses",
    "runbookruns",
    "variables",
    "accounts",
    "artifacts",
    "registrationtokens",
];

/// Rewrites a request path to the one form the router knows: lower case (routes are
/// case-insensitive and ids parse in any case), no trailing slash, and every space-scoped route as
/// `/api/s/{space}/…` whether it came as `/api/Spaces-1/…`, `/api/spaces/{idOrSlug}/…` or unprefixed.
pub fn normalize_path(path: &str) -> String {
    let lower = path.to_ascii_lowercase();
    let trimmed = lower.trim_end_matches('/');
    let segments: Vec<&str> = trimmed.split('/').collect();
    if segments.len() < 2 || segments[1] != "api" {
        return if trimmed.is_empty() {
            "/".into()
        } else {
            trimmed.into()
        };
    }
    let rest = &segments[2..];
    let is_space_id = |s: &str| muster_core::parse_id(muster_core::IdKind::Space, s).is_some();
    match rest {
        [first, tail @ ..] if is_space_id(first) => join("/api/s", first, tail),
        ["spaces", space, tail @ ..] if !tail.is_empty() => join("/api/s", space, tail),
        [collection, ..] if SCOPED_COLLECTIONS.contains(collection) => {
            join("/api/s", DEFAULT_SPACE, rest)
        }
        _ => trimmed.to_string(),
    }
}

fn join(prefix: &str, space: &str, tail: &[&str]) -> String {
    let mut out = format!("{prefix}/{space}");
    for segment in tail {
        out.push('/');
        out.push_str(segment);
    }
    out
}

/// Decodes a request path's percent-encoding, once. The access check and the router then read the
/// same canonical path: a second decoding could turn `%2541` into `%41` here and `A` in a route's
/// parameters, so a path still holding `%` after one decoding is refused, as are control characters,
/// an encoded `?` or `#`, and bytes that are not UTF-8.
pub fn decode_path(raw: &str) -> Result<String, ApiError> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("The request path is not valid UTF-8 once decoded."))?;
    if decoded.contains('%') {
        return Err(ApiError::bad_request(
            "The request path holds a '%' after decoding: encode each character once.",
        ));
    }
    if decoded.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "The request path holds a control character.",
        ));
    }
    // Decoded, these would start a query or a fragment: a path means what it says or nothing.
    if decoded.contains(['?', '#']) {
        return Err(ApiError::bad_request(
            "The request path holds an encoded '?' or '#'.",
        ));
    }
    Ok(decoded.into_owned())
}

/// The first step of every request, before routing: the path decoded once ([`decode_path`]) and
/// normalized ([`normalize_path`]). The router, the access check and the handlers see only this form.
pub async fn canonicalize(mut request: Request, next: axum::middleware::Next) -> Response {
    let uri = request.uri();
    let canonical = match decode_path(uri.path()) {
        Ok(decoded) => normalize_path(&decoded),
        Err(error) => return error.into_response(),
    };
    if canonical != uri.path() {
        let with_query = match uri.query() {
            Some(query) => format!("{canonical}?{query}"),
            None => canonical,
        };
        match with_query.parse() {
            Ok(new_uri) => *request.uri_mut() = new_uri,
            // A decoded character a URI may not hold raw (a space, a quote): no route has one.
            Err(_) => {
                return ApiError::new(
                    StatusCode::NOT_FOUND,
                    "There is no resource at this address.",
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

/// An error answered with the contract's body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub errors: Vec<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError {
            status,
            errors: vec![message.clone()],
            message,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A 400 with every problem listed, as clients print one line per entry of `Errors`.
    pub fn validation(errors: Vec<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: "There was a problem with your request.".into(),
            errors,
        }
    }

    /// A 404 naming what was asked for, shortened past 100 characters: an id of 20,000 characters
    /// is not echoed back.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        const SHOWN: usize = 100;
        let what = what.to_string();
        let what = match what.char_indices().nth(SHOWN) {
            Some((end, _)) => format!("{}…", &what[..end]),
            None => what,
        };
        Self::new(
            StatusCode::NOT_FOUND,
            format!("The resource '{what}' was not found."),
        )
    }

    /// A 403 that names what is missing, so a user knows what to ask an administrator for.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("The server failed to handle the request: {error}"),
        )
    }
}

impl From<muster_store::StoreError> for ApiError {
    fn from(error: muster_store::StoreError) -> Self {
        match error {
            muster_store::StoreError::Conflict(message) => ApiError::bad_request(message),
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody::new(self.message, self.errors);
        json_response(self.status, &body)
    }
}

pub type ApiResult = Result<Response, ApiError>;

/// A JSON answer with the content type PowerShell parses by.
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = (status, bytes).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

pub fn ok(body: &impl Serialize) -> ApiResult {
    Ok(json_response(StatusCode::OK, body))
}

pub fn created(body: &impl Serialize) -> ApiResult {
    Ok(json_response(StatusCode::CREATED, body))
}

/// A request body read as JSON whatever its Content-Type, with property names made canonical.
/// An empty body reads as `null`.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = bytes::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "The request body is larger than the limit of {MAX_BODY_BYTES} bytes."
                        ),
                    )
                } else {
                    ApiError::bad_request(format!(
                        "The request body could not be read: {rejection}"
                    ))
                }
            })?;
        // Windows tools may start a body with a UTF-8 byte order mark.
        let bytes = bytes
            .strip_prefix(b"\xEF\xBB\xBF".as_slice())
            .unwrap_or(&bytes);
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(Value::Null));
        }
        let mut value: Value = serde_json::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(format!("The request body is not valid JSON: {e}"))
        })?;
        // serde_json keeps the last of a repeated key; a body that says two things is refused
        // (keys are compared without case, as the API reads them).
        if let Err(e) = serde_json::from_slice::<NoDuplicateKeys>(bytes) {
            return Err(ApiError::bad_request(format!(
                "The request body is not valid JSON: {e}"
            )));
        }
        muster_core::casing::canonicalize(&mut value);
        Ok(JsonBody(value))
    }
}

/// Reads a JSON document only to refuse an object that has a key twice.
struct NoDuplicateKeys;

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NoDuplicateKeys)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeys {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(self)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.to_lowercase()) {
                return Err(serde::de::Error::custom(format!(
                    "the key '{}' appears twice in one object",
                    key.chars().take(100).collect::<String>()
                )));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(self)
    }
}

impl JsonBody {
    /// The body as an object, or a 400 saying one was expected.
    pub fn object(&self) -> Result<&Value, ApiError> {
        if self.0.is_object() {
            Ok(&self.0)
        } else {
            Err(ApiError::bad_request(
                "The request body must be a JSON object.",
            ))
        }
    }
}

/// The query parameters read as lists ([`Params::list`]): comma-joined, and also repeated.
pub const LIST_PARAMS: &[&str] = &[
    "ids",
    "states",
    "healthstatuses",
    "commstyles",
    "workerpoolids",
    "shellnames",
    "spaces",
    "accounttype",
    "regarding",
    "users",
    "eventcategories",
];

/// Query parameters with case-insensitive names; `ids=A,B` and repeated `ids=` both read as a list.
#[derive(Debug, Default, Clone)]
pub struct Params {
    /// (lower-case name, value, name as sent)
    pairs: Vec<(String, String, String)>,
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).map_err(|e| {
            ApiError::bad_request(format!("The query string could not be read: {e}"))
        })?;
        // A parameter of one value given twice is ambiguous (which one counts?): refused, rather
        // than quietly reading one of them. Lists may repeat (`ids=A&ids=B`).
        let mut seen = std::collections::HashSet::new();
        for (name, _) in &pairs {
            let lower = name.to_ascii_lowercase();
            if !LIST_PARAMS.contains(&lower.as_str()) && !seen.insert(lower) {
                return Err(ApiError::bad_request(format!(
                    "The query parameter '{name}' is given more than once."
                )));
            }
        }
        Ok(Params {
            pairs: pairs
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v, k))
                .collect(),
        })
    }
}

impl Params {
    /// The last value given for a name (`name` is lower case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _, _)| k == name)
            .map(|(_, v, _)| v.as_str())
            .filter(|v| !v.trim().is_empty())
    }

    /// Every value for a name, comma-split, trimmed, empty ones dropped. None when the name is absent.
    pub fn list(&self, name: &str) -> Option<Vec<String>> {
        let values: Vec<String> = self
            .pairs
            .iter()
            .filter(|(k, _, _)| k == name)
            .flat_map(|(_, v, _)| v.split(','))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        if values.is_empty() {
            None
        } else {
            Some(values)
        }
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(None),
            Some(v) if v == "true" => Ok(Some(true)),
            Some(v) if v == "false" => Ok(Some(false)),
            Some(v) => Err(ApiError::bad_request(format!(
                "The parameter '{name}' must be true or false, got '{v}'."
            ))),
        }
    }

    pub fn page(&self, default_take: u64) -> Result<PageRequest, ApiError> {
        PageRequest::parse(self.get("skip"), self.get("take"), default_take)
            .map_err(ApiError::bad_request)
    }

    /// The parameters other than paging, encoded again for the paging links.
    pub fn filters(&self) -> String {
        // The API key never goes into a link.
        let kept: Vec<(&str, &str)> = self
            .pairs
            .iter()
            .filter(|(k, _, _)| k != "skip" && k != "take" && k != "apikey")
            .map(|(_, v, original)| (original.as_str(), v.as_str()))
            .collect();
        serde_urlencoded::to_string(kept).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_path;

    #[test]
    fn every_form_of_a_scoped_route_becomes_one() {
        assert_eq!(
            normalize_path("/api/Spaces-1/workerPools"),
            "/api/s/spaces-1/workerpools"
        );
        assert_eq!(
            normalize_path("/api/spaces/Spaces-2/tasks/ServerTasks-3/cancel"),
            "/api/s/spaces-2/tasks/servertasks-3/cancel"
        );
        assert_eq!(
            normalize_path("/api/spaces/my-slug/workers"),
            "/api/s/my-slug/workers"
        );
        assert_eq!(
            normalize_path("/api/workerpools/all"),
            "/api/s/~default/workerpools/all"
        );
        assert_eq!(normalize_path("/api/Spaces-1"), "/api/s/spaces-1");
        assert_eq!(normalize_path("/api/"), "/api");
        assert_eq!(
            normalize_path("/api/spaces/Spaces-1"),
            "/api/spaces/spaces-1"
        );
        assert_eq!(normalize_path("/api/spaces/all/"), "/api/spaces/all");
        assert_eq!(
            normalize_path("/api/tasks/ServerTasks-1"),
            "/api/tasks/servertasks-1"
        );
        assert_eq!(normalize_path("/"), "/");
    }
}
