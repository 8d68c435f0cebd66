//! `muster`: the server (`muster server`) and the client commands in one binary.

use clap::{Parser, Subcommand};

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
    Server(muster_server::ServerArgs),
    #[command(flatten)]
    Client(muster_cli::Command),
}

fn main() {
    let cli = Cli::parse();
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

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
}
