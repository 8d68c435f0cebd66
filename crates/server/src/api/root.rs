//! The root document, space roots and the server certificate.

use crate::access::SpaceScope;
use crate::http::{ApiError, ApiResult, ok};
use crate::state::App;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};

/// The version Octopus clients compare against; Muster's own version is `MusterVersion`.
pub const OCTOPUS_VERSION: &str = "2025.1.0";
pub const API_VERSION: &str = "3.0.0";

/// The space-scoped link templates, for the root (default space) and each space root.
fn scoped_links(space_id: &str) -> Map<String, Value> {
    let s = space_id;
    let mut links = Map::new();
    let mut add = |name: &str, value: String| {
        links.insert(name.to_string(), Value::String(value));
    };
    add(
        "WorkerPools",
        format!("/api/{s}/workerpools{{/id}}{{?name,skip,ids,take,partialName}}"),
    );
    add(
        "Workers",
        format!(
            "/api/{s}/workers{{/id}}{{?skip,take,name,ids,partialName,isDisabled,healthStatuses,commStyles,workerPoolIds,thumbprint,shellNames}}"
        ),
    );
    add(
        "WorkerPoolsSummary",
        format!(
            "/api/{s}/workerpools/summary{{?ids,partialName,isDisabled,healthStatuses,commStyles,hideEmptyWorkerPools,shellNames}}"
        ),
    );
    add(
        "WorkerPoolsSortOrder",
        format!("/api/{s}/workerpools/sortorder"),
    );
    add(
        "WorkerPoolsSupportedTypes",
        format!("/api/{s}/workerpools/supportedtypes"),
    );
    add(
        "WorkerPoolsDynamicWorkerTypes",
        format!("/api/{s}/workerpools/dynamicworkertypes"),
    );
    add(
        "DiscoverWorker",
        format!("/api/{s}/workers/discover{{?host,port,type,proxyId}}"),
    );
    add(
        "MachinePolicies",
        format!("/api/{s}/machinepolicies{{/id}}{{?skip,take,ids,partialName}}"),
    );
    add(
        "MachinePolicyTemplate",
        format!("/api/{s}/machinepolicies/template"),
    );
    add(
        "Accounts",
        format!("/api/{s}/accounts{{/id}}{{?skip,take,ids,partialName,accountType}}"),
    );
    add(
        "Artifacts",
        format!("/api/{s}/artifacts{{/id}}{{?skip,take,regarding,ids,partialName}}"),
    );
    add(
        "Machines",
        format!(
            "/api/{s}/machines{{/id}}{{?skip,take,name,ids,partialName,roles,isDisabled,healthStatuses,commStyles,thumbprint,shellNames}}"
        ),
    );
    add(
        "DiscoverMachine",
        format!("/api/{s}/machines/discover{{?host,port,type,proxyId}}"),
    );
    add(
        "Events",
        format!("/api/{s}/events{{/id}}{{?skip,take,ids,regarding,users,from,to,eventCategories}}"),
    );
    add(
        "Tasks",
        format!(
            "/api/{s}/tasks{{/id}}{{?skip,active,name,node,running,states,hasWarningsOrErrors,take,ids,partialName}}"
        ),
    );
    links
}

pub async fn root(State(app): State<App>) -> ApiResult {
    let default_space = super::resolve_space(&app, crate::http::DEFAULT_SPACE).await?;
    let mut links = Map::new();
    links.insert("Self".into(), json!("/api"));
    links.insert(
        "Spaces".into(),
        json!("/api/spaces{/id}{?name,skip,ids,take,partialName}"),
    );
    links.insert("SpaceHome".into(), json!("/api/{spaceId}"));
    links.insert("CurrentUser".into(), json!("/api/users/me"));
    links.insert(
        "Users".into(),
        json!("/api/users{/id}{?skip,take,ids,filter}"),
    );
    links.insert(
        "Tasks".into(),
        json!("/api/tasks{/id}{?skip,active,environment,tenant,runbook,project,name,node,running,states,hasPendingInterruptions,hasWarningsOrErrors,take,ids,partialName,spaces,includeSystem}"),
    );
    links.insert("TaskTypes".into(), json!("/api/tasks/taskTypes"));
    links.insert(
        "Events".into(),
        json!("/api/events{/id}{?skip,take,ids,regarding,users,from,to,eventCategories,spaces,includeSystem}"),
    );
    links.insert("EventCategories".into(), json!("/api/events/categories"));
    links.insert(
        "CertificateConfiguration".into(),
        json!("/api/configuration/certificates{/id}{?skip,take,ids,partialName}"),
    );
    links.insert("OpenApi".into(), json!("/api/openapi.json"));
    for (name, value) in scoped_links(&default_space.id) {
        if name != "Tasks" && name != "Events" {
            links.insert(name, value);
        }
    }
    ok(&json!({
        "Application": "Octopus Deploy",
        "Version": OCTOPUS_VERSION,
        "ApiVersion": API_VERSION,
        "InstallationId": app.installation_id,
        "IsEarlyAccessProgram": false,
        "HasLongTermSupport": false,
        "Product": "Muster",
        "MusterVersion": env!("CARGO_PKG_VERSION"),
        "Links": links,
    }))
}

pub async fn openapi() -> ApiResult {
    ok(&crate::openapi::document())
}

pub async fn space_root(SpaceScope(space): SpaceScope) -> ApiResult {
    let mut links = scoped_links(&space.id);
    links.insert("Self".into(), json!(format!("/api/{}", space.id)));
    ok(&json!({"Id": space.id, "Links": links}))
}

const CERTIFICATE_ID: &str = "certificate-global";

fn certificate_resource(app: &App) -> Value {
    let der = &app.certificate.cert_der;
    json!({
        "Id": CERTIFICATE_ID,
        "Name": "Muster Server",
        "Thumbprint": muster_proto::thumbprint_sha256(der),
        "ThumbprintSha1": muster_proto::thumbprint_sha1(der),
        "SignatureAlgorithm": "ecdsa-with-SHA256",
        "Links": {
            "Self": format!("/api/configuration/certificates/{CERTIFICATE_ID}"),
            "PublicCer": format!("/api/configuration/certificates/{CERTIFICATE_ID}/public-cer"),
        },
    })
}

pub async fn certificates(State(app): State<App>) -> ApiResult {
    let item = certificate_resource(&app);
    let params = crate::http::Params::default();
    super::page(
        "CertificateConfiguration",
        vec![item],
        &params,
        "/api/configuration/certificates",
        "skip,take",
        30,
    )
}

pub async fn certificate(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    if id != CERTIFICATE_ID {
        return Err(ApiError::not_found(id));
    }
    ok(&certificate_resource(&app))
}

/// The server certificate in PEM, for pinning by hand (`--trust` takes its thumbprint).
pub async fn certificate_public(State(app): State<App>, Path(id): Path<String>) -> ApiResult {
    if id != CERTIFICATE_ID {
        return Err(ApiError::not_found(id));
    }
    let mut response = app.certificate.cert_pem.clone().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-pem-file"),
    );
    Ok(response)
}
