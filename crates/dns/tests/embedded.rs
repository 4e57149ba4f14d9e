//! The embeddable API on real loopback sockets: `spawn_background` with static hosts edited at
//! run time, `DnsServer::bind_with_lookup` with an in-memory resolver. Upstreams are explicit
//! and dead (an unused 127.x address), and only static or in-memory names are asked, so nothing
//! reaches getaddrinfo or any real DNS server.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use limanet_dns::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use limanet_dns::proto::rr::{Name, RData, RecordType};
use limanet_dns::{lima_hosts, spawn_background, DnsConfig, DnsServer, TableLookup};

fn ask(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let mut msg = Message::new(0x4242, MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.send_to(&msg.to_vec().unwrap(), server).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

fn dead_upstream() -> SocketAddr {
    format!(
        "127.99.{}.{}:53",
        std::process::id() % 250,
        1 + std::process::id() / 250 % 250
    )
    .parse()
    .unwrap()
}

#[test]
fn background_server_with_lima_hosts_and_runtime_edits() {
    let user = vec![
        ("host.lima.internal".to_string(), "1.1.1.1".to_string()),
        ("db.internal".into(), "host.lima.internal".into()),
    ];
    let config = DnsConfig {
        hosts: lima_hosts(
            &user,
            "192.168.5.2".parse().unwrap(),
            Some(("my_vm", "192.168.5.15".parse().unwrap())),
        ),
        upstreams: vec![dead_upstream()],
        ..DnsConfig::default()
    };
    let bg = spawn_background(config).unwrap();
    assert!(bg.udp_addr().ip().is_loopback() && bg.udp_addr().port() != 0);
    let a = |name: &str| {
        let r = ask(bg.udp_addr(), name, RecordType::A);
        r.answers
            .iter()
            .filter_map(|rr| rr.data.ip_addr())
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        a("host.lima.internal."),
        ["192.168.5.2"],
        "gateway overrides the user entry"
    );
    assert_eq!(a("DB.internal."), ["192.168.5.2"]);
    assert_eq!(a("lima-my-vm."), ["192.168.5.15"]);
    bg.hosts().set("lima-other.internal", "192.168.104.4");
    assert_eq!(a("lima-other.internal."), ["192.168.104.4"]);
    assert!(bg.hosts().remove("lima-other.internal"));
    // Now a miss: forwarded to the dead upstream, so SERVFAIL.
    let r = ask(bg.udp_addr(), "lima-other.internal.", RecordType::PTR);
    assert_eq!(r.response_code, ResponseCode::ServFail);
    let udp = bg.udp_addr();
    drop(bg);
    // Stopped: the port can be bound again.
    UdpSocket::bind(udp).expect("port released after drop");
}

#[tokio::test]
async fn bound_server_with_in_memory_lookup() {
    let mut lookup = TableLookup::default();
    lookup
        .addresses
        .insert("svc.test.".into(), vec!["192.0.2.44".parse().unwrap()]);
    lookup.records.insert(
        ("svc.test.".into(), RecordType::TXT),
        vec![RData::TXT(limanet_dns::proto::rr::rdata::TXT::new(vec![
            "hello".into(),
        ]))],
    );
    let config = DnsConfig {
        upstreams: vec![dead_upstream()],
        ..DnsConfig::default()
    };
    let server = DnsServer::bind_with_lookup(config, Arc::new(lookup))
        .await
        .unwrap();
    let udp = server.udp_addr();
    let tcp = server.tcp_addr();
    assert_ne!(udp.port(), 0);
    assert_ne!(tcp.port(), 0);
    let task = tokio::spawn(server.run());
    let reply = tokio::task::spawn_blocking(move || {
        (
            ask(udp, "Svc.Test.", RecordType::A),
            ask(udp, "svc.test.", RecordType::TXT),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        reply.0.answers[0].to_string(),
        "Svc.Test. 5 IN A 192.0.2.44"
    );
    assert_eq!(reply.1.answers[0].ttl, 5);
    task.abort();
}
