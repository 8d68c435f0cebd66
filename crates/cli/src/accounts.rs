//! Accounts, and the SSH workers that sign in with them: `muster account …`, `muster worker
//! add-ssh` and `muster worker update-fingerprint`. A host key is pinned only as discovery read it
//! or as the user gave it, and a pin changes only when the user says so.

use crate::client::{Client, encode};
use crate::{SpaceOption, array, id_of, matches, output, resolve_pool, resolve_space};
use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Subcommand)]
pub enum AccountCommand {
    /// The space's accounts (never their secrets).
    List {
        #[command(flatten)]
        space: SpaceOption,
    },
    /// Creates an account.
    #[command(subcommand)]
    Create(AccountCreate),
}

#[derive(Debug, Clone, Subcommand)]
pub enum AccountCreate {
    /// An SSH key pair account: a user and their private key (OpenSSH or PEM).
    SshKey {
        name: String,
        #[command(flatten)]
        space: SpaceOption,
        #[arg(long)]
        username: String,
        /// The private key file.
        #[arg(long)]
        key_file: PathBuf,
        /// A file holding the key's passphrase (its first line), for an encrypted key.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// A username and password account.
    Password {
        name: String,
        #[command(flatten)]
        space: SpaceOption,
        #[arg(long)]
        username: String,
        /// A file holding the password (its first line), so it never appears in a process list.
        #[arg(long)]
        password_file: PathBuf,
    },
}

/// The first line of a secret file, without its line ending.
fn read_secret(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

pub async fn account(client: &Client, json: bool, command: AccountCommand) -> anyhow::Result<i32> {
    match command {
        AccountCommand::List { space } => {
            let space = resolve_space(client, &space).await?;
            let accounts = client
                .get(&format!("/api/{}/accounts/all", id_of(&space)))
                .await?;
            if json {
                output::json(&accounts);
            } else {
                let rows = array(&accounts)
                    .iter()
                    .map(|a| {
                        vec![
                            output::text(&a["Id"]),
                            output::text(&a["Name"]),
                            output::text(&a["AccountType"]),
                            output::text(&a["Username"]),
                        ]
                    })
                    .collect();
                output::table(&["ID", "NAME", "TYPE", "USERNAME"], rows);
            }
        }
        AccountCommand::Create(create) => {
            let (space, body) = match create {
                AccountCreate::SshKey {
                    name,
                    space,
                    username,
                    key_file,
                    passphrase_file,
                } => {
                    let key = std::fs::read(&key_file)
                        .with_context(|| format!("cannot read {}", key_file.display()))?;
                    let passphrase = passphrase_file.as_deref().map(read_secret).transpose()?;
                    let mut body = json!({"Name": name, "AccountType": "SshKeyPair", "Username": username,
                        "PrivateKeyFile": {"HasValue": true, "NewValue": base64::engine::general_purpose::STANDARD.encode(key)}});
                    if let Some(passphrase) = passphrase {
                        body["PrivateKeyPassphrase"] =
                            json!({"HasValue": true, "NewValue": passphrase});
                    }
                    (space, body)
                }
                AccountCreate::Password {
                    name,
                    space,
                    username,
                    password_file,
                } => {
                    let password = read_secret(&password_file)?;
                    let body = json!({"Name": name, "AccountType": "UsernamePassword", "Username": username,
                        "Password": {"HasValue": true, "NewValue": password}});
                    (space, body)
                }
            };
            let space = resolve_space(client, &space).await?;
            let created = client
                .send(
                    Method::POST,
                    &format!("/api/{}/accounts", id_of(&space)),
                    Some(&body),
                )
                .await?;
            if json {
                output::json(&created);
            } else {
                println!(
                    "Created account {} ({}, {})",
                    output::text(&created["Name"]),
                    output::text(&created["Id"]),
                    output::text(&created["AccountType"])
                );
            }
        }
    }
    Ok(0)
}

async fn resolve_account(client: &Client, space: &Value, key: &str) -> anyhow::Result<Value> {
    let accounts = array(
        &client
            .get(&format!("/api/{}/accounts/all", id_of(space)))
            .await?,
    );
    accounts
        .into_iter()
        .find(|a| matches(a, key))
        .ok_or_else(|| {
            anyhow!(
                "no account named '{key}' in space {}",
                output::text(&space["Name"])
            )
        })
}

/// Reads an SSH host's key through the server (`workers/discover?type=Ssh`).
async fn discover(client: &Client, space: &Value, host: &str, port: u16) -> anyhow::Result<Value> {
    let found = client
        .get(&format!(
            "/api/{}/workers/discover?type=Ssh&host={}&port={port}",
            id_of(space),
            encode(host)
        ))
        .await?;
    Ok(found["Endpoint"].clone())
}

pub struct AddSsh {
    pub name: String,
    pub space: SpaceOption,
    pub host: String,
    pub port: u16,
    pub account: String,
    pub pools: Vec<String>,
    pub fingerprint: Option<String>,
}

/// `muster worker add-ssh`: registers an SSH worker, pinning the host key it was given or, without
/// one, the key discovery reads now (and says which).
pub async fn add_ssh(client: &Client, json: bool, args: AddSsh) -> anyhow::Result<i32> {
    let space = resolve_space(client, &args.space).await?;
    let account = resolve_account(client, &space, &args.account).await?;
    let mut pool_ids = Vec::new();
    for pool in &args.pools {
        pool_ids.push(id_of(&resolve_pool(client, &space, pool).await?));
    }
    let (fingerprint, algorithm, discovered) = match args.fingerprint {
        Some(given) => (given, Value::Null, false),
        None => {
            let endpoint = discover(client, &space, &args.host, args.port).await?;
            let fingerprint = endpoint["Fingerprint"]
                .as_str()
                .ok_or_else(|| anyhow!("the server's discovery gave no fingerprint"))?
                .to_string();
            (fingerprint, endpoint["HostKeyAlgorithm"].clone(), true)
        }
    };
    let body = json!({
        "Name": args.name,
        "WorkerPoolIds": pool_ids,
        "Endpoint": {"CommunicationStyle": "Ssh", "Host": args.host, "Port": args.port,
            "Fingerprint": fingerprint, "AccountId": id_of(&account), "HostKeyAlgorithm": algorithm},
    });
    let created = client
        .send(
            Method::POST,
            &format!("/api/{}/workers", id_of(&space)),
            Some(&body),
        )
        .await?;
    if json {
        output::json(&created);
    } else {
        if discovered {
            println!(
                "Discovered the host key of {}:{}: {} {}",
                args.host,
                args.port,
                output::text(&algorithm),
                fingerprint
            );
        }
        println!(
            "Created SSH worker {} ({}), pinned to host key {}",
            output::text(&created["Name"]),
            id_of(&created),
            output::text(&created["Endpoint"]["Fingerprint"])
        );
    }
    Ok(0)
}

/// `muster worker update-fingerprint`: reads the host's key now, shows the pinned and the current
/// fingerprint, and changes the pin only with `--yes`. Exits 0 when the pin is (now) the current key, 1
/// when it differs and was left as it is.
pub async fn update_fingerprint(
    client: &Client,
    json: bool,
    space: &SpaceOption,
    worker: &str,
    yes: bool,
) -> anyhow::Result<i32> {
    let space = resolve_space(client, space).await?;
    let found = crate::resolve_worker(client, &space, worker).await?;
    let endpoint = &found["Endpoint"];
    if endpoint["CommunicationStyle"] != json!("Ssh") {
        bail!(
            "worker {} is not an SSH worker; only an SSH worker has a host key to pin",
            output::text(&found["Name"])
        );
    }
    let host = endpoint["Host"].as_str().unwrap_or_default().to_string();
    let port = endpoint["Port"].as_u64().unwrap_or(22) as u16;
    let current = discover(client, &space, &host, port).await?;
    let old = output::text(&endpoint["Fingerprint"]);
    let new = output::text(&current["Fingerprint"]);
    let same = old == new;
    if !json {
        println!("Worker {} ({host}:{port})", output::text(&found["Name"]));
        println!("  pinned:  {old}");
        println!(
            "  current: {new} ({})",
            output::text(&current["HostKeyAlgorithm"])
        );
    }
    if same {
        if json {
            output::json(&found);
        } else {
            println!("The pin is the host's current key; nothing to change.");
        }
        return Ok(0);
    }
    if !yes {
        if json {
            output::json(
                &json!({"Worker": found, "PinnedFingerprint": old, "CurrentFingerprint": new, "Changed": false}),
            );
        } else {
            println!(
                "The host key differs. If you expected the change (the host was rebuilt or its key rotated), run again with --yes to pin the current key."
            );
        }
        return Ok(1);
    }
    let body = json!({"Endpoint": {"CommunicationStyle": "Ssh", "Fingerprint": new,
        "HostKeyAlgorithm": current["HostKeyAlgorithm"]}});
    let updated = client
        .send(
            Method::PUT,
            &format!("/api/{}/workers/{}", id_of(&space), id_of(&found)),
            Some(&body),
        )
        .await?;
    if json {
        output::json(&updated);
    } else {
        println!(
            "Pinned worker {} to {}",
            output::text(&updated["Name"]),
            output::text(&updated["Endpoint"]["Fingerprint"])
        );
    }
    Ok(0)
}
