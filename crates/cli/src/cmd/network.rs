//! `limanet network list|create|delete`: Lima's `limactl network` on networks.yaml.

use anyhow::bail;
use limanet_config::edit::{self, CreateRequest};
use limanet_config::usernet::prefix_len;
use limanet_config::{load, LimaHome, Mode, Network};
use serde::Serialize;
use std::io::Write;

/// `limanet network` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List networks (all, or the named ones).
    #[command(visible_alias = "ls")]
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Exact network names.
        names: Vec<String>,
    },
    /// Add a network to networks.yaml.
    Create {
        /// Network name.
        name: String,
        /// Network mode.
        #[arg(long, default_value = "user-v2", value_parser = Mode::KNOWN)]
        mode: String,
        /// Gateway address with optional prefix (default /24), e.g. 192.168.42.1/24 (not for bridged).
        #[arg(long)]
        gateway: Option<String>,
        /// Host interface (bridged only).
        #[arg(long)]
        interface: Option<String>,
    },
    /// Remove networks from networks.yaml (does not check whether instances use them).
    #[command(visible_aliases = ["remove", "rm"])]
    Delete {
        /// Network names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Required: confirms the deletion.
        #[arg(short, long)]
        force: bool,
    },
}

/// Runs the subcommand.
pub fn run(command: Command) -> anyhow::Result<u8> {
    let home = LimaHome::from_env()?;
    match command {
        Command::List { json, names } => list(&home, json, &names),
        Command::Create {
            name,
            mode,
            gateway,
            interface,
        } => {
            let req = CreateRequest {
                name,
                mode: Some(Mode::parse(&mode)),
                gateway,
                interface,
            };
            edit::create(&home, &req)?;
            Ok(0)
        }
        Command::Delete { names, force } => {
            if !force {
                bail!("`limanet network delete` currently always requires `--force`");
            }
            edit::delete(&home, &names)?;
            Ok(0)
        }
    }
}

/// One `--json` line (Lima's field order; empty fields omitted).
#[derive(Serialize)]
struct JsonNetwork<'a> {
    name: &'a str,
    mode: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    interface: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<String>,
    #[serde(rename = "dhcpEnd", skip_serializing_if = "Option::is_none")]
    dhcp_end: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    netmask: Option<String>,
}

fn list(home: &LimaHome, json: bool, names: &[String]) -> anyhow::Result<u8> {
    let config = load(home)?;
    for n in names {
        if !config.networks.contains_key(n) {
            tracing::warn!("No network matching {n} found.");
        }
    }
    let selected: Vec<(&String, &Network)> = config
        .networks
        .iter()
        .filter(|(name, _)| names.is_empty() || names.contains(name))
        .collect();
    let mut out = std::io::stdout().lock();
    if json {
        for (name, net) in selected {
            let line = JsonNetwork {
                name,
                mode: net.mode.as_str(),
                interface: &net.interface,
                gateway: net.gateway.map(|i| i.to_string()),
                dhcp_end: net.dhcp_end.map(|i| i.to_string()),
                netmask: net.netmask.map(|i| i.to_string()),
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        }
        return Ok(0);
    }
    let mut rows = vec![[
        "NAME".to_owned(),
        "MODE".to_owned(),
        "GATEWAY".to_owned(),
        "INTERFACE".to_owned(),
    ]];
    for (name, net) in selected {
        let gateway = match net.gateway {
            Some(gw) => match net.netmask {
                Some(mask) => format!("{gw}/{}", prefix_len(mask)),
                None => format!("{gw}/<nil>"),
            },
            None => "-".to_owned(),
        };
        let interface = if net.interface.is_empty() {
            "-".to_owned()
        } else {
            net.interface.clone()
        };
        rows.push([name.clone(), net.mode.to_string(), gateway, interface]);
    }
    out.write_all(tabwrite(&rows).as_bytes())?;
    Ok(0)
}

/// Go's tabwriter with minwidth 4, padding 4, space padding: every column but the last is
/// padded to its widest cell plus 4 (at least 4); the last one is printed as is.
pub fn tabwrite(rows: &[[String; 4]]) -> String {
    let mut widths = [0usize; 3];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count() + 4).max(4);
        }
    }
    let mut out = String::new();
    for row in rows {
        for (w, cell) in widths.iter().zip(row.iter()) {
            out.push_str(&format!("{cell:<w$}"));
        }
        out.push_str(&row[3]);
        out.push('\n');
    }
    out
}
