//! Not implemented yet.

/// `limanet start` arguments.
#[derive(clap::Args, Debug)]
pub struct StartArgs {}
/// `limanet stop` arguments.
#[derive(clap::Args, Debug)]
pub struct StopArgs {}
/// `limanet list` arguments.
#[derive(clap::Args, Debug)]
pub struct ListArgs {}

/// Starts an instance.
pub fn start(_args: StartArgs) -> anyhow::Result<u8> {
    anyhow::bail!("not implemented yet")
}
/// Stops an instance.
pub fn stop(_args: StopArgs) -> anyhow::Result<u8> {
    anyhow::bail!("not implemented yet")
}
/// Lists instances.
pub fn list(_args: ListArgs) -> anyhow::Result<u8> {
    anyhow::bail!("not implemented yet")
}
