//! The per-query logic of Lima's hostagent DNS (`ServeDNS`, lima-behaviour.md §4.3), free of I/O:
//! look-ups go through the [`Lookup`] trait, and forwarding is left to the caller.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::sync::Arc;

use hickory_proto::op::{Message, OpCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::hosts::{canonical, HostsHandle};
use crate::message::{badvers, encode, reply_to};
use crate::zones::{ZoneAnswer, ZonesHandle};

/// TTL of every locally answered record, as in Lima.
pub const LOCAL_TTL: u32 = 5;

/// Maximum length of one TXT character-string.
const TXT_CHUNK: usize = 255;

/// A boxed future, so [`Lookup`] stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a look-up produced nothing. The handler treats every failure alike (the query is then
/// forwarded); the text is for logs.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LookupError(pub String);

/// The host's resolver, as the handler sees it.
pub trait Lookup: Send + Sync {
    /// Addresses of `name` (canonical, with trailing dot) as the system resolver sees them
    /// (getaddrinfo: /etc/hosts, nsswitch, DNS), only IPv6 ones when `ipv6`, else only IPv4,
    /// and the TTL to serve them with (at most [`LOCAL_TTL`]: less for a result cached a while).
    fn addresses<'a>(
        &'a self,
        name: &'a str,
        ipv6: bool,
    ) -> BoxFuture<'a, Result<(Vec<IpAddr>, u32), LookupError>>;

    /// Records of type `rtype` (TXT, NS, MX or SRV) for `name`, from the resolver that
    /// resolv.conf configures, after following any CNAME chain.
    fn records<'a>(
        &'a self,
        name: &'a Name,
        rtype: RecordType,
    ) -> BoxFuture<'a, Result<Vec<RData>, LookupError>>;

    /// The canonical name of `name` (canonical form): the end of its CNAME chain, or `name`
    /// itself when it has none.
    fn canonical_name<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<String, LookupError>>;
}

/// The network's knowledge of its guests' IPv6 addresses, for the AAAA records of guest names
/// (`lima-<NAME>`, `lima-<NAME>.internal`): static hosts and zones give those names the
/// guest's IPv4 address only (Lima registers nothing else), and the guest picks its IPv6
/// address itself (SLAAC), so the DNS asks the network which one the guest holding that IPv4
/// address uses.
pub trait GuestIpv6: Send + Sync {
    /// The IPv6 address the guest that holds `ip` has been seen using, if any.
    fn ipv6_of(&self, ip: Ipv4Addr) -> BoxFuture<'_, Option<Ipv6Addr>>;
}

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send this locally built reply.
    Reply(Vec<u8>),
    /// Nothing was answered locally: forward the request unchanged to the upstream servers.
    Forward,
}

/// The query handler: static hosts, the IPv6 switch and a [`Lookup`].
pub struct Handler<L: ?Sized> {
    hosts: HostsHandle,
    zones: ZonesHandle,
    ipv6: bool,
    lookup: std::sync::Arc<L>,
    guest_ipv6: Option<Arc<dyn GuestIpv6>>,
}

impl<L: Lookup + ?Sized> Handler<L> {
    /// Creates a handler.
    pub fn new(hosts: HostsHandle, ipv6: bool, lookup: std::sync::Arc<L>) -> Self {
        Self {
            hosts,
            zones: ZonesHandle::default(),
            ipv6,
            lookup,
            guest_ipv6: None,
        }
    }

    /// Answers AAAA queries for names whose static or zone address is a guest's IPv4 address
    /// with the IPv6 address `guests` knows for that guest.
    pub fn with_guest_ipv6(mut self, guests: Option<Arc<dyn GuestIpv6>>) -> Self {
        self.guest_ipv6 = guests;
        self
    }

    /// Answers from these run-time zones too (user-v2: gvproxy's `dns/add`).
    pub fn with_zones(mut self, zones: ZonesHandle) -> Self {
        self.zones = zones;
        self
    }

    /// The run-time zones.
    pub fn zones(&self) -> &ZonesHandle {
        &self.zones
    }

    /// The static hosts, editable at run time.
    pub fn hosts(&self) -> &HostsHandle {
        &self.hosts
    }

    /// Decides what to do with a request that passed [`crate::message::precheck`].
    ///
    /// Only QUERY with class IN is answered locally (NOTIFY and other classes are forwarded,
    /// like every type the table in lima-behaviour.md §4.3 does not handle). A failed look-up
    /// makes the request go upstream.
    pub async fn handle(&self, request: &Message) -> Outcome {
        if let Some(reply) = badvers(request) {
            return Outcome::Reply(reply);
        }
        let Some(question) = request.queries.first() else {
            return Outcome::Forward;
        };
        if request.op_code != OpCode::Query || question.query_class != DNSClass::IN {
            return Outcome::Forward;
        }
        let owner = question.name.clone();
        let mut reply = reply_to(request);
        if question.query_type == RecordType::AAAA && self.ipv6 {
            if let Some(ip) = self.guest_aaaa(&owner).await {
                reply.add_answer(Record::from_rdata(owner.clone(), 0, RData::AAAA(AAAA(ip))));
                reply.metadata.recursion_available = true;
                return Outcome::Reply(encode(&reply));
            }
        }
        if let Some(bytes) = self.zone_reply(&owner, question.query_type, &mut reply) {
            return Outcome::Reply(bytes);
        }
        let with_local_ttl =
            |answers: Result<Vec<RData>, LookupError>| answers.map(|records| (records, LOCAL_TTL));
        let answers = match question.query_type {
            RecordType::AAAA if !self.ipv6 => Ok((Vec::new(), LOCAL_TTL)),
            RecordType::A | RecordType::AAAA => {
                self.address_answers(&owner, question.query_type == RecordType::AAAA)
                    .await
            }
            RecordType::CNAME => with_local_ttl(self.cname_answer(&owner).await),
            RecordType::TXT => with_local_ttl(self.txt_answers(&owner).await),
            rtype @ (RecordType::NS | RecordType::MX | RecordType::SRV) => {
                with_local_ttl(self.other_answers(&owner, rtype).await)
            }
            _ => return Outcome::Forward,
        };
        match answers {
            Ok((records, ttl)) => {
                for data in records {
                    reply.add_answer(Record::from_rdata(owner.clone(), ttl, data));
                }
                Outcome::Reply(encode(&reply))
            }
            Err(err) => {
                tracing::debug!(name = %owner, rtype = %question.query_type, %err, "not answered locally; forwarding");
                Outcome::Forward
            }
        }
    }

    /// The reply from a run-time zone, if one covers an A query (as gvproxy: TTL 0, RA set).
    /// Static hosts win over zones, so `--host` entries and the instance's own name stay
    /// answerable inside a zone that lacks them.
    fn zone_reply(&self, owner: &Name, rtype: RecordType, reply: &mut Message) -> Option<Vec<u8>> {
        if rtype != RecordType::A {
            return None;
        }
        let name = owner.to_ascii();
        if self
            .hosts
            .with(|h| h.address(&h.resolve_alias(&name)).is_some())
        {
            return None;
        }
        match self.zones.lookup(&name, true) {
            ZoneAnswer::NotInZone | ZoneAnswer::FallThrough => return None,
            ZoneAnswer::Address(ip) => {
                if let Some(ip) = ip {
                    reply.add_answer(Record::from_rdata(owner.clone(), 0, RData::A(A(ip))));
                }
            }
            ZoneAnswer::NxDomain => {
                reply.metadata.response_code = hickory_proto::op::ResponseCode::NXDomain;
            }
        }
        reply.metadata.recursion_available = true;
        Some(encode(reply))
    }

    /// The IPv6 address of the guest a name leads to: a name whose static hosts entry or zone
    /// record gives an IPv4 address only, and a guest holding that address whose IPv6 address
    /// the network has learned (TTL 0: the guest may move to another address at any time).
    async fn guest_aaaa(&self, owner: &Name) -> Option<Ipv6Addr> {
        let guests = self.guest_ipv6.as_ref()?;
        let name = owner.to_ascii();
        let (static_v4, static_v6) = self.hosts.with(|h| {
            let target = h.resolve_alias(&name);
            (
                h.address_of_family(&target, false),
                h.address_of_family(&target, true),
            )
        });
        let v4 = match (static_v4, static_v6) {
            (_, Some(_)) => return None,
            (Some(IpAddr::V4(v4)), None) => v4,
            _ => match self.zones.lookup(&name, true) {
                ZoneAnswer::Address(Some(v4)) => v4,
                _ => return None,
            },
        };
        guests.ipv6_of(v4).await
    }

    /// A or AAAA records for `owner`, and their TTL.
    async fn address_answers(
        &self,
        owner: &Name,
        v6: bool,
    ) -> Result<(Vec<RData>, u32), LookupError> {
        let (target, static_ip, static_family) = self.hosts.with(|h| {
            let target = h.resolve_alias(&owner.to_ascii());
            let ip = h.address(&target);
            let family = h.address_of_family(&target, v6);
            (target, ip, family)
        });
        let (addresses, ttl) = match (static_family, static_ip) {
            (Some(ip), _) => (vec![ip], LOCAL_TTL),
            // A static name with an address of the other family only: NODATA rather than a
            // forward that would leak a private name upstream (Lima forwards).
            (None, Some(ip)) => (vec![ip], LOCAL_TTL),
            (None, None) => self.lookup.addresses(&target, v6).await?,
        };
        let records: Vec<RData> = addresses
            .into_iter()
            .filter_map(|ip| match (ip, v6) {
                (IpAddr::V4(v4), false) => Some(RData::A(A(v4))),
                (IpAddr::V6(v6addr), true) => Some(RData::AAAA(AAAA(v6addr))),
                _ => None,
            })
            .collect();
        if records.is_empty() && static_ip.is_none() {
            return Err(LookupError(format!(
                "no {} address for {target}",
                if v6 { "IPv6" } else { "IPv4" }
            )));
        }
        Ok((records, ttl))
    }

    async fn cname_answer(&self, owner: &Name) -> Result<Vec<RData>, LookupError> {
        let query_name = canonical(&owner.to_ascii());
        let (mut target, is_static) = self.hosts.with(|h| {
            let target = h.resolve_alias(&query_name);
            let is_static = h.address(&target).is_some();
            (target, is_static)
        });
        if !is_static {
            target = canonical(&self.lookup.canonical_name(&target).await?);
        }
        if target == query_name {
            return Err(LookupError(format!("{query_name} is not an alias")));
        }
        let name = Name::from_ascii(&target)
            .map_err(|e| LookupError(format!("bad CNAME target {target:?}: {e}")))?;
        Ok(vec![RData::CNAME(CNAME(name))])
    }

    async fn txt_answers(&self, owner: &Name) -> Result<Vec<RData>, LookupError> {
        let records = self.lookup.records(owner, RecordType::TXT).await?;
        // Like Go's LookupTXT: each record's strings joined, then re-split into 255-byte strings.
        let answers: Vec<RData> = records
            .into_iter()
            .filter_map(|data| match data {
                RData::TXT(txt) => Some(txt.txt_data.concat()),
                _ => None,
            })
            .map(|joined| {
                let chunks: Vec<&[u8]> = if joined.is_empty() {
                    vec![&[]]
                } else {
                    joined.chunks(TXT_CHUNK).collect()
                };
                RData::TXT(TXT::from_bytes(chunks))
            })
            .collect();
        non_empty(answers, owner, RecordType::TXT)
    }

    async fn other_answers(
        &self,
        owner: &Name,
        rtype: RecordType,
    ) -> Result<Vec<RData>, LookupError> {
        let records = self.lookup.records(owner, rtype).await?;
        let answers: Vec<RData> = records
            .into_iter()
            .filter_map(|data| match data {
                // Like Lima: drop records whose host is empty (the root name).
                RData::NS(NS(host)) if !host.is_root() => Some(RData::NS(NS(host))),
                RData::MX(mx) if !mx.exchange.is_root() => {
                    Some(RData::MX(MX::new(mx.preference, mx.exchange)))
                }
                RData::SRV(srv) => Some(RData::SRV(SRV::new(
                    srv.priority,
                    srv.weight,
                    srv.port,
                    srv.target,
                ))),
                _ => None,
            })
            .collect();
        non_empty(answers, owner, rtype)
    }
}

fn non_empty(
    answers: Vec<RData>,
    owner: &Name,
    rtype: RecordType,
) -> Result<Vec<RData>, LookupError> {
    if answers.is_empty() {
        Err(LookupError(format!("no {rtype} records for {owner}")))
    } else {
        Ok(answers)
    }
}

/// An in-memory [`Lookup`] for tests and fuzzing: answers from tables, never does I/O, and its
/// futures are always ready.
#[derive(Debug, Default, Clone)]
pub struct TableLookup {
    /// Addresses by canonical name.
    pub addresses: std::collections::HashMap<String, Vec<IpAddr>>,
    /// Records by (canonical name, type).
    pub records: std::collections::HashMap<(String, RecordType), Vec<RData>>,
    /// Canonical names by canonical name.
    pub cnames: std::collections::HashMap<String, String>,
}

impl Lookup for TableLookup {
    fn addresses<'a>(
        &'a self,
        name: &'a str,
        ipv6: bool,
    ) -> BoxFuture<'a, Result<(Vec<IpAddr>, u32), LookupError>> {
        let result = match self.addresses.get(&canonical(name)) {
            Some(ips) => Ok((
                ips.iter()
                    .copied()
                    .filter(|ip| ip.is_ipv6() == ipv6)
                    .collect(),
                LOCAL_TTL,
            )),
            None => Err(LookupError(format!("{name}: not found"))),
        };
        Box::pin(std::future::ready(result))
    }

    fn records<'a>(
        &'a self,
        name: &'a Name,
        rtype: RecordType,
    ) -> BoxFuture<'a, Result<Vec<RData>, LookupError>> {
        let key = (canonical(&name.to_ascii()), rtype);
        let result = self
            .records
            .get(&key)
            .cloned()
            .ok_or_else(|| LookupError(format!("{name} {rtype}: not found")));
        Box::pin(std::future::ready(result))
    }

    fn canonical_name<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<String, LookupError>> {
        let key = canonical(name);
        let result = if let Some(target) = self.cnames.get(&key) {
            Ok(target.clone())
        } else if self.addresses.contains_key(&key) {
            Ok(key)
        } else {
            Err(LookupError(format!("{name}: not found")))
        };
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosts::StaticHosts;
    use hickory_proto::op::{MessageType, Query, ResponseCode};
    use std::str::FromStr;
    use std::sync::Arc;

    /// The handler from Lima's dns_test.go (lima-behaviour.md §4.8): mock TXT zones, the static
    /// hosts, IPv6 on.
    fn lima_handler() -> Handler<TableLookup> {
        let mut lookup = TableLookup::default();
        let txt = |s: &[&str]| RData::TXT(TXT::new(s.iter().map(|x| x.to_string()).collect()));
        lookup.records.insert(
            ("onerecord.com.".into(), RecordType::TXT),
            vec![txt(&["My txt record"])],
        );
        let long: String = (0..290)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        lookup.records.insert(
            ("multistringrecord.com.".into(), RecordType::TXT),
            vec![txt(&[&long])],
        );
        lookup.records.insert(
            ("multiplerecords.com.".into(), RecordType::TXT),
            vec![txt(&["record 1"]), txt(&["record 2"])],
        );
        let hosts = StaticHosts::new([
            ("MY.DOMAIN.COM", "192.168.0.23"),
            ("host.lima.internal", "10.10.0.34"),
            ("my.host", "host.lima.internal"),
            ("default", "my.domain.com"),
            ("cycle1.example.com", "cycle2.example.com"),
            ("cycle2.example.com", "cycle1.example.com"),
            ("self.example.com", "self.example.com"),
        ]);
        Handler::new(HostsHandle::new(hosts), true, Arc::new(lookup))
    }

    fn request(name: &str, rtype: RecordType) -> Message {
        let mut msg = Message::new(0xbeef, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        msg
    }

    fn ask(handler: &Handler<TableLookup>, name: &str, rtype: RecordType) -> Option<Message> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        match rt.block_on(handler.handle(&request(name, rtype))) {
            Outcome::Reply(bytes) => Some(Message::from_vec(&bytes).unwrap()),
            Outcome::Forward => None,
        }
    }

    fn only_answer(reply: &Message) -> &Record {
        assert_eq!(reply.answers.len(), 1, "{reply:?}");
        &reply.answers[0]
    }

    #[test]
    fn txt_records_lima_vectors() {
        let txt = |s: &[&str]| RData::TXT(TXT::new(s.iter().map(|x| x.to_string()).collect()));
        let h = lima_handler();
        let r = ask(&h, "onerecord.com.", RecordType::TXT).unwrap();
        let rr = only_answer(&r);
        assert_eq!(rr.ttl, 5);
        assert_eq!(rr.name.to_ascii(), "onerecord.com.");
        assert_eq!(rr.data, RData::TXT(TXT::new(vec!["My txt record".into()])));

        let r = ask(&h, "multistringrecord.com.", RecordType::TXT).unwrap();
        let RData::TXT(split) = &only_answer(&r).data else {
            panic!("not TXT")
        };
        assert_eq!(split.txt_data.len(), 2);
        assert_eq!(split.txt_data[0].len(), 255);
        assert_eq!(split.txt_data[1].len(), 35);

        let r = ask(&h, "multiplerecords.com.", RecordType::TXT).unwrap();
        let texts: Vec<RData> = r.answers.iter().map(|rr| rr.data.clone()).collect();
        assert_eq!(texts, [txt(&["record 1"]), txt(&["record 2"])]);
    }

    #[test]
    fn a_and_cname_from_static_hosts() {
        let h = lima_handler();
        let r = ask(&h, "my.domain.com.", RecordType::A).unwrap();
        assert_eq!(
            only_answer(&r).to_string(),
            "my.domain.com. 5 IN A 192.168.0.23"
        );
        let r = ask(&h, "host.lima.internal.", RecordType::A).unwrap();
        assert_eq!(
            only_answer(&r).to_string(),
            "host.lima.internal. 5 IN A 10.10.0.34"
        );
        // Static aliases answer A with the address alone, no CNAME RR.
        let r = ask(&h, "my.host.", RecordType::A).unwrap();
        assert_eq!(only_answer(&r).to_string(), "my.host. 5 IN A 10.10.0.34");

        let r = ask(&h, "my.host.", RecordType::CNAME).unwrap();
        assert_eq!(
            only_answer(&r).to_string(),
            "my.host. 5 IN CNAME host.lima.internal."
        );
        let r = ask(&h, "default.", RecordType::CNAME).unwrap();
        assert_eq!(
            only_answer(&r).to_string(),
            "default. 5 IN CNAME my.domain.com."
        );
    }

    #[test]
    fn case_insensitive_matching_keeps_query_case() {
        let h = lima_handler();
        let r = ask(&h, "My.Domain.Com.", RecordType::A).unwrap();
        assert_eq!(
            only_answer(&r).to_string(),
            "My.Domain.Com. 5 IN A 192.168.0.23"
        );
        let r = ask(&h, "HOST.LIMA.INTERNAL.", RecordType::A).unwrap();
        assert_eq!(
            only_answer(&r).to_string(),
            "HOST.LIMA.INTERNAL. 5 IN A 10.10.0.34"
        );
        let r = ask(&h, "MY.HOST.", RecordType::CNAME).unwrap();
        assert_eq!(
            only_answer(&r).to_string(),
            "MY.HOST. 5 IN CNAME host.lima.internal."
        );
        assert_eq!(r.queries[0].name.to_ascii(), "MY.HOST.");
    }

    #[test]
    fn cyclic_aliases_do_not_hang_and_go_upstream() {
        let h = lima_handler();
        assert_eq!(ask(&h, "cycle1.example.com.", RecordType::CNAME), None);
        assert_eq!(ask(&h, "self.example.com.", RecordType::CNAME), None);
        assert_eq!(ask(&h, "cycle2.example.com.", RecordType::A), None);
    }

    #[test]
    fn reply_header_is_like_set_reply() {
        let h = lima_handler();
        let mut req = request("my.domain.com.", RecordType::A);
        req.metadata.checking_disabled = true;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let Outcome::Reply(bytes) = rt.block_on(h.handle(&req)) else {
            panic!("forwarded")
        };
        let r = Message::from_vec(&bytes).unwrap();
        assert_eq!(r.id, 0xbeef);
        assert_eq!(r.message_type, MessageType::Response);
        assert!(r.recursion_desired && r.checking_disabled);
        // RA, unlike miekg's SetReply: this server resolves recursively.
        assert!(r.recursion_available && !r.authoritative);
        assert_eq!(r.response_code, ResponseCode::NoError);
        assert_eq!(r.queries, req.queries);
    }

    #[test]
    fn dual_stack_static_name_answers_a_and_aaaa() {
        let hosts = StaticHosts::new([
            ("host.lima.internal", "192.168.5.2"),
            ("host.lima.internal", "fd00:192:168:5::2"),
            ("v4only.internal", "192.168.5.15"),
        ]);
        let h = Handler::new(
            HostsHandle::new(hosts),
            true,
            Arc::new(TableLookup::default()),
        );
        let r = ask(&h, "host.lima.internal.", RecordType::A).unwrap();
        assert_eq!(
            only_answer(&r).to_string(),
            "host.lima.internal. 5 IN A 192.168.5.2"
        );
        let r = ask(&h, "host.lima.internal.", RecordType::AAAA).unwrap();
        assert_eq!(
            only_answer(&r).to_string(),
            "host.lima.internal. 5 IN AAAA fd00:192:168:5::2"
        );
        // A static name without an IPv6 address: NODATA, never forwarded upstream.
        let r = ask(&h, "v4only.internal.", RecordType::AAAA).unwrap();
        assert!(r.answers.is_empty());
    }

    #[test]
    fn aaaa_depends_on_ipv6_switch() {
        let mut lookup = TableLookup::default();
        lookup.addresses.insert(
            "dual.test.".into(),
            vec!["192.0.2.7".parse().unwrap(), "2001:db8::7".parse().unwrap()],
        );
        lookup
            .addresses
            .insert("v6only.test.".into(), vec!["2001:db8::8".parse().unwrap()]);
        let lookup = Arc::new(lookup);
        let off = Handler::new(HostsHandle::default(), false, lookup.clone());
        let r = ask(&off, "dual.test.", RecordType::AAAA).unwrap();
        assert!(r.answers.is_empty());
        assert_eq!(r.response_code, ResponseCode::NoError);
        let r = ask(&off, "dual.test.", RecordType::A).unwrap();
        assert_eq!(only_answer(&r).to_string(), "dual.test. 5 IN A 192.0.2.7");
        // An A query whose results are all IPv6 is a miss: forwarded.
        assert_eq!(ask(&off, "v6only.test.", RecordType::A), None);

        let on = Handler::new(HostsHandle::default(), true, lookup);
        let r = ask(&on, "Dual.Test.", RecordType::AAAA).unwrap();
        assert_eq!(
            only_answer(&r).to_string(),
            "Dual.Test. 5 IN AAAA 2001:db8::7"
        );
    }

    #[test]
    fn other_types_and_misses_are_forwarded() {
        let h = lima_handler();
        for rtype in [
            RecordType::PTR,
            RecordType::SOA,
            RecordType::CAA,
            RecordType::HTTPS,
            RecordType::SVCB,
            RecordType::ANY,
        ] {
            assert_eq!(ask(&h, "my.domain.com.", rtype), None, "{rtype}");
        }
        assert_eq!(ask(&h, "unknown.example.", RecordType::A), None);
        assert_eq!(ask(&h, "unknown.example.", RecordType::TXT), None);
        assert_eq!(ask(&h, "unknown.example.", RecordType::MX), None);
        let mut notify = request("my.domain.com.", RecordType::SOA);
        notify.metadata.op_code = OpCode::Notify;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(h.handle(&notify)), Outcome::Forward);
    }

    #[test]
    fn mx_srv_ns_and_cname_from_lookup() {
        let mut lookup = TableLookup::default();
        let n = |s: &str| Name::from_str(s).unwrap();
        lookup.records.insert(
            ("mail.test.".into(), RecordType::MX),
            vec![
                RData::MX(MX::new(10, n("mx1.mail.test."))),
                RData::MX(MX::new(20, Name::root())),
            ],
        );
        lookup.records.insert(
            ("_sip._tcp.test.".into(), RecordType::SRV),
            vec![RData::SRV(SRV::new(1, 2, 5060, n("sip.test.")))],
        );
        lookup.records.insert(
            ("zone.test.".into(), RecordType::NS),
            vec![RData::NS(NS(n("ns1.zone.test.")))],
        );
        lookup
            .cnames
            .insert("www.test.".into(), "edge.cdn.test.".into());
        let h = Handler::new(HostsHandle::default(), false, Arc::new(lookup));
        let r = ask(&h, "MAIL.test.", RecordType::MX).unwrap();
        assert_eq!(
            only_answer(&r).to_string(),
            "MAIL.test. 5 IN MX 10 mx1.mail.test."
        );
        let r = ask(&h, "_sip._tcp.test.", RecordType::SRV).unwrap();
        assert_eq!(
            only_answer(&r).to_string(),
            "_sip._tcp.test. 5 IN SRV 1 2 5060 sip.test."
        );
        let r = ask(&h, "zone.test.", RecordType::NS).unwrap();
        assert_eq!(
            only_answer(&r).to_string(),
            "zone.test. 5 IN NS ns1.zone.test."
        );
        let r = ask(&h, "www.test.", RecordType::CNAME).unwrap();
        assert_eq!(
            only_answer(&r).to_string(),
            "www.test. 5 IN CNAME edge.cdn.test."
        );
    }

    #[test]
    fn runtime_host_edits_take_effect() {
        let h = Handler::new(
            HostsHandle::default(),
            false,
            Arc::new(TableLookup::default()),
        );
        assert_eq!(ask(&h, "lima-vm.internal.", RecordType::A), None);
        h.hosts().set("lima-vm.internal", "192.168.104.3");
        let r = ask(&h, "lima-vm.internal.", RecordType::A).unwrap();
        assert_eq!(
            only_answer(&r).to_string(),
            "lima-vm.internal. 5 IN A 192.168.104.3"
        );
        h.hosts().remove("lima-vm.internal");
        assert_eq!(ask(&h, "lima-vm.internal.", RecordType::A), None);
    }

    /// Guests known by IPv4 address, as the network would answer.
    struct KnownGuests(Vec<(Ipv4Addr, Ipv6Addr)>);

    impl GuestIpv6 for KnownGuests {
        fn ipv6_of(&self, ip: Ipv4Addr) -> BoxFuture<'_, Option<Ipv6Addr>> {
            let found = self.0.iter().find(|(v4, _)| *v4 == ip).map(|(_, v6)| *v6);
            Box::pin(std::future::ready(found))
        }
    }

    #[test]
    fn guest_names_get_the_learned_ipv6_address() {
        let v6: Ipv6Addr = "fd00:192:168:104::15".parse().unwrap();
        let hosts = StaticHosts::new([
            ("lima-a", "192.168.104.15"),
            ("alias-a", "lima-a"),
            ("lima-b", "192.168.104.16"),
            ("host.lima.internal", "192.168.104.2"),
            ("host.lima.internal", "fd00:192:168:104::2"),
        ]);
        let zones = ZonesHandle::default();
        zones
            .add(crate::Zone {
                name: "internal.".into(),
                records: vec![crate::ZoneRecord {
                    name: "lima-c".into(),
                    ip: Some(Ipv4Addr::new(192, 168, 104, 15)),
                    regexp: None,
                }],
                default_ip: None,
            })
            .unwrap();
        let known = KnownGuests(vec![(Ipv4Addr::new(192, 168, 104, 15), v6)]);
        let h = Handler::new(
            HostsHandle::new(hosts),
            true,
            Arc::new(TableLookup::default()),
        )
        .with_zones(zones)
        .with_guest_ipv6(Some(Arc::new(known)));
        for name in ["lima-a.", "alias-a.", "lima-c.internal."] {
            let r = ask(&h, name, RecordType::AAAA).unwrap();
            assert_eq!(only_answer(&r).data, RData::AAAA(AAAA(v6)), "{name}");
        }
        // A guest whose IPv6 address is not known yet: NODATA, as before.
        let r = ask(&h, "lima-b.", RecordType::AAAA).unwrap();
        assert!(r.answers.is_empty(), "{r:?}");
        // A name with a static IPv6 address keeps it.
        let r = ask(&h, "host.lima.internal.", RecordType::AAAA).unwrap();
        assert_eq!(
            only_answer(&r).data,
            RData::AAAA(AAAA("fd00:192:168:104::2".parse().unwrap()))
        );
        // The A records are unchanged.
        let r = ask(&h, "lima-c.internal.", RecordType::A).unwrap();
        assert_eq!(
            only_answer(&r).data,
            RData::A(A(Ipv4Addr::new(192, 168, 104, 15)))
        );
    }
}
