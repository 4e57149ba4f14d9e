//! `limanet sudoers [--check [FILE]]`: prints the sudoers rules that let the admin group start
//! and stop the network daemons, or checks an installed file byte for byte (Lima's
//! `limactl sudoers`, with Linux's `root:root` as the daemon user and group).

use anyhow::bail;
use limanet_config::{load, LimaHome};

/// Command-line arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Check that FILE (default: `paths.sudoers` of networks.yaml) is up to date instead of printing.
    #[arg(long)]
    pub check: bool,
    /// The sudoers file to check (only with --check).
    pub file: Option<String>,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<u8> {
    let home = LimaHome::from_env()?;
    let config = load(&home)?;
    if let Err(e) = config.validate_located(&home) {
        tracing::info!("Please check https://lima-vm.io/docs/config/network/vmnet/#socket_vmnet for more information.");
        return Err(e.into());
    }
    if !args.check {
        if args.file.is_some() {
            bail!("the file argument can be specified only for --check mode");
        }
        print!("{}", config.sudoers());
        return Ok(0);
    }
    let file = args.file.unwrap_or_else(|| config.paths.sudoers.clone());
    if file.is_empty() {
        return Err(limanet_config::ConfigError::NoSudoersFile(home.networks_yaml()).into());
    }
    config.verify_sudo_access(&file)?;
    println!(
        "{} is up-to-date (or sudo doesn't require a password)",
        limanet_config::go_quote_backtick(&file)
    );
    Ok(0)
}
