//! The Muster server: the Octopus-compatible REST API, the durable task queue and its dispatcher, and
//! the built-in worker. It owns the store; clients and agents reach it only over the network.

#![recursion_limit = "256"]

mod access;
mod api;
mod artifacts;
mod audit;
mod auth;
mod bootstrap;
mod comms;
mod config;
mod dispatch;
mod dynamic;
mod health;
mod http;
mod key_failures;
mod kinds;
mod links;
mod logs;
mod nodes;
mod openapi;
mod runbook;
mod state;

pub use access::Rule;
pub use http::{SCOPED_COLLECTIONS, normalize_path};
pub use openapi::route_shape;

use anyhow::Context;
use axum::ServiceExt as _;
use state::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `muster server`: every flag is also an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address of the REST API.
    #[arg(long, env = "MUSTER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the SQLite database, the key of sensitive values, the server certificate and task
    /// working directories live (with --database, all but the database).
    #[arg(long, env = "MUSTER_DATA_DIR", default_value = "./muster-data")]
    pub data_dir: PathBuf,
    /// The database: `postgres://user:password@host:port/name` keeps the store in PostgreSQL.
    /// Without it, the store is SQLite in the data directory (`muster.db`). Prefer the environment
    /// variable: a command line's password is visible to every user of the machine.
    #[arg(long, env = "MUSTER_DATABASE_URL")]
    pub database: Option<String>,
    /// How many tasks this node runs at once; more wait Queued. Given, it is written to the node's
    /// record at start; without it the node keeps its stored cap (5 for a new node), which an
    /// administrator may change (PUT /api/octopusservernodes/{id}).
    #[arg(long, env = "MUSTER_TASK_CAP", value_parser = clap::value_parser!(u32).range(1..))]
    pub task_cap: Option<u32>,
    /// Never run scripts on the server itself; tasks that would need it stay Queued.
    #[arg(long, env = "MUSTER_NO_BUILTIN_WORKER")]
    pub no_builtin_worker: bool,
    /// Run the built-in worker's scripts as this OS user (name or uid; the server must run as root).
    /// Without it they run as the server's own user, who can read the data directory: every
    /// space's secrets and the server's key.
    #[arg(long, env = "MUSTER_BUILTIN_WORKER_USER")]
    pub builtin_worker_user: Option<String>,
    /// Address of the comms port, which polling agents dial.
    #[arg(long, env = "MUSTER_COMMS_LISTEN", default_value = "0.0.0.0:10943")]
    pub comms_listen: SocketAddr,
    /// The most a task's stored log keeps, in MiB of output; later lines are dropped with a warning.
    #[arg(long, env = "MUSTER_TASK_LOG_LIMIT_MB", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub task_log_limit_mb: u64,
    /// The largest artifact a script may return, in bytes; a larger one is left behind with a
    /// warning in the task's log.
    #[arg(long, env = "MUSTER_ARTIFACT_MAX_BYTES", default_value_t = 100 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub artifact_max_bytes: u64,
    /// The most bytes of artifacts one task keeps; past it, files are left behind with a warning.
    #[arg(long, env = "MUSTER_ARTIFACT_TASK_MAX_BYTES", default_value_t = 1024 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub artifact_task_max_bytes: u64,
    /// This node's name in `ServerNode` (default: the host name).
    #[arg(long, env = "MUSTER_NODE_NAME")]
    pub node_name: Option<String>,
    /// Where the other nodes of a shared PostgreSQL database dial this node's comms port, to reach
    /// the agents linked to it, as HOST:PORT (default: --comms-listen; with 0.0.0.0 or ::, this
    /// host's name and that port).
    #[arg(long, env = "MUSTER_NODE_COMMS_ADDRESS")]
    pub node_comms_address: Option<String>,
    /// The configuration file (YAML): the dynamic worker types (`WorkerTypes`), each with its
    /// provider (process, command or kubernetes) and limits. See the README.
    #[arg(long, env = "MUSTER_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Runs the server until Ctrl-C or SIGTERM.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    // Everything that can be refused is checked before anything is created, so a failed first start
    // never swallows the administrator's key.
    let bootstrap_key = std::env::var("MUSTER_BOOTSTRAP_API_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    if let Some(key) = &bootstrap_key {
        bootstrap::check_bootstrap_key(key)?;
    }
    let worker_types = config::load(args.config.as_deref())?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let comms_listener = tokio::net::TcpListener::bind(args.comms_listen)
        .await
        .with_context(|| format!("cannot listen for agents on {}", args.comms_listen))?;
    let comms_address = comms_listener.local_addr()?;

    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            args.data_dir.display()
        )
    })?;
    // The database, its key file and the scripts' working directories are the server user's alone.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&args.data_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| {
                format!(
                    "cannot make the data directory {} private (mode 0700)",
                    args.data_dir.display()
                )
            })?;
    }
    let _lock = state::lock_data_dir(&args.data_dir)?;
    let store = match args.database.as_deref().filter(|d| !d.is_empty()) {
        Some(database) => muster_store::Store::open(database, &args.data_dir)
            .await
            .context("cannot open the database")?,
        None => muster_store::Store::open_sqlite(&args.data_dir.join("muster.db"))
            .await
            .with_context(|| format!("cannot open the database in {}", args.data_dir.display()))?,
    };
    let certificate = muster_proto::Identity::load_or_create(
        &args.data_dir.join("server-certificate"),
        "Muster Server",
    )
    .context("cannot load the server certificate")?;
    let setup = bootstrap::ensure(&store, bootstrap_key.as_deref()).await?;

    let builtin_run_as = builtin_user(&args)?;
    let work_dir = match &builtin_run_as {
        None => args.data_dir.join("work"),
        // Outside the data directory, which the scripts' user must not enter.
        Some(_) => builtin_work_dir(&setup.installation_id)?,
    };
    let node_name = args.node_name.clone().unwrap_or_else(hostname);
    let advertised = match args.node_comms_address.as_deref().map(str::trim) {
        Some(given) if !given.is_empty() => {
            if given
                .rsplit_once(':')
                .is_none_or(|(_, port)| port.parse::<u16>().is_err())
            {
                anyhow::bail!("--node-comms-address {given}: give HOST:PORT");
            }
            given.to_string()
        }
        _ if comms_address.ip().is_unspecified() => {
            format!("{}:{}", hostname(), comms_address.port())
        }
        _ => comms_address.to_string(),
    };
    let config = Config {
        task_cap: args.task_cap.map(|c| c as usize),
        builtin_worker: !args.no_builtin_worker,
        node_name,
        comms_address: advertised,
        worker_types,
        work_dir,
        builtin_run_as,
        task_log_limit: args.task_log_limit_mb * 1024 * 1024,
        artifact_dir: args.data_dir.join("artifacts"),
        artifact_max_bytes: args.artifact_max_bytes,
        artifact_task_max_bytes: args.artifact_task_max_bytes,
        dynamic_dir: dynamic::providers::process_root(&args.data_dir),
    };
    // The built-in worker's scripts died with the last process (their watchdogs kill them); what a
    // crash left is killed, and their directories (script files with secrets) removed, before
    // anything runs.
    match muster_exec::clean_work_root(&config.work_dir) {
        Ok(cleaned) if cleaned != Default::default() => tracing::warn!(
            "cleaned the built-in worker's work directory: {} leftover script process(es) killed, {} stale entr(ies) removed",
            cleaned.processes_killed,
            cleaned.entries_removed
        ),
        Ok(_) => {}
        Err(error) => tracing::error!(
            "cannot clean the built-in worker's work directory {}: {error}",
            config.work_dir.display()
        ),
    }
    let app = state::AppInner::new(store.clone(), config, setup.installation_id, certificate);
    // An artifact half written when the last process died has no record: its file goes.
    app.artifacts.clean();
    // Before anything can open a link (recovery dials listening agents): each opened link is
    // checked, each closed one recorded.
    let links_watcher = tokio::spawn(health::watch_links(
        app.clone(),
        app.comms.events.subscribe(),
    ));
    // This node's record: registered (or its cap and maintenance mode read back) before any task
    // starts, then kept fresh by its heartbeat.
    nodes::register(&app)
        .await
        .context("cannot register this node in the database")?;
    // The dispatcher's lease: SQLite's one node holds it always; on PostgreSQL one node at a time.
    let lease = app
        .store
        .take_dispatch_lease(&app.config.node_name, nodes::LEASE)
        .await
        .context("cannot read the dispatcher's lease")?;
    // What a crash of this node left written of its agents' links goes; the others' are read.
    if app.store.engine_name() == "postgres" {
        app.store
            .clear_agent_links_of(&app.config.node_name)
            .await
            .context("cannot clear this node's agents' links")?;
    }
    comms::load_links(&app)
        .await
        .context("cannot read which nodes hold the agents' links")?;
    // This node's own tasks that its last process left running; the dispatcher also those of
    // the nodes that stopped.
    dispatch::recover(&app, lease.is_some()).await?;

    if let Some(key) = &setup.new_admin_key {
        println!("Administrator API key (shown once; keep it safe): {key}");
    }
    println!(
        "Muster server certificate thumbprint: {} (agents pin it: muster-agent register-worker --server-thumbprint)",
        app.certificate.thumbprint()
    );
    println!("Muster comms port for polling agents is listening on {comms_address}");
    if lease.is_none() {
        let holder = app.store.dispatch_lease_holder().await.ok().flatten();
        println!(
            "Muster node {} waits to dispatch ({} dispatches now); agents linked to it are reached through it",
            app.config.node_name,
            holder.as_deref().unwrap_or("another node")
        );
    }
    println!(
        "Muster is listening on http://{address}/ (data in {}, store on {})",
        args.data_dir.display(),
        store.engine_name()
    );

    let notes = tokio::spawn(nodes::follow_notes(app.clone(), app.store.notes()));
    let heartbeat = tokio::spawn(nodes::heartbeat(app.clone()));
    // Every node serves its comms port: a polling agent links to any one, and the others reach it
    // through that one.
    let comms = tokio::spawn(comms::listen(app.clone(), comms_listener));
    // The dispatcher's work: dispatching and the health checks. A node that does not hold the
    // lease serves the API and its agents' links, and waits to take the lease over.
    let dispatching = tokio::spawn(nodes::dispatch_role(app.clone(), lease));
    let router = api::router(app.clone());
    let service = tower::ServiceBuilder::new()
        .layer(axum::middleware::from_fn(http::canonicalize))
        .service(router);
    // On the signal, running scripts are stopped and live streams end first, so no open stream
    // holds the shutdown.
    let stopping = {
        let app = app.clone();
        async move {
            shutdown_signal().await;
            println!("Muster is shutting down");
            dispatch::shutdown(&app, Duration::from_secs(10)).await;
            let _ = app.shutdown.send(true);
        }
    };
    // No Nagle: a small answer (a task's final event on a live stream) must not wait for an ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        service.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stopping)
    .await
    .context("the HTTP server failed")?;

    dispatching.abort();
    comms.abort();
    links_watcher.abort();
    notes.abort();
    heartbeat.abort();
    app.logs.flush().await;
    nodes::release_lease(&app).await;
    store.close().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// The OS user the built-in worker's scripts run as, checked at start.
fn builtin_user(args: &ServerArgs) -> anyhow::Result<Option<muster_exec::RunAs>> {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    let Some(name) = args
        .builtin_worker_user
        .as_deref()
        .filter(|n| !n.trim().is_empty())
    else {
        if root && !args.no_builtin_worker {
            eprintln!(
                "Warning: the built-in worker runs scripts as root, and so as the owner of the data \
                 directory: any user who may run a task can read every space's secrets. Name another \
                 user with --builtin-worker-user, or start with --no-builtin-worker."
            );
        }
        return Ok(None);
    };
    let user = muster_exec::RunAs::lookup(name.trim()).with_context(|| {
        format!("--builtin-worker-user: there is no user '{name}' in /etc/passwd")
    })?;
    if !root {
        anyhow::bail!(
            "--builtin-worker-user {name}: only a server running as root can run scripts as another user"
        );
    }
    if user.uid == 0 {
        anyhow::bail!("--builtin-worker-user {name}: name a user other than root");
    }
    Ok(Some(user))
}

/// Where the built-in worker's scripts work when they run as another user: a directory that user
/// may pass through (0711) but not list, with one private directory per script.
fn builtin_work_dir(installation_id: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let short: String = installation_id
        .chars()
        .filter(|c| *c != '-')
        .take(12)
        .collect();
    let dir = std::env::temp_dir().join(format!("muster-builtin-{short}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
    Ok(dir)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "muster".into())
}

/// The (method, path) pairs the OpenAPI document describes, for the test that walks them.
pub fn openapi_operations() -> Vec<(&'static str, &'static str)> {
    openapi::operations()
}

/// (method, route, rule) of every route the router serves, in its normalized form (`/api/s/{space}/…`),
/// for the test that walks the permission matrix.
pub fn route_table() -> Vec<(String, &'static str, Rule)> {
    api::route_table()
        .into_iter()
        .map(|(method, path, rule)| (method.to_string(), path, rule))
        .collect()
}
