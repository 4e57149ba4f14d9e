//! Lima's network configuration for limanet: `networks.yaml` (schema, template, defaults,
//! validation including path security), the sudoers rules and daemon command lines derived from
//! it, user-v2 paths and subnet arithmetic, MAC derivation, and lima.yaml-style `networks:`
//! entries (merging, defaults, validation, `--network`/`--dns` flags).
//!
//! Everything follows Lima's behaviour (see the spec's §1, §2 and §7); where Lima leaves a
//! value unset by mistake, limanet fills a default and says so on the item.

pub mod edit;
mod error;
mod fsutil;
mod home;
pub mod identifiers;
pub mod limayaml;
mod locate;
pub mod mac;
pub mod networks;
pub mod pathsec;
pub mod quote;
pub mod usernet;
mod yaml;

pub use error::ConfigError;
pub use fsutil::write_atomic;
pub use home::LimaHome;
pub use networks::{
    load, log_file, privileged_argv, Mode, Network, NetworksConfig, Paths, DAEMON_SOCKET_VMNET,
};
pub use quote::go_quote_backtick;
pub use yaml::quote_scalar;
