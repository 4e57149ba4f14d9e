//! Finding where in networks.yaml a validation error comes from, so messages can name the
//! file, line and column (Lima's messages name neither).

use crate::edit::{indent, is_filler, network_key};
use crate::error::ConfigError;

/// 1-based line and column of the value (or key) an error is about, if it can be found in a
/// block-style file. Flow-style entries are found by key on their line.
pub(crate) fn locate(text: &str, err: &ConfigError) -> Option<(u64, u64)> {
    let lines: Vec<&str> = text.lines().collect();
    match err {
        ConfigError::InvalidGroup { .. } => top_level_key(&lines, "group"),
        ConfigError::InvalidNetworkName { name, .. } => {
            network_key(&lines, name).map(|(l, c)| to_pos(l, c))
        }
        ConfigError::InvalidMode { network, .. } => field_in_network(&lines, network, "mode"),
        ConfigError::InvalidInterface { network, .. } => {
            field_in_network(&lines, network, "interface")
        }
        ConfigError::PathField { field, .. } => path_field(&lines, field),
        ConfigError::SocketVmnetMissing(_) => path_field(&lines, "socketVMNet"),
        _ => None,
    }
}

fn to_pos(line: usize, col: usize) -> (u64, u64) {
    (line as u64 + 1, col as u64 + 1)
}

/// Column of the value after `key:` on `line` (which has the key at `key_col`), or of the key
/// when there is no value on the line.
fn value_col(line: &str, key_col: usize, key: &str) -> usize {
    let after = key_col + key.len() + 1;
    let rest = line.get(after..).unwrap_or("");
    if rest.trim().is_empty() || rest.trim_start().starts_with('#') {
        key_col
    } else {
        after + rest.len() - rest.trim_start().len()
    }
}

fn top_level_key(lines: &[&str], key: &str) -> Option<(u64, u64)> {
    let prefix = format!("{key}:");
    let i = lines.iter().position(|l| l.starts_with(&prefix))?;
    Some(to_pos(i, value_col(lines[i], 0, key)))
}

fn field_in_network(lines: &[&str], network: &str, field: &str) -> Option<(u64, u64)> {
    let (key_line, ci) = network_key(lines, network)?;
    // Flow style on the key line: `name: {mode: x, ...}`.
    let needle = format!("{field}:");
    if let Some(c) = lines[key_line]
        .find(&format!("{{{needle}"))
        .map(|c| c + 1)
        .or_else(|| lines[key_line].find(&format!(" {needle}")).map(|c| c + 1))
    {
        if c > ci + network.len() {
            return Some(to_pos(key_line, value_col(lines[key_line], c, field)));
        }
    }
    for (i, line) in lines.iter().enumerate().skip(key_line + 1) {
        if is_filler(line) {
            continue;
        }
        if indent(line) <= ci {
            break;
        }
        let col = indent(line);
        if line[col..].starts_with(&needle) {
            return Some(to_pos(i, value_col(line, col, field)));
        }
    }
    Some(to_pos(key_line, ci))
}

fn path_field(lines: &[&str], field: &str) -> Option<(u64, u64)> {
    let p = lines.iter().position(|l| l.starts_with("paths:"))?;
    let needle = format!("{field}:");
    for (i, line) in lines.iter().enumerate().skip(p + 1) {
        if is_filler(line) {
            continue;
        }
        if indent(line) == 0 {
            break;
        }
        let col = indent(line);
        if line[col..].starts_with(&needle) {
            return Some(to_pos(i, value_col(line, col, field)));
        }
    }
    // Flow style: `paths: {socketVMNet: ...}`.
    lines[p]
        .find(&needle)
        .map(|c| to_pos(p, value_col(lines[p], c, field)))
}
