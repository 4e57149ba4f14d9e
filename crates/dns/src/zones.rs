//! Local zones added at run time through the user-v2 API (gvproxy's `POST /services/dns/add`),
//! answered as gvisor-tap-vsock's DNS server answers them (lima-behaviour.md §1.10, §7.10):
//!
//! - the first zone whose name is a suffix of the query name (after a dot) decides;
//! - only A queries are answered from a zone; other types fall through to the normal path;
//! - a record matches by exact name (the query name without the zone suffix) or by regular
//!   expression, the first matching record wins;
//! - no matching record: the zone's default IP, or NXDOMAIN when it has none;
//! - adding a zone whose name exists already puts the new records before the old ones and
//!   takes the new default IP.
//!
//! Deviations from gvproxy, and why: names compare case-insensitively (DNS names do; gvproxy
//! compares bytes, so `LIMA-VM.internal` missed), and a zone name given without the final dot
//! (Lima's single-label hosts, e.g. `localhost`) is treated as if it had one, so it matches
//! `*.localhost.` (gvproxy compares against the dotted query name and never matches it).

use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

/// One record of a zone.
#[derive(Debug, Clone)]
pub struct ZoneRecord {
    /// Name relative to the zone (`lima-vm1` in zone `internal.`); empty when only `regexp`
    /// is used.
    pub name: String,
    /// The address answered; `None` answers NOERROR without an address.
    pub ip: Option<Ipv4Addr>,
    /// Matches relative names anywhere in the name (Go's `MatchString`).
    pub regexp: Option<regex::Regex>,
}

/// A zone: a name suffix, its records and an optional default address.
#[derive(Debug, Clone)]
pub struct Zone {
    /// The suffix, e.g. `internal.`.
    pub name: String,
    pub records: Vec<ZoneRecord>,
    pub default_ip: Option<Ipv4Addr>,
}

/// What the zones say about a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneAnswer {
    /// No zone covers the name.
    NotInZone,
    /// A zone covers the name but the query is not for A: answer it the normal way.
    FallThrough,
    /// Answer with this address (`None`: NOERROR with no answer).
    Address(Option<Ipv4Addr>),
    /// The zone covers the name and nothing in it matches.
    NxDomain,
}

/// The zone list, ordered as added.
#[derive(Debug, Clone, Default)]
pub struct Zones {
    zones: Vec<Zone>,
}

/// Lower case with a final dot.
fn dotted(name: &str) -> String {
    let mut n = name.to_ascii_lowercase();
    if !n.ends_with('.') {
        n.push('.');
    }
    n
}

/// Most zones a network holds: the API is local, but a client must not grow memory without end.
pub const MAX_ZONES: usize = 256;
/// Most records a zone holds.
pub const MAX_RECORDS_PER_ZONE: usize = 1024;

/// Why a zone was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    #[error("too many DNS zones (at most {MAX_ZONES})")]
    TooManyZones,
    #[error("zone {0:?} would hold more than {MAX_RECORDS_PER_ZONE} records")]
    TooManyRecords(String),
}

impl Zones {
    /// Adds a zone, merging into an existing zone of the same name (new records first, new
    /// default IP), as gvproxy does. Unlike gvproxy, an older record with the name of a new one
    /// is dropped rather than kept behind it (the first match answers, so lookups are the same,
    /// but a zone re-added at every VM start no longer grows).
    pub fn add(&mut self, mut zone: Zone) -> Result<(), ZoneError> {
        if let Some(existing) = self.zones.iter_mut().find(|z| z.name == zone.name) {
            let shadowed = |r: &ZoneRecord| {
                !r.name.is_empty()
                    && zone
                        .records
                        .iter()
                        .any(|n| n.name.eq_ignore_ascii_case(&r.name))
            };
            let kept: Vec<ZoneRecord> = existing
                .records
                .iter()
                .filter(|r| !shadowed(r))
                .cloned()
                .collect();
            if zone.records.len() + kept.len() > MAX_RECORDS_PER_ZONE {
                return Err(ZoneError::TooManyRecords(zone.name));
            }
            zone.records.extend(kept);
            *existing = zone;
        } else {
            if self.zones.len() >= MAX_ZONES {
                return Err(ZoneError::TooManyZones);
            }
            if zone.records.len() > MAX_RECORDS_PER_ZONE {
                return Err(ZoneError::TooManyRecords(zone.name));
            }
            self.zones.push(zone);
        }
        Ok(())
    }

    /// The zones, in matching order.
    pub fn all(&self) -> &[Zone] {
        &self.zones
    }

    /// Looks `qname` (any case, with or without the final dot) up; `is_a` tells whether the
    /// query is for an A record.
    pub fn lookup(&self, qname: &str, is_a: bool) -> ZoneAnswer {
        let qname = dotted(qname);
        for zone in &self.zones {
            let suffix = format!(".{}", dotted(&zone.name));
            let Some(relative) = qname.strip_suffix(&suffix) else {
                continue;
            };
            if !is_a {
                return ZoneAnswer::FallThrough;
            }
            for record in &zone.records {
                let by_name = !record.name.is_empty() && record.name.eq_ignore_ascii_case(relative);
                let by_regexp = record.regexp.as_ref().is_some_and(|r| r.is_match(relative));
                if by_name || by_regexp {
                    return ZoneAnswer::Address(record.ip);
                }
            }
            return match zone.default_ip {
                Some(ip) => ZoneAnswer::Address(Some(ip)),
                None => ZoneAnswer::NxDomain,
            };
        }
        ZoneAnswer::NotInZone
    }
}

/// A shared, runtime-editable handle on the zones: the API thread adds, the DNS server reads.
#[derive(Debug, Clone, Default)]
pub struct ZonesHandle {
    inner: Arc<RwLock<Zones>>,
    /// Bumped by every edit, so caches of answers know when they are out of date.
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl ZonesHandle {
    /// Adds (or merges) a zone.
    pub fn add(&self, zone: Zone) -> Result<(), ZoneError> {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .add(zone)?;
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// Changes with every edit.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A copy of the zones.
    pub fn snapshot(&self) -> Vec<Zone> {
        self.read().all().to_vec()
    }

    /// See [`Zones::lookup`].
    pub fn lookup(&self, qname: &str, is_a: bool) -> ZoneAnswer {
        self.read().lookup(qname, is_a)
    }

    // Every mutation is one assignment or push: a poisoned lock holds a consistent list.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Zones> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, ip: [u8; 4]) -> ZoneRecord {
        ZoneRecord {
            name: name.into(),
            ip: Some(ip.into()),
            regexp: None,
        }
    }

    #[test]
    fn gvproxy_semantics() {
        let mut zones = Zones::default();
        zones
            .add(Zone {
                name: "internal.".into(),
                records: vec![record("host.lima", [192, 168, 104, 2])],
                default_ip: None,
            })
            .unwrap();
        zones
            .add(Zone {
                name: "localhost".into(),
                records: vec![],
                default_ip: Some([127, 0, 0, 1].into()),
            })
            .unwrap();
        assert_eq!(
            zones.lookup("host.lima.internal.", true),
            ZoneAnswer::Address(Some([192, 168, 104, 2].into()))
        );
        assert_eq!(
            zones.lookup("HOST.Lima.Internal", true),
            ZoneAnswer::Address(Some([192, 168, 104, 2].into()))
        );
        assert_eq!(
            zones.lookup("host.lima.internal.", false),
            ZoneAnswer::FallThrough
        );
        assert_eq!(
            zones.lookup("nothing.internal.", true),
            ZoneAnswer::NxDomain
        );
        assert_eq!(zones.lookup("internal.", true), ZoneAnswer::NotInZone);
        assert_eq!(zones.lookup("example.com.", true), ZoneAnswer::NotInZone);
        assert_eq!(
            zones.lookup("a.b.localhost.", true),
            ZoneAnswer::Address(Some([127, 0, 0, 1].into()))
        );
        assert_eq!(zones.lookup("localhost.", true), ZoneAnswer::NotInZone);

        // Added again: new records first, old ones kept.
        zones
            .add(Zone {
                name: "internal.".into(),
                records: vec![
                    record("lima-vm1", [192, 168, 104, 1]),
                    record("host.lima", [10, 0, 0, 1]),
                ],
                default_ip: None,
            })
            .unwrap();
        assert_eq!(zones.all().len(), 2);
        // lima-vm1 and the new host.lima; the older host.lima record was replaced.
        assert_eq!(zones.all()[0].records.len(), 2);
        assert_eq!(
            zones.lookup("host.lima.internal.", true),
            ZoneAnswer::Address(Some([10, 0, 0, 1].into()))
        );
        assert_eq!(
            zones.lookup("lima-vm1.internal.", true),
            ZoneAnswer::Address(Some([192, 168, 104, 1].into()))
        );
    }

    #[test]
    fn regexp_and_default_ip() {
        let mut zones = Zones::default();
        zones
            .add(Zone {
                name: "test.".into(),
                records: vec![ZoneRecord {
                    name: String::new(),
                    ip: Some([10, 1, 1, 1].into()),
                    regexp: Some(regex::Regex::new("^web-[0-9]+$").unwrap()),
                }],
                default_ip: Some([10, 9, 9, 9].into()),
            })
            .unwrap();
        assert_eq!(
            zones.lookup("web-12.test.", true),
            ZoneAnswer::Address(Some([10, 1, 1, 1].into()))
        );
        assert_eq!(
            zones.lookup("other.test.", true),
            ZoneAnswer::Address(Some([10, 9, 9, 9].into()))
        );
        // The first matching zone decides, even if a later one would match too.
        zones
            .add(Zone {
                name: "sub.test.".into(),
                records: vec![record("x", [1, 2, 3, 4])],
                default_ip: None,
            })
            .unwrap();
        assert_eq!(
            zones.lookup("x.sub.test.", true),
            ZoneAnswer::Address(Some([10, 9, 9, 9].into()))
        );
    }

    #[test]
    fn re_added_names_replace_older_records_and_sizes_are_bounded() {
        let mut zones = Zones::default();
        let zone = |recs: Vec<ZoneRecord>| Zone {
            name: "internal.".into(),
            records: recs,
            default_ip: None,
        };
        zones
            .add(zone(vec![record("lima-a", [10, 0, 0, 1])]))
            .unwrap();
        zones
            .add(zone(vec![record("lima-b", [10, 0, 0, 2])]))
            .unwrap();
        zones
            .add(zone(vec![record("LIMA-A", [10, 0, 0, 3])]))
            .unwrap();
        // The newest lima-a answers, the older one is gone, lima-b stays.
        assert_eq!(zones.all()[0].records.len(), 2);
        assert_eq!(
            zones.lookup("lima-a.internal.", true),
            ZoneAnswer::Address(Some([10, 0, 0, 3].into()))
        );
        assert_eq!(
            zones.lookup("lima-b.internal.", true),
            ZoneAnswer::Address(Some([10, 0, 0, 2].into()))
        );
        let many: Vec<ZoneRecord> = (0..=MAX_RECORDS_PER_ZONE)
            .map(|i| record(&format!("h{i}"), [10, 0, 0, 9]))
            .collect();
        assert!(matches!(
            zones.add(zone(many)),
            Err(ZoneError::TooManyRecords(_))
        ));
        for i in 1..MAX_ZONES {
            zones
                .add(Zone {
                    name: format!("z{i}."),
                    records: Vec::new(),
                    default_ip: None,
                })
                .unwrap();
        }
        let full = zones.add(Zone {
            name: "one-too-many.".into(),
            records: Vec::new(),
            default_ip: None,
        });
        assert_eq!(full, Err(ZoneError::TooManyZones));
        // A refused zone changed nothing.
        assert_eq!(zones.all().len(), MAX_ZONES);
    }
}
