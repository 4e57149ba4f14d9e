//! `network create` and `network delete`: edits of networks.yaml.
//!
//! The edit is done on the text, so the user's comments and layout are kept: a new network is
//! appended at the end of the `networks:` block (in block style, at the block's indentation), a
//! deleted one loses its key line and its indented body. The result is parsed again and must
//! equal the intended configuration; if it does not (unusual layouts such as a flow-style
//! `networks: {...}`), the configuration is re-serialised instead, which drops comments (a
//! warning says so). Writes are atomic (temp file, fsync, rename) with mode 0644, under an
//! exclusive `flock` on `_config` so concurrent edits do not lose each other's changes.

use crate::error::ConfigError;
use crate::home::LimaHome;
use crate::networks::{self, Mode, Network, NetworksConfig};
use crate::quote::go_quote_backtick as q;
use crate::{fsutil, identifiers, yaml};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

/// What `network create` was asked for.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// The network name.
    pub name: String,
    /// The mode (`user-v2` by default).
    pub mode: Option<Mode>,
    /// `--gateway`, an address with optional `/prefix` (default /24).
    pub gateway: Option<String>,
    /// `--interface` (bridged only).
    pub interface: Option<String>,
}

/// Builds the entry `network create` writes, with Lima's checks and messages. Lima writes no
/// `dhcpEnd`; limanet's load-time defaults supply it.
pub fn entry_for(req: &CreateRequest) -> Result<Network, ConfigError> {
    identifiers::validate(&req.name).map_err(|error| ConfigError::InvalidNetworkName {
        name: req.name.clone(),
        error,
    })?;
    let mode = req.mode.clone().unwrap_or(Mode::UserV2);
    let bad = |msg: String| Err(ConfigError::InvalidRequest(msg));
    match mode {
        Mode::Bridged => {
            if req.gateway.as_deref().is_some_and(|g| !g.is_empty()) {
                return bad(format!(
                    "network mode {} does not support specifying gateway",
                    q(mode.as_str())
                ));
            }
            let interface = req.interface.clone().unwrap_or_default();
            if interface.is_empty() {
                return bad(format!(
                    "network mode {} requires specifying interface",
                    q(mode.as_str())
                ));
            }
            identifiers::validate(&interface).map_err(|error| ConfigError::InvalidInterface {
                interface: interface.clone(),
                network: req.name.clone(),
                error,
            })?;
            Ok(Network {
                mode,
                interface,
                ..Default::default()
            })
        }
        Mode::UserV2 | Mode::Host | Mode::Shared => {
            let gateway = req.gateway.clone().unwrap_or_default();
            if gateway.is_empty() {
                return bad(format!(
                    "network mode {} requires specifying gateway",
                    q(mode.as_str())
                ));
            }
            if req.interface.as_deref().is_some_and(|i| !i.is_empty()) {
                return bad(format!(
                    "network mode {} does not support specifying interface",
                    q(mode.as_str())
                ));
            }
            let cidr = if gateway.contains('/') {
                gateway.clone()
            } else {
                format!("{gateway}/24")
            };
            let (ip, prefix) = parse_cidr(&cidr).ok_or_else(|| {
                ConfigError::InvalidRequest(format!(
                    "failed to parse CIDR {}: invalid CIDR address: {cidr}",
                    q(&cidr)
                ))
            })?;
            if ip.is_unspecified() || ip.is_loopback() {
                return bad(format!("invalid IP address: {ip}"));
            }
            Ok(Network {
                mode,
                gateway: Some(ip),
                netmask: Some(Ipv4Addr::from(crate::usernet::mask(prefix))),
                ..Default::default()
            })
        }
        Mode::Other(m) => bad(format!(
            "network mode {} is not supported; expected one of user-v2, host, shared, bridged",
            q(&m)
        )),
    }
}

/// `a.b.c.d/n` with n in 0..=32.
fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, prefix) = s.split_once('/')?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32 && !prefix.starts_with('+'))?;
    Some((ip.parse().ok()?, prefix))
}

/// `network create`: adds the entry to networks.yaml (created from the template if missing).
pub fn create(home: &LimaHome, req: &CreateRequest) -> Result<(), ConfigError> {
    let entry = entry_for(req)?;
    with_locked_file(home, |config, text| {
        if config.networks.contains_key(&req.name) {
            return Err(ConfigError::AlreadyExists(req.name.clone()));
        }
        let mut expected = networks::parse(text, &home.networks_yaml())?;
        expected.networks.insert(req.name.clone(), entry.clone());
        Ok(Some((insert_text(text, &req.name, &entry), expected)))
    })
}

/// `network delete`: removes the named networks (names that are not in the file are ignored,
/// with a warning, as Lima's `del(...)` does). In-use networks are not checked (as in Lima).
pub fn delete(home: &LimaHome, names: &[String]) -> Result<(), ConfigError> {
    with_locked_file(home, |_config, text| {
        let file = home.networks_yaml();
        let mut expected = networks::parse(text, &file)?;
        let mut new_text = Some(text.to_owned());
        for name in names {
            if expected.networks.remove(name).is_none() {
                tracing::warn!(
                    "network {} is not defined in {}; nothing to delete",
                    q(name),
                    file.display()
                );
                continue;
            }
            new_text = new_text.and_then(|t| remove_text(&t, name));
        }
        Ok(Some((new_text, expected)))
    })
}

type Edit = (Option<String>, NetworksConfig);

/// Loads the config under an exclusive lock on `_config`, lets `f` compute the new text (or
/// `None` when a text edit is not possible) and the configuration it must parse to, and writes
/// the result atomically.
fn with_locked_file(
    home: &LimaHome,
    f: impl FnOnce(&NetworksConfig, &str) -> Result<Option<Edit>, ConfigError>,
) -> Result<(), ConfigError> {
    // Creates the file from the template on first use (and fails early on a broken file).
    networks::load(home)?;
    let dir = home.config_dir();
    let lock = std::fs::File::open(&dir).map_err(|e| ConfigError::io("cannot open", &dir, e))?;
    // SAFETY: flock on a valid, owned fd; the lock is released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(ConfigError::io(
            "cannot lock",
            &dir,
            std::io::Error::last_os_error(),
        ));
    }
    let file = home.networks_yaml();
    // Read under the lock: another process may have changed the file since `load`.
    let text =
        std::fs::read_to_string(&file).map_err(|e| ConfigError::io("cannot read", &file, e))?;
    let mut config = networks::parse(&text, &file)?;
    config.fill_defaults();
    let Some((new_text, expected)) = f(&config, &text)? else {
        return Ok(());
    };
    let verified = new_text.filter(|t| networks::parse(t, &file).ok().as_ref() == Some(&expected));
    let out = match verified {
        Some(t) => t,
        None => {
            tracing::warn!(file = %file.display(), "could not edit networks.yaml in place; rewriting it without its comments");
            reserialise(&expected)?
        }
    };
    fsutil::write_atomic(&file, out.as_bytes(), 0o644)?;
    drop(lock);
    Ok(())
}

/// Serialises a configuration (block style, no comments).
pub fn reserialise(config: &NetworksConfig) -> Result<String, ConfigError> {
    serde_saphyr::to_string(config)
        .map_err(|e| ConfigError::InvalidRequest(format!("cannot serialise networks.yaml: {e}")))
}

/// Leading spaces of a line.
pub(crate) fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Blank or comment-only.
pub(crate) fn is_filler(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// Line range of the `networks:` block body (after the key line) when `networks:` is a
/// top-level key with a block value. `Err(())` when it has an inline value.
fn networks_block(lines: &[&str]) -> Option<Result<(usize, usize), ()>> {
    let key = lines.iter().position(|l| {
        l.strip_prefix("networks:")
            .is_some_and(|rest| rest.trim().is_empty() || rest.trim_start().starts_with('#'))
            || l.starts_with("networks: ")
    })?;
    let rest = lines[key]["networks:".len()..].trim();
    if !rest.is_empty() && !rest.starts_with('#') {
        return Some(Err(()));
    }
    let end = (key + 1..lines.len())
        .find(|&i| !is_filler(lines[i]) && indent(lines[i]) == 0)
        .unwrap_or(lines.len());
    Some(Ok((key + 1, end)))
}

fn entry_lines(name: &str, net: &Network, ci: usize) -> Vec<String> {
    let pad = " ".repeat(ci);
    let mut out = vec![
        format!("{pad}{}:", yaml::quote_scalar(name)),
        format!("{pad}  mode: {}", yaml::quote_scalar(net.mode.as_str())),
    ];
    if !net.interface.is_empty() {
        out.push(format!(
            "{pad}  interface: {}",
            yaml::quote_scalar(&net.interface)
        ));
    }
    for (k, v) in [
        ("gateway", net.gateway),
        ("dhcpEnd", net.dhcp_end),
        ("netmask", net.netmask),
    ] {
        if let Some(ip) = v {
            out.push(format!("{pad}  {k}: {ip}"));
        }
    }
    out
}

/// Appends `name` to the `networks:` block, or adds the block at the end of the file.
fn insert_text(text: &str, name: &str, net: &Network) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    match networks_block(&lines) {
        Some(Err(())) => return None,
        Some(Ok((start, end))) => {
            let content: Vec<usize> = (start..end).filter(|&i| !is_filler(lines[i])).collect();
            let ci = content.first().map_or(2, |&i| indent(lines[i]));
            let at = content.last().map_or(start, |&i| i + 1);
            for (k, l) in entry_lines(name, net, ci).into_iter().enumerate() {
                out.insert(at + k, l);
            }
        }
        None => {
            out.push("networks:".to_owned());
            out.extend(entry_lines(name, net, 2));
        }
    }
    Some(out.join("\n") + "\n")
}

/// Line and indentation of network `name`'s key (plain or quoted) in the `networks:` block.
pub(crate) fn network_key(lines: &[&str], name: &str) -> Option<(usize, usize)> {
    let (start, end) = networks_block(lines)?.ok()?;
    let ci = (start..end)
        .find(|&i| !is_filler(lines[i]))
        .map(|i| indent(lines[i]))?;
    let keys = [
        format!("{name}:"),
        format!("\"{name}\":"),
        format!("'{name}':"),
    ];
    (start..end)
        .find(|&i| {
            indent(lines[i]) == ci && keys.iter().any(|k| lines[i][ci..].starts_with(k.as_str()))
        })
        .map(|i| (i, ci))
}

/// Removes `name`'s key line and body from the `networks:` block.
fn remove_text(text: &str, name: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let (_, end) = networks_block(&lines)?.ok()?;
    let (first, ci) = network_key(&lines, name)?;
    // The body: every following line indented deeper, up to the last such content line
    // (comments after it belong to the next entry).
    let mut last = first;
    for (i, line) in lines.iter().enumerate().take(end).skip(first + 1) {
        if is_filler(line) {
            continue;
        }
        if indent(line) <= ci {
            break;
        }
        last = i;
    }
    let mut out: Vec<&str> = lines[..first].to_vec();
    out.extend_from_slice(&lines[last + 1..]);
    Some(out.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(mode: Mode, gw: Option<[u8; 4]>) -> Network {
        Network {
            mode,
            gateway: gw.map(Ipv4Addr::from),
            netmask: gw.map(|_| Ipv4Addr::new(255, 255, 255, 0)),
            ..Default::default()
        }
    }

    #[test]
    fn insert_keeps_comments_and_indentation() {
        let text = "# top\nnetworks:\n    a:\n      mode: shared # c\n    # about b\n    b: {mode: host}\n\n# tail\ngroup: sudo\n";
        let out = insert_text(text, "new", &net(Mode::Shared, Some([10, 0, 0, 1]))).unwrap();
        assert_eq!(
            out,
            "# top\nnetworks:\n    a:\n      mode: shared # c\n    # about b\n    b: {mode: host}\n    new:\n      mode: shared\n      gateway: 10.0.0.1\n      netmask: 255.255.255.0\n\n# tail\ngroup: sudo\n"
        );
    }

    #[test]
    fn insert_without_block_appends_one() {
        let out = insert_text("group: sudo", "x", &net(Mode::UserV2, Some([10, 0, 0, 1]))).unwrap();
        assert_eq!(out, "group: sudo\nnetworks:\n  x:\n    mode: user-v2\n    gateway: 10.0.0.1\n    netmask: 255.255.255.0\n");
        assert!(insert_text("networks: {}\n", "x", &net(Mode::UserV2, None)).is_none());
    }

    #[test]
    fn remove_takes_body_but_not_next_comment() {
        let text = "networks:\n  a:\n    mode: shared\n    # inner\n    gateway: 1.2.3.4\n  # about b\n  b: {mode: host}\ngroup: x\n";
        assert_eq!(
            remove_text(text, "a").unwrap(),
            "networks:\n  # about b\n  b: {mode: host}\ngroup: x\n"
        );
        assert_eq!(remove_text(text, "b").unwrap(), "networks:\n  a:\n    mode: shared\n    # inner\n    gateway: 1.2.3.4\n  # about b\ngroup: x\n");
        assert!(remove_text(text, "c").is_none());
    }
}
