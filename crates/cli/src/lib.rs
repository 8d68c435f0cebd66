//! The `muster` client commands. They speak only the REST API, like any other client would.

mod accounts;
pub mod client;
mod events;
mod names;
mod nodes;
mod output;
mod runbooks;
mod sharing;
mod tasks;
mod users;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use client::{Client, encode};
use reqwest::Method;
use serde_json::{Value, json};

/// The heading under which `--help` lists the options every client command takes.
pub const CLIENT_OPTIONS: &str = "Client options";

/// Where the server is and who we are: every command takes these.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The Muster server's address.
    #[arg(
        long,
        global = true,
        env = "MUSTER_SERVER",
        default_value = "http://127.0.0.1:8080",
        help_heading = CLIENT_OPTIONS
    )]
    pub server: String,
    /// An API key (API-…); the server prints the administrator's at its first start.
    #[arg(
        long,
        global = true,
        env = "MUSTER_API_KEY",
        hide_env_values = true,
        help_heading = CLIENT_OPTIONS
    )]
    pub api_key: Option<String>,
    /// Print JSON instead of tables: a list prints a JSON array of the API's resources, one
    /// resource prints that resource, and an action prints the resource it made or changed.
    #[arg(long, global = true, help_heading = CLIENT_OPTIONS)]
    pub json: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Spaces: hard-walled groups of pools, workers and tasks.
    #[command(subcommand)]
    Space(SpaceCommand),
    /// Worker pools of a space.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Workers of a space.
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// Machine policies of a space.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Server tasks: list, inspect, follow, cancel.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Run scripts.
    #[command(subcommand)]
    Script(ScriptCommand),
    /// Runbooks of a space: create from a file, run and follow.
    #[command(subcommand)]
    Runbook(runbooks::RunbookCommand),
    /// Users, their API keys, and the roles they hold in spaces.
    #[command(subcommand)]
    User(users::UserCommand),
    /// Accounts of a space: the credentials SSH workers sign in with.
    #[command(subcommand)]
    Account(accounts::AccountCommand),
    /// Artifacts: the files tasks' scripts returned.
    #[command(subcommand)]
    Artifact(ArtifactCommand),
    /// Who did what: the audit trail of changes, task runs and failed sign-ins, newest first.
    Events(events::EventsArgs),
    /// Server nodes: list them, drain one for maintenance and take it back.
    #[command(subcommand)]
    Node(nodes::NodeCommand),
}

#[derive(Debug, Clone, Subcommand)]
pub enum ArtifactCommand {
    /// Downloads an artifact's file, streamed to disk.
    Download {
        artifact: String,
        #[command(flatten)]
        space: SpaceOption,
        /// Where to write it (default: the artifact's file name, in the current directory; `-`:
        /// standard output).
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct SpaceOption {
    /// The space, by name, slug or id (default: the default space).
    #[arg(long)]
    pub space: Option<String>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SpaceCommand {
    /// Lists the spaces you may see.
    List,
    /// Creates a space, with its default worker pool and machine policy.
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// Stops the space's task queue, then deletes the space with everything in it.
    Delete { space: String },
}

#[derive(Debug, Clone, Subcommand)]
pub enum PoolCommand {
    /// Lists a space's worker pools and how many workers each has.
    List {
        #[command(flatten)]
        space: SpaceOption,
    },
    /// Creates a worker pool.
    Create {
        name: String,
        #[command(flatten)]
        space: SpaceOption,
        #[arg(long)]
        description: Option<String>,
        /// A dynamic pool (its workers are provisioned on demand).
        #[arg(long)]
        dynamic: bool,
        /// A dynamic pool's worker type, as the server's configuration file defines it
        /// (`GET /api/workerpools/dynamicworkertypes`; default: the first).
        #[arg(long, requires = "dynamic")]
        worker_type: Option<String>,
    },
    /// Deletes a worker pool (not the space's default one).
    Delete {
        pool: String,
        #[command(flatten)]
        space: SpaceOption,
    },
    /// Shows a pool: its type, its workers and, for a dynamic pool, their states and the recent
    /// provisioning log.
    Show {
        /// The pool, by name, slug or id.
        pool: String,
        #[command(flatten)]
        space: SpaceOption,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum WorkerCommand {
    /// Lists a space's workers: health, state, endpoint and pools.
    List {
        #[command(flatten)]
        space: SpaceOption,
        /// Only the workers of this pool.
        #[arg(long)]
        pool: Option<String>,
    },
    /// Shows one worker (name, slug or id).
    Show {
        worker: String,
        #[command(flatten)]
        space: SpaceOption,
    },
    /// Deletes a worker (a shared one: the space stops using it).
    Delete {
        worker: String,
        #[command(flatten)]
        space: SpaceOption,
    },
    /// Disables a worker: it takes no new task (a dynamic worker is drained, then destroyed).
    Disable {
        worker: String,
        #[command(flatten)]
        space: SpaceOption,
    },
    /// Enables a disabled worker.
    Enable {
        worker: String,
        #[command(flatten)]
        space: SpaceOption,
    },
    /// Checks the health of workers now (a Health task), prints each one's result, and exits 0 only
    /// when every checked worker is Healthy.
    Health {
        #[command(flatten)]
        space: SpaceOption,
        /// Only the workers of this pool (name, slug or id).
        #[arg(long)]
        pool: Option<String>,
        /// Only these workers (name, slug or id); repeatable.
        #[arg(long = "worker")]
        workers: Vec<String>,
        /// How long each worker has to answer, as a TimeSpan (default 00:00:20).
        #[arg(long)]
        timeout: Option<String>,
    },
    /// Shares the workers of a pool into the pool of the same name in other spaces (idempotent): the
    /// blog's "add workers to remaining spaces" step.
    Share {
        /// The pool's name, in the source space and in the spaces to share into.
        #[arg(long)]
        pool_name: String,
        /// Every other space that has a pool of that name.
        #[arg(long, conflicts_with = "spaces", required_unless_present = "spaces")]
        all_spaces: bool,
        /// These spaces (names, slugs or ids), comma-separated or repeated.
        #[arg(long = "space", value_delimiter = ',')]
        spaces: Vec<String>,
        /// The space whose workers are shared (default: the default space).
        #[arg(long = "from")]
        from: Option<String>,
        /// At most this many of each other space's tasks at once on each worker (default: keep each
        /// share's limit; a new share has none).
        #[arg(long)]
        task_limit: Option<i64>,
        /// Remove the shares' task limits.
        #[arg(long, conflicts_with = "task_limit")]
        no_task_limit: bool,
    },
    /// How busy the agents were (per agent and per space), and what sharing saved.
    Usage {
        /// Only this space's tasks (default: every space you may see).
        #[arg(long)]
        space: Option<String>,
        /// The window: the last this many hours.
        #[arg(long, default_value_t = 24)]
        hours: u32,
    },
    /// Registers an SSH worker. Without --fingerprint it reads the host's key now (discovery),
    /// pins it and prints it: compare it with `ssh-keygen -E sha256 -lf` on the host.
    AddSsh {
        name: String,
        #[command(flatten)]
        space: SpaceOption,
        #[arg(long)]
        host: String,
        #[arg(long, default_value_t = 22)]
        port: u16,
        /// The account it signs in with (name, slug or id).
        #[arg(long)]
        account: String,
        /// Its pools (name, slug or id); repeatable.
        #[arg(long = "pool", required = true)]
        pools: Vec<String>,
        /// The host key's fingerprint (SHA256:… as `ssh-keygen -E sha256 -lf` prints it, or MD5).
        #[arg(long)]
        fingerprint: Option<String>,
    },
    /// Shows an SSH worker's pinned and current host-key fingerprints; --yes pins the current one.
    UpdateFingerprint {
        worker: String,
        #[command(flatten)]
        space: SpaceOption,
        /// Pin the host's current key.
        #[arg(long)]
        yes: bool,
    },
    /// Waits until a pool has this many healthy workers, printing progress; exits 124 on timeout.
    Wait {
        /// The pool, by name, slug or id.
        #[arg(long)]
        pool: String,
        #[command(flatten)]
        space: SpaceOption,
        #[arg(long)]
        count: usize,
        /// How long to wait: 90s, 20m, 1h or 00:20:00.
        #[arg(long, default_value = "20m")]
        timeout: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum PolicyCommand {
    /// Lists a space's machine policies.
    List {
        #[command(flatten)]
        space: SpaceOption,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum TaskCommand {
    /// Lists tasks, newest first.
    List {
        /// Only this space's tasks (default: every space).
        #[arg(long)]
        space: Option<String>,
        /// Only tasks in these states (comma-separated: Queued,Executing,Success,…).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 30)]
        take: u64,
    },
    /// A task's state, and why it is still queued if it is.
    Show { task: String },
    /// A task's log, printed as `script run` prints it, exiting by the task's state once it has
    /// ended (0 Success, 1 Failed, 124 TimedOut, 130 Canceled); --follow streams it until it ends.
    Log {
        task: String,
        #[arg(long, short, conflicts_with = "raw")]
        follow: bool,
        /// The server's raw log: every line with its time and category.
        #[arg(long)]
        raw: bool,
    },
    /// Cancels a queued or running task.
    Cancel { task: String },
    /// The files a task's scripts returned (download one with `muster artifact download`).
    Artifacts { task: String },
}

#[derive(Debug, Clone, Subcommand)]
pub enum ScriptCommand {
    /// Runs a script as an AdHocScript task, streams its log, and exits 0 only on Success.
    Run(ScriptRun),
}

#[derive(Debug, Clone, Args)]
pub struct ScriptRun {
    #[command(flatten)]
    pub space: SpaceOption,
    /// Run on a worker of this pool (default: the space's default pool, whose built-in worker runs
    /// the script while the pool has no workers).
    #[arg(long, conflicts_with = "builtin")]
    pub pool: Option<String>,
    /// Run on the server's built-in worker.
    #[arg(long)]
    pub builtin: bool,
    #[arg(long, default_value = "bash", value_parser = ["bash", "python", "powershell"])]
    pub syntax: String,
    /// Read the script from a file.
    #[arg(long, conflicts_with = "script")]
    pub file: Option<std::path::PathBuf>,
    /// Stop the script after this long (seconds, or a TimeSpan such as 00:10:00).
    #[arg(long)]
    pub timeout: Option<String>,
    /// Queue the task and print its id without waiting for it.
    #[arg(long)]
    pub no_wait: bool,
    /// The task's description (default: the script's first line).
    #[arg(long)]
    pub description: Option<String>,
    /// The script, after `--`.
    #[arg(last = true)]
    pub script: Vec<String>,
}

/// Runs a client command; the error is one line for the user.
pub async fn run(connection: Connection, command: Command) -> anyhow::Result<i32> {
    let client = Client::new(&connection.server, connection.api_key.clone())?;
    let json = connection.json;
    match command {
        Command::Space(c) => space(&client, json, c).await,
        Command::Pool(c) => pool(&client, json, c).await,
        Command::Worker(c) => worker(&client, json, c).await,
        Command::Policy(PolicyCommand::List { space }) => {
            let space = resolve_space(&client, &space).await?;
            let items = client
                .get(&format!("/api/{}/machinepolicies/all", id_of(&space)))
                .await?;
            if json {
                output::json(&items);
            } else {
                let rows = array(&items)
                    .iter()
                    .map(|p| {
                        vec![
                            output::text(&p["Id"]),
                            output::text(&p["Name"]),
                            output::text(&p["IsDefault"]),
                            output::text(&p["MachineHealthCheckPolicy"]["HealthCheckInterval"]),
                        ]
                    })
                    .collect();
                output::table(&["ID", "NAME", "DEFAULT", "HEALTH CHECK EVERY"], rows);
            }
            Ok(0)
        }
        Command::Task(c) => tasks::task(&client, json, c).await,
        Command::Script(ScriptCommand::Run(args)) => tasks::script_run(&client, json, args).await,
        Command::User(c) => users::user(&client, json, c).await,
        Command::Runbook(c) => runbooks::runbook(&client, json, c).await,
        Command::Account(c) => accounts::account(&client, json, c).await,
        Command::Artifact(c) => tasks::artifact(&client, json, c).await,
        Command::Events(args) => events::events(&client, json, args).await,
        Command::Node(c) => nodes::node(&client, json, c).await,
    }
}

fn array(value: &Value) -> Vec<Value> {
    value.as_array().cloned().unwrap_or_default()
}

fn id_of(resource: &Value) -> String {
    resource["Id"].as_str().unwrap_or_default().to_string()
}

fn matches(resource: &Value, key: &str) -> bool {
    ["Id", "Name", "Slug"].iter().any(|field| {
        resource[*field]
            .as_str()
            .is_some_and(|v| v.eq_ignore_ascii_case(key.trim()))
    })
}

/// A space by name, slug or id; the default space when none is given.
pub(crate) async fn resolve_space(client: &Client, option: &SpaceOption) -> anyhow::Result<Value> {
    let spaces = array(&client.get("/api/spaces/all").await?);
    let visible: Vec<String> = spaces.iter().map(|s| output::text(&s["Name"])).collect();
    match &option.space {
        None => spaces
            .into_iter()
            .find(|s| s["IsDefault"] == json!(true))
            .ok_or_else(|| match visible.as_slice() {
                [] => anyhow!(
                    "you hold no role in any space: ask an administrator for one \
                     (muster user grant USER --role ROLE --space SPACE)"
                ),
                _ => anyhow!(
                    "you hold no role in the default space; name one of yours with --space ({})",
                    visible.join(", ")
                ),
            }),
        Some(key) => spaces.into_iter().find(|s| matches(s, key)).ok_or_else(|| {
            anyhow!(
                "no space named '{key}' that you may see (yours: {})",
                if visible.is_empty() {
                    "none".to_string()
                } else {
                    visible.join(", ")
                }
            )
        }),
    }
}

pub(crate) async fn resolve_pool(
    client: &Client,
    space: &Value,
    key: &str,
) -> anyhow::Result<Value> {
    let pools = array(
        &client
            .get(&format!("/api/{}/workerpools/all", id_of(space)))
            .await?,
    );
    pools.into_iter().find(|p| matches(p, key)).ok_or_else(|| {
        anyhow!(
            "no worker pool named '{key}' in space {}",
            output::text(&space["Name"])
        )
    })
}

pub(crate) async fn resolve_worker(
    client: &Client,
    space: &Value,
    key: &str,
) -> anyhow::Result<Value> {
    let workers = array(
        &client
            .get(&format!("/api/{}/workers/all", id_of(space)))
            .await?,
    );
    workers
        .into_iter()
        .find(|w| matches(w, key))
        .ok_or_else(|| {
            anyhow!(
                "no worker named '{key}' in space {}",
                output::text(&space["Name"])
            )
        })
}

async fn space(client: &Client, json: bool, command: SpaceCommand) -> anyhow::Result<i32> {
    match command {
        SpaceCommand::List => {
            let spaces = client.get("/api/spaces/all").await?;
            if json {
                output::json(&spaces);
            } else {
                let rows = array(&spaces)
                    .iter()
                    .map(|s| {
                        vec![
                            output::text(&s["Id"]),
                            output::text(&s["Name"]),
                            output::text(&s["Slug"]),
                            output::text(&s["IsDefault"]),
                            output::text(&s["TaskQueueStopped"]),
                        ]
                    })
                    .collect();
                output::table(&["ID", "NAME", "SLUG", "DEFAULT", "QUEUE STOPPED"], rows);
            }
        }
        SpaceCommand::Create { name, description } => {
            let created = client
                .send(
                    Method::POST,
                    "/api/spaces",
                    Some(&json!({"Name": name, "Description": description})),
                )
                .await?;
            if json {
                output::json(&created);
            } else {
                println!(
                    "Created space {} ({})",
                    output::text(&created["Name"]),
                    output::text(&created["Id"])
                );
            }
        }
        SpaceCommand::Delete { space } => {
            let found = resolve_space(client, &SpaceOption { space: Some(space) }).await?;
            if found["IsDefault"] == json!(true) {
                bail!("the default space cannot be deleted; make another space the default first");
            }
            let path = format!("/api/spaces/{}", id_of(&found));
            let was_stopped = found["TaskQueueStopped"] == json!(true);
            if !was_stopped {
                client
                    .send(Method::PUT, &path, Some(&json!({"TaskQueueStopped": true})))
                    .await?;
            }
            if let Err(error) = client.send(Method::DELETE, &path, None).await {
                // Leave the space as it was: its queue runs again.
                if !was_stopped {
                    let _ = client
                        .send(
                            Method::PUT,
                            &path,
                            Some(&json!({"TaskQueueStopped": false})),
                        )
                        .await;
                }
                return Err(error);
            }
            if json {
                output::json(&found);
            } else {
                println!(
                    "Deleted space {} ({})",
                    output::text(&found["Name"]),
                    id_of(&found)
                );
            }
        }
    }
    Ok(0)
}

async fn pool(client: &Client, json: bool, command: PoolCommand) -> anyhow::Result<i32> {
    match command {
        PoolCommand::List { space } => {
            let space = resolve_space(client, &space).await?;
            let pools = client
                .get(&format!("/api/{}/workerpools/all", id_of(&space)))
                .await?;
            if json {
                output::json(&pools);
                return Ok(0);
            }
            let summary = client
                .get(&format!("/api/{}/workerpools/summary", id_of(&space)))
                .await?;
            let count = |pool_id: &str| {
                array(&summary["WorkerPoolSummaries"])
                    .iter()
                    .find(|s| s["WorkerPool"]["Id"] == json!(pool_id))
                    .map(|s| output::text(&s["TotalMachines"]))
                    .unwrap_or_else(|| "0".into())
            };
            let rows = array(&pools)
                .iter()
                .map(|p| {
                    vec![
                        output::text(&p["Id"]),
                        output::text(&p["Name"]),
                        pool_kind(p),
                        output::text(&p["IsDefault"]),
                        count(&id_of(p)),
                    ]
                })
                .collect();
            output::table(&["ID", "NAME", "TYPE", "DEFAULT", "WORKERS"], rows);
        }
        PoolCommand::Create {
            name,
            space,
            description,
            dynamic,
            worker_type,
        } => {
            let space = resolve_space(client, &space).await?;
            let kind = if dynamic {
                "DynamicWorkerPool"
            } else {
                "StaticWorkerPool"
            };
            let body = json!({"Name": name, "Description": description, "WorkerPoolType": kind, "WorkerType": worker_type});
            let created = client
                .send(
                    Method::POST,
                    &format!("/api/{}/workerpools", id_of(&space)),
                    Some(&body),
                )
                .await?;
            if json {
                output::json(&created);
            } else {
                println!(
                    "Created worker pool {} ({})",
                    output::text(&created["Name"]),
                    output::text(&created["Id"])
                );
            }
        }
        PoolCommand::Show { pool, space } => {
            let space = resolve_space(client, &space).await?;
            let found = resolve_pool(client, &space, &pool).await?;
            let workers = client
                .get_all_pages(&format!(
                    "/api/{}/workerpools/{}/workers?take=2147483647",
                    id_of(&space),
                    id_of(&found)
                ))
                .await?;
            let dynamic = found["WorkerPoolType"] == json!("DynamicWorkerPool");
            let log = if dynamic {
                let events = client
                    .get(&format!(
                        "/api/{}/events?regarding={}&take=20",
                        id_of(&space),
                        id_of(&found)
                    ))
                    .await?;
                let mut items = array(&events["Items"]);
                items.reverse();
                items
            } else {
                Vec::new()
            };
            if json {
                let mut shown = found.clone();
                shown["Workers"] = Value::Array(workers);
                if dynamic {
                    shown["ProvisioningLog"] = Value::Array(log);
                }
                output::json(&shown);
                return Ok(0);
            }
            let mut shown = found.clone();
            shown["Type"] = json!(pool_kind(&found));
            shown["Workers"] = json!(workers.len());
            output::fields(
                &shown,
                &["Id", "Name", "Type", "IsDefault", "Description", "Workers"],
            );
            if !workers.is_empty() {
                println!();
                let rows = workers
                    .iter()
                    .map(|w| {
                        let d = &w["Dynamic"];
                        vec![
                            output::text(&w["Name"]),
                            worker_state(w),
                            output::text(&w["HealthStatus"]),
                            if d.is_null() {
                                String::new()
                            } else {
                                output::text(&d["Uses"])
                            },
                            if d.is_null() {
                                endpoint_text(w)
                            } else {
                                output::text(&d["ProvisionedOn"])
                            },
                        ]
                    })
                    .collect();
                let last = if dynamic { "PROVISIONED" } else { "ENDPOINT" };
                output::table(&["WORKER", "STATE", "HEALTH", "USES", last], rows);
            }
            if dynamic {
                println!("\nRecent provisioning log:");
                if log.is_empty() {
                    println!("  (nothing yet: workers are made when a task waits for this pool)");
                }
                for event in &log {
                    let message = event["Message"].as_str().unwrap_or_default();
                    let mut lines = message.lines();
                    println!(
                        "  {}  {}",
                        output::text(&event["Occurred"]),
                        lines.next().unwrap_or_default()
                    );
                    for line in lines {
                        println!("      {line}");
                    }
                }
            }
        }
        PoolCommand::Delete { pool, space } => {
            let space = resolve_space(client, &space).await?;
            let found = resolve_pool(client, &space, &pool).await?;
            client
                .send(
                    Method::DELETE,
                    &format!("/api/{}/workerpools/{}", id_of(&space), id_of(&found)),
                    None,
                )
                .await?;
            if json {
                output::json(&found);
            } else {
                println!(
                    "Deleted worker pool {} ({})",
                    output::text(&found["Name"]),
                    id_of(&found)
                );
            }
        }
    }
    Ok(0)
}

/// "static", or "dynamic (TYPE)".
fn pool_kind(pool: &Value) -> String {
    if pool["WorkerPoolType"] == json!("DynamicWorkerPool") {
        format!("dynamic ({})", output::text(&pool["WorkerType"]))
    } else {
        "static".into()
    }
}

/// A dynamic worker's state (Provisioning, Ready, Busy, Draining, Destroying; a disabled one
/// drains), or "disabled" or "enabled".
fn worker_state(worker: &Value) -> String {
    if let Some(state) = worker["Dynamic"]["State"].as_str() {
        state.into()
    } else if worker["IsDisabled"] == json!(true) {
        "disabled".into()
    } else {
        "enabled".into()
    }
}

fn endpoint_text(worker: &Value) -> String {
    let endpoint = &worker["Endpoint"];
    let style = output::text(&endpoint["CommunicationStyle"]);
    match endpoint["Uri"].as_str() {
        Some(uri) => format!("{style} {uri}"),
        None => style,
    }
}

async fn worker(client: &Client, json: bool, command: WorkerCommand) -> anyhow::Result<i32> {
    match command {
        WorkerCommand::List { space, pool } => {
            let space = resolve_space(client, &space).await?;
            let mut path = format!("/api/{}/workers?take=2147483647", id_of(&space));
            if let Some(pool) = pool {
                let pool = resolve_pool(client, &space, &pool).await?;
                path.push_str(&format!("&workerPoolIds={}", encode(&id_of(&pool))));
            }
            let workers = client.get_all_pages(&path).await?;
            if json {
                output::json(&Value::Array(workers));
                return Ok(0);
            }
            let pools = names::Names::pools(client, &id_of(&space)).await;
            let rows = workers
                .iter()
                .map(|w| {
                    vec![
                        output::text(&w["Id"]),
                        output::text(&w["Name"]),
                        output::text(&w["HealthStatus"]),
                        worker_state(w),
                        endpoint_text(w),
                        pools.name(&w["WorkerPoolIds"]),
                    ]
                })
                .collect();
            output::table(
                &["ID", "NAME", "HEALTH", "STATE", "ENDPOINT", "POOLS"],
                rows,
            );
        }
        WorkerCommand::Show { worker, space } => {
            let space = resolve_space(client, &space).await?;
            let found = resolve_worker(client, &space, &worker).await?;
            if json {
                output::json(&found);
            } else {
                let mut found = found;
                found["Space"] = json!(output::text(&space["Name"]));
                found["WorkerPools"] = json!(
                    names::Names::pools(client, &id_of(&space))
                        .await
                        .name(&found["WorkerPoolIds"])
                );
                found["MachinePolicy"] = json!(
                    names::Names::of(
                        client,
                        &format!("/api/{}/machinepolicies/all", id_of(&space))
                    )
                    .await
                    .name(&found["MachinePolicyId"])
                );
                output::fields(
                    &found,
                    &[
                        "Id",
                        "Name",
                        "Space",
                        "WorkerPools",
                        "MachinePolicy",
                        "IsDisabled",
                        "HealthStatus",
                        "StatusSummary",
                        "Endpoint.CommunicationStyle",
                        "Uri",
                        "Thumbprint",
                    ],
                );
            }
        }
        WorkerCommand::Health {
            space,
            pool,
            workers,
            timeout,
        } => {
            let space = resolve_space(client, &space).await?;
            let mut arguments = json!({});
            if let Some(pool) = pool {
                arguments["WorkerpoolId"] =
                    json!(id_of(&resolve_pool(client, &space, &pool).await?));
            }
            let mut ids = Vec::new();
            for worker in &workers {
                ids.push(id_of(&resolve_worker(client, &space, worker).await?));
            }
            if !ids.is_empty() {
                arguments["MachineIds"] = json!(ids);
            }
            if let Some(timeout) = timeout {
                arguments["MachineTimeout"] = json!(timeout);
            }
            let request = json!({"Name": "Health", "Arguments": arguments});
            return tasks::run_and_follow(client, json, &space, &request).await;
        }
        WorkerCommand::Share {
            pool_name,
            all_spaces,
            spaces,
            from,
            task_limit,
            no_task_limit,
        } => {
            let from = SpaceOption { space: from };
            let limit = match (task_limit, no_task_limit) {
                (Some(n), _) => sharing::TaskLimit::Set(n),
                (None, true) => sharing::TaskLimit::Remove,
                (None, false) => sharing::TaskLimit::Keep,
            };
            return sharing::share(client, json, &pool_name, &from, all_spaces, &spaces, limit)
                .await;
        }
        WorkerCommand::Usage { space, hours } => {
            return sharing::usage(client, json, space.as_deref(), hours).await;
        }
        WorkerCommand::Wait {
            pool,
            space,
            count,
            timeout,
        } => {
            let timeout = sharing::parse_duration(&timeout)?;
            return sharing::wait(client, &pool, &space, count, timeout).await;
        }
        WorkerCommand::AddSsh {
            name,
            space,
            host,
            port,
            account,
            pools,
            fingerprint,
        } => {
            let args = accounts::AddSsh {
                name,
                space,
                host,
                port,
                account,
                pools,
                fingerprint,
            };
            return accounts::add_ssh(client, json, args).await;
        }
        WorkerCommand::UpdateFingerprint { worker, space, yes } => {
            return accounts::update_fingerprint(client, json, &space, &worker, yes).await;
        }
        WorkerCommand::Delete { worker, space } => {
            let space = resolve_space(client, &space).await?;
            let found = resolve_worker(client, &space, &worker).await?;
            client
                .send(
                    Method::DELETE,
                    &format!("/api/{}/workers/{}", id_of(&space), id_of(&found)),
                    None,
                )
                .await?;
            if json {
                output::json(&found);
            } else {
                println!(
                    "Deleted worker {} ({})",
                    output::text(&found["Name"]),
                    id_of(&found)
                );
            }
        }
        WorkerCommand::Disable { worker, space } => {
            set_disabled(client, json, &worker, &space, true).await?
        }
        WorkerCommand::Enable { worker, space } => {
            set_disabled(client, json, &worker, &space, false).await?
        }
    }
    Ok(0)
}

/// `worker disable` and `worker enable`.
async fn set_disabled(
    client: &Client,
    json: bool,
    worker: &str,
    space: &SpaceOption,
    disable: bool,
) -> anyhow::Result<()> {
    let space = resolve_space(client, space).await?;
    let mut found = resolve_worker(client, &space, worker).await?;
    found["IsDisabled"] = json!(disable);
    let changed = client
        .send(
            Method::PUT,
            &format!("/api/{}/workers/{}", id_of(&space), id_of(&found)),
            Some(&found),
        )
        .await?;
    if json {
        output::json(&changed);
    } else {
        println!(
            "{} worker {} ({}){}",
            if disable { "Disabled" } else { "Enabled" },
            output::text(&changed["Name"]),
            id_of(&changed),
            if disable && !changed["Dynamic"].is_null() {
                ": its pool drains it and destroys it once idle"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Reads the script of `script run`, from after `--` or from --file.
fn script_body(args: &ScriptRun) -> anyhow::Result<String> {
    let body = match &args.file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => args.script.join(" "),
    };
    if body.trim().is_empty() {
        bail!("give the script after `--` (muster script run -- 'echo hello') or with --file");
    }
    Ok(body)
}
