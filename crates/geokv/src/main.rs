//! The `geokv` binary: the server, the command-line client, and the demo.

mod admin_cmd;
mod admin_conn;
mod backup_cmd;
mod bench;
mod certs_cmd;
mod cli_io;
mod client_cmd;
mod demo;
mod demo_cluster;
mod health_cmd;
mod output;
mod residency_cmd;
mod restore_cmd;
mod server_cmd;
mod status_cmd;
mod watch_cmd;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "geokv",
    version,
    about = "geokv: a geo-distributed CRDT key-value store",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    client: ClientOpts,
}

/// Options shared by every client command.
#[derive(clap::Args, Clone, Debug)]
pub struct ClientOpts {
    /// gRPC endpoints of geokv nodes, comma-separated (those of one region, usually): a
    /// command goes to the first that answers and on to the next when a node is down or
    /// draining. Given twice, the later list counts. Default: $GEOKV_ENDPOINTS, else
    /// $GEOKV_ENDPOINT, else http://127.0.0.1:7400.
    #[arg(long = "endpoints", visible_alias = "endpoint", global = true, value_delimiter = ',', action = clap::ArgAction::Set)]
    endpoints: Vec<String>,
    /// Consistency level sent with the request.
    #[arg(long, global = true, value_enum)]
    pub consistency: Option<Level>,
    /// Print JSON instead of human-readable output (the same as --output json).
    #[arg(long, global = true)]
    pub json: bool,
    /// How to print answers: `human`, `json`, or `value` (`get` prints only the value: a
    /// register's bytes exactly, or encoded with --hex / --base64; other commands as `human`).
    #[arg(long, short = 'o', global = true, value_enum, default_value = "human")]
    pub output: Output,
    /// Values and set members (on the command line, in stdin and in --file) are hex, and
    /// `--output value` prints bytes as hex.
    #[arg(long, global = true, conflicts_with = "base64")]
    pub hex: bool,
    /// The same in base64 (standard alphabet, padded).
    #[arg(long, global = true)]
    pub base64: bool,
    /// How keys, scan prefixes and start keys are written: `raw` (the argument's bytes), `hex`
    /// or `base64`.
    #[arg(long, global = true, value_enum, default_value = "raw")]
    pub key_encoding: cli_io::Encoding,
    /// How long a data command (get, put, ...) waits for its answer, connecting included:
    /// 500ms, 10s, 1m30s (humantime).
    #[arg(long, global = true, default_value = "30s", value_parser = cli_io::parse_duration)]
    pub timeout: std::time::Duration,
    /// PEM file of the deployment CA: connect with TLS and trust the nodes it certified.
    // (Ids of their own: commands have arguments named `key`, and global flags share their
    // namespace.)
    #[arg(long = "ca", id = "tls_ca", global = true, env = "GEOKV_CA")]
    pub ca: Option<PathBuf>,
    /// PEM file of a client certificate (`geokv certs client`), with --key.
    #[arg(long = "cert", id = "tls_cert", global = true, env = "GEOKV_CERT")]
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[arg(long = "key", id = "tls_key", global = true, env = "GEOKV_KEY")]
    pub key: Option<PathBuf>,
    /// The name the node's certificate must carry (default: the endpoint's host; a node also
    /// answers to node-<id>.geokv).
    #[arg(long = "tls-server-name", id = "tls_server_name", global = true, env = "GEOKV_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// A bearer token proving a principal of the deployment (prefer the environment variable:
    /// a flag shows in the process list).
    #[arg(long = "token", id = "auth_token", global = true, env = "GEOKV_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Human,
    Json,
    Value,
}

/// Where client commands go when `--endpoints` is not given.
const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7400";

impl ClientOpts {
    /// The nodes to talk to: `--endpoints`, else `GEOKV_ENDPOINTS` (comma-separated), else
    /// `GEOKV_ENDPOINT` (one node, the variable of earlier releases), else the local default.
    pub fn endpoints(&self) -> Vec<String> {
        let listed = |text: &str| -> Vec<String> {
            text.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect()
        };
        let given: Vec<String> = self.endpoints.iter().flat_map(|e| listed(e)).collect();
        if !given.is_empty() {
            return given;
        }
        for var in ["GEOKV_ENDPOINTS", "GEOKV_ENDPOINT"] {
            let from_env = std::env::var(var).map(|v| listed(&v)).unwrap_or_default();
            if !from_env.is_empty() {
                return from_env;
            }
        }
        vec![DEFAULT_ENDPOINT.to_string()]
    }

    /// The first of [`ClientOpts::endpoints`]: the node a command about one node asks.
    pub fn endpoint(&self) -> String {
        self.endpoints().swap_remove(0)
    }

    /// How bytes are written in this command's input and `--output value`.
    pub fn encoding(&self) -> cli_io::Encoding {
        match (self.hex, self.base64) {
            (true, _) => cli_io::Encoding::Hex,
            (_, true) => cli_io::Encoding::Base64,
            _ => cli_io::Encoding::Raw,
        }
    }

    /// The TLS settings; an empty value (`--ca ""`) counts as not given, so a flag can switch
    /// off what an environment variable set.
    pub fn security(&self) -> geokv_client::Security {
        let path = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
        let text = |t: &Option<String>| t.clone().filter(|t| !t.is_empty());
        geokv_client::Security {
            ca: path(&self.ca),
            cert: path(&self.cert),
            key: path(&self.key),
            server_name: text(&self.tls_server_name),
            token: text(&self.token),
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Level {
    One,
    Quorum,
    All,
}

#[derive(Subcommand)]
enum Command {
    // The data commands first, then the rest (running and operating nodes).
    #[command(flatten)]
    Client(client_cmd::ClientCommand),
    /// Stream the changes of keys under a prefix as this region takes them in (writes made
    /// here and in other regions), until interrupted or --count events. With --output json:
    /// one object a line, the revision to resume from on the last event of each batch. Goes
    /// on through the next of --endpoints when its node goes away.
    Watch {
        /// Keys under this prefix (written as --key-encoding says); "" for every key.
        #[arg(default_value = "")]
        prefix: String,
        /// Resume after this revision (base64, as printed) instead of from now.
        #[arg(long)]
        from: Option<String>,
        /// Stop after at least this many events, at the end of the batch that brings them (the
        /// revision after it goes to stderr).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Run a geokv node.
    Server(server_cmd::ServerArgs),
    /// Start three regions of three nodes (Dublin, Ashburn, Singapore) in this process on free
    /// loopback ports, with emulated WAN links, and walk through what the store does.
    Demo {
        /// Keep the cluster running after the tour and print endpoints for the CLI.
        #[arg(long)]
        keep_running: bool,
        /// Directory for the nodes' data (default: a temporary directory removed on exit).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Interleave the nine nodes' logs (INFO and up) with the tour; by default only their
        /// errors are shown. RUST_LOG, when set, decides instead.
        #[arg(long)]
        logs: bool,
    },
    /// Closed-loop YCSB-style load against a node or a region; reports throughput and
    /// p50/p99/p99.9 latency per operation.
    Bench(bench::BenchArgs),
    /// Residency policies: check a policy file, apply one to a running deployment, explain
    /// where a key may live and where its copies are.
    Residency {
        #[command(subcommand)]
        command: residency_cmd::ResidencyCommand,
    },
    /// The deployment at a glance: every region's nodes (health, ring ownership, keys, disk,
    /// hints) and the region x region replication lag matrix with backlogs. Asks one node's
    /// peer address; `--watch` refreshes, `--json` for scripts.
    Status(status_cmd::StatusArgs),
    /// Whether a node is ready for client traffic (gRPC health): exit status 0 when it is.
    /// Needs no credentials (with TLS, only --ca).
    Health {
        /// The gRPC service to ask about ("" for the whole server).
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Backups of a running deployment: take one (consistent per node, while it serves,
    /// incremental), list them, verify their files.
    Backup {
        #[command(subcommand)]
        command: backup_cmd::BackupCommand,
    },
    /// Rebuild a stopped node's data directory from a backup (`geokv backup create`).
    Restore(restore_cmd::RestoreArgs),
    /// Certificates for TLS: a deployment CA, one certificate per node of a topology (its id
    /// and region in the names), client certificates.
    Certs {
        #[command(subcommand)]
        command: certs_cmd::CertsCommand,
    },
    /// Print a shell completion script: `source <(geokv completion bash)`, or save it where
    /// your shell loads completions from.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Operate single nodes: their view of the cluster (peer-stats), leaving the ring,
    /// cleanup, cross-region replication (repl-status) and its emulated links.
    Admin {
        #[command(subcommand)]
        command: admin_cmd::AdminCommand,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        // The error and its causes (a status from the gRPC layer as its code and message).
        let mut message = e.to_string();
        for cause in e.chain().skip(1) {
            message.push_str(": ");
            match cause.downcast_ref::<tonic::Status>() {
                Some(s) => message.push_str(&geokv_client::grpc::status_of(s).to_string()),
                None => message.push_str(&cause.to_string()),
            }
        }
        eprintln!("error: {message}");
        std::process::exit(cli_io::exit_code(&e));
    }
}

fn run(mut cli: Cli) -> anyhow::Result<()> {
    if cli.client.output == Output::Json {
        cli.client.json = true;
    }
    if let Command::Completion { shell } = cli.command {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "geokv", &mut script);
        return match std::io::Write::write_all(&mut std::io::stdout(), &script) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
            _ => Ok(()),
        };
    }
    // The demo's nodes run in this process: their logs would bury the tour.
    let default_filter = match cli.command {
        Command::Demo { logs: false, .. } => "error",
        _ => "info,h2=warn,tower=warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    client_cmd::set_connection(cli.client.endpoints(), cli.client.security());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        match cli.command {
            Command::Server(args) => server_cmd::run(args).await,
            Command::Demo { keep_running, data_dir, .. } => demo::run(keep_running, data_dir).await,
            Command::Bench(args) => {
                bench::run(args, cli.client.endpoints(), cli.client.consistency, cli.client.json).await
            }
            Command::Residency { command } => residency_cmd::run(command, cli.client.json).await,
            Command::Status(args) => status_cmd::run(args, cli.client.json).await,
            Command::Certs { command } => certs_cmd::run(command),
            Command::Backup { command } => backup_cmd::run(command, cli.client.json).await,
            Command::Restore(args) => restore_cmd::restore(args, cli.client.json),
            Command::Health { service } => health_cmd::run(&cli.client.endpoint(), &service).await,
            Command::Watch { prefix, from, count } => {
                watch_cmd::run(watch_cmd::WatchArgs { prefix, from, count }, &cli.client).await
            }
            Command::Client(cmd) => client_cmd::run(cmd, cli.client).await,
            Command::Admin { command } => admin_cmd::run(command, cli.client.json).await,
            Command::Completion { .. } => unreachable!("printed before the runtime starts"),
        }
    })
}
