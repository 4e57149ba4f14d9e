//! Not implemented yet.

/// `limanet network` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List networks.
    List,
}

/// Runs the subcommand.
pub fn run(_command: Command) -> anyhow::Result<u8> {
    anyhow::bail!("not implemented yet")
}
