//! `limanet`: Lima's VM networks in one binary.
//!
//! Each subcommand lives in its own module under `cmd/`; this file only parses the command line,
//! sets up logging and maps errors to exit codes.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod cmd;

#[derive(Parser)]
#[command(name = "limanet", version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax); `LIMANET_LOG` overrides it.
    #[arg(long, global = true, default_value = "info")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a user-mode network (Lima's default network, or a user-v2 network) to VMs and
    /// network namespaces.
    Usernet(cmd::usernet::Args),
    /// Run a command in a new network namespace attached to a new user-mode network.
    Run(cmd::run::Args),
    /// Serve the host-resolver DNS on loopback.
    Dns(cmd::dns::Args),
    /// Print (or check) the sudoers rules for the networks in networks.yaml.
    Sudoers(cmd::sudoers::Args),
    /// List, create and delete networks in networks.yaml.
    #[command(subcommand)]
    Network(cmd::network::Command),
    /// Start an instance: run a QEMU command with limanet's networks added.
    Start(cmd::instance::StartArgs),
    /// Stop an instance started with `limanet start`.
    Stop(cmd::instance::StopArgs),
    /// List instances.
    List(cmd::instance::ListArgs),
    /// Choose the right network for a use case, and print the command line for it.
    Choose(cmd::choose::Args),
    /// The socket_vmnet-compatible daemon for shared, host and bridged networks (socket_vmnet's
    /// command line: `--vmnet-mode=...`, `--pidfile=...`, ..., SOCKET; see `limanet vmnet --help`).
    #[command(disable_help_flag = true)]
    Vmnet {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Connect to a vmnet socket and run a command with the connection as fd 3
    /// (socket_vmnet_client).
    VmnetClient(cmd::vmnet::ClientArgs),
    /// Put a TAP device inside a network namespace on a stream-socket network.
    Attach(cmd::vmnet::AttachArgs),
    /// Install this binary as a root-owned `socket_vmnet` where networks.yaml looks for it.
    InstallVmnet(cmd::vmnet::InstallArgs),
}

fn main() -> ExitCode {
    // Installed as `socket_vmnet` (paths.socketVMNet), the binary is the vmnet daemon and takes
    // socket_vmnet's command line as Lima's sudoers rules run it.
    let mut argv = std::env::args();
    let argv0 = argv.next().unwrap_or_default();
    let base = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if base == "socket_vmnet" {
        init_logging(if std::env::var_os("DEBUG").is_some() {
            "debug"
        } else {
            "info"
        });
        return exit(cmd::vmnet::run_daemon(&argv0, argv.collect()));
    }
    let cli = Cli::parse();
    init_logging(&cli.log);
    let result = match cli.command {
        Command::Usernet(args) => cmd::usernet::run(args),
        Command::Run(args) => cmd::run::run(args),
        Command::Dns(args) => cmd::dns::run(args),
        Command::Sudoers(args) => cmd::sudoers::run(args),
        Command::Network(command) => cmd::network::run(command),
        Command::Start(args) => cmd::instance::start(args),
        Command::Stop(args) => cmd::instance::stop(args),
        Command::List(args) => cmd::instance::list(args),
        Command::Choose(args) => cmd::choose::run(args),
        Command::Vmnet { args } => cmd::vmnet::run_daemon("limanet vmnet", args),
        Command::VmnetClient(args) => cmd::vmnet::client(args),
        Command::Attach(args) => cmd::vmnet::attach(args),
        Command::InstallVmnet(args) => cmd::vmnet::install(args),
    };
    exit(result)
}

fn exit(result: anyhow::Result<u8>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("limanet: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("LIMANET_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
