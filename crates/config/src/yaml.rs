//! YAML helpers on top of serde-saphyr: errors with `<file>:<line>:<col>`, Go-style optional IP
//! fields, and scalar quoting for the text we write.

use crate::error::ConfigError;
use serde::de::DeserializeOwned;
use std::path::Path;

/// Parses `text` into `T`, turning errors into [`ConfigError::Parse`] with line and column.
pub(crate) fn from_str<T: DeserializeOwned>(text: &str, file: &Path) -> Result<T, ConfigError> {
    // An empty document is an empty config, as in Go's yaml.Unmarshal.
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        let message = e.without_snippet().to_string();
        ConfigError::Parse {
            file: file.to_owned(),
            line,
            column,
            message: strip_position(&message),
        }
    })
}

/// serde-saphyr appends its own position ("at line X, column Y"); we print ours in front.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Keys `networks.yaml` may contain; anything else makes Lima's strict parse fail.
pub(crate) fn unknown_keys(text: &str) -> Option<Vec<String>> {
    let value: serde_json::Value = serde_saphyr::from_str(text).ok()?;
    let mut unknown = Vec::new();
    let check = |v: &serde_json::Value, allowed: &[&str], prefix: &str, out: &mut Vec<String>| {
        if let Some(map) = v.as_object() {
            out.extend(
                map.keys()
                    .filter(|k| !allowed.contains(&k.as_str()))
                    .map(|k| format!("{prefix}{k}")),
            );
        }
    };
    check(&value, &["paths", "group", "networks"], "", &mut unknown);
    if let Some(paths) = value.get("paths") {
        check(
            paths,
            &["socketVMNet", "varRun", "sudoers"],
            "paths.",
            &mut unknown,
        );
    }
    if let Some(nets) = value.get("networks").and_then(|n| n.as_object()) {
        for (name, net) in nets {
            check(
                net,
                &["mode", "interface", "gateway", "dhcpEnd", "netmask"],
                &format!("networks.{name}."),
                &mut unknown,
            );
        }
    }
    (!unknown.is_empty()).then_some(unknown)
}

/// `null` (or a missing key, with `#[serde(default)]`) becomes `T::default()`.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de> + Default,
{
    use serde::Deserialize;
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Optional IPv4 fields: an absent, null or empty value is `None` (Go's nil `net.IP`).
pub(crate) mod opt_ip {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::net::Ipv4Addr;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Addr>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("invalid IPv4 address {s:?}"))),
        }
    }

    pub fn serialize<S: Serializer>(ip: &Option<Ipv4Addr>, s: S) -> Result<S::Ok, S::Error> {
        match ip {
            Some(ip) => s.serialize_str(&ip.to_string()),
            None => s.serialize_none(),
        }
    }
}

/// Writes `s` as a YAML scalar: plain when that reads back as the same string, otherwise
/// double-quoted with escapes.
pub fn quote_scalar(s: &str) -> String {
    const SPECIAL: &[&str] = &[
        "", "~", "null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE", "yes",
        "Yes", "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF", "y", "Y", "n", "N",
    ];
    let plain_safe = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+'))
        && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/' || c == '_')
        && !SPECIAL.contains(&s);
    if plain_safe {
        return s.to_owned();
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
