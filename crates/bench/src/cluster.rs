//! One or several `muster server` nodes on one store: SQLite (one node) or a fresh PostgreSQL
//! database made for the run and dropped after it. The first node starts first, so it takes the
//! dispatch lease; the others get its key of sensitive values and server certificate, as the
//! README says to copy them (and as `crates/muster/tests/it/cluster.rs` does).

use crate::{Database, Server, free_port};
use anyhow::{Context, anyhow, bail};
use std::path::Path;
use std::process::{Command, Stdio};

/// The role and cluster `scripts/test-postgres.sh` sets up (password login over TCP on loopback).
pub const DEFAULT_POSTGRES_URL: &str = "postgres://muster_test:muster_test@127.0.0.1:5432/postgres";

/// What to start: which store, how many nodes, and where PostgreSQL is.
pub struct Setup {
    pub database: Database,
    pub nodes: usize,
    pub postgres_url: String,
}

impl Setup {
    pub fn database_name(&self) -> &'static str {
        match self.database {
            Database::Sqlite => "sqlite",
            Database::Postgres => "postgres",
        }
    }

    /// `sqlite`, `postgres`, `postgres x3`.
    pub fn label(&self) -> String {
        if self.nodes == 1 {
            self.database_name().to_string()
        } else {
            format!("{} x{}", self.database_name(), self.nodes)
        }
    }
}

/// The nodes (first: the dispatcher), then the database they share: fields drop in this order,
/// so every node is stopped before its database is dropped.
pub struct Cluster {
    pub nodes: Vec<Option<Server>>,
    _database: Option<PgDatabase>,
    temp: tempfile::TempDir,
}

impl Cluster {
    /// Starts `setup.nodes` nodes, each with `extra` arguments, and waits until each serves.
    pub fn start(bin: &Path, setup: &Setup, extra: &[&str]) -> anyhow::Result<Cluster> {
        let temp = tempfile::tempdir()?;
        let database = match setup.database {
            Database::Sqlite => None,
            Database::Postgres => Some(PgDatabase::create(&setup.postgres_url)?),
        };
        let mut nodes = Vec::new();
        for n in 1..=setup.nodes {
            let dir = temp.path().join(format!("n{n}"));
            if n > 1 {
                let first = temp.path().join("n1").join("data");
                let data = dir.join("data");
                std::fs::create_dir_all(data.join("server-certificate"))?;
                std::fs::copy(first.join("secrets.key"), data.join("secrets.key"))
                    .context("the first node's secrets.key")?;
                for entry in std::fs::read_dir(first.join("server-certificate"))? {
                    let entry = entry?;
                    std::fs::copy(
                        entry.path(),
                        data.join("server-certificate").join(entry.file_name()),
                    )?;
                }
            }
            let name = format!("n{n}");
            let mut args: Vec<&str> = extra.to_vec();
            if let Some(database) = &database {
                args.extend(["--database", database.url.as_str(), "--node-name", &name]);
            }
            // A node that does not dispatch does not say its comms port: it is chosen here.
            let comms_port = free_port()?;
            let mut server = Server::start_on(bin, &dir, &args, comms_port)
                .with_context(|| format!("node {name}"))?;
            server.comms_port = comms_port;
            nodes.push(Some(server));
        }
        Ok(Cluster {
            nodes,
            _database: database,
            temp,
        })
    }

    /// The first node: the dispatcher, which polling agents dial.
    pub fn first(&self) -> &Server {
        self.node(0)
    }

    pub fn node(&self, index: usize) -> &Server {
        self.nodes[index].as_ref().expect("the node runs")
    }

    /// The node for request `turn`: each in turn.
    pub fn pick(&self, turn: usize) -> &Server {
        self.node(turn % self.nodes.len())
    }

    /// The node that holds the dispatch lease now (PostgreSQL only), read from `dispatch_lease`.
    pub fn lease_holder(&self) -> anyhow::Result<String> {
        let database = self
            ._database
            .as_ref()
            .ok_or_else(|| anyhow!("only PostgreSQL nodes hold a lease"))?;
        let output = Command::new("psql")
            .arg(&database.url)
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-c",
                "SELECT holder FROM dispatch_lease",
            ])
            .stdin(Stdio::null())
            .output()?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// The run's own directory (agents' homes, stamps).
    pub fn dir(&self) -> &Path {
        self.temp.path()
    }
}

/// A database `muster_bench_<random>` made with `psql` on `admin_url`'s server, dropped (with any
/// connection still open) when dropped.
struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDatabase {
    fn create(admin_url: &str) -> anyhow::Result<PgDatabase> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let name = format!("muster_bench_{}_{nanos}", std::process::id());
        let (base, rest) = admin_url
            .rsplit_once('/')
            .ok_or_else(|| anyhow!("{admin_url} is not a postgres:// URL"))?;
        let query = rest.find('?').map(|at| &rest[at..]).unwrap_or_default();
        let url = format!("{base}/{name}{query}");
        psql(admin_url, &format!("CREATE DATABASE {name}")).with_context(|| {
            "PostgreSQL is not reachable: run scripts/test-postgres.sh (it starts PostgreSQL and \
             makes the role muster_test), or set MUSTER_BENCH_POSTGRES_URL to a database whose \
             role may CREATE DATABASE"
        })?;
        Ok(PgDatabase {
            admin_url: admin_url.to_string(),
            name,
            url,
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(error) = psql(&self.admin_url, &sql) {
            eprintln!("muster-bench: cannot drop {}: {error:#}", self.name);
        }
    }
}

fn psql(url: &str, sql: &str) -> anyhow::Result<()> {
    let output = Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .context("cannot run psql (Debian's postgresql-client)")?;
    if !output.status.success() {
        bail!("{sql}: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}
