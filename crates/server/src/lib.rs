//! The Muster server: the Octopus-compatible REST API, the durable task queue and its dispatcher, and
//! the built-in worker. It owns the store; clients and agents reach it only over the network.

#![recursion_limit = "256"]

mod api;
mod auth;
mod bootstrap;
mod dispatch;
mod http;
mod links;
mod logs;
mod openapi;
mod state;

pub use http::normalize_path;

use anyhow::Context;
use axum::ServiceExt as _;
use state::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `muster server`: every flag is also an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address of the REST API and portal.
    #[arg(long, env = "MUSTER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the SQLite database, the server certificate and task working directories live.
    #[arg(long, env = "MUSTER_DATA_DIR", default_value = "./muster-data")]
    pub data_dir: PathBuf,
    /// How many tasks this node runs at once; more wait Queued.
    #[arg(long, env = "MUSTER_TASK_CAP", default_value_t = 5)]
    pub task_cap: usize,
    /// Never run scripts on the server itself; tasks that would need it stay Queued.
    #[arg(long, env = "MUSTER_NO_BUILTIN_WORKER")]
    pub no_builtin_worker: bool,
    /// This node's name in `ServerNode` (default: the host name).
    #[arg(long, env = "MUSTER_NODE_NAME")]
    pub node_name: Option<String>,
}

/// Runs the server until Ctrl-C or SIGTERM.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            args.data_dir.display()
        )
    })?;
    let _lock = state::lock_data_dir(&args.data_dir)?;

    let store = muster_store::Store::open_sqlite(&args.data_dir.join("muster.db"))
        .await
        .with_context(|| format!("cannot open the database in {}", args.data_dir.display()))?;
    let certificate = muster_proto::Identity::load_or_create(
        &args.data_dir.join("server-certificate"),
        "Muster Server",
    )
    .context("cannot load the server certificate")?;
    let bootstrap_key = std::env::var("MUSTER_BOOTSTRAP_API_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    let setup = bootstrap::ensure(&store, bootstrap_key.as_deref()).await?;

    let node_name = args.node_name.clone().unwrap_or_else(hostname);
    let config = Config {
        task_cap: args.task_cap,
        builtin_worker: !args.no_builtin_worker,
        node_name,
        work_dir: args.data_dir.join("work"),
    };
    let app = state::AppInner::new(store.clone(), config, setup.installation_id, certificate);
    dispatch::recover(&app).await?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    if let Some(key) = &setup.new_admin_key {
        println!("Administrator API key (shown once; keep it safe): {key}");
    }
    println!(
        "Muster is listening on http://{address}/ (data in {})",
        args.data_dir.display()
    );

    let dispatcher = tokio::spawn(dispatch::run(app.clone()));
    let router = api::router(app.clone());
    let service = tower::ServiceBuilder::new()
        .map_request(http::normalize_request)
        .service(router);
    axum::serve(
        listener,
        service.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .context("the HTTP server failed")?;

    println!("Muster is shutting down");
    dispatcher.abort();
    dispatch::shutdown(&app, Duration::from_secs(10)).await;
    app.logs.flush().await;
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
