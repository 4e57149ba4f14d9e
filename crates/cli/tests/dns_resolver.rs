//! `limanet dns` end to end with real clients (dig over UDP and TCP, busybox nslookup), hermetic:
//! see dns_harness.rs. Covers Lima's handler vectors on the wire, the hosts file, AAAA with
//! --ipv6 off and on, static aliases and cycles, TXT re-splitting, MX/SRV/NS, forwarding,
//! truncation, SERVFAIL, resolv.conf reloads and concurrency.

#[path = "dns_harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::*;
use limanet_dns::proto::rr::rdata::{A, CNAME, MX, NS, PTR, SRV, TXT};
use limanet_dns::proto::rr::{Name, RData, RecordType};

fn name(s: &str) -> Name {
    Name::from_ascii(s).expect("name")
}

fn stub_table() -> Table {
    let mut t = Table::new();
    entry(
        &mut t,
        "dnsonly.test.",
        RecordType::A,
        vec![rr("dnsonly.test.", RData::A(A::new(198, 51, 100, 7)))],
    );
    entry(
        &mut t,
        "www.test.",
        RecordType::A,
        vec![
            rr("www.test.", RData::CNAME(CNAME(name("mid.test.")))),
            rr("mid.test.", RData::CNAME(CNAME(name("edge.test.")))),
            rr("edge.test.", RData::A(A::new(198, 51, 100, 8))),
        ],
    );
    let long = "t".repeat(200) + &"u".repeat(100);
    entry(
        &mut t,
        "long.test.",
        RecordType::TXT,
        vec![rr(
            "long.test.",
            RData::TXT(TXT::from_bytes(vec![
                &long.as_bytes()[..200],
                &long.as_bytes()[200..],
            ])),
        )],
    );
    entry(
        &mut t,
        "mail.test.",
        RecordType::MX,
        vec![rr(
            "mail.test.",
            RData::MX(MX::new(10, name("mx1.mail.test."))),
        )],
    );
    entry(
        &mut t,
        "_sip._tcp.test.",
        RecordType::SRV,
        vec![rr(
            "_sip._tcp.test.",
            RData::SRV(SRV::new(1, 2, 5060, name("sip.test."))),
        )],
    );
    entry(
        &mut t,
        "zone.test.",
        RecordType::NS,
        vec![rr("zone.test.", RData::NS(NS(name("ns1.zone.test."))))],
    );
    entry(
        &mut t,
        "7.100.51.198.in-addr.arpa.",
        RecordType::PTR,
        vec![rr(
            "7.100.51.198.in-addr.arpa.",
            RData::PTR(PTR(name("dnsonly.test."))),
        )],
    );
    let big: Vec<_> = (0..12)
        .map(|i| {
            rr(
                "big.test.",
                RData::TXT(TXT::new(vec![format!("{i:02}{}", "x".repeat(98))])),
            )
        })
        .collect();
    entry(&mut t, "big.test.", RecordType::TXT, big);
    let many: Vec<_> = (0..40)
        .map(|i| {
            rr(
                "bigptr.test.",
                RData::PTR(PTR(name(&format!("host-number-{i:02}.example.test.")))),
            )
        })
        .collect();
    entry(&mut t, "bigptr.test.", RecordType::PTR, many);
    t
}

const HOSTS: &str = "192.0.2.10 filehost.test\n2001:db8::10 filehost.test\n";

fn start(stub: &Stub, args: &[&str]) -> Limanet {
    let mut all = vec![
        "--host",
        "static.test=10.1.2.3",
        "--host",
        "alias.test=filehost.test",
        "--host",
        "c1.test=c2.test",
        "--host",
        "c2.test=static.test",
        "--host",
        "cyc1.test=cyc2.test",
        "--host",
        "cyc2.test=cyc1.test",
    ];
    all.extend_from_slice(args);
    Limanet::start(stub.ip, HOSTS, &all)
}

#[test]
fn dns_hosts_file_and_static_hosts_over_udp_and_tcp() {
    let stub = Stub::start(stub_table());
    let dns = start(&stub, &[]);
    for transport in [&[][..], &["+tcp"][..]] {
        let d = dig(dns.udp_for(transport), "FileHost.Test", "A", transport);
        assert_eq!(d.status, "NOERROR", "{}", d.raw);
        assert_eq!(d.answers, ["FileHost.Test. 5 IN A 192.0.2.10"], "{}", d.raw);
        // Unlike Lima: RA (this server resolves recursively) and, for dig's EDNS query, an
        // OPT record of our own.
        assert!(
            d.flags.contains(&"ra".to_string()),
            "RA in local answers: {:?}",
            d.flags
        );
        assert!(d.raw.contains("; EDNS: version: 0"), "{}", d.raw);
        let d = dig(dns.udp_for(transport), "static.test", "A", transport);
        assert_eq!(d.answers, ["static.test. 5 IN A 10.1.2.3"], "{}", d.raw);
        // Static alias to a hosts-file name: the address alone, no CNAME.
        let d = dig(dns.udp_for(transport), "alias.test", "A", transport);
        assert_eq!(d.answers, ["alias.test. 5 IN A 192.0.2.10"], "{}", d.raw);
    }
    // AAAA with --ipv6 off: NOERROR, no answer, nothing asked upstream.
    let d = dig(dns.udp, "filehost.test", "AAAA", &[]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(d.answers.is_empty(), "{}", d.raw);
    assert_eq!(stub.count("filehost.test."), 0);
}

/// A name getaddrinfo answered is reused for the 5 s TTL it is served with, counted down in
/// later answers, and an edit to /etc/hosts shows within about two seconds all the same (the
/// files are checked once a second, a built reply lives one second).
#[test]
fn dns_host_answers_count_their_ttl_down_and_follow_hosts_file_edits() {
    let stub = Stub::start(stub_table());
    let dns = start(&stub, &[]);
    let d = dig(dns.udp, "filehost.test", "A", &[]);
    assert_eq!(d.answers, ["filehost.test. 5 IN A 192.0.2.10"], "{}", d.raw);
    std::thread::sleep(Duration::from_millis(2300));
    let d = dig(dns.udp, "filehost.test", "A", &[]);
    let ttl = d.answers.first().and_then(|a| a.split_whitespace().nth(1));
    assert!(
        matches!(ttl, Some("3" | "2")),
        "TTL counted down after 2.3 s: {}",
        d.raw
    );
    let hosts = dns.dir.0.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n192.0.2.99 filehost.test\n").expect("edit hosts");
    std::thread::sleep(Duration::from_millis(2200));
    let d = dig(dns.udp, "filehost.test", "A", &[]);
    assert_eq!(d.answers, ["filehost.test. 5 IN A 192.0.2.99"], "{}", d.raw);
    assert_eq!(
        stub.count("filehost.test."),
        0,
        "answered from the hosts file"
    );
}

#[test]
fn dns_aaaa_with_ipv6_on() {
    let stub = Stub::start(stub_table());
    let dns = start(&stub, &["--ipv6"]);
    let d = dig(dns.udp, "filehost.test", "AAAA", &[]);
    assert_eq!(
        d.answers,
        ["filehost.test. 5 IN AAAA 2001:db8::10"],
        "{}",
        d.raw
    );
    let d = dig(dns.udp, "filehost.test", "A", &[]);
    assert_eq!(d.answers, ["filehost.test. 5 IN A 192.0.2.10"], "{}", d.raw);
}

#[test]
fn dns_names_from_the_system_resolver_and_cname_chains() {
    let stub = Stub::start(stub_table());
    let dns = start(&stub, &[]);
    // getaddrinfo → nsswitch dns → the stub: a local answer (TTL 5, not the stub's 300).
    let d = dig(dns.udp, "dnsonly.test", "A", &[]);
    assert_eq!(
        d.answers,
        ["dnsonly.test. 5 IN A 198.51.100.7"],
        "{}",
        d.raw
    );
    assert!(stub.count("dnsonly.test.") >= 1);
    // Upstream CNAME chain, flattened to its end.
    let d = dig(dns.udp, "www.test", "CNAME", &[]);
    assert_eq!(d.answers, ["www.test. 5 IN CNAME edge.test."], "{}", d.raw);
    // Static alias chains, flattened; case-insensitive keys.
    let d = dig(dns.udp, "C1.TEST", "CNAME", &[]);
    assert_eq!(d.answers, ["C1.TEST. 5 IN CNAME static.test."], "{}", d.raw);
    // A cycle must not hang: it is not answered locally and goes upstream (NXDOMAIN there).
    let started = Instant::now();
    let d = dig(dns.udp, "cyc1.test", "CNAME", &[]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(stub.count("cyc1.test.") >= 1, "forwarded upstream");
}

#[test]
fn dns_txt_mx_srv_ns_answered_locally() {
    let stub = Stub::start(stub_table());
    let dns = start(&stub, &[]);
    let d = dig(dns.udp, "long.test", "TXT", &[]);
    let expected = format!(
        "long.test. 5 IN TXT \"{}{}\" \"{}\"",
        "t".repeat(200),
        "u".repeat(55),
        "u".repeat(45)
    );
    assert_eq!(d.answers, [expected], "{}", d.raw);
    let d = dig(dns.udp, "mail.test", "MX", &[]);
    assert_eq!(
        d.answers,
        ["mail.test. 5 IN MX 10 mx1.mail.test."],
        "{}",
        d.raw
    );
    let d = dig(dns.tcp, "_sip._tcp.test", "SRV", &["+tcp"]);
    assert_eq!(
        d.answers,
        ["_sip._tcp.test. 5 IN SRV 1 2 5060 sip.test."],
        "{}",
        d.raw
    );
    let d = dig(dns.udp, "Zone.Test", "NS", &[]);
    assert_eq!(
        d.answers,
        ["Zone.Test. 5 IN NS ns1.zone.test."],
        "{}",
        d.raw
    );
}

#[test]
fn dns_forwarded_ptr_and_nxdomain_are_relayed() {
    let stub = Stub::start(stub_table());
    let dns = start(&stub, &[]);
    let d = dig(dns.udp, "7.100.51.198.in-addr.arpa", "PTR", &[]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    // Relayed as is: the stub's TTL and its RA bit.
    assert_eq!(
        d.answers,
        ["7.100.51.198.in-addr.arpa. 300 IN PTR dnsonly.test."],
        "{}",
        d.raw
    );
    assert!(d.flags.contains(&"ra".to_string()), "{:?}", d.flags);
    let d = dig(dns.tcp, "7.100.51.198.in-addr.arpa", "PTR", &["+tcp"]);
    assert_eq!(
        d.answers,
        ["7.100.51.198.in-addr.arpa. 300 IN PTR dnsonly.test."],
        "{}",
        d.raw
    );
    let d = dig(dns.udp, "missing.test", "A", &[]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
}

#[test]
fn dns_large_udp_answer_is_truncated_then_complete_over_tcp() {
    let stub = Stub::start(stub_table());
    let dns = start(&stub, &[]);
    // A client without EDNS (busybox): Lima's 512 bytes, with TC.
    let d = dig(dns.udp, "big.test", "TXT", &["+ignore", "+noedns"]);
    assert!(
        d.flags.contains(&"tc".to_string()),
        "TC expected: {}",
        d.raw
    );
    assert!(d.answers.len() < 5 && !d.answers.is_empty(), "{}", d.raw);
    // An EDNS client offering 4096 gets up to 1232 bytes (12 x 113 bytes do not fit).
    let d = dig(dns.udp, "big.test", "TXT", &["+ignore", "+bufsize=4096"]);
    assert!(
        d.flags.contains(&"tc".to_string()),
        "TC expected: {}",
        d.raw
    );
    assert!(d.answers.len() >= 9 && d.answers.len() < 12, "{}", d.raw);
    assert!(d.raw.contains("udp: 1232"), "our OPT record: {}", d.raw);
    let d = dig(dns.tcp, "big.test", "TXT", &["+tcp"]);
    assert!(!d.flags.contains(&"tc".to_string()), "{}", d.raw);
    assert_eq!(d.answers.len(), 12, "{}", d.raw);
    // Forwarded answers: the query goes upstream as the client sent it, so without EDNS the
    // stub itself truncates (TC relayed); with EDNS 4096 the stub sends it whole and limanet
    // relays what fits in 1232 bytes (all 40, or a TC prefix).
    let d = dig(dns.udp, "bigptr.test", "PTR", &["+ignore", "+noedns"]);
    assert!(
        d.flags.contains(&"tc".to_string()),
        "TC expected: {}",
        d.raw
    );
    let d = dig(dns.udp, "bigptr.test", "PTR", &["+ignore", "+bufsize=4096"]);
    let tc = d.flags.contains(&"tc".to_string());
    assert!(
        (tc && !d.answers.is_empty() && d.answers.len() < 40) || (!tc && d.answers.len() == 40),
        "{}",
        d.raw
    );
    assert!(
        d.answers.iter().all(|a| a.contains(" 300 IN PTR ")),
        "{}",
        d.raw
    );
    let d = dig(dns.tcp, "bigptr.test", "PTR", &["+tcp"]);
    assert_eq!(d.answers.len(), 40, "{}", d.raw);
    // On the wire: without EDNS at most 512 bytes; with EDNS 4096, at most 1232 and more
    // than 512.
    let reply = udp_exchange(
        dns.udp,
        &query(9, "big.test.", RecordType::TXT),
        Duration::from_secs(3),
    )
    .expect("reply");
    assert!(reply.len() <= 512, "{} bytes", reply.len());
    let reply = udp_exchange(
        dns.udp,
        &edns_query(10, "big.test.", RecordType::TXT, 4096),
        Duration::from_secs(3),
    )
    .expect("reply");
    assert!(
        reply.len() <= 1232 && reply.len() > 512,
        "{} bytes",
        reply.len()
    );
}

/// RFC 6891 on the wire: the client's size honoured (capped at 1232), an OPT record in every
/// reply to an EDNS query (local or forwarded), BADVERS for EDNS versions above 0, RA set.
#[test]
fn dns_edns0_size_opt_record_and_badvers() {
    use limanet_dns::proto::op::Message;
    let stub = Stub::start(stub_table());
    let dns = start(&stub, &[]);
    for (name, rtype) in [
        ("static.test.", RecordType::A),
        ("dnsonly.test.", RecordType::A),
        ("7.100.51.198.in-addr.arpa.", RecordType::PTR),
    ] {
        let reply = udp_exchange(
            dns.udp,
            &edns_query(11, name, rtype, 1232),
            Duration::from_secs(3),
        )
        .expect("reply");
        let msg = Message::from_vec(&reply).expect("parse");
        let edns = msg
            .edns
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no OPT"));
        assert_eq!(edns.version(), 0);
        assert!(usize::from(edns.max_payload()) >= 512, "{name}");
        assert!(msg.recursion_available, "{name}: RA");
        assert!(!msg.answers.is_empty(), "{name}");
    }
    // A 1000-byte buffer: honoured as is.
    let reply = udp_exchange(
        dns.udp,
        &edns_query(12, "big.test.", RecordType::TXT, 1000),
        Duration::from_secs(3),
    )
    .expect("reply");
    assert!(
        reply.len() <= 1000 && reply.len() > 900,
        "{} bytes",
        reply.len()
    );
    let d = dig(dns.udp, "static.test", "A", &["+edns=1", "+noednsneg"]);
    assert_eq!(d.status, "BADVERS", "{}", d.raw);
    let d = dig(dns.udp, "static.test", "A", &["+noedns"]);
    assert!(
        !d.raw.contains("OPT PSEUDOSECTION"),
        "no OPT without EDNS: {}",
        d.raw
    );
    assert_eq!(d.answers, ["static.test. 5 IN A 10.1.2.3"], "{}", d.raw);
}

#[test]
fn dns_dead_upstream_gives_servfail() {
    // Nothing listens on this address: every exchange is refused.
    let dead = unique_loopback();
    let dns = Limanet::start(dead, HOSTS, &[]);
    let started = Instant::now();
    let d = dig(dns.udp, "some.test", "PTR", &[]);
    assert_eq!(d.status, "SERVFAIL", "{}", d.raw);
    let d = dig(dns.tcp, "some.test", "PTR", &["+tcp"]);
    assert_eq!(d.status, "SERVFAIL", "{}", d.raw);
    assert!(started.elapsed() < Duration::from_secs(5));
    // Local names still work.
    let d = dig(dns.udp, "filehost.test", "A", &[]);
    assert_eq!(d.answers, ["filehost.test. 5 IN A 192.0.2.10"], "{}", d.raw);
}

#[test]
fn dns_busybox_nslookup() {
    let stub = Stub::start(stub_table());
    let dns = start(&stub, &[]);
    let out = std::process::Command::new("busybox")
        .args(["nslookup", "-type=a", "filehost.test", &dns.udp.to_string()])
        .output()
        .expect("busybox nslookup");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Address: 192.0.2.10"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A large answer must not break busybox's parser (lima#380): it sees the truncated reply.
    let out = std::process::Command::new("busybox")
        .args(["nslookup", "-type=txt", "big.test", &dns.udp.to_string()])
        .output()
        .expect("busybox nslookup");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("00xxxx"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dns_resolv_conf_is_reread_when_it_changes() {
    let mut first = Table::new();
    entry(
        &mut first,
        "who.test.",
        RecordType::PTR,
        vec![rr("who.test.", RData::PTR(PTR(name("first.test."))))],
    );
    let mut second = Table::new();
    entry(
        &mut second,
        "who.test.",
        RecordType::PTR,
        vec![rr("who.test.", RData::PTR(PTR(name("second.test."))))],
    );
    let stub1 = Stub::start(first);
    let stub2 = Stub::start(second);
    let dns = Limanet::start(stub1.ip, HOSTS, &[]);
    let d = dig(dns.udp, "who.test", "PTR", &[]);
    assert_eq!(d.answers, ["who.test. 300 IN PTR first.test."], "{}", d.raw);
    // Rewrite in place: the bind mount follows the inode.
    std::fs::write(dns.resolv_conf(), format!("nameserver {}\n", stub2.ip)).expect("rewrite");
    std::thread::sleep(Duration::from_millis(1200));
    let d = dig(dns.udp, "who.test", "PTR", &[]);
    assert_eq!(
        d.answers,
        ["who.test. 300 IN PTR second.test."],
        "{}",
        d.raw
    );
}

#[test]
fn dns_slow_upstream_does_not_hold_other_queries() {
    let mut t = stub_table();
    t.insert(
        ("slow.test.".into(), RecordType::PTR),
        StubAnswer {
            records: vec![rr("slow.test.", RData::PTR(PTR(name("late.test."))))],
            delay: Duration::from_millis(1500),
        },
    );
    let stub = Stub::start(t);
    let dns = start(&stub, &[]);
    let addr = dns.udp;
    let slow = std::thread::spawn(move || dig(addr, "slow.test", "PTR", &[]));
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let d = dig(dns.udp, "7.100.51.198.in-addr.arpa", "PTR", &[]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "fast query waited {:?}",
        started.elapsed()
    );
    let d = slow.join().expect("slow dig");
    assert_eq!(d.answers, ["slow.test. 300 IN PTR late.test."], "{}", d.raw);
}

trait ForTransport {
    fn udp_for(&self, opts: &[&str]) -> std::net::SocketAddr;
}

impl ForTransport for Limanet {
    /// The listener matching dig's options: TCP for "+tcp", else UDP.
    fn udp_for(&self, opts: &[&str]) -> std::net::SocketAddr {
        if opts.contains(&"+tcp") {
            self.tcp
        } else {
            self.udp
        }
    }
}

/// Lima forwards to 8.8.8.8 and 1.1.1.1 when resolv.conf names no server; with
/// `--no-fallback-dns` such queries get SERVFAIL at once and nothing leaves the host.
/// (Never run without the flag here: the fallback would reach the internet.)
#[test]
fn dns_no_fallback_servers_when_turned_off() {
    let stub = Stub::start(stub_table());
    let dns = start(&stub, &["--no-fallback-dns"]);
    let d = dig(dns.udp, "7.100.51.198.in-addr.arpa", "PTR", &[]);
    assert_eq!(d.status, "NOERROR", "stub still configured: {}", d.raw);
    std::fs::write(dns.resolv_conf(), "# no nameserver\n").expect("rewrite resolv.conf");
    // resolv.conf is re-checked at most once a second.
    std::thread::sleep(Duration::from_millis(1200));
    let asked = stub.count("7.100.51.198.in-addr.arpa.");
    assert!(asked > 0);
    let started = Instant::now();
    let d = dig(dns.udp, "7.100.51.198.in-addr.arpa", "PTR", &[]);
    assert_eq!(d.status, "SERVFAIL", "{}", d.raw);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stub.count("7.100.51.198.in-addr.arpa."), asked);
    // Static names are still answered.
    let d = dig(dns.udp, "static.test", "A", &[]);
    assert_eq!(d.answers, ["static.test. 5 IN A 10.1.2.3"], "{}", d.raw);
}
