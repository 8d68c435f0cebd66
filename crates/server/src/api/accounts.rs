//! Accounts (Octopus's `/api/{space}/accounts`): the credentials SSH workers sign in with, of type
//! `SshKeyPair` or `UsernamePassword`. Their secrets are sensitive values: written through
//! `NewValue`, sealed at rest by the store, never read back (`HasValue` only).

use super::{actor, check_space_id, empty_ok, events, filter_named, page};
use crate::access::{Access, SpaceScope};
use crate::auth::CurrentUser;
use crate::http::{ApiError, ApiResult, JsonBody, Params, created, ok};
use crate::links;
use crate::state::App;
use axum::Extension;
use axum::extract::{Path, State};
use base64::Engine as _;
use muster_core::IdKind;
use muster_core::resources::{
    ACCOUNT_TYPES, Account, Endpoint, SensitiveValue, Space, Worker, apply,
};
use muster_ssh::keys::{KeyError, check_private_key};
use serde_json::{Value, json};

const SECRETS: [&str; 3] = ["PrivateKeyFile", "PrivateKeyPassphrase", "Password"];

async fn sorted_accounts(app: &App, space: &Space) -> Result<Vec<Account>, ApiError> {
    let mut accounts: Vec<Account> = app.store.list(&space.id).await?;
    accounts.sort_by_key(|a| a.name.to_lowercase());
    Ok(accounts)
}

/// `ids`, `partialName` and `accountType` (one type or several, comma-joined).
async fn filtered(app: &App, space: &Space, params: &Params) -> Result<Vec<Account>, ApiError> {
    let mut accounts = filter_named(
        sorted_accounts(app, space).await?,
        params,
        |a| &a.id,
        |a| &a.name,
    );
    if let Some(types) = params.list("accounttype") {
        accounts.retain(|a| {
            types
                .iter()
                .any(|t| t.eq_ignore_ascii_case(&a.account_type))
        });
    }
    Ok(accounts)
}

pub async fn find(app: &App, space: &Space, id: &str) -> Result<Account, ApiError> {
    super::find_in_space(app, space, IdKind::Account, id).await
}

pub async fn list(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    params: Params,
) -> ApiResult {
    let accounts = filtered(&app, &space, &params).await?;
    page(
        "Account",
        accounts.iter().map(links::account).collect(),
        &params,
        &format!("/api/{}/accounts", space.id),
        "skip,take,ids,partialName,accountType",
        30,
    )
}

pub async fn all(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    params: Params,
) -> ApiResult {
    let accounts = filtered(&app, &space, &params).await?;
    ok(&accounts.iter().map(links::account).collect::<Vec<_>>())
}

pub async fn get_one(
    State(app): State<App>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    ok(&links::account(&find(&app, &space, &id).await?))
}

/// A secret may come as Octopus's `{HasValue, NewValue}` or as a plain string; `{HasValue: false}`
/// without a `NewValue` clears it, and anything else (`NewValue: null`) keeps the stored one.
fn read_secrets(account: &mut Account, body: &Value) {
    for field in SECRETS {
        let given = match body.get(field) {
            Some(Value::String(text)) => Some(Some(text.clone())),
            Some(Value::Object(value)) => match value.get("NewValue") {
                Some(Value::String(text)) => Some(Some(text.clone())),
                _ if value.get("HasValue") == Some(&Value::Bool(false)) => Some(None),
                _ => None,
            },
            _ => None,
        };
        let slot = match field {
            "PrivateKeyFile" => &mut account.private_key_file,
            "PrivateKeyPassphrase" => &mut account.private_key_passphrase,
            _ => &mut account.password,
        };
        if let Some(given) = given {
            *slot = given.map(SensitiveValue::of);
        }
        if slot.as_ref().is_none_or(|s| s.value().is_none()) {
            *slot = None;
        }
    }
}

/// The body without its secrets, so that `apply` reads only the plain fields (a plain-string
/// secret would not fit `SensitiveValue`).
fn without_secrets(body: &Value) -> Value {
    let mut plain = body.clone();
    if let Value::Object(map) = &mut plain {
        for field in SECRETS {
            map.remove(field);
        }
    }
    plain
}

/// Checks an account as it would be stored: its type, name, username and secrets, and that a key
/// file is a private key its passphrase opens. Every problem is reported, each naming its field.
async fn validate(
    app: &App,
    space: &Space,
    account: &mut Account,
    previous_type: Option<&str>,
) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    account.name = account.name.trim().to_string();
    errors.extend(muster_core::ids::check_name(&account.name));
    let given_type = account.account_type.trim().to_string();
    match ACCOUNT_TYPES
        .iter()
        .find(|t| t.eq_ignore_ascii_case(&given_type))
    {
        Some(t) => account.account_type = t.to_string(),
        None if given_type.is_empty() => {
            errors.push("AccountType is required: SshKeyPair or UsernamePassword.".into())
        }
        None => errors.push(format!(
            "AccountType '{given_type}' is not supported: Muster's accounts are SshKeyPair or UsernamePassword."
        )),
    }
    if let Some(previous) = previous_type
        && previous != account.account_type
    {
        errors.push(format!(
            "AccountType cannot change (this account is {previous}); create another account."
        ));
    }
    account.username = account
        .username
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string);
    if account.username.is_none() && ACCOUNT_TYPES.contains(&account.account_type.as_str()) {
        errors.push("Username is required: the user the worker signs in as.".into());
    }
    match account.account_type.as_str() {
        "SshKeyPair" => {
            account.password = None;
            errors.extend(check_key(account).await);
        }
        "UsernamePassword" => {
            account.private_key_file = None;
            account.private_key_passphrase = None;
            if account.password.is_none() {
                errors.push("Password is required: give it as Password.NewValue.".into());
            }
        }
        _ => {}
    }
    let slug = if account.slug.trim().is_empty() {
        &account.name
    } else {
        &account.slug
    };
    account.slug = muster_core::ids::slugify(slug);
    let others: Vec<Account> = app.store.list(&space.id).await?;
    if let Some(twin) = others
        .iter()
        .find(|a| a.id != account.id && a.name.eq_ignore_ascii_case(&account.name))
    {
        errors.push(format!(
            "An account named '{}' already exists in this space ({}).",
            twin.name, twin.id
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

/// The key file's problems: not base64, not a private key, a passphrase missing or wrong. The key
/// is stored as canonical base64.
async fn check_key(account: &mut Account) -> Vec<String> {
    let Some(encoded) = account
        .private_key_file
        .as_ref()
        .and_then(SensitiveValue::value)
    else {
        return vec![
            "PrivateKeyFile is required: give the base64 of the private key file as PrivateKeyFile.NewValue."
                .into(),
        ];
    };
    let compact: String = encoded.split_ascii_whitespace().collect();
    let Ok(file) = base64::engine::general_purpose::STANDARD.decode(&compact) else {
        let pasted = if encoded.contains("PRIVATE KEY-----") {
            " (this is the key file's text: encode it)"
        } else {
            ""
        };
        return vec![format!(
            "PrivateKeyFile.NewValue is not base64{pasted}: give the base64 of the private key file (such as `base64 -w0 id_ed25519`)."
        )];
    };
    let passphrase = account
        .private_key_passphrase
        .as_ref()
        .and_then(SensitiveValue::value)
        .map(str::to_string);
    // An encrypted key's KDF is deliberately slow: off the async workers.
    let checked =
        tokio::task::spawn_blocking(move || check_private_key(&file, passphrase.as_deref())).await;
    match checked {
        Ok(Ok(_)) => {
            account.private_key_file = Some(SensitiveValue::of(compact));
            Vec::new()
        }
        Ok(Err(KeyError::NotAKey)) => vec![
            "PrivateKeyFile: the file is not an OpenSSH or PEM private key (give the private key, not the .pub file).".into(),
        ],
        Ok(Err(KeyError::NeedsPassphrase)) => vec![
            "PrivateKeyPassphrase is required: the private key is encrypted; give its passphrase as PrivateKeyPassphrase.NewValue.".into(),
        ],
        Ok(Err(KeyError::WrongPassphrase)) => {
            vec!["PrivateKeyPassphrase: the passphrase does not open the private key.".into()]
        }
        Err(_) => vec!["PrivateKeyFile: the key could not be checked.".into()],
    }
}

pub async fn create(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    SpaceScope(space): SpaceScope,
    body: JsonBody,
) -> ApiResult {
    let body = body.object()?;
    check_space_id(body, &space)?;
    let mut account =
        apply(&Account::default(), &without_secrets(body)).map_err(ApiError::bad_request)?;
    read_secrets(&mut account, body);
    account.id = String::new();
    account.space_id = space.id.clone();
    validate(&app, &space, &mut account, None).await?;
    account.id = app.store.next_id(IdKind::Account).await?;
    account.last_modified_on = Some(muster_core::time::now());
    account.last_modified_by = actor(&user);
    app.store.put(&account).await?;
    events::resource(
        &app,
        &user.0,
        Some(&space.id),
        events::CREATED,
        "Account",
        &account.name,
        &account.id,
    )
    .await;
    created(&links::account(&account))
}

pub async fn update(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
    body: JsonBody,
) -> ApiResult {
    let existing = find(&app, &space, &id).await?;
    let body = body.object()?;
    check_space_id(body, &space)?;
    let mut account = apply(&existing, &without_secrets(body)).map_err(ApiError::bad_request)?;
    read_secrets(&mut account, body);
    account.id = existing.id.clone();
    account.space_id = existing.space_id.clone();
    validate(&app, &space, &mut account, Some(&existing.account_type)).await?;
    account.last_modified_on = Some(muster_core::time::now());
    account.last_modified_by = actor(&user);
    app.store.put(&account).await?;
    events::resource(
        &app,
        &user.0,
        Some(&space.id),
        events::MODIFIED,
        "Account",
        &account.name,
        &account.id,
    )
    .await;
    ok(&links::account(&account))
}

/// The workers, in every space, whose SSH endpoint signs in with this account.
async fn users_of(app: &App, account: &Account) -> Result<Vec<Worker>, ApiError> {
    let mut workers: Vec<Worker> = app.store.list_all::<Worker>().await?;
    workers.retain(|w| match &w.endpoint {
        Some(Endpoint::Ssh(e)) => e.account_id.as_deref() == Some(account.id.as_str()),
        _ => false,
    });
    Ok(workers)
}

pub async fn delete(
    State(app): State<App>,
    Extension(user): Extension<CurrentUser>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    let account = find(&app, &space, &id).await?;
    let users = users_of(&app, &account).await?;
    if !users.is_empty() {
        let names: Vec<String> = users
            .iter()
            .map(|w| format!("{} ({})", w.name, w.id))
            .collect();
        return Err(ApiError::validation(vec![format!(
            "The account is used by {} worker(s): {}; change or delete them first.",
            users.len(),
            names.join(", ")
        )]));
    }
    app.store.delete::<Account>(&account.id).await?;
    events::resource(
        &app,
        &user.0,
        Some(&space.id),
        events::DELETED,
        "Account",
        &account.name,
        &account.id,
    )
    .await;
    empty_ok()
}

/// Octopus's `AccountUsageResource`: the workers that use the account are its `Targets` (those in
/// spaces the caller sees); Muster has no projects, so the other lists are empty.
pub async fn usages(
    State(app): State<App>,
    Extension(access): Extension<Access>,
    SpaceScope(space): SpaceScope,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    let account = find(&app, &space, &id).await?;
    let targets: Vec<Value> = users_of(&app, &account)
        .await?
        .into_iter()
        .filter(|w| access.sees_space(&w.space_id))
        .map(|w| json!({"TargetId": w.id, "TargetName": w.name, "SpaceId": w.space_id}))
        .collect();
    ok(&json!({
        "Id": null,
        "Targets": targets,
        "DeploymentProcesses": [],
        "Releases": [],
        "ProjectVariableSets": [],
        "LibraryVariableSets": [],
        "RunbookProcesses": [],
        "RunbookSnapshots": [],
        "Links": {"Self": format!("/api/{}/accounts/{}/usages", space.id, account.id)},
    }))
}
