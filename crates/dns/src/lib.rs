//! limanet's host-resolver DNS server: Lima's hostagent DNS (`pkg/hostagent/dns`), rebuilt.
//!
//! A guest asking this server sees what the host sees: A and AAAA come from getaddrinfo
//! (/etc/hosts, nsswitch, VPN and split DNS), CNAME, TXT, NS, MX and SRV from the servers in
//! resolv.conf, static hosts (`host.lima.internal`, `lima-<instance>`, user entries) win over
//! both, and every other query is forwarded unchanged. See `lima-behaviour.md` §4 for the exact
//! behaviour, and the README for where this server deliberately differs (SERVFAIL when every
//! upstream fails, several queries per TCP connection, resolv.conf re-read on change,
//! concurrent answers, FORMERR/NOTIMP for bad requests).
//!
//! Layers: [`message`] (accept filter, truncation) and [`handler`] (per-query logic behind the
//! [`Lookup`] trait) do no I/O; [`upstream`] and [`system`] talk to the outside; [`server`]
//! holds the sockets.

pub mod handler;
pub mod hosts;
pub mod message;
mod mux;
pub mod reply_cache;
pub mod server;
pub mod system;
mod tcp_slots;
mod udp_batch;
pub mod upstream;
pub mod zones;

/// The DNS message library this crate's API uses (hickory-proto), for callers and tests.
pub use hickory_proto as proto;

pub use handler::{GuestIpv6, Handler, Lookup, LookupError, Outcome, TableLookup, LOCAL_TTL};
pub use hosts::{
    canonical, instance_host_name, lima_hosts, HostsHandle, StaticHosts, HOST_LIMA_INTERNAL,
};
pub use server::{
    spawn_background, AfterBind, BackgroundDns, DnsConfig, DnsError, DnsServer, GuestIpv6Source,
    Limits,
};
pub use system::SystemLookup;
pub use upstream::Upstreams;
pub use zones::{Zone, ZoneAnswer, ZoneError, ZoneRecord, Zones, ZonesHandle};

/// Runs one input through everything a query touches without I/O: the accept filter, the
/// handler (with an in-memory [`TableLookup`]) and UDP truncation. For the fuzz target and its
/// corpus replay; panics only on a bug.
#[doc(hidden)]
pub fn fuzz_query(data: &[u8]) {
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};
    // The reply cache's own header and question parser sees every datagram first.
    for tcp in [false, true] {
        if let Some(key) = reply_cache::cache_key(data, tcp) {
            assert!(key.len() >= 4 + 5 && key.len() <= data.len() + 4);
        }
    }
    let message::Precheck::Request(request) = message::precheck(data) else {
        return;
    };
    let mut lookup = TableLookup::default();
    lookup.addresses.insert(
        "a.example.".into(),
        vec![
            [192, 0, 2, 1].into(),
            "2001:db8::1".parse().unwrap_or([0u8; 16].into()),
        ],
    );
    let hosts = HostsHandle::new(StaticHosts::new([
        ("alias.example", "a.example"),
        ("loop", "loop"),
        ("host.lima.internal", "192.168.5.2"),
    ]));
    for ipv6 in [false, true] {
        let handler = Handler::new(hosts.clone(), ipv6, Arc::new(lookup.clone()));
        let mut fut = std::pin::pin!(handler.handle(&request));
        // TableLookup's futures are always ready, so one poll finishes the handler.
        if let Poll::Ready(Outcome::Reply(reply)) =
            fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
        {
            let limit = message::udp_reply_limit(&request);
            assert!((message::UDP_REPLY_LIMIT..=message::EDNS_UDP_LIMIT).contains(&limit));
            let cut = message::truncate(reply, limit);
            assert!(cut.len() <= limit);
        }
    }
    let _ = message::truncate(data.to_vec(), message::UDP_REPLY_LIMIT);
}
