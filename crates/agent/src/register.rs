//! `register-worker` and `deregister-worker`, following Tentacle's REST sequence (contract 5): the root
//! document, the current user and their spaces, the server certificate (whose thumbprint the agent
//! trusts), an existing worker of the same name, the policy, the pools, then the worker itself.

use crate::config::{AgentConfig, CommsAddress, Home, new_subscription_id};
use anyhow::{Context, anyhow, bail};
use muster_cli::client::{Client, encode};
use reqwest::Method;
use serde_json::{Value, json};

/// What the agent registers with.
pub enum Credential {
    ApiKey(String),
    /// A registration token: the worker joins its space and pools.
    Token(String),
}

pub struct Registration {
    pub server: String,
    pub credential: Credential,
    /// The server thumbprint to pin (`--server-thumbprint`): a server reporting another is refused.
    pub server_thumbprint: Option<String>,
    pub name: String,
    pub space: Option<String>,
    pub pools: Vec<String>,
    pub policy: Option<String>,
    /// `TentacleActive` (polling) or `TentaclePassive` (listening).
    pub comms_style: String,
    pub server_comms_port: u16,
    /// The comms addresses of the server's nodes, dialled in order; empty: the REST host on
    /// `server_comms_port`.
    pub server_comms_addresses: Vec<CommsAddress>,
    pub public_hostname: String,
    pub listen_port: Option<u16>,
    pub force: bool,
    /// Registered as a Kubernetes worker (`KubernetesTentacle`, polling) when given.
    pub kubernetes: Option<Kubernetes>,
}

/// What a Kubernetes worker tells of where it runs.
pub struct Kubernetes {
    pub namespace: Option<String>,
    pub helm_release_name: Option<String>,
}

fn matches_name(resource: &Value, field: &str, wanted: &str) -> bool {
    resource[field]
        .as_str()
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(wanted.trim()))
}

/// The server's root check and the space the worker goes to.
async fn space(client: &Client, wanted: Option<&str>) -> anyhow::Result<Value> {
    let root = client.get("/api").await?;
    let api_version = root["ApiVersion"].as_str().unwrap_or("");
    if !api_version.starts_with("3.") {
        bail!(
            "the server at {} speaks API version '{api_version}', not 3.x",
            client.url("")
        );
    }
    let me = client.get("/api/users/me").await?;
    let spaces_link = me["Links"]["Spaces"]
        .as_str()
        .ok_or_else(|| anyhow!("the server gave no list of the user's spaces"))?;
    let spaces = client.get(spaces_link).await?;
    let spaces = spaces.as_array().cloned().unwrap_or_default();
    let space = match wanted {
        Some(name) => spaces
            .into_iter()
            .find(|s| matches_name(s, "Name", name) || matches_name(s, "Id", name)),
        None => spaces.into_iter().find(|s| s["IsDefault"] == json!(true)),
    };
    space.ok_or_else(|| {
        anyhow!(
            "the API key's user has no space named '{}'",
            wanted.unwrap_or("(default)")
        )
    })
}

fn id(resource: &Value) -> String {
    resource["Id"].as_str().unwrap_or_default().to_string()
}

/// Trusts the server's certificate (the one `pinned` names, when given); returns its thumbprint.
async fn trust_server(
    client: &Client,
    home: &Home,
    config: &mut AgentConfig,
    pinned: Option<&str>,
) -> anyhow::Result<String> {
    let pinned = pinned
        .map(|p| p.trim().replace(':', "").to_ascii_uppercase())
        .filter(|p| !p.is_empty());
    if let Some(p) = &pinned
        && (p.len() != 64 || !p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        bail!(
            "--server-thumbprint must be a SHA-256 thumbprint (64 hexadecimal characters), got '{p}'"
        );
    }
    let certificate = client
        .get("/api/configuration/certificates/certificate-global")
        .await?;
    let thumbprint = certificate["Thumbprint"]
        .as_str()
        .map(str::to_ascii_uppercase)
        .ok_or_else(|| anyhow!("the server did not give its certificate's thumbprint"))?;
    if let Some(p) = pinned
        && p != thumbprint
    {
        bail!(
            "the server at {} reports certificate {thumbprint}, not the {p} given with --server-thumbprint: refusing to register with it (check that --server names your Muster server, and that nothing between you and it answers in its place)",
            client.url("")
        );
    }
    if !config.trusted_thumbprints.contains(&thumbprint) {
        config.trusted_thumbprints.push(thumbprint.clone());
        home.save(config)?;
    }
    Ok(thumbprint)
}

/// The worker's endpoint for this registration, and what the agent's configuration keeps of it.
fn endpoint(r: &Registration, config: &mut AgentConfig, thumbprint: &str) -> anyhow::Result<Value> {
    let endpoint = match r.comms_style.to_ascii_lowercase().as_str() {
        "tentacleactive" | "polling" => {
            let subscription = config
                .subscription_id
                .clone()
                .unwrap_or_else(new_subscription_id);
            config.subscription_id = Some(subscription.clone());
            config.server = Some(r.server.trim_end_matches('/').to_string());
            config.server_comms_port = Some(r.server_comms_port);
            // This registration says where to dial: its list, or (none given) the REST host.
            let mut addresses: Vec<String> = Vec::new();
            for address in &r.server_comms_addresses {
                let address = address.to_string();
                if !addresses.contains(&address) {
                    addresses.push(address);
                }
            }
            config.server_comms_addresses = addresses;
            // A polling agent dials out; it listens only when asked to.
            config.listen_port = r.listen_port;
            match &r.kubernetes {
                // Octopus's shape, so that its clients read such a worker.
                Some(k) => json!({
                    "CommunicationStyle": "KubernetesTentacle",
                    "TentacleEndpointConfiguration": {
                        "CommunicationMode": "Polling",
                        "Uri": subscription,
                        "Thumbprint": thumbprint,
                    },
                    "DefaultNamespace": k.namespace,
                    "KubernetesAgentDetails": {
                        "AgentVersion": env!("CARGO_PKG_VERSION"),
                        "TentacleVersion": env!("CARGO_PKG_VERSION"),
                        "HelmReleaseName": k.helm_release_name,
                        "KubernetesNamespace": k.namespace,
                    },
                }),
                None => {
                    json!({"CommunicationStyle": "TentacleActive", "Uri": subscription, "Thumbprint": thumbprint})
                }
            }
        }
        "tentaclepassive" | "listening" => {
            let port = r
                .listen_port
                .or(config.listen_port)
                .unwrap_or(crate::config::DEFAULT_LISTEN_PORT);
            config.listen_port = Some(port);
            let uri = format!("https://{}:{port}/", r.public_hostname);
            json!({"CommunicationStyle": "TentaclePassive", "Uri": uri, "Thumbprint": thumbprint})
        }
        other => bail!(
            "--comms-style must be TentacleActive (polling) or TentaclePassive (listening), got '{other}'"
        ),
    };
    Ok(endpoint)
}

/// Registers with a registration token: one call, no API key. The server's thumbprint comes with
/// the answer, and must be the pinned one when one was given.
async fn register_with_token(
    home: &Home,
    config: &mut AgentConfig,
    r: &Registration,
    token: &str,
    endpoint: Value,
) -> anyhow::Result<Value> {
    let client = Client::new(&r.server, None)?;
    let body = json!({"Token": token.trim(), "Name": r.name, "Endpoint": endpoint});
    let (worker, headers) = client
        .send_with_headers(Method::POST, "/api/workerregistrations", Some(&body))
        .await?;
    let reported = headers
        .get("x-muster-server-thumbprint")
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_uppercase)
        .ok_or_else(|| anyhow!("the server did not give its certificate's thumbprint"))?;
    if let Some(pinned) = r
        .server_thumbprint
        .as_deref()
        .map(|p| p.trim().replace(':', "").to_ascii_uppercase())
        .filter(|p| !p.is_empty())
        && pinned != reported
    {
        bail!(
            "the server at {} reports certificate {reported}, not the {pinned} given with --server-thumbprint: the worker it registered will not be trusted (check that --server names your Muster server)",
            client.url("")
        );
    }
    if !config.trusted_thumbprints.contains(&reported) {
        config.trusted_thumbprints.push(reported);
    }
    config.registered_with = Some(r.server.trim_end_matches('/').to_string());
    home.save(config)?;
    Ok(worker)
}

pub async fn register(home: &Home, r: Registration) -> anyhow::Result<Value> {
    let polling = matches!(
        r.comms_style.to_ascii_lowercase().as_str(),
        "tentacleactive" | "polling"
    );
    if !polling && !r.server_comms_addresses.is_empty() {
        bail!(
            "--server-comms-address is where a polling agent dials: give it with --comms-style TentacleActive"
        );
    }
    let identity = home.identity()?;
    let mut config = home.load()?;
    let api_key = match &r.credential {
        Credential::ApiKey(key) => key.clone(),
        Credential::Token(token) => {
            let endpoint = endpoint(&r, &mut config, &identity.thumbprint())?;
            return register_with_token(home, &mut config, &r, token, endpoint).await;
        }
    };
    let client = Client::new(&r.server, Some(api_key))?;
    let space = space(&client, r.space.as_deref()).await?;
    let space_id = id(&space);
    trust_server(&client, home, &mut config, r.server_thumbprint.as_deref()).await?;

    let existing = client
        .get_all_pages(&format!(
            "/api/{space_id}/workers?name={}&take=100",
            encode(&r.name)
        ))
        .await?;
    let existing = existing
        .into_iter()
        .find(|w| matches_name(w, "Name", &r.name));
    if let Some(worker) = existing.as_ref().filter(|_| !r.force) {
        let space_name = space["Name"].as_str().unwrap_or(&space_id);
        let ours = worker["Thumbprint"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case(&identity.thumbprint()));
        // --force re-points the worker at this agent: right for this agent's own worker, wrong for
        // another agent's (such as a second agent on this machine, which has the same default name).
        if ours {
            bail!(
                "this agent is already registered as worker '{}' in space {space_name}; use --force to update it",
                r.name
            );
        }
        bail!(
            "a worker named '{}' is already registered in space {space_name} for another agent (agents default to the host name); give this one its own name with --name NAME",
            r.name
        );
    }

    let policy_id = match &r.policy {
        None => Value::Null,
        Some(name) => {
            let policies = client
                .get_all_pages(&format!("/api/{space_id}/machinepolicies?take=100"))
                .await?;
            let policy = policies
                .into_iter()
                .find(|p| matches_name(p, "Name", name))
                .ok_or_else(|| anyhow!("no machine policy named '{name}'"))?;
            json!(id(&policy))
        }
    };

    if r.pools.is_empty() {
        bail!("give at least one --worker-pool");
    }
    let pools = client
        .get(&format!("/api/{space_id}/workerpools/all"))
        .await?;
    let pools = pools.as_array().cloned().unwrap_or_default();
    let mut pool_ids = Vec::new();
    for wanted in &r.pools {
        let pool = pools
            .iter()
            .find(|p| matches_name(p, "Name", wanted))
            .or_else(|| pools.iter().find(|p| matches_name(p, "Slug", wanted)))
            .or_else(|| pools.iter().find(|p| matches_name(p, "Id", wanted)))
            .ok_or_else(|| {
                anyhow!(
                    "no worker pool named '{wanted}' in space {}",
                    space["Name"].as_str().unwrap_or(&space_id)
                )
            })?;
        pool_ids.push(id(pool));
    }

    let endpoint = endpoint(&r, &mut config, &identity.thumbprint())?;
    config.registered_with = Some(r.server.trim_end_matches('/').to_string());
    home.save(&config)?;

    let body = json!({
        "Name": r.name,
        "Endpoint": endpoint,
        "WorkerPoolIds": pool_ids,
        "MachinePolicyId": policy_id,
        "IsDisabled": false,
    });
    let worker = match existing {
        Some(existing) => {
            let link = existing["Links"]["Self"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("/api/{space_id}/workers/{}", id(&existing)));
            client.send(Method::PUT, &link, Some(&body)).await?
        }
        None => {
            client
                .send(
                    Method::POST,
                    &format!("/api/{space_id}/workers"),
                    Some(&body),
                )
                .await?
        }
    };
    Ok(worker)
}

/// Removes every worker of the space that carries this agent's thumbprint.
pub async fn deregister(
    home: &Home,
    server: &str,
    api_key: &str,
    space_name: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let identity = home.identity()?;
    let client = Client::new(server, Some(api_key.to_string()))?;
    let space = space(&client, space_name).await?;
    let workers = client
        .get(&format!(
            "/api/{}/workers/all?thumbprint={}",
            id(&space),
            identity.thumbprint()
        ))
        .await?;
    let mut removed = Vec::new();
    for worker in workers.as_array().cloned().unwrap_or_default() {
        let link = worker["Links"]["Self"]
            .as_str()
            .context("a worker without Links.Self")?
            .to_string();
        client.send(Method::DELETE, &link, None).await?;
        removed.push(worker["Name"].as_str().unwrap_or_default().to_string());
    }
    let _ = client
        .get("/api/configuration/certificates/certificate-global")
        .await;
    Ok(removed)
}
