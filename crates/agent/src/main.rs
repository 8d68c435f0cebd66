//! `muster-agent`: a worker for a Muster server. Its commands and option spellings follow Tentacle's, so
//! that bootstrap scripts such as the seed blog's `configure-tentacle.sh` port by changing the binary's
//! name. It never links the store or the server.

mod config;
mod register;
mod service;
mod tickets;

use clap::{Parser, Subcommand};
use config::{CommsAddress, DEFAULT_SERVER_COMMS_PORT, Home};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "muster-agent",
    version,
    about = "A worker for a Muster server."
)]
struct Cli {
    /// The agent's home: certificate, configuration, trusted server thumbprints.
    #[arg(long, global = true, env = "MUSTER_AGENT_HOME")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates the agent's certificate.
    NewCertificate {
        /// Keep an existing certificate.
        #[arg(long = "if-blank")]
        if_blank: bool,
    },
    /// Prints the agent's certificate thumbprint.
    ShowThumbprint,
    /// Sets how the agent communicates and which servers it trusts.
    Configure {
        /// Listen for the server on this port (a listening agent).
        #[arg(long, alias = "port")]
        listen_port: Option<u16>,
        /// Do not listen (a polling agent); Tentacle scripts write `--noListen True`.
        #[arg(long, alias = "noListen", num_args = 0..=1, default_missing_value = "true",
              value_parser = clap::builder::BoolishValueParser::new())]
        no_listen: Option<bool>,
        /// Trust a server certificate thumbprint (repeatable).
        #[arg(long)]
        trust: Vec<String>,
        /// Forget every trusted thumbprint first.
        #[arg(long, alias = "resetTrust")]
        reset_trust: bool,
        /// Where scripts get their working directories.
        #[arg(long, alias = "app")]
        work_dir: Option<PathBuf>,
        /// Add a comms address of a server node a polling agent dials, HOST:PORT or [IPv6]:PORT
        /// (repeatable; tried in the order listed).
        #[arg(
            long = "server-comms-address",
            alias = "serverCommsAddress",
            value_name = "HOST:PORT"
        )]
        server_comms_addresses: Vec<CommsAddress>,
        /// Forget every comms address first (with none, a polling agent dials its server's REST
        /// host on --server-comms-port, as registered).
        #[arg(long, alias = "resetServerCommsAddresses")]
        reset_server_comms_addresses: bool,
    },
    /// Prints the agent's configuration (agent.json) as JSON, with the addresses a polling agent
    /// dials in order (`PollingAddresses`).
    ShowConfiguration,
    /// Registers this machine as a worker of a Muster server.
    RegisterWorker(RegisterArgs),
    /// Registers this agent, running in a Kubernetes pod, as a Kubernetes worker (Octopus's
    /// `KubernetesTentacle`, polling): what the Helm chart runs. The equivalent install, with the
    /// chart in Muster's sources (packaging/helm/muster-agent) and a Secret holding a registration
    /// token (key registrationToken) or an API key (key apiKey):
    ///
    /// helm install workers packaging/helm/muster-agent --namespace muster-workers --set
    /// image.repository=registry.example/muster-agent --set server.url=https://muster.example:8080
    /// --set server.commsAddress=muster.example:10943 --set server.thumbprint=THUMBPRINT --set
    /// registration.existingSecret=muster-registration --set replicas=3
    RegisterK8sWorker {
        #[command(flatten)]
        args: RegisterArgs,
        /// The namespace the agent runs in (the chart passes it), shown on the worker.
        #[arg(long, env = "MUSTER_KUBERNETES_NAMESPACE")]
        kubernetes_namespace: Option<String>,
        /// The Helm release that installed the agent (the chart passes it), shown on the worker.
        #[arg(long, env = "MUSTER_HELM_RELEASE_NAME")]
        helm_release_name: Option<String>,
    },
    /// Removes the workers that carry this agent's thumbprint.
    DeregisterWorker {
        /// The server's REST address (default: the one this agent registered with).
        #[arg(long)]
        server: Option<String>,
        #[arg(
            long,
            alias = "apiKey",
            alias = "apikey",
            env = "MUSTER_API_KEY",
            hide_env_values = true
        )]
        api_key: String,
        #[arg(long)]
        space: Option<String>,
        /// Accepted for Tentacle scripts; ignored.
        #[arg(long, hide = true)]
        instance: Option<String>,
    },
    /// Runs the agent in the foreground until Ctrl-C or SIGTERM (the systemd unit runs this). A
    /// dynamic worker's instance is given its identity in the environment instead of registering:
    /// MUSTER_AGENT_CERTIFICATE and MUSTER_AGENT_KEY (PEM, issued by the server for this worker),
    /// MUSTER_SERVER_THUMBPRINT, MUSTER_SUBSCRIPTION (poll://…/) and
    /// MUSTER_SERVER_COMMS_ADDRESSES (HOST:PORT, comma-separated); `run` writes them into its home.
    Run {
        /// The address a listening agent binds.
        #[arg(long, env = "MUSTER_AGENT_LISTEN_ADDRESS", default_value = "0.0.0.0")]
        listen_address: String,
    },
    /// Installs, starts, stops or removes the agent as a systemd service (`muster-agent run`).
    Service {
        #[arg(long)]
        install: bool,
        #[arg(long)]
        start: bool,
        #[arg(long)]
        stop: bool,
        #[arg(long)]
        restart: bool,
        #[arg(long)]
        uninstall: bool,
        /// Accepted for Tentacle scripts; ignored.
        #[arg(long, hide = true)]
        instance: Option<String>,
    },
    /// Accepted so that Tentacle bootstrap scripts run unchanged: Muster's agent has one instance per
    /// home directory.
    #[command(hide = true)]
    CreateInstance {
        #[arg(long)]
        config: Option<String>,
        #[arg(long)]
        instance: Option<String>,
    },
}

#[derive(clap::Args)]
struct RegisterArgs {
    /// The server's REST address, such as http://muster.example:8080.
    #[arg(long, env = "MUSTER_SERVER_URL")]
    server: String,
    #[arg(
        long,
        alias = "apiKey",
        alias = "apikey",
        env = "MUSTER_API_KEY",
        hide_env_values = true,
        required_unless_present = "registration_token",
        conflicts_with = "registration_token"
    )]
    api_key: Option<String>,
    /// A registration token (MRT-…, `POST /api/{space}/registrationtokens`) instead of an API key:
    /// the worker joins the token's space and pools, and --space and --worker-pool are not read.
    #[arg(long, env = "MUSTER_REGISTRATION_TOKEN", hide_env_values = true)]
    registration_token: Option<String>,
    /// The worker's name (default: the host name).
    #[arg(long, env = "MUSTER_WORKER_NAME")]
    name: Option<String>,
    /// The server certificate's SHA-256 thumbprint, as the server prints it (`muster server`'s
    /// banner, or `GET /api/configuration/certificates/certificate-global` read where you trust
    /// the network): the agent pins it and refuses a server that reports another one. Without it,
    /// the agent trusts the thumbprint the REST API reports, which is only as safe as that path.
    #[arg(long, alias = "serverThumbprint", env = "MUSTER_SERVER_THUMBPRINT")]
    server_thumbprint: Option<String>,
    /// The space, by name (default: the user's default space).
    #[arg(long, env = "MUSTER_SPACE")]
    space: Option<String>,
    /// A worker pool, by name, slug or id (repeatable; the environment variable takes a
    /// comma-separated list).
    #[arg(
        long = "worker-pool",
        alias = "workerpool",
        alias = "workerPool",
        required_unless_present = "registration_token",
        env = "MUSTER_WORKER_POOLS",
        value_delimiter = ','
    )]
    pools: Vec<String>,
    /// The machine policy, by name (default: the space's default policy).
    #[arg(long)]
    policy: Option<String>,
    /// TentacleActive (polling: the agent dials the server) or TentaclePassive (listening).
    #[arg(long, alias = "commsStyle", default_value = "TentaclePassive")]
    comms_style: String,
    /// The server's comms port, which a polling agent dials on the --server host (not with
    /// --server-comms-address, whose addresses name their ports).
    #[arg(
        long,
        alias = "serverCommsPort",
        default_value_t = DEFAULT_SERVER_COMMS_PORT,
        conflicts_with = "server_comms_addresses"
    )]
    server_comms_port: u16,
    /// A comms address of a server node, HOST:PORT or [IPv6]:PORT (repeatable): a polling agent
    /// dials these in order, moving to the next when one fails or its link closes, instead of the
    /// --server host and --server-comms-port.
    #[arg(
        long = "server-comms-address",
        alias = "serverCommsAddress",
        value_name = "HOST:PORT",
        env = "MUSTER_SERVER_COMMS_ADDRESSES",
        value_delimiter = ','
    )]
    server_comms_addresses: Vec<CommsAddress>,
    /// The name the server dials a listening agent at (default: the host name).
    #[arg(long, alias = "publicHostName", alias = "publicHostname")]
    public_hostname: Option<String>,
    /// The port a listening agent serves (default: the configured one, 10933).
    #[arg(long, alias = "tentacle-comms-port")]
    listen_port: Option<u16>,
    /// Update the worker if one of that name is registered already.
    #[arg(long)]
    force: bool,
    /// Do nothing if this agent's home says it registered with this server already (a restarted
    /// pod keeps its home, and a one-time token is used up).
    #[arg(long)]
    if_unregistered: bool,
    /// Accepted for Tentacle scripts; ignored.
    #[arg(long, hide = true)]
    instance: Option<String>,
}

/// With --if-unregistered: whether this home registered with that server already (it says so).
fn already_registered(home: &Home, args: &RegisterArgs) -> anyhow::Result<bool> {
    if !args.if_unregistered || !home.has_certificate() {
        return Ok(false);
    }
    let config = home.load()?;
    let registered = config.registered_with.as_deref() == Some(args.server.trim_end_matches('/'));
    if registered {
        println!(
            "This agent registered with {} already; nothing to do (--if-unregistered)",
            args.server
        );
    }
    Ok(registered)
}

/// The registration the command line asks for.
fn registration(
    args: RegisterArgs,
    kubernetes: Option<register::Kubernetes>,
) -> register::Registration {
    register::Registration {
        name: args.name.unwrap_or_else(hostname),
        public_hostname: args.public_hostname.unwrap_or_else(hostname),
        server: args.server,
        credential: match (args.registration_token, args.api_key) {
            (Some(token), _) => register::Credential::Token(token),
            (None, key) => register::Credential::ApiKey(key.unwrap_or_default()),
        },
        server_thumbprint: args.server_thumbprint,
        space: args.space,
        pools: args.pools,
        policy: args.policy,
        comms_style: args.comms_style,
        server_comms_port: args.server_comms_port,
        server_comms_addresses: args.server_comms_addresses,
        listen_port: args.listen_port,
        force: args.force,
        kubernetes,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "muster-agent".into())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let home = Home::new(cli.home.unwrap_or_else(config::default_home));
    match cli.command {
        Command::NewCertificate { if_blank } => {
            if home.has_certificate() && !if_blank {
                // The running agent would go on presenting the old certificate.
                if let Some(pid) = home.running_agent() {
                    anyhow::bail!(
                        "muster-agent (process {pid}) is running on {}: stop it before replacing its certificate",
                        home.dir.display()
                    );
                }
                std::fs::remove_file(home.dir.join("cert.pem"))?;
                std::fs::remove_file(home.dir.join("key.pem"))?;
            }
            let identity = home.identity()?;
            println!(
                "The agent's certificate thumbprint is {}",
                identity.thumbprint()
            );
        }
        Command::ShowThumbprint => {
            // Showing creates nothing: no home, no certificate.
            if !home.has_certificate() {
                anyhow::bail!(
                    "{} holds no certificate yet: `muster-agent new-certificate` (or register-worker) creates one",
                    home.dir.display()
                );
            }
            println!("{}", home.identity()?.thumbprint());
        }
        Command::Configure {
            listen_port,
            no_listen,
            trust,
            reset_trust,
            work_dir,
            server_comms_addresses,
            reset_server_comms_addresses,
        } => {
            let mut config = home.load()?;
            if reset_server_comms_addresses {
                config.server_comms_addresses.clear();
            }
            for address in server_comms_addresses {
                let address = address.to_string();
                if !config.server_comms_addresses.contains(&address) {
                    config.server_comms_addresses.push(address);
                }
            }
            if reset_trust {
                config.trusted_thumbprints.clear();
            }
            for thumbprint in trust {
                let thumbprint = thumbprint.trim().to_ascii_uppercase();
                let valid = (thumbprint.len() == 40 || thumbprint.len() == 64)
                    && thumbprint.bytes().all(|b| b.is_ascii_hexdigit());
                if !valid {
                    anyhow::bail!(
                        "--trust takes a thumbprint of 40 or 64 hexadecimal characters, got '{thumbprint}'"
                    );
                }
                if !config.trusted_thumbprints.contains(&thumbprint) {
                    config.trusted_thumbprints.push(thumbprint);
                }
            }
            if no_listen == Some(true) {
                config.listen_port = None;
            } else if let Some(port) = listen_port {
                config.listen_port = Some(port);
            } else if no_listen == Some(false) && config.listen_port.is_none() {
                config.listen_port = Some(config::DEFAULT_LISTEN_PORT);
            }
            if let Some(dir) = work_dir {
                config.work_dir = Some(dir);
            }
            home.save(&config)?;
            match config.listen_port {
                Some(port) => println!(
                    "Listening on port {port}; trusting {} server(s)",
                    config.trusted_thumbprints.len()
                ),
                None => println!(
                    "Not listening (polling); trusting {} server(s)",
                    config.trusted_thumbprints.len()
                ),
            }
            if !config.server_comms_addresses.is_empty() {
                println!(
                    "Polling dials {} in this order",
                    config.server_comms_addresses.join(", ")
                );
            }
        }
        Command::ShowConfiguration => {
            // Showing creates nothing: it reads agent.json, or shows the defaults.
            let config = home.load()?;
            let mut shown = serde_json::to_value(&config)?;
            if config.subscription_id.is_some() {
                let addresses = config.polling_addresses()?;
                shown["PollingAddresses"] = addresses.iter().map(|a| a.to_string()).collect();
            }
            println!("{}", serde_json::to_string_pretty(&shown)?);
        }
        Command::RegisterWorker(args) if already_registered(&home, &args)? => {}
        Command::RegisterK8sWorker { args, .. } if already_registered(&home, &args)? => {}
        Command::RegisterWorker(args) => {
            let worker = register::register(&home, registration(args, None)).await?;
            println!(
                "Registered worker {} ({}) in {} as {}",
                worker["Name"].as_str().unwrap_or_default(),
                worker["Id"].as_str().unwrap_or_default(),
                worker["SpaceId"].as_str().unwrap_or_default(),
                worker["Endpoint"]["Uri"].as_str().unwrap_or_default()
            );
        }
        Command::RegisterK8sWorker {
            mut args,
            kubernetes_namespace,
            helm_release_name,
        } => {
            // A Kubernetes worker polls: nothing in the cluster is dialled from outside.
            args.comms_style = "TentacleActive".into();
            let kubernetes = register::Kubernetes {
                namespace: kubernetes_namespace,
                helm_release_name,
            };
            let worker = register::register(&home, registration(args, Some(kubernetes))).await?;
            println!(
                "Registered Kubernetes worker {} ({}) in {} as {}",
                worker["Name"].as_str().unwrap_or_default(),
                worker["Id"].as_str().unwrap_or_default(),
                worker["SpaceId"].as_str().unwrap_or_default(),
                worker["Endpoint"]["TentacleEndpointConfiguration"]["Uri"]
                    .as_str()
                    .unwrap_or_default()
            );
        }
        Command::DeregisterWorker {
            server,
            api_key,
            space,
            ..
        } => {
            let config = home.load()?;
            let Some(server) = server.or(config.registered_with).or(config.server) else {
                anyhow::bail!(
                    "this agent's configuration names no server (it was never registered): give --server"
                );
            };
            let removed = register::deregister(&home, &server, &api_key, space.as_deref()).await?;
            if removed.is_empty() {
                println!("No worker of this agent was registered there");
            } else {
                println!("Deregistered {}", removed.join(", "));
            }
        }
        Command::Run { listen_address } => {
            // A dynamic worker's instance is given its identity by the server's provider.
            if let Some(instance) = config::Instance::from_env()? {
                instance.install(&home)?;
            }
            service::run(&home, &listen_address).await?
        }
        Command::Service {
            install,
            start,
            stop,
            restart,
            uninstall,
            ..
        } => service::systemd(&home, install, start, stop, restart, uninstall)?,
        Command::CreateInstance { .. } => {
            println!(
                "The agent's instance is its home directory, {}",
                home.dir.display()
            );
        }
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    };
    if let Err(error) = runtime.block_on(run(cli)) {
        let mut message = error.to_string();
        for cause in error.chain().skip(1) {
            message.push_str(&format!(": {cause}"));
        }
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}
