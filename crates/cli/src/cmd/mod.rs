//! One module per subcommand. Each exposes clap `Args` and a `run` returning the exit code.

pub mod choose;
pub mod dns;
pub mod instance;
pub mod network;
pub mod run;
pub mod sudoers;
pub mod usernet;
pub mod vmnet;
