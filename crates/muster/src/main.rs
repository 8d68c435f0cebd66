//! `muster`: the server (`muster server`) and the client commands in one binary.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "muster",
    version,
    about = "Runs deployment and runbook scripts on workers in worker pools, inside spaces."
)]
struct Cli {
    #[command(flatten)]
    connection: muster_cli::Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the Muster server on its embedded store.
    #[command(after_help = SERVER_ENVIRONMENT)]
    Server(muster_server::ServerArgs),
    /// Local administration of a server's store (opens databases directly, not through the API).
    #[command(subcommand)]
    Db(DbCommand),
    #[command(flatten)]
    Client(muster_cli::Command),
}

#[derive(Subcommand)]
enum DbCommand {
    /// Copies a stopped server's whole SQLite store into an empty PostgreSQL database.
    #[command(long_about = DB_COPY_ABOUT)]
    Copy(DbCopyArgs),
}

const DB_COPY_ABOUT: &str = "\
Copies a stopped server's whole SQLite store into an empty PostgreSQL database: spaces, workers,
pools, tasks and their logs, runbooks and runs, users, API keys, events, id counters. Rows are
copied as they are (ids, sequence numbers, every byte of the logs), in batches, one transaction
each; at the end each table is counted on both sides, and the command fails when a count differs.

Sensitive values stay sealed with the source's key: give the new server the same data directory
files. Copy secrets.key (without it the copy's sensitive values cannot be opened and the server
refuses to start), server-certificate/ (the agents trust its thumbprint) and artifacts/ (artifact
files are not in the store) into the PostgreSQL server's --data-dir.

Refused: a source a running server holds (stop it first), a target that already holds Muster data
(unless --force), a URL that names no such store.";

#[derive(clap::Args)]
struct DbCopyArgs {
    /// The source store: sqlite:PATH, PATH the stopped server's muster.db or its data directory.
    #[arg(long, value_name = "sqlite:PATH")]
    from: String,
    /// The target: postgres://user:password@host:port/name, an empty database (no server has
    /// started on it yet).
    #[arg(long, value_name = "postgres://…")]
    to: String,
    /// Replaces whatever Muster data the target holds.
    #[arg(long)]
    force: bool,
}

/// `muster db copy`: progress per table, then the counts, then what else to copy.
async fn db_copy(args: DbCopyArgs) -> anyhow::Result<i32> {
    let started = std::time::Instant::now();
    let mut progress = |line: &str| println!("{line}");
    // The store's error says it all in one line; its sources would repeat it.
    let report = muster_store::copy(&args.from, &args.to, args.force, &mut progress)
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    println!();
    print!("{}", report.table());
    if !report.matches() {
        anyhow::bail!("the copy's counts differ from the source's (see the table above)");
    }
    println!(
        "\nCopied in {:.1}s; every count matches.\n\
         Sensitive values are still sealed with the source's key: copy secrets.key from the source's \
         data directory into the new server's --data-dir, with server-certificate/ and artifacts/, \
         then start it with --database pointing at the copy.",
        started.elapsed().as_secs_f64()
    );
    Ok(0)
}

const SERVER_ENVIRONMENT: &str = "\
Environment:
  MUSTER_BOOTSTRAP_API_KEY  At the first start only: the administrator's API key (API- and 26 or
                            more upper-case letters or digits), instead of a new random one
  MUSTER_LOG                What the server logs to stderr, as a tracing filter (default: warn)";

/// The command line. The client options are global, but `muster server` takes none of them: it
/// gets hidden ones of the same ids, which clap then does not propagate into it.
fn command() -> clap::Command {
    fn without_client_options(command: clap::Command) -> clap::Command {
        command
            .arg(clap::Arg::new("server").long("server").hide(true))
            .arg(clap::Arg::new("api_key").long("api-key").hide(true))
            .arg(
                clap::Arg::new("json")
                    .long("json")
                    .action(clap::ArgAction::SetTrue)
                    .hide(true),
            )
    }
    Cli::command()
        .mut_subcommand("server", without_client_options)
        .mut_subcommand("db", |db| {
            without_client_options(db).mut_subcommand("copy", without_client_options)
        })
}

fn main() {
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    // Not for `db copy`, whose writes must not stop mid-page because a reader of its progress left.
    if matches!(cli.command, Command::Client(_)) {
        die_quietly_on_a_closed_pipe();
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => {
                tracing_subscriber::fmt()
                    .with_env_filter(
                        tracing_subscriber::EnvFilter::try_from_env("MUSTER_LOG")
                            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
                    )
                    .with_writer(std::io::stderr)
                    // Colour codes only for a person at a terminal, never into a file or a journal.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .init();
                muster_server::run(args).await.map(|()| 0)
            }
            Command::Db(DbCommand::Copy(args)) => db_copy(args).await,
            Command::Client(command) => muster_cli::run(cli.connection, command).await,
        }
    });
    match result {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            // One clear line: the error and its causes, never a backtrace.
            let mut message = error.to_string();
            for cause in error.chain().skip(1) {
                message.push_str(&format!(": {cause}"));
            }
            eprintln!("error: {message}");
            std::process::exit(1);
        }
    }
}

/// A client command piped into `head` ends quietly when the reader goes, as other Unix tools do,
/// instead of panicking on the failed write (Rust ignores SIGPIPE by default; the server needs
/// that, a client command does not).
#[allow(unsafe_code)]
fn die_quietly_on_a_closed_pipe() {
    // SAFETY: called before any other thread exists; it only restores the default disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    /// Every subcommand, at every depth, says what it does in `--help`.
    #[test]
    fn every_subcommand_has_a_description() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in command.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(path.clone());
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "muster", &mut missing);
        assert!(missing.is_empty(), "without a description: {missing:?}");
    }

    fn help(args: &[&str]) -> String {
        let error = super::command()
            .try_get_matches_from(args)
            .expect_err("--help ends parsing");
        assert_eq!(error.kind(), clap::error::ErrorKind::DisplayHelp);
        error.render().to_string()
    }

    /// `muster server --help` shows the server's options and environment, none of the client's.
    #[test]
    fn the_servers_help_shows_only_server_options() {
        let text = help(&["muster", "server", "--help"]);
        assert!(text.contains("--comms-listen"), "{text}");
        assert!(text.contains("MUSTER_BOOTSTRAP_API_KEY"), "{text}");
        for client in ["--api-key", "--json", "--server ", "Client options"] {
            assert!(!text.contains(client), "{client} in: {text}");
        }
    }

    /// `muster db copy --help` says what it copies and what else the operator copies.
    #[test]
    fn db_copy_help_describes_it() {
        let text = help(&["muster", "db", "copy", "--help"]);
        for said in ["--from", "--to", "--force", "secrets.key", "artifacts/"] {
            assert!(text.contains(said), "{said} not in: {text}");
        }
        for client in ["--api-key", "--json", "--server ", "Client options"] {
            assert!(!text.contains(client), "{client} in: {text}");
        }
    }

    /// A client command lists its own options apart from the options every client command takes.
    #[test]
    fn client_options_are_listed_apart() {
        let text = help(&["muster", "worker", "list", "--help"]);
        let (own, client) = text.split_once("Client options:").expect(&text);
        assert!(
            own.contains("--pool") && !own.contains("--api-key"),
            "{text}"
        );
        assert!(
            client.contains("--api-key") && client.contains("--server"),
            "{text}"
        );
        // They still go anywhere on the line.
        let cli = super::Cli::from_arg_matches(&super::command().get_matches_from([
            "muster",
            "worker",
            "list",
            "--json",
            "--server",
            "http://127.0.0.1:1",
        ]))
        .unwrap();
        assert!(cli.connection.json);
        assert_eq!(cli.connection.server, "http://127.0.0.1:1");
    }
}
