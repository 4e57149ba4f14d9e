//! Tests of the DHCPv4 server with real client messages (built and decoded
//! with `dhcproto`), plus a smoke test against smoltcp's DHCP client.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use limanet_netstack::dhcp::{
    encode_search_list, DhcpConfig, DhcpError, DhcpReply, DhcpServer, MacAddr, BROADCAST_MAC,
    DECLINE_HOLD,
};
use proptest::prelude::*;

#[path = "support/wire.rs"]
mod wire;

const MAC_A: MacAddr = [0x52, 0x55, 0x55, 0x00, 0x00, 0x0a];
const MAC_B: MacAddr = [0x52, 0x55, 0x55, 0x00, 0x00, 0x0b];
const MAC_C: MacAddr = [0x52, 0x55, 0x55, 0x00, 0x00, 0x0c];
const SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 5, 2);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 5, last)
}

/// Options a test client puts in a message.
#[derive(Default, Clone, Copy)]
struct Opts {
    requested: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
    ciaddr: Option<Ipv4Addr>,
    broadcast: bool,
}

fn client_msg(mac: MacAddr, kind: MessageType, o: Opts) -> Vec<u8> {
    let mut msg = Message::new_with_id(
        0x1234_5678,
        o.ciaddr.unwrap_or(Ipv4Addr::UNSPECIFIED),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    if o.broadcast {
        msg.set_flags(Flags::default().set_broadcast());
    }
    msg.opts_mut().insert(DhcpOption::MessageType(kind));
    if let Some(r) = o.requested {
        msg.opts_mut().insert(DhcpOption::RequestedIpAddress(r));
    }
    if let Some(s) = o.server_id {
        msg.opts_mut().insert(DhcpOption::ServerIdentifier(s));
    }
    msg.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
    ]));
    msg.to_vec().expect("encode client message")
}

fn decode(reply: &DhcpReply) -> Message {
    Message::decode(&mut Decoder::new(&reply.payload)).expect("decode server reply")
}

fn msg_type(msg: &Message) -> MessageType {
    match msg.opts().get(OptionCode::MessageType) {
        Some(DhcpOption::MessageType(t)) => *t,
        other => panic!("no message type in reply: {other:?}"),
    }
}

/// Raw data of option `code` in an encoded reply (RFC 3396 parts concatenated).
fn raw_option(payload: &[u8], code: u8) -> Option<Vec<u8>> {
    let mut i = 240;
    let mut found: Option<Vec<u8>> = None;
    while i < payload.len() {
        match payload[i] {
            0 => i += 1,
            255 => break,
            c => {
                let len = payload[i + 1] as usize;
                if c == code {
                    found
                        .get_or_insert_with(Vec::new)
                        .extend_from_slice(&payload[i + 2..i + 2 + len]);
                }
                i += 2 + len;
            }
        }
    }
    found
}

struct Harness {
    server: DhcpServer,
    now: Instant,
}

impl Harness {
    fn new(config: DhcpConfig) -> Self {
        Harness {
            server: DhcpServer::new(config).expect("valid config"),
            now: Instant::now(),
        }
    }

    fn send(&mut self, mac: MacAddr, kind: MessageType, o: Opts) -> Option<DhcpReply> {
        self.server
            .handle(self.now, mac, &client_msg(mac, kind, o))
            .expect("well-formed message")
    }

    fn discover(&mut self, mac: MacAddr) -> Option<Ipv4Addr> {
        let reply = self.send(mac, MessageType::Discover, Opts::default())?;
        let msg = decode(&reply);
        assert_eq!(msg_type(&msg), MessageType::Offer);
        Some(msg.yiaddr())
    }

    /// Full DISCOVER/OFFER/REQUEST/ACK; returns the bound address.
    fn dora(&mut self, mac: MacAddr) -> Option<Ipv4Addr> {
        let offered = self.discover(mac)?;
        let reply = self
            .send(
                mac,
                MessageType::Request,
                Opts {
                    requested: Some(offered),
                    server_id: Some(SERVER),
                    ..Opts::default()
                },
            )
            .expect("reply to REQUEST");
        let msg = decode(&reply);
        assert_eq!(
            msg_type(&msg),
            MessageType::Ack,
            "REQUEST for the offered address is ACKed"
        );
        assert_eq!(msg.yiaddr(), offered);
        Some(offered)
    }

    fn release(&mut self, mac: MacAddr, addr: Ipv4Addr) {
        let reply = self.send(
            mac,
            MessageType::Release,
            Opts {
                ciaddr: Some(addr),
                server_id: Some(SERVER),
                ..Opts::default()
            },
        );
        assert!(reply.is_none(), "RELEASE gets no reply");
    }

    fn expect_nak(&mut self, mac: MacAddr, o: Opts) {
        let reply = self
            .send(mac, MessageType::Request, o)
            .expect("NAK expected");
        let msg = decode(&reply);
        assert_eq!(msg_type(&msg), MessageType::Nak);
        assert_eq!(msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(reply.dst_ip, Ipv4Addr::BROADCAST, "NAKs are broadcast");
        assert_eq!(reply.dst_mac, BROADCAST_MAC);
    }
}

#[test]
fn first_client_gets_15_second_gets_16() {
    let mut h = Harness::new(DhcpConfig::default());
    assert_eq!(h.dora(MAC_A), Some(ip(15)));
    assert_eq!(h.dora(MAC_B), Some(ip(16)));
    assert_eq!(h.server.address_of(MAC_A), Some(ip(15)));
    assert_eq!(h.server.address_of(MAC_B), Some(ip(16)));
    assert_eq!(h.server.address_of(MAC_C), None);
    assert_eq!(h.server.mac_of(ip(16)), Some(MAC_B));
    assert_eq!(h.server.mac_of(ip(17)), None);
    let leases = h.server.leases();
    assert_eq!(leases.len(), 2);
    assert_eq!((leases[0].ip, leases[0].mac), (ip(15), MAC_A));
    assert_eq!((leases[1].ip, leases[1].mac), (ip(16), MAC_B));
    assert_eq!(leases[0].expires, Some(h.now + Duration::from_secs(3600)));
}

#[test]
fn offer_carries_all_options_and_header_fields() {
    let mut h = Harness::new(DhcpConfig::default());
    let reply = h
        .send(MAC_A, MessageType::Discover, Opts::default())
        .expect("offer");
    assert!(reply.payload.len() >= 300, "BOOTP minimum size");
    let msg = decode(&reply);
    assert_eq!(msg.opcode(), Opcode::BootReply);
    assert_eq!(msg.xid(), 0x1234_5678);
    assert_eq!(msg.chaddr(), &MAC_A);
    assert_eq!(msg.yiaddr(), ip(15));
    assert_eq!(msg.ciaddr(), Ipv4Addr::UNSPECIFIED);
    let o = msg.opts();
    assert_eq!(
        o.get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert_eq!(
        o.get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        o.get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![SERVER]))
    );
    assert_eq!(
        o.get(OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![ip(3)]))
    );
    assert_eq!(
        o.get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(3600))
    );
    assert_eq!(o.get(OptionCode::Renewal), Some(&DhcpOption::Renewal(1800)));
    assert_eq!(
        o.get(OptionCode::Rebinding),
        Some(&DhcpOption::Rebinding(3150))
    );
    assert_eq!(
        o.get(OptionCode::InterfaceMtu),
        Some(&DhcpOption::InterfaceMtu(1500))
    );
    assert_eq!(
        o.get(OptionCode::BroadcastAddr),
        Some(&DhcpOption::BroadcastAddr(ip(255)))
    );
    assert_eq!(
        raw_option(&reply.payload, 12),
        None,
        "no host name unless configured"
    );
    assert_eq!(
        raw_option(&reply.payload, 119),
        None,
        "no search list unless configured"
    );
    // No broadcast flag: unicast to the offered address at the client's MAC.
    assert_eq!((reply.dst_ip, reply.dst_mac), (ip(15), MAC_A));
    // Broadcast flag: broadcast.
    let reply = h
        .send(
            MAC_A,
            MessageType::Discover,
            Opts {
                broadcast: true,
                ..Opts::default()
            },
        )
        .expect("offer");
    assert_eq!(
        (reply.dst_ip, reply.dst_mac),
        (Ipv4Addr::BROADCAST, BROADCAST_MAC)
    );
    assert!(decode(&reply).flags().broadcast(), "flags echoed");
}

#[test]
fn same_mac_keeps_its_address() {
    let mut h = Harness::new(DhcpConfig::default());
    assert_eq!(h.dora(MAC_A), Some(ip(15)));
    assert_eq!(h.discover(MAC_A), Some(ip(15)), "re-DISCOVER while bound");
    assert_eq!(h.dora(MAC_A), Some(ip(15)));
    h.release(MAC_A, ip(15));
    assert_eq!(h.server.address_of(MAC_A), None, "released");
    // Another client arrives meanwhile: it does not take A's old address.
    assert_eq!(h.dora(MAC_B), Some(ip(16)));
    assert_eq!(
        h.dora(MAC_A),
        Some(ip(15)),
        "A gets its address back after RELEASE"
    );
}

#[test]
fn release_or_decline_of_another_clients_address_is_ignored() {
    let mut h = Harness::new(DhcpConfig::default());
    assert_eq!(h.dora(MAC_A), Some(ip(15)));
    h.release(MAC_B, ip(15));
    let reply = h.send(
        MAC_B,
        MessageType::Decline,
        Opts {
            requested: Some(ip(15)),
            server_id: Some(SERVER),
            ..Opts::default()
        },
    );
    assert!(reply.is_none());
    assert_eq!(h.server.address_of(MAC_A), Some(ip(15)));
    // A RELEASE addressed to another server is not ours to act on.
    h.send(
        MAC_A,
        MessageType::Release,
        Opts {
            ciaddr: Some(ip(15)),
            server_id: Some(ip(99)),
            ..Opts::default()
        },
    );
    assert_eq!(h.server.address_of(MAC_A), Some(ip(15)));
}

#[test]
fn released_address_is_reused_when_nothing_else_is_free() {
    let mut h = Harness::new(DhcpConfig {
        pool_end: ip(16),
        ..DhcpConfig::default()
    });
    assert_eq!(h.dora(MAC_A), Some(ip(15)));
    assert_eq!(h.dora(MAC_B), Some(ip(16)));
    h.release(MAC_A, ip(15));
    assert_eq!(h.dora(MAC_C), Some(ip(15)));
    assert_eq!(h.discover(MAC_A), None, "pool exhausted for A now");
}

#[test]
fn discover_with_requested_free_address_gets_it() {
    let mut h = Harness::new(DhcpConfig::default());
    let reply = h
        .send(
            MAC_A,
            MessageType::Discover,
            Opts {
                requested: Some(ip(40)),
                ..Opts::default()
            },
        )
        .expect("offer");
    assert_eq!(decode(&reply).yiaddr(), ip(40));
    // A reserved or foreign address is not honoured.
    let reply = h
        .send(
            MAC_B,
            MessageType::Discover,
            Opts {
                requested: Some(ip(3)),
                ..Opts::default()
            },
        )
        .expect("offer");
    assert_eq!(decode(&reply).yiaddr(), ip(15));
}

#[test]
fn static_lease_is_honoured_and_never_given_to_others() {
    let config = DhcpConfig {
        static_leases: vec![(ip(15), MAC_C), (ip(100), MAC_B)],
        ..DhcpConfig::default()
    };
    let mut h = Harness::new(config);
    assert_eq!(h.dora(MAC_A), Some(ip(16)), ".15 is static for C");
    assert_eq!(h.dora(MAC_B), Some(ip(100)));
    assert_eq!(h.dora(MAC_C), Some(ip(15)));
    // A asks for C's address in every way: DISCOVER, INIT-REBOOT, SELECTING.
    let reply = h
        .send(
            MAC_A,
            MessageType::Discover,
            Opts {
                requested: Some(ip(15)),
                ..Opts::default()
            },
        )
        .expect("offer");
    assert_eq!(decode(&reply).yiaddr(), ip(16));
    h.expect_nak(
        MAC_A,
        Opts {
            requested: Some(ip(15)),
            ..Opts::default()
        },
    );
    h.expect_nak(
        MAC_A,
        Opts {
            requested: Some(ip(15)),
            server_id: Some(SERVER),
            ..Opts::default()
        },
    );
    let leases = h.server.leases();
    assert!(leases
        .iter()
        .any(|l| l.ip == ip(100) && l.mac == MAC_B && l.expires.is_none()));
    assert_eq!(h.server.mac_of(ip(15)), Some(MAC_C));
    // Static leases survive RELEASE.
    h.release(MAC_B, ip(100));
    assert_eq!(h.server.address_of(MAC_B), Some(ip(100)));
}

#[test]
fn reserved_addresses_are_never_handed_out() {
    let config = DhcpConfig {
        pool_start: ip(1),
        pool_end: ip(5),
        reserved: vec![ip(1), ip(4)],
        ..DhcpConfig::default()
    };
    let mut h = Harness::new(config);
    // .2 (server/router) and .3 (DNS) are reserved implicitly.
    assert_eq!(h.dora(MAC_A), Some(ip(5)));
    assert_eq!(h.discover(MAC_B), None, "nothing else is free");
    h.expect_nak(
        MAC_B,
        Opts {
            requested: Some(ip(2)),
            ..Opts::default()
        },
    );
}

#[test]
fn naks_for_wrong_address_or_foreign_subnet() {
    let mut h = Harness::new(DhcpConfig::default());
    assert_eq!(h.discover(MAC_A), Some(ip(15)));
    // SELECTING another address than offered.
    h.expect_nak(
        MAC_A,
        Opts {
            requested: Some(ip(20)),
            server_id: Some(SERVER),
            ..Opts::default()
        },
    );
    // INIT-REBOOT with an address of a foreign subnet.
    h.expect_nak(
        MAC_A,
        Opts {
            requested: Some(Ipv4Addr::new(10, 0, 2, 15)),
            ..Opts::default()
        },
    );
    // RENEWING from a foreign subnet.
    h.expect_nak(
        MAC_A,
        Opts {
            ciaddr: Some(Ipv4Addr::new(10, 0, 2, 15)),
            ..Opts::default()
        },
    );
    // INIT-REBOOT for an address bound to another MAC.
    assert_eq!(h.dora(MAC_A), Some(ip(15)));
    h.expect_nak(
        MAC_B,
        Opts {
            requested: Some(ip(15)),
            ..Opts::default()
        },
    );
    // A client that holds .15 asking for .16 in INIT-REBOOT.
    h.expect_nak(
        MAC_A,
        Opts {
            requested: Some(ip(16)),
            ..Opts::default()
        },
    );
    assert_eq!(
        h.server.address_of(MAC_A),
        Some(ip(15)),
        "a NAK does not drop the binding"
    );
}

#[test]
fn request_for_another_server_is_ignored_and_frees_the_offer() {
    let mut h = Harness::new(DhcpConfig {
        pool_end: ip(15),
        ..DhcpConfig::default()
    });
    assert_eq!(h.discover(MAC_A), Some(ip(15)));
    assert_eq!(h.discover(MAC_B), None, "held for A");
    let reply = h.send(
        MAC_A,
        MessageType::Request,
        Opts {
            requested: Some(ip(15)),
            server_id: Some(Ipv4Addr::new(192, 168, 5, 99)),
            ..Opts::default()
        },
    );
    assert!(reply.is_none());
    assert_eq!(h.discover(MAC_B), Some(ip(15)), "A chose another server");
}

#[test]
fn init_reboot_without_record_acks_free_pool_address() {
    // E.g. limanet restarted while the guest kept its address.
    let mut h = Harness::new(DhcpConfig::default());
    let reply = h
        .send(
            MAC_A,
            MessageType::Request,
            Opts {
                requested: Some(ip(42)),
                ..Opts::default()
            },
        )
        .expect("ACK");
    let msg = decode(&reply);
    assert_eq!(msg_type(&msg), MessageType::Ack);
    assert_eq!(msg.yiaddr(), ip(42));
    assert_eq!(h.server.address_of(MAC_A), Some(ip(42)));
}

#[test]
fn renewing_extends_the_lease_and_replies_unicast() {
    let mut h = Harness::new(DhcpConfig::default());
    assert_eq!(h.dora(MAC_A), Some(ip(15)));
    h.now += Duration::from_secs(1800);
    let reply = h
        .send(
            MAC_A,
            MessageType::Request,
            Opts {
                ciaddr: Some(ip(15)),
                ..Opts::default()
            },
        )
        .expect("ACK");
    let msg = decode(&reply);
    assert_eq!(msg_type(&msg), MessageType::Ack);
    assert_eq!((msg.ciaddr(), msg.yiaddr()), (ip(15), ip(15)));
    assert_eq!(
        (reply.dst_ip, reply.dst_mac),
        (ip(15), MAC_A),
        "unicast to ciaddr"
    );
    assert_eq!(
        h.server.leases()[0].expires,
        Some(h.now + Duration::from_secs(3600))
    );
    // Past the original expiry the lease is still there.
    h.now += Duration::from_secs(3000);
    h.server.expire(h.now);
    assert_eq!(h.server.address_of(MAC_A), Some(ip(15)));
}

#[test]
fn inform_acks_options_without_address_or_lease() {
    let mut h = Harness::new(DhcpConfig::default());
    let reply = h
        .send(
            MAC_A,
            MessageType::Inform,
            Opts {
                ciaddr: Some(ip(77)),
                ..Opts::default()
            },
        )
        .expect("ACK");
    let msg = decode(&reply);
    assert_eq!(msg_type(&msg), MessageType::Ack);
    assert_eq!(msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(msg.ciaddr(), ip(77));
    assert_eq!(msg.opts().get(OptionCode::AddressLeaseTime), None);
    assert_eq!(msg.opts().get(OptionCode::Renewal), None);
    assert_eq!(
        msg.opts().get(OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![ip(3)]))
    );
    assert_eq!(
        msg.opts().get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![SERVER]))
    );
    assert_eq!((reply.dst_ip, reply.dst_mac), (ip(77), MAC_A));
    assert!(h.server.leases().is_empty(), "INFORM binds nothing");
}

#[test]
fn declined_address_is_withheld_for_a_while() {
    let mut h = Harness::new(DhcpConfig {
        pool_end: ip(16),
        ..DhcpConfig::default()
    });
    assert_eq!(h.dora(MAC_A), Some(ip(15)));
    let reply = h.send(
        MAC_A,
        MessageType::Decline,
        Opts {
            requested: Some(ip(15)),
            server_id: Some(SERVER),
            ..Opts::default()
        },
    );
    assert!(reply.is_none(), "DECLINE gets no reply");
    assert_eq!(h.server.address_of(MAC_A), None);
    assert_eq!(h.dora(MAC_A), Some(ip(16)), "A gets a different address");
    assert_eq!(h.discover(MAC_B), None, ".15 is withheld");
    h.now += DECLINE_HOLD;
    assert_eq!(h.dora(MAC_B), Some(ip(15)), "withheld only for a while");
    // Declining someone else's address changes nothing.
    h.send(
        MAC_C,
        MessageType::Decline,
        Opts {
            requested: Some(ip(15)),
            ..Opts::default()
        },
    );
    assert_eq!(h.server.address_of(MAC_B), Some(ip(15)));
}

#[test]
fn pool_exhaustion_gives_no_offer() {
    let mut h = Harness::new(DhcpConfig {
        pool_end: ip(17),
        ..DhcpConfig::default()
    });
    assert_eq!(h.dora(MAC_A), Some(ip(15)));
    assert_eq!(h.dora(MAC_B), Some(ip(16)));
    assert_eq!(h.dora(MAC_C), Some(ip(17)));
    assert_eq!(h.discover([0x52, 0x55, 0x55, 0, 0, 0x0d]), None);
    assert_eq!(
        h.server.leases().len(),
        3,
        "lease table bounded by the pool"
    );
}

#[test]
fn lease_expiry_frees_the_address() {
    let config = DhcpConfig {
        pool_end: ip(15),
        lease_time: Duration::from_secs(60),
        ..DhcpConfig::default()
    };
    let mut h = Harness::new(config);
    assert_eq!(h.dora(MAC_A), Some(ip(15)));
    assert_eq!(h.discover(MAC_B), None);
    h.now += Duration::from_secs(59);
    assert_eq!(h.discover(MAC_B), None, "not yet expired");
    h.now += Duration::from_secs(1);
    h.server.expire(h.now);
    assert!(h.server.leases().is_empty());
    assert_eq!(h.server.address_of(MAC_A), None);
    assert_eq!(h.dora(MAC_B), Some(ip(15)));
}

#[test]
fn unanswered_offer_is_released_after_the_hold_time() {
    let mut h = Harness::new(DhcpConfig {
        pool_end: ip(15),
        ..DhcpConfig::default()
    });
    assert_eq!(h.discover(MAC_A), Some(ip(15)));
    assert_eq!(h.discover(MAC_B), None);
    h.now += limanet_netstack::dhcp::OFFER_HOLD;
    assert_eq!(h.discover(MAC_B), Some(ip(15)));
}

#[test]
fn user_v2_pool_starts_at_network_plus_one_with_gateway_reserved() {
    let net = Ipv4Addr::new(192, 168, 104, 0);
    let outside = (Ipv4Addr::new(10, 0, 0, 9), [2, 0, 0, 0, 0, 9]);
    let config = DhcpConfig::user_v2(net, 24, vec![outside]);
    assert!(
        config.static_leases.is_empty(),
        "static leases outside the subnet are dropped"
    );
    let gw = Ipv4Addr::new(192, 168, 104, 2);
    assert_eq!(
        (config.server_ip, config.router, config.dns_servers.clone()),
        (gw, gw, vec![gw])
    );
    let mut h = Harness::new(config);
    let v2 = |last| Ipv4Addr::new(192, 168, 104, last);
    // The harness REQUESTs with server id 192.168.5.2; use DISCOVER + INIT-REBOOT instead.
    for (mac, want) in [(MAC_A, v2(1)), (MAC_B, v2(3)), (MAC_C, v2(4))] {
        assert_eq!(h.discover(mac), Some(want));
        let reply = h
            .send(
                mac,
                MessageType::Request,
                Opts {
                    requested: Some(want),
                    server_id: Some(gw),
                    ..Opts::default()
                },
            )
            .expect("ACK");
        assert_eq!(msg_type(&decode(&reply)), MessageType::Ack);
    }
    let reply = h
        .send(MAC_A, MessageType::Discover, Opts::default())
        .expect("offer");
    let msg = decode(&reply);
    assert_eq!(
        msg.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(gw))
    );
    assert_eq!(
        msg.opts().get(OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![gw]))
    );
    assert_eq!(DhcpConfig::user_v2(net, 24, vec![]).pool_end, v2(254));
}

#[test]
fn user_v2_static_leases_from_saved_leases() {
    let net = Ipv4Addr::new(192, 168, 104, 0);
    let saved = Ipv4Addr::new(192, 168, 104, 3);
    let mut h = Harness::new(DhcpConfig::user_v2(net, 24, vec![(saved, MAC_B)]));
    assert_eq!(h.discover(MAC_A), Some(Ipv4Addr::new(192, 168, 104, 1)));
    assert_eq!(h.discover(MAC_C), Some(Ipv4Addr::new(192, 168, 104, 4)));
    assert_eq!(h.discover(MAC_B), Some(saved));
}

#[test]
fn search_domain_option_is_rfc3397_encoded() {
    let domains = vec!["example.com".to_string(), "lima.net".to_string()];
    let mut h = Harness::new(DhcpConfig {
        search_domains: domains,
        ..DhcpConfig::default()
    });
    let reply = h
        .send(MAC_A, MessageType::Discover, Opts::default())
        .expect("offer");
    let want: &[u8] = b"\x07example\x03com\x00\x04lima\x03net\x00";
    assert_eq!(raw_option(&reply.payload, 119).as_deref(), Some(want));
    // The RFC 3397 §2 example, with a compression pointer.
    let rfc =
        encode_search_list(&["eng.apple.com.".into(), "marketing.apple.com.".into()]).unwrap();
    assert_eq!(
        rfc,
        b"\x03eng\x05apple\x03com\x00\x09marketing\xc0\x04".to_vec()
    );
    assert!(encode_search_list(&["a..b".into()]).is_err());
    assert!(encode_search_list(&[format!("{}.com", "x".repeat(64))]).is_err());
}

#[test]
fn mtu_and_hostname_options() {
    let config = DhcpConfig {
        mtu: 65520,
        hostname: Some("lima-default".into()),
        ..DhcpConfig::default()
    };
    let mut h = Harness::new(config);
    let reply = h
        .send(MAC_A, MessageType::Discover, Opts::default())
        .expect("offer");
    assert_eq!(
        raw_option(&reply.payload, 26).as_deref(),
        Some(&[0xff, 0xf0][..])
    );
    assert_eq!(
        raw_option(&reply.payload, 12).as_deref(),
        Some(&b"lima-default"[..])
    );
}

#[test]
fn invalid_configurations_are_rejected() {
    let d = DhcpConfig::default;
    let cases = [
        (
            "pool_start",
            DhcpConfig {
                pool_start: Ipv4Addr::new(10, 0, 0, 1),
                ..d()
            },
        ),
        (
            "pool_end",
            DhcpConfig {
                pool_end: ip(10),
                ..d()
            },
        ),
        (
            "pool_end",
            DhcpConfig {
                pool_end: ip(255),
                ..d()
            },
        ),
        (
            "network",
            DhcpConfig {
                network: ip(1),
                ..d()
            },
        ),
        (
            "prefix_len",
            DhcpConfig {
                prefix_len: 31,
                ..d()
            },
        ),
        ("mtu", DhcpConfig { mtu: 67, ..d() }),
        (
            "lease_time",
            DhcpConfig {
                lease_time: Duration::ZERO,
                ..d()
            },
        ),
        (
            "hostname",
            DhcpConfig {
                hostname: Some("bad name".into()),
                ..d()
            },
        ),
        (
            "search_domains",
            DhcpConfig {
                search_domains: vec!["bad..name".into()],
                ..d()
            },
        ),
        (
            "search_domains",
            DhcpConfig {
                search_domains: (0..20)
                    .map(|i| format!("domain{i}.example{i}.net{i}"))
                    .collect(),
                ..d()
            },
        ),
        (
            "static_leases",
            DhcpConfig {
                static_leases: vec![(ip(3), MAC_A)],
                ..d()
            },
        ),
        (
            "static_leases",
            DhcpConfig {
                static_leases: vec![(ip(20), MAC_A), (ip(21), MAC_A)],
                ..d()
            },
        ),
        (
            "static_leases",
            DhcpConfig {
                static_leases: vec![(ip(20), MAC_A), (ip(20), MAC_B)],
                ..d()
            },
        ),
        (
            "static_leases",
            DhcpConfig {
                static_leases: vec![(ip(20), BROADCAST_MAC)],
                ..d()
            },
        ),
    ];
    for (field, config) in cases {
        match DhcpServer::new(config) {
            Err(DhcpError::Config { field: f, reason }) => {
                assert_eq!(f, field, "wrong field blamed: {reason}");
                assert!(!reason.is_empty());
            }
            other => panic!("{field}: expected a config error, got {other:?}"),
        }
    }
}

#[test]
fn malformed_messages_give_errors() {
    let mut server = DhcpServer::new(DhcpConfig::default()).unwrap();
    let now = Instant::now();
    let good = client_msg(MAC_A, MessageType::Discover, Opts::default());
    let mut check = |bytes: &[u8]| server.handle(now, MAC_A, bytes);

    assert!(matches!(
        check(&good[..100]),
        Err(DhcpError::Truncated {
            len: 100,
            need: 240
        })
    ));
    let mut m = good.clone();
    m[0] = 2;
    assert_eq!(check(&m), Err(DhcpError::NotBootRequest(2)));
    let mut m = good.clone();
    m[1] = 6;
    assert_eq!(
        check(&m),
        Err(DhcpError::UnsupportedHardware { htype: 6, hlen: 6 })
    );
    let mut m = good.clone();
    m[2] = 16;
    assert_eq!(
        check(&m),
        Err(DhcpError::UnsupportedHardware { htype: 1, hlen: 16 })
    );
    let mut m = good.clone();
    m[236] = 0;
    assert!(matches!(check(&m), Err(DhcpError::BadMagic(_))));
    // Options: none at all, a wrong-length type, a truncated one, an unknown type.
    assert_eq!(check(&good[..240]), Err(DhcpError::MissingMessageType));
    let mut m = good[..240].to_vec();
    m.extend_from_slice(&[53, 2, 1, 1, 255]);
    assert_eq!(
        check(&m),
        Err(DhcpError::BadOptionLength {
            code: 53,
            len: 2,
            want: 1
        })
    );
    let mut m = good[..240].to_vec();
    m.extend_from_slice(&[53, 1, 1, 50, 4, 192, 168]);
    assert!(matches!(
        check(&m),
        Err(DhcpError::TruncatedOption { code: 50, .. })
    ));
    let mut m = good[..240].to_vec();
    m.extend_from_slice(&[53, 1, 2, 255]);
    assert_eq!(check(&m), Err(DhcpError::UnsupportedMessageType(2)));
    // Missing end option and padding are tolerated.
    let mut m = good[..240].to_vec();
    m.extend_from_slice(&[0, 0, 53, 1, 1]);
    assert!(check(&m).unwrap().is_some());
}

#[test]
fn every_truncation_of_valid_messages_is_handled() {
    let mut server = DhcpServer::new(DhcpConfig::default()).unwrap();
    let now = Instant::now();
    let msgs = [
        client_msg(MAC_A, MessageType::Discover, Opts::default()),
        client_msg(
            MAC_A,
            MessageType::Request,
            Opts {
                requested: Some(ip(15)),
                server_id: Some(SERVER),
                ..Opts::default()
            },
        ),
        client_msg(
            MAC_A,
            MessageType::Inform,
            Opts {
                ciaddr: Some(ip(15)),
                ..Opts::default()
            },
        ),
    ];
    for msg in &msgs {
        for len in 0..=msg.len() {
            let result = server.handle(now, MAC_A, &msg[..len]);
            if len < 240 {
                assert!(
                    matches!(result, Err(DhcpError::Truncated { .. })),
                    "len {len}: {result:?}"
                );
            }
        }
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        let mut server = DhcpServer::new(DhcpConfig::default()).unwrap();
        let _ = server.handle(Instant::now(), MAC_A, &bytes);
    }

    #[test]
    fn random_options_never_panic(
        options in proptest::collection::vec(any::<u8>(), 0..400),
        kind in 0u8..12,
    ) {
        let mut server = DhcpServer::new(DhcpConfig::default()).unwrap();
        let mut msg = client_msg(MAC_A, MessageType::Discover, Opts::default())[..240].to_vec();
        msg.extend_from_slice(&[53, 1, kind]);
        msg.extend_from_slice(&options);
        if let Ok(Some(reply)) = server.handle(Instant::now(), MAC_A, &msg) {
            prop_assert!(Message::decode(&mut Decoder::new(&reply.payload)).is_ok());
        }
    }
}

/// What the stack does with guest frames, done by hand for the client tests.
mod frames {
    use std::time::Instant;

    use limanet_netstack::dhcp::{DhcpServer, MacAddr};
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
        Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
    };

    /// Lima's fixed gateway MAC.
    pub const GATEWAY_MAC: MacAddr = [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd];

    /// What the stack does with a guest frame: DHCP requests go to the
    /// server, replies come back as real Ethernet/IPv4/UDP frames with
    /// checksums (smoltcp verifies them).
    pub fn serve(server: &mut DhcpServer, now: Instant, frame: &[u8]) -> Option<Vec<u8>> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        if eth.ethertype() != EthernetProtocol::Ipv4 {
            return None;
        }
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        let udp = UdpPacket::new_checked(ip.payload()).ok()?;
        if ip.next_header() != IpProtocol::Udp || udp.dst_port() != 67 {
            return None;
        }
        let src_mac = eth.src_addr().0;
        let reply = server
            .handle(now, src_mac, udp.payload())
            .expect("valid client message")?;

        let server_ip = server.config().server_ip;
        let udp_repr = UdpRepr {
            src_port: 67,
            dst_port: 68,
        };
        let ip_repr = Ipv4Repr {
            src_addr: server_ip,
            dst_addr: reply.dst_ip,
            next_header: IpProtocol::Udp,
            payload_len: udp_repr.header_len() + reply.payload.len(),
            hop_limit: 64,
        };
        let eth_repr = EthernetRepr {
            src_addr: EthernetAddress(GATEWAY_MAC),
            dst_addr: EthernetAddress(reply.dst_mac),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut buf = vec![0; eth_repr.buffer_len() + ip_repr.buffer_len() + ip_repr.payload_len];
        let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
        eth_repr.emit(&mut eth);
        let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
        let caps = ChecksumCapabilities::default();
        ip_repr.emit(&mut ip, &caps);
        let mut udp = UdpPacket::new_unchecked(ip.payload_mut());
        udp_repr.emit(
            &mut udp,
            &IpAddress::Ipv4(server_ip),
            &IpAddress::Ipv4(reply.dst_ip),
            reply.payload.len(),
            |p| p.copy_from_slice(&reply.payload),
            &caps,
        );
        Some(buf)
    }
}

/// A smoltcp device whose frames the test carries to and from the server.
mod smoltcp_client {
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};

    use limanet_netstack::dhcp::{DhcpConfig, DhcpServer, MacAddr};
    use smoltcp::iface::{Config, Interface, SocketSet};
    use smoltcp::socket::dhcpv4;
    use smoltcp::time::Instant as SmolInstant;
    use smoltcp::wire::{EthernetAddress, IpCidr, Ipv4Cidr};

    use super::frames;
    use super::wire::Wire;

    const GUEST_MAC: MacAddr = [0x52, 0x55, 0x55, 0x12, 0x34, 0x56];

    #[test]
    fn smoltcp_dhcp_client_gets_configured_and_renews() {
        let start = Instant::now();
        let mut server = DhcpServer::new(DhcpConfig::default()).expect("default config");
        let mut pipe = Wire::default();
        let mut iface = Interface::new(
            Config::new(EthernetAddress(GUEST_MAC).into()),
            &mut pipe,
            SmolInstant::from_millis(0),
        );
        let mut client = dhcpv4::Socket::new();
        // Short leases make the client renew within the test.
        client.set_max_lease_duration(Some(smoltcp::time::Duration::from_secs(10)));
        let mut sockets = SocketSet::new(vec![]);
        let handle = sockets.add(client);

        let mut configured = 0;
        for step in 0..600u64 {
            let ts = SmolInstant::from_millis(step as i64 * 100);
            let now = start + Duration::from_millis(step * 100);
            iface.poll(ts, &mut pipe, &mut sockets);
            while let Some(frame) = pipe.from_guest.pop_front() {
                if let Some(reply) = frames::serve(&mut server, now, &frame) {
                    pipe.to_guest.push_back(reply);
                }
            }
            iface.poll(ts, &mut pipe, &mut sockets);
            match sockets.get_mut::<dhcpv4::Socket>(handle).poll() {
                Some(dhcpv4::Event::Configured(config)) => {
                    assert_eq!(
                        config.address,
                        Ipv4Cidr::new(Ipv4Addr::new(192, 168, 5, 15), 24)
                    );
                    assert_eq!(config.router, Some(Ipv4Addr::new(192, 168, 5, 2)));
                    assert_eq!(
                        config.dns_servers.as_slice(),
                        &[Ipv4Addr::new(192, 168, 5, 3)]
                    );
                    assert_eq!(config.server.identifier, Ipv4Addr::new(192, 168, 5, 2));
                    iface.update_ip_addrs(|addrs| {
                        addrs.clear();
                        addrs
                            .push(IpCidr::Ipv4(config.address))
                            .expect("address slot");
                    });
                    configured += 1;
                }
                // The socket reports "deconfigured" once at start.
                Some(dhcpv4::Event::Deconfigured) if configured > 0 => {
                    panic!("client lost its lease at step {step}")
                }
                Some(dhcpv4::Event::Deconfigured) | None => {}
            }
        }
        assert_eq!(configured, 1, "configured once, then renewed silently");
        let leases = server.leases();
        assert_eq!(leases.len(), 1);
        assert_eq!(
            (leases[0].ip, leases[0].mac),
            (Ipv4Addr::new(192, 168, 5, 15), GUEST_MAC)
        );
        // The lease was renewed: it runs from a recent renewal, not from the first ACK.
        let expires = leases[0].expires.expect("dynamic lease");
        assert!(
            expires > start + Duration::from_secs(3600 + 30),
            "lease renewed"
        );
    }
}

/// busybox udhcpc on one end of a veth pair inside a private network
/// namespace; the test serves the other end through an AF_PACKET socket.
mod busybox_udhcpc {
    use std::collections::HashMap;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::path::PathBuf;
    use std::process::Command;
    use std::time::{Duration, Instant};

    use limanet_netstack::dhcp::{DhcpConfig, DhcpServer};
    use limanet_testkit::netns::{unique_name, Netns};
    use limanet_testkit::process::ChildGuard;

    use super::frames;

    /// A scratch directory removed on drop.
    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A raw socket bound to `ifname`, created in the calling thread's namespace,
    /// with a short receive timeout.
    fn packet_socket(ifname: &str) -> std::io::Result<OwnedFd> {
        let name = std::ffi::CString::new(ifname).expect("interface name without NUL");
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: name is a valid C string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: sockaddr_ll is plain data; zero is a valid starting value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = index as i32;
        // SAFETY: addr is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: timeout is a valid timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    }

    /// One frame, or `None` on timeout.
    fn recv(fd: &OwnedFd) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = usize::try_from(n).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    fn send(fd: &OwnedFd, frame: &[u8]) {
        // SAFETY: frame is valid for reads of its length.
        let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    #[test]
    fn busybox_udhcpc_accepts_lease_and_options() {
        let ns = Netns::new("dhcp").expect("network namespace (tests run as root)");
        ns.run(
            "ip",
            &["link", "add", "c0", "type", "veth", "peer", "name", "s0"],
        )
        .expect("veth pair");
        for dev in ["c0", "s0"] {
            ns.run("ip", &["link", "set", dev, "up"]).expect("link up");
        }
        let mac_text = ns
            .run("cat", &["/sys/class/net/c0/address"])
            .expect("client MAC");

        let dir = TempDir(std::env::temp_dir().join(unique_name("limanet-dhcp")));
        std::fs::create_dir_all(&dir.0).expect("temp dir");
        let env_file = dir.0.join("bound.env");
        let script = dir.0.join("udhcpc.script");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n[ \"$1\" = bound ] && env > {}\nexit 0\n",
                env_file.display()
            ),
        )
        .expect("write script");
        Command::new("chmod")
            .arg("755")
            .arg(&script)
            .status()
            .expect("chmod");

        let sock = ns
            .run_in(|| packet_socket("s0"))
            .expect("setns")
            .expect("AF_PACKET socket");
        let mut server = DhcpServer::new(DhcpConfig {
            hostname: Some("lima-test".into()),
            search_domains: vec![
                "eng.apple.com".into(),
                "marketing.apple.com".into(),
                "lima.net".into(),
            ],
            mtu: 9000,
            ..DhcpConfig::default()
        })
        .expect("config");

        let script_arg = script.to_string_lossy().into_owned();
        let mut client = ChildGuard::spawn(
            "udhcpc",
            ns.command("busybox").args([
                "udhcpc",
                "-f",
                "-q",
                "-n",
                "-i",
                "c0",
                "-t",
                "10",
                "-T",
                "1",
                "-s",
                &script_arg,
            ]),
        )
        .expect("spawn busybox udhcpc");

        let start = Instant::now();
        let status = loop {
            if let Some(status) = client.try_wait().expect("wait for udhcpc") {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "udhcpc did not finish:\n{}",
                client.logs()
            );
            if let Some(frame) = recv(&sock) {
                if let Some(reply) = frames::serve(&mut server, Instant::now(), &frame) {
                    send(&sock, &reply);
                }
            }
        };
        assert!(
            status.success(),
            "udhcpc failed: {status}\n{}",
            client.logs()
        );

        let env = std::fs::read_to_string(&env_file).expect("udhcpc ran the bound script");
        let env: HashMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
        let expect = [
            ("ip", "192.168.5.15"),
            ("subnet", "255.255.255.0"),
            ("router", "192.168.5.2"),
            ("dns", "192.168.5.3"),
            ("serverid", "192.168.5.2"),
            ("broadcast", "192.168.5.255"),
            ("lease", "3600"),
            ("mtu", "9000"),
            ("hostname", "lima-test"),
            ("search", "eng.apple.com marketing.apple.com lima.net"),
        ];
        for (key, want) in expect {
            assert_eq!(
                env.get(key).map(|v| v.trim()),
                Some(want),
                "udhcpc variable {key}; env: {env:?}"
            );
        }
        let leases = server.leases();
        assert_eq!(leases.len(), 1);
        let mac = leases[0]
            .mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(mac, mac_text.trim());
    }
}

/// One step of a random client conversation.
#[derive(Debug, Clone)]
struct Step {
    client: usize,
    kind: MessageType,
    requested: Option<u8>,
    server_id: Option<bool>,
    ciaddr: Option<u8>,
    advance_secs: u64,
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let kinds = prop_oneof![
        Just(MessageType::Discover),
        Just(MessageType::Request),
        Just(MessageType::Decline),
        Just(MessageType::Release),
        Just(MessageType::Inform),
    ];
    // Addresses around the pool, the reserved one, the static one and a foreign one.
    let addr = prop_oneof![14u8..=21, Just(3u8), Just(99u8)];
    (
        0usize..6,
        kinds,
        proptest::option::of(addr.clone()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(addr),
        prop_oneof![Just(0u64), 1u64..100, Just(4000u64)],
    )
        .prop_map(
            |(client, kind, requested, server_id, ciaddr, advance_secs)| Step {
                client,
                kind,
                requested,
                server_id,
                ciaddr,
                advance_secs,
            },
        )
}

proptest! {
    /// Whatever clients say, bindings stay consistent: one address per
    /// client, one client per address, reserved and foreign addresses never
    /// handed out, the static address only to its owner.
    #[test]
    fn random_conversations_keep_bindings_consistent(steps in proptest::collection::vec(step_strategy(), 1..60)) {
        let macs: Vec<MacAddr> = (0..6u8).map(|i| [0x52, 0x55, 0x55, 0, 1, i]).collect();
        let config = DhcpConfig {
            pool_end: ip(19),
            reserved: vec![SERVER, ip(3), ip(17)],
            static_leases: vec![(ip(20), macs[5])],
            ..DhcpConfig::default()
        };
        let mut h = Harness::new(config);
        // What each client was told it holds: address and lease end.
        let mut model: std::collections::HashMap<MacAddr, (Ipv4Addr, Instant)> = Default::default();
        for step in steps {
            h.now += Duration::from_secs(step.advance_secs);
            model.retain(|_, (_, until)| *until > h.now);
            let mac = macs[step.client];
            let o = Opts {
                requested: step.requested.map(ip),
                server_id: step.server_id.map(|ours| if ours { SERVER } else { ip(99) }),
                ciaddr: step.ciaddr.map(ip),
                broadcast: false,
            };
            if let Some(reply) = h.send(mac, step.kind, o) {
                let msg = decode(&reply);
                let yiaddr = msg.yiaddr();
                if yiaddr != Ipv4Addr::UNSPECIFIED {
                    prop_assert!(matches!(msg_type(&msg), MessageType::Offer | MessageType::Ack));
                    let last = yiaddr.octets()[3];
                    prop_assert!((15..=20).contains(&last) && last != 17, "handed out {yiaddr}");
                    prop_assert!(last != 20 || mac == macs[5], "static address to {mac:?}");
                    prop_assert!(mac != macs[5] || last == 20, "static client got {yiaddr}");
                    if msg_type(&msg) == MessageType::Ack {
                        model.insert(mac, (yiaddr, h.now + Duration::from_secs(3600)));
                    }
                }
            }
            // RELEASE and DECLINE to us end the client's dynamic binding.
            let to_us = o.server_id != Some(ip(99));
            let held = model.get(&mac).map(|(a, _)| *a);
            let ends = match step.kind {
                MessageType::Release => o.ciaddr.is_some() && o.ciaddr == held,
                MessageType::Decline => o.requested.is_some() && o.requested == held,
                _ => false,
            };
            if ends && to_us && mac != macs[5] {
                model.remove(&mac);
            }
            h.server.expire(h.now);
            let leases = h.server.leases();
            let mut ips: Vec<_> = leases.iter().map(|l| l.ip).collect();
            let mut owners: Vec<_> = leases.iter().map(|l| l.mac).collect();
            ips.dedup();
            owners.sort();
            owners.dedup();
            prop_assert_eq!(ips.len(), leases.len(), "address bound twice: {:?}", leases);
            prop_assert_eq!(owners.len(), leases.len(), "client bound twice: {:?}", leases);
            for l in &leases {
                let last = l.ip.octets()[3];
                prop_assert!(l.ip.octets()[..3] == [192, 168, 5] && (15..=20).contains(&last) && last != 17);
                prop_assert_eq!(last == 20, l.mac == macs[5]);
                prop_assert_eq!(h.server.address_of(l.mac), Some(l.ip));
                prop_assert_eq!(h.server.mac_of(l.ip), Some(l.mac));
                if l.expires.is_some() {
                    prop_assert_eq!(model.get(&l.mac).map(|(a, _)| *a), Some(l.ip), "binding nobody was ACKed");
                }
            }
            for (mac, (addr, _)) in &model {
                prop_assert_eq!(h.server.address_of(*mac), Some(*addr), "binding lost for {:?}", mac);
            }
        }
    }
}
