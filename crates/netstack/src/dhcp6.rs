//! A stateless DHCPv6 server (RFC 8415 6.1): an Information-Request gets a Reply with the DNS
//! servers (option 23) and the search domains (option 24). Nothing else is answered.
//!
//! Why stateless only: guests get their addresses by SLAAC from the gateway's Router
//! Advertisements (prefix with the A flag), which every IPv6 guest kernel does on its own and
//! which needs no lease table, no DUID bookkeeping and no per-guest state a guest could
//! exhaust. The RA carries the DNS server in RDNSS as well; this server is for clients that
//! look for DNS only in DHCPv6 (the RA's O flag tells them to ask). Stateful IA_NA (a
//! predictable `::15` per guest) is left for when port forwards into a guest's IPv6 address
//! need it; until then a Solicit goes unanswered, which clients treat as "no DHCPv6 addresses
//! here".

use crate::wire::{be16, MacAddr, WireError};
use std::net::Ipv6Addr;

pub const CLIENT_PORT: u16 = 546;
pub const SERVER_PORT: u16 = 547;
/// All_DHCP_Relay_Agents_and_Servers, where clients send.
pub const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

pub const MSG_SOLICIT: u8 = 1;
pub const MSG_REPLY: u8 = 7;
pub const MSG_INFORMATION_REQUEST: u8 = 11;

pub const OPT_CLIENT_ID: u16 = 1;
pub const OPT_SERVER_ID: u16 = 2;
pub const OPT_DNS_SERVERS: u16 = 23;
pub const OPT_DOMAIN_LIST: u16 = 24;
/// Options one message may carry before it is refused: bounds the walk.
const MAX_OPTIONS: usize = 64;

/// A DHCPv6 message: type, transaction id and its top-level options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: u8,
    pub transaction: [u8; 3],
    pub options: Vec<(u16, &'a [u8])>,
}

impl<'a> Message<'a> {
    pub fn parse(p: &'a [u8]) -> Result<Self, WireError> {
        if p.len() < 4 {
            return Err(WireError::Truncated);
        }
        let mut options = Vec::new();
        let mut rest = &p[4..];
        while !rest.is_empty() {
            if rest.len() < 4 || options.len() >= MAX_OPTIONS {
                return Err(WireError::Malformed);
            }
            let code = be16(rest, 0);
            let len = usize::from(be16(rest, 2));
            let value = rest.get(4..4 + len).ok_or(WireError::Malformed)?;
            options.push((code, value));
            rest = &rest[4 + len..];
        }
        Ok(Message {
            kind: p[0],
            transaction: [p[1], p[2], p[3]],
            options,
        })
    }

    pub fn option(&self, code: u16) -> Option<&'a [u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| *v)
    }

    pub fn emit(&self) -> Vec<u8> {
        let mut b = vec![self.kind];
        b.extend_from_slice(&self.transaction);
        for (code, value) in &self.options {
            b.extend_from_slice(&code.to_be_bytes());
            b.extend_from_slice(&(value.len() as u16).to_be_bytes());
            b.extend_from_slice(value);
        }
        b
    }
}

/// What the server announces.
#[derive(Debug, Clone)]
pub struct Dhcp6Config {
    /// The server's DUID is its DUID-LL (RFC 8415 11.4) from this address.
    pub server_mac: MacAddr,
    pub dns_servers: Vec<Ipv6Addr>,
    pub search_domains: Vec<String>,
}

/// Answers one client message: `Ok(Some(reply))` for an Information-Request, `Ok(None)` for
/// anything this stateless server does not answer.
pub fn handle(cfg: &Dhcp6Config, payload: &[u8]) -> Result<Option<Vec<u8>>, WireError> {
    let msg = Message::parse(payload)?;
    if msg.kind != MSG_INFORMATION_REQUEST {
        return Ok(None);
    }
    // RFC 8415 16.12: an Information-Request naming another server, or carrying an IA, is
    // not for us.
    let duid = server_duid(cfg.server_mac);
    if msg.option(OPT_SERVER_ID).is_some_and(|id| id != duid) {
        return Ok(None);
    }
    let dns: Vec<u8> = cfg.dns_servers.iter().flat_map(|a| a.octets()).collect();
    let domains = encode_domains(&cfg.search_domains);
    let mut options = vec![(OPT_SERVER_ID, &duid[..])];
    if let Some(client) = msg.option(OPT_CLIENT_ID) {
        options.push((OPT_CLIENT_ID, client));
    }
    if !dns.is_empty() {
        options.push((OPT_DNS_SERVERS, &dns[..]));
    }
    if !domains.is_empty() {
        options.push((OPT_DOMAIN_LIST, &domains[..]));
    }
    let reply = Message {
        kind: MSG_REPLY,
        transaction: msg.transaction,
        options,
    };
    Ok(Some(reply.emit()))
}

/// DUID-LL: type 3, hardware type 1 (Ethernet), the MAC.
pub fn server_duid(mac: MacAddr) -> Vec<u8> {
    let mut d = vec![0, 3, 0, 1];
    d.extend_from_slice(&mac);
    d
}

/// Domain names in DNS wire format, uncompressed (RFC 8415 10). Labels longer than 63 bytes
/// or names longer than 255 are left out rather than sent broken.
fn encode_domains(domains: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for d in domains {
        let mut name = Vec::new();
        let ok = d
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
            .all(|label| {
                name.push(label.len() as u8);
                name.extend_from_slice(label.as_bytes());
                label.len() <= 63
            });
        name.push(0);
        if ok && name.len() <= 255 && name.len() > 1 {
            out.extend_from_slice(&name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Dhcp6Config {
        Dhcp6Config {
            server_mac: [0x52, 0x55, 192, 168, 5, 2],
            dns_servers: vec!["fd00:192:168:5::3".parse().unwrap()],
            search_domains: vec!["lima.internal".into()],
        }
    }

    #[test]
    fn information_request_gets_dns_and_search_list() {
        let client_id = [0u8, 3, 0, 1, 2, 0, 0, 0, 0, 1];
        let req = Message {
            kind: MSG_INFORMATION_REQUEST,
            transaction: [1, 2, 3],
            options: vec![(OPT_CLIENT_ID, &client_id[..]), (6, &[0, 23][..])],
        };
        let reply = handle(&cfg(), &req.emit()).unwrap().unwrap();
        let reply = Message::parse(&reply).unwrap();
        assert_eq!(reply.kind, MSG_REPLY);
        assert_eq!(reply.transaction, [1, 2, 3]);
        assert_eq!(reply.option(OPT_CLIENT_ID), Some(&client_id[..]));
        assert_eq!(
            reply.option(OPT_SERVER_ID),
            Some(&server_duid(cfg().server_mac)[..])
        );
        let dns = reply.option(OPT_DNS_SERVERS).unwrap();
        assert_eq!(dns, &cfg().dns_servers[0].octets()[..]);
        assert_eq!(
            reply.option(OPT_DOMAIN_LIST).unwrap(),
            b"\x04lima\x08internal\x00"
        );
    }

    #[test]
    fn other_messages_and_garbage_are_not_answered() {
        let solicit = Message {
            kind: MSG_SOLICIT,
            transaction: [0; 3],
            options: vec![],
        };
        assert_eq!(handle(&cfg(), &solicit.emit()).unwrap(), None);
        let other_server = Message {
            kind: MSG_INFORMATION_REQUEST,
            transaction: [0; 3],
            options: vec![(OPT_SERVER_ID, &[0, 3, 0, 1, 1, 1, 1, 1, 1, 1][..])],
        };
        assert_eq!(handle(&cfg(), &other_server.emit()).unwrap(), None);
        // An option whose length runs past the message.
        let bad = [MSG_INFORMATION_REQUEST, 0, 0, 0, 0, 1, 0, 9, 1];
        assert_eq!(handle(&cfg(), &bad).unwrap_err(), WireError::Malformed);
        for n in 0..bad.len() {
            let _ = handle(&cfg(), &bad[..n]);
        }
    }
}
