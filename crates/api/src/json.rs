//! gvproxy's JSON shapes (gvisor-tap-vsock `pkg/types`), decoded the way Go's `encoding/json`
//! decodes them: unknown fields ignored, missing fields empty, field names in either of the
//! spellings clients use (Go matches them case-insensitively), one JSON value per body with
//! anything after it ignored.

use serde::{Deserialize, Deserializer, Serialize};
use std::net::Ipv4Addr;

/// `POST /services/forwarder/expose`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ExposeRequest {
    #[serde(alias = "Local", deserialize_with = "nullable")]
    pub local: String,
    #[serde(alias = "Remote", deserialize_with = "nullable")]
    pub remote: String,
    #[serde(alias = "Protocol", deserialize_with = "nullable")]
    pub protocol: String,
}

/// `POST /services/forwarder/unexpose`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UnexposeRequest {
    #[serde(alias = "Local", deserialize_with = "nullable")]
    pub local: String,
    #[serde(alias = "Protocol", deserialize_with = "nullable")]
    pub protocol: String,
}

/// One entry of `GET /services/forwarder/all`.
#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Proxy {
    pub local: String,
    pub remote: String,
    pub protocol: String,
}

/// gvproxy's `types.Zone` (no JSON tags in Go, so the Go field names).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ZoneJson {
    #[serde(rename = "Name", alias = "name", deserialize_with = "nullable")]
    pub name: String,
    #[serde(rename = "Records", alias = "records", deserialize_with = "nullable")]
    pub records: Vec<RecordJson>,
    #[serde(
        rename = "DefaultIP",
        alias = "defaultIP",
        alias = "defaultIp",
        alias = "DefaultIp",
        deserialize_with = "go_ip",
        serialize_with = "go_ip_out"
    )]
    pub default_ip: Option<Ipv4Addr>,
}

/// gvproxy's `types.Record`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RecordJson {
    #[serde(rename = "Name", alias = "name", deserialize_with = "nullable")]
    pub name: String,
    #[serde(
        rename = "IP",
        alias = "ip",
        alias = "Ip",
        deserialize_with = "go_ip",
        serialize_with = "go_ip_out"
    )]
    pub ip: Option<Ipv4Addr>,
    #[serde(
        rename = "Regexp",
        alias = "regexp",
        skip_serializing_if = "Option::is_none"
    )]
    pub regexp: Option<String>,
}

/// Go leaves a field alone on `null` (a nil slice is encoded as `null`, e.g. the `Records` of
/// a zone that has only a default IP): the empty value.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A Go `net.IP` as JSON: a string, where `""` and `null` mean none. IPv4 only: an A record
/// cannot carry anything else.
fn go_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Addr>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    match text.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<Ipv4Addr>()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("invalid IPv4 address: {s}"))),
    }
}

fn go_ip_out<S: serde::Serializer>(ip: &Option<Ipv4Addr>, s: S) -> Result<S::Ok, S::Error> {
    match ip {
        Some(ip) => s.serialize_str(&ip.to_string()),
        None => s.serialize_str(""),
    }
}

/// Decodes the first JSON value of a body, like Go's `json.NewDecoder(r.Body).Decode`. An
/// empty body is an error ("EOF", as Go says).
pub fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<T>();
    match values.next() {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("EOF".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_as_lima_sends_it() {
        let z: ZoneJson = decode(
            br#"{"Name":"internal.","Records":[{"Name":"host.lima","IP":"192.168.104.2"}],"DefaultIP":""}"#,
        )
        .unwrap();
        assert_eq!(z.name, "internal.");
        assert_eq!(z.records[0].ip, Some(Ipv4Addr::new(192, 168, 104, 2)));
        assert_eq!(z.default_ip, None);
        let z: ZoneJson =
            decode(br#"{"name":"localhost","defaultIP":"127.0.0.1"} trailing"#).unwrap();
        assert_eq!(z.default_ip, Some(Ipv4Addr::LOCALHOST));
        assert!(decode::<ZoneJson>(br#"{"Name":5}"#).is_err());
        // Go encodes a nil slice as null (Lima's single-label hosts: a zone with only DefaultIP).
        let z: ZoneJson =
            decode(br#"{"Name":"localhost","Records":null,"DefaultIP":"127.0.0.1"}"#).unwrap();
        assert!(z.records.is_empty());
        let r: ExposeRequest = decode(br#"{"local":"127.0.0.1:1","protocol":null}"#).unwrap();
        assert_eq!(r.protocol, "");
        assert!(decode::<ZoneJson>(br#"{"DefaultIP":"x"}"#).is_err());
        assert_eq!(decode::<ZoneJson>(b"").unwrap_err(), "EOF");
        let out = serde_json::to_string(&z).unwrap();
        assert_eq!(
            out,
            r#"{"Name":"localhost","Records":[],"DefaultIP":"127.0.0.1"}"#
        );
    }

    #[test]
    fn expose_request() {
        let r: ExposeRequest =
            decode(br#"{"local":"127.0.0.1:2222","remote":"192.168.104.1:22","extra":1}"#).unwrap();
        assert_eq!(r.protocol, "");
        assert_eq!(r.remote, "192.168.104.1:22");
        assert!(decode::<ExposeRequest>(br#"{"local":2222}"#).is_err());
        assert!(decode::<ExposeRequest>(b"{").is_err());
    }
}
