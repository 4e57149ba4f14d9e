//! Static host names as gvisor-tap-vsock DNS zones, the way Lima registers them with a user-v2
//! network (`dnshosts.ExtractZones`, §1.10), and the JSON shapes of gvproxy's `types.Zone`.
//!
//! A name without a dot is a zone of its own whose default IP is the name's address (the first
//! one wins). Any other name is split at its last dot: the zone is the last label plus `.`,
//! the record is everything before it (`lima-vm1.internal` is record `lima-vm1` in zone
//! `internal.`). Values are followed through the map until they parse as an IP address, so
//! `alias=host.lima.internal` gets the gateway's address; a name that leads nowhere gets no
//! address (gvproxy then answers it with nothing).
//!
//! Pure data: no I/O.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// One A record of a zone (gvproxy `types.Record`). The JSON field names are Go's defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The name inside the zone, e.g. `lima-vm1` in zone `internal.`.
    #[serde(rename = "Name")]
    pub name: String,
    /// The address; `None` is Go's nil IP, sent as `""`.
    #[serde(rename = "IP", with = "go_ip")]
    pub ip: Option<IpAddr>,
}

/// A DNS zone (gvproxy `types.Zone`), as `POST /services/dns/add` takes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zone {
    /// `internal.` for records under `.internal`; a bare name (`localhost`) for a dotless host.
    #[serde(rename = "Name")]
    pub name: String,
    /// Records; Go sends `null` for none.
    #[serde(rename = "Records", with = "go_slice")]
    pub records: Vec<Record>,
    /// The address for names in the zone without a record; `None` is sent as `""`.
    #[serde(rename = "DefaultIP", with = "go_ip")]
    pub default_ip: Option<IpAddr>,
}

/// Lima's `hostname.FromInstName`: `lima-` plus the instance name with `.` and `_` as `-`.
pub fn hostname_from_inst_name(name: &str) -> String {
    format!("lima-{}", name.replace(['.', '_'], "-"))
}

/// Lima's `ExtractZones`: the zones for a map of host name → IP or other host name. Zones come
/// out sorted by name and records in name order, so requests are reproducible (Lima's order
/// follows Go's random map iteration).
pub fn extract_zones(hosts: &BTreeMap<String, String>) -> Vec<Zone> {
    let mut zones: BTreeMap<String, Zone> = BTreeMap::new();
    for host in hosts.keys() {
        let (zone_name, record_name) = zone_host(host);
        let zone = zones.entry(zone_name.clone()).or_insert_with(|| Zone {
            name: zone_name,
            records: Vec::new(),
            default_ip: None,
        });
        let ip = host_ip(hosts, host);
        match record_name {
            None => {
                if zone.default_ip.is_none() {
                    zone.default_ip = ip;
                }
            }
            Some(record) => zone.records.push(Record { name: record, ip }),
        }
    }
    zones.into_values().collect()
}

/// (zone name, record name) of one host: Lima's `zoneHost.name()` and `recordName()`.
fn zone_host(host: &str) -> (String, Option<String>) {
    match host.rfind('.') {
        None => (host.to_owned(), None),
        Some(i) => (format!("{}.", &host[i + 1..]), Some(host[..i].to_owned())),
    }
}

/// Lima's `hostMap.hostIP`: follows names through the map until a value is an IP address.
/// A cycle or a missing name gives `None` (Lima loops forever on a cycle; a bound is kinder).
fn host_ip(hosts: &BTreeMap<String, String>, host: &str) -> Option<IpAddr> {
    let mut name = host;
    for _ in 0..=hosts.len() {
        let value = hosts.get(name).filter(|v| !v.is_empty())?;
        if let Ok(ip) = value.parse() {
            return Some(ip);
        }
        name = value;
    }
    None
}

/// Go's `net.IP` text form: `""` for nil.
mod go_ip {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::net::IpAddr;

    pub fn serialize<S: Serializer>(ip: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
        match ip {
            Some(ip) => s.collect_str(ip),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        match text.as_deref() {
            None | Some("") => Ok(None),
            Some(t) => t.parse().map(Some).map_err(serde::de::Error::custom),
        }
    }
}

/// Go's nil slice: `null` when empty.
mod go_slice {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        if v.is_empty() {
            s.serialize_none()
        } else {
            v.serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Vec<T>, D::Error> {
        Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("test address"))
    }

    /// Lima's `Test_hostsMapIP`.
    #[test]
    fn host_ip_vectors() {
        let hosts = map(&[
            ("sample", "1.1.1.1"),
            ("another.sample", "1.2.2.1"),
            ("google.com", "8.8.8.8"),
            ("google.ae", "google.com"),
            ("google.ie", "google.ae"),
        ]);
        assert_eq!(host_ip(&hosts, "sample"), ip("1.1.1.1"));
        assert_eq!(host_ip(&hosts, "another.sample"), ip("1.2.2.1"));
        assert_eq!(host_ip(&hosts, "google.com"), ip("8.8.8.8"));
        assert_eq!(host_ip(&hosts, "google.ae"), ip("8.8.8.8"));
        assert_eq!(host_ip(&hosts, "google.ie"), ip("8.8.8.8"));
        assert_eq!(host_ip(&hosts, "google.sample"), None);
        // Beyond Lima: a cycle ends.
        let cycle = map(&[("a.x", "b.x"), ("b.x", "a.x")]);
        assert_eq!(host_ip(&cycle, "a.x"), None);
    }

    /// Lima's `Test_zoneHost`.
    #[test]
    fn zone_host_vectors() {
        let cases = [
            ("", ("", None)),
            ("sample", ("sample", None)),
            ("another.sample", ("sample.", Some("another"))),
            ("another.sample.com", ("com.", Some("another.sample"))),
            ("a.c", ("c.", Some("a"))),
            ("a.b.c.d", ("d.", Some("a.b.c"))),
        ];
        for (host, (zone, record)) in cases {
            assert_eq!(
                zone_host(host),
                (zone.to_owned(), record.map(str::to_owned)),
                "{host:?}"
            );
        }
    }

    /// Lima's `TestExtractZones`.
    #[test]
    fn extract_zones_vector() {
        let hosts = map(&[
            ("google.com", "8.8.4.4"),
            ("local.google.com", "8.8.8.8"),
            ("google.ae", "google.com"),
            ("localhost", "127.0.0.1"),
            ("host.lima.internal", "192.168.5.2"),
            ("host.docker.internal", "host.lima.internal"),
        ]);
        let rec = |name: &str, addr: &str| Record {
            name: name.to_owned(),
            ip: ip(addr),
        };
        let want = vec![
            Zone {
                name: "ae.".into(),
                records: vec![rec("google", "8.8.4.4")],
                default_ip: None,
            },
            Zone {
                name: "com.".into(),
                records: vec![rec("google", "8.8.4.4"), rec("local.google", "8.8.8.8")],
                default_ip: None,
            },
            Zone {
                name: "internal.".into(),
                records: vec![
                    rec("host.docker", "192.168.5.2"),
                    rec("host.lima", "192.168.5.2"),
                ],
                default_ip: None,
            },
            Zone {
                name: "localhost".into(),
                records: Vec::new(),
                default_ip: ip("127.0.0.1"),
            },
        ];
        assert_eq!(extract_zones(&hosts), want);
    }

    #[test]
    fn zones_use_gvproxys_json_shape() -> serde_json::Result<()> {
        let hosts = map(&[
            ("lima-vm1.internal", "192.168.104.1"),
            ("localhost", "127.0.0.1"),
            ("nowhere.test", "missing.name"),
        ]);
        let zones = extract_zones(&hosts);
        let json = serde_json::to_string(&zones)?;
        assert_eq!(
            json,
            r#"[{"Name":"internal.","Records":[{"Name":"lima-vm1","IP":"192.168.104.1"}],"DefaultIP":""},{"Name":"localhost","Records":null,"DefaultIP":"127.0.0.1"},{"Name":"test.","Records":[{"Name":"nowhere","IP":""}],"DefaultIP":""}]"#
        );
        let back: Vec<Zone> = serde_json::from_str(&json)?;
        assert_eq!(back, zones);
        Ok(())
    }

    #[test]
    fn hostnames_follow_limas_rule() {
        assert_eq!(hostname_from_inst_name("vm1"), "lima-vm1");
        assert_eq!(hostname_from_inst_name("a.b_c-d"), "lima-a-b-c-d");
    }
}
