//! Wire-level helpers: the accept filter applied before the handler (miekg's defaults, as Lima
//! gets them), error replies and UDP truncation. No I/O.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

/// Size of a DNS header.
pub const HEADER_LEN: usize = 12;

/// The size UDP replies to clients without EDNS(0) are truncated to (RFC 1035; Lima truncates
/// every reply to it because busybox nslookup failed to parse larger ones, lima#380, and
/// busybox sends no OPT record).
pub const UDP_REPLY_LIMIT: usize = 512;

/// The most a UDP reply to an EDNS(0) client may carry, whatever buffer it advertises: the
/// DNS flag day 2020 size, which avoids IP fragmentation on every common path. Also the buffer
/// size this server advertises in its own OPT records.
pub const EDNS_UDP_LIMIT: usize = 1232;

const FLAG_QR: u8 = 0x80;
const FLAG_TC: u8 = 0x02;
const OPCODE_QUERY: u8 = 0;
const OPCODE_NOTIFY: u8 = 4;

/// What the accept filter decided about a received datagram or TCP message.
#[derive(Debug)]
pub enum Precheck {
    /// Ignore it silently-ish (a response, or too short to even answer); the reason is for logs.
    Drop(&'static str),
    /// Send this reply (FORMERR or NOTIMP) without looking further; the reason is for logs.
    Reply(Vec<u8>, &'static str),
    /// A well-formed request for the handler.
    Request(Box<Message>),
}

/// Applies miekg's default accept filter and parses the message.
///
/// Responses (QR set) are dropped; opcodes other than QUERY and NOTIFY get NOTIMP;
/// `qdcount != 1`, `ancount > 1`, `nscount > 1` or `arcount > 2` get FORMERR, and so does a
/// message that does not parse.
pub fn precheck(bytes: &[u8]) -> Precheck {
    if bytes.len() < HEADER_LEN {
        return Precheck::Drop("shorter than a DNS header");
    }
    if bytes[2] & FLAG_QR != 0 {
        return Precheck::Drop("QR bit set (a response, not a query)");
    }
    let opcode = (bytes[2] >> 3) & 0x0f;
    if opcode != OPCODE_QUERY && opcode != OPCODE_NOTIFY {
        return Precheck::Reply(
            header_reply(bytes, ResponseCode::NotImp),
            "unsupported opcode",
        );
    }
    let count = |i: usize| u16::from_be_bytes([bytes[i], bytes[i + 1]]);
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    if qd != 1 || an > 1 || ns > 1 || ar > 2 {
        return Precheck::Reply(
            header_reply(bytes, ResponseCode::FormErr),
            "bad section counts",
        );
    }
    match Message::from_vec(bytes) {
        Ok(msg) => Precheck::Request(Box::new(msg)),
        Err(_) => Precheck::Reply(
            header_reply(bytes, ResponseCode::FormErr),
            "malformed message",
        ),
    }
}

/// A header-only reply to the request whose header is `request[..12]`: same id and opcode, RD and
/// CD copied, QR set, the given rcode, no sections.
fn header_reply(request: &[u8], rcode: ResponseCode) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    out[0] = request[0];
    out[1] = request[1];
    // Keep opcode and RD; set QR.
    out[2] = FLAG_QR | (request[2] & 0x79);
    // Keep CD (0x10); rcode in the low nibble.
    out[3] = (request[3] & 0x10) | (u16::from(rcode) as u8 & 0x0f);
    out
}

/// Starts a reply to `request` the way miekg's `SetReply` does (same id, opcode, RD and CD, the
/// first question, QR set, NOERROR, no AA), plus what a recursive server owes its clients and
/// Lima leaves out: RA set (this server resolves recursively for them), and, when the request
/// carried an OPT record, an OPT record of our own (RFC 6891 §6.1.1: version 0, our UDP
/// size, no DO since nothing is validated here). Without the OPT record, EDNS clients such as
/// systemd-resolved conclude the server does not speak EDNS and degrade.
pub fn reply_to(request: &Message) -> Message {
    let mut reply = Message::new(request.id, MessageType::Response, request.op_code);
    reply.metadata.recursion_desired = request.recursion_desired;
    reply.metadata.checking_disabled = request.checking_disabled;
    reply.metadata.recursion_available = true;
    if let Some(q) = request.queries.first() {
        reply.add_query(q.clone());
    }
    if request.edns.is_some() {
        reply.set_edns(server_edns());
    }
    reply
}

/// The OPT record of our replies.
fn server_edns() -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_UDP_LIMIT as u16);
    edns.set_version(0);
    edns.set_dnssec_ok(false);
    edns
}

/// The largest UDP reply `request` allows: its EDNS(0) buffer size, at least 512 (RFC 6891
/// §6.2.5) and at most [`EDNS_UDP_LIMIT`]; 512 for a request without EDNS (Lima's limit, which
/// busybox nslookup needs).
pub fn udp_reply_limit(request: &Message) -> usize {
    match &request.edns {
        Some(edns) => usize::from(edns.max_payload()).clamp(UDP_REPLY_LIMIT, EDNS_UDP_LIMIT),
        None => UDP_REPLY_LIMIT,
    }
}

/// Gives a relayed reply an OPT record of ours when the client sent one and the upstream's
/// reply has no additional records at all (an upstream without EDNS): the client talks EDNS to
/// this server, and a reply without OPT would make it conclude this server cannot (RFC 6891
/// §7). Replies with additional records are left as they are (they carry the upstream's OPT,
/// if any, and rewriting them would mean parsing every reply).
pub fn ensure_opt(request: &Message, mut reply: Vec<u8>) -> Vec<u8> {
    if request.edns.is_none() || reply.len() < HEADER_LEN || reply[10..12] != [0, 0] {
        return reply;
    }
    let size = (EDNS_UDP_LIMIT as u16).to_be_bytes();
    // Root owner, type OPT (41), class = UDP size, TTL = extended rcode 0, version 0, no
    // flags, no options.
    reply.extend_from_slice(&[0, 0, 41, size[0], size[1], 0, 0, 0, 0, 0, 0]);
    reply[11] = 1;
    reply
}

/// BADVERS for a request whose OPT record asks for an EDNS version above 0 (RFC 6891 §6.1.3);
/// `None` for every other request.
pub fn badvers(request: &Message) -> Option<Vec<u8>> {
    let version = request.edns.as_ref()?.version();
    if version == 0 {
        return None;
    }
    let mut reply = reply_to(request);
    reply.metadata.response_code = ResponseCode::BADVERS;
    Some(encode(&reply))
}

/// SERVFAIL for a request no upstream answered (Lima sends an empty NOERROR instead; an
/// explicit failure lets the client's resolver try elsewhere and does not get cached as NODATA).
pub fn servfail(request: &Message) -> Vec<u8> {
    let mut reply = reply_to(request);
    reply.metadata.response_code = ResponseCode::ServFail;
    encode(&reply)
}

/// Encodes a message. Messages built here always encode; should one not, the reply degrades to
/// a SERVFAIL header rather than failing the exchange.
pub fn encode(msg: &Message) -> Vec<u8> {
    match msg.to_vec() {
        Ok(bytes) => bytes,
        Err(err) => {
            tracing::warn!(%err, id = msg.id, "could not encode a reply; sending SERVFAIL");
            let mut head = vec![0u8; HEADER_LEN];
            head[..2].copy_from_slice(&msg.id.to_be_bytes());
            head[2] = FLAG_QR;
            head[3] = u16::from(ResponseCode::ServFail) as u8;
            head
        }
    }
}

/// Whether an encoded message has the TC bit set.
pub fn is_truncated(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN && bytes[2] & FLAG_TC != 0
}

/// Truncates an encoded reply to `limit` bytes the way miekg's `Truncate` does: set aside the
/// OPT RR, keep as many answer, then authority, then additional RRs as fit, set TC if anything
/// was dropped (keeping a TC already set), then put the OPT RR back. Replies that fit are
/// returned unchanged. A reply too large that does not parse becomes its header with TC set and
/// no sections.
pub fn truncate(reply: Vec<u8>, limit: usize) -> Vec<u8> {
    if reply.len() <= limit {
        return reply;
    }
    let Ok(mut msg) = Message::from_vec(&reply) else {
        let mut head = reply[..HEADER_LEN.min(reply.len())].to_vec();
        head.resize(HEADER_LEN, 0);
        head[2] |= FLAG_TC;
        head[4..].fill(0);
        return head;
    };
    let edns = msg.edns.take();
    let opt_len = edns.as_ref().map_or(0, opt_len);
    let budget = limit.saturating_sub(opt_len);
    let mut buf = Vec::with_capacity(limit);
    {
        let mut encoder = BinEncoder::new(&mut buf);
        encoder.set_max_size(u16::try_from(budget).unwrap_or(u16::MAX));
        if msg.emit(&mut encoder).is_err() {
            // Not even the header and question fit: keep the header alone.
            let mut head = reply[..HEADER_LEN].to_vec();
            head[2] |= FLAG_TC;
            head[4..].fill(0);
            return head;
        }
    }
    let count = |i: usize| usize::from(u16::from_be_bytes([buf[i], buf[i + 1]]));
    let (an, ns, ar) = (count(6), count(8), count(10));
    msg.answers.truncate(an);
    msg.authorities.truncate(ns);
    msg.additionals.truncate(ar);
    msg.metadata.truncation = true;
    msg.edns = edns;
    encode(&msg)
}

fn opt_len(edns: &Edns) -> usize {
    let mut buf = Vec::new();
    let mut encoder = BinEncoder::new(&mut buf);
    match Record::from(edns).emit(&mut encoder) {
        Ok(()) => buf.len(),
        Err(_) => 0,
    }
}

/// Whether a reply answers `request`: same id, QR set, and (when it has one) the same question.
/// Used to discard stray or spoofed datagrams on upstream sockets.
pub fn answers_request(request: &[u8], reply: &[u8]) -> bool {
    reply.len() >= HEADER_LEN
        && request.len() >= HEADER_LEN
        && reply[..2] == request[..2]
        && reply[2] & FLAG_QR != 0
}

/// The opcode of an encoded message.
pub fn opcode(bytes: &[u8]) -> Option<OpCode> {
    bytes.get(2).map(|b| OpCode::from_u8((b >> 3) & 0x0f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::{A, TXT};
    use hickory_proto::rr::{Name, RData, RecordType};
    use std::str::FromStr;

    fn query(name: &str, rtype: RecordType) -> Vec<u8> {
        let mut msg = Message::new(0x1234, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(Name::from_str(name).unwrap(), rtype));
        msg.to_vec().unwrap()
    }

    #[test]
    fn accept_filter() {
        assert!(matches!(precheck(&[0; 5]), Precheck::Drop(_)));
        let mut q = query("a.example.", RecordType::A);
        assert!(matches!(precheck(&q), Precheck::Request(_)));
        q[2] |= FLAG_QR;
        assert!(matches!(precheck(&q), Precheck::Drop(_)));

        let mut q = query("a.example.", RecordType::A);
        q[2] |= 2 << 3; // STATUS
        let Precheck::Reply(r, _) = precheck(&q) else {
            panic!("expected a reply")
        };
        let r = Message::from_vec(&r).unwrap();
        assert_eq!(r.response_code, ResponseCode::NotImp);
        assert_eq!(r.id, 0x1234);
        assert_eq!(r.message_type, MessageType::Response);

        let mut q = query("a.example.", RecordType::A);
        q[5] = 2; // qdcount 2
        let Precheck::Reply(r, _) = precheck(&q) else {
            panic!("expected a reply")
        };
        assert_eq!(
            Message::from_vec(&r).unwrap().response_code,
            ResponseCode::FormErr
        );

        let q = query("a.example.", RecordType::A);
        let Precheck::Reply(r, _) = precheck(&q[..q.len() - 3]) else {
            panic!("expected a reply")
        };
        let r = Message::from_vec(&r).unwrap();
        assert_eq!(r.response_code, ResponseCode::FormErr);
        assert!(r.recursion_desired);
    }

    #[test]
    fn truncation_keeps_what_fits_and_sets_tc() {
        let name = Name::from_str("big.example.").unwrap();
        let mut reply = Message::new(7, MessageType::Response, OpCode::Query);
        reply.add_query(Query::query(name.clone(), RecordType::TXT));
        for i in 0..10 {
            let text = format!("{i}{}", "x".repeat(99));
            reply.add_answer(Record::from_rdata(
                name.clone(),
                5,
                RData::TXT(TXT::new(vec![text])),
            ));
        }
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        reply.set_edns(edns);
        let bytes = reply.to_vec().unwrap();
        assert!(bytes.len() > UDP_REPLY_LIMIT);
        let cut = truncate(bytes, UDP_REPLY_LIMIT);
        assert!(cut.len() <= UDP_REPLY_LIMIT);
        let msg = Message::from_vec(&cut).unwrap();
        assert!(msg.truncation);
        assert!(msg.edns.is_some(), "OPT RR put back");
        assert_eq!(msg.answers.len(), 4);
        assert_eq!(msg.answers[0], reply.answers[0]);

        let mut small = Message::new(8, MessageType::Response, OpCode::Query);
        small.add_answer(Record::from_rdata(name, 5, RData::A(A::new(1, 2, 3, 4))));
        let bytes = small.to_vec().unwrap();
        assert_eq!(truncate(bytes.clone(), UDP_REPLY_LIMIT), bytes);
    }

    fn edns_query(name: &str, rtype: RecordType, size: Option<u16>) -> Message {
        let mut msg = Message::new(0x4321, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(Name::from_str(name).unwrap(), rtype));
        if let Some(size) = size {
            let mut edns = Edns::new();
            edns.set_max_payload(size);
            msg.set_edns(edns);
        }
        msg
    }

    #[test]
    fn udp_limit_follows_the_clients_edns_size_within_bounds() {
        let q = |size| udp_reply_limit(&edns_query("a.example.", RecordType::A, size));
        assert_eq!(q(None), 512, "no EDNS: Lima's 512 (busybox)");
        assert_eq!(q(Some(4096)), 1232, "capped");
        assert_eq!(q(Some(1232)), 1232);
        assert_eq!(q(Some(1000)), 1000);
        assert_eq!(q(Some(100)), 512, "below 512 means 512 (RFC 6891 6.2.5)");
    }

    #[test]
    fn replies_to_edns_requests_carry_opt_and_ra() {
        let with = reply_to(&edns_query("a.example.", RecordType::A, Some(4096)));
        let edns = with.edns.as_ref().expect("OPT record");
        assert_eq!(edns.max_payload(), 1232);
        assert_eq!(edns.version(), 0);
        assert!(!edns.flags().dnssec_ok);
        assert!(with.recursion_available);
        let without = reply_to(&edns_query("a.example.", RecordType::A, None));
        assert!(without.edns.is_none(), "no OPT to a client that sent none");
        assert!(without.recursion_available);
    }

    #[test]
    fn newer_edns_versions_get_badvers() {
        let mut q = edns_query("a.example.", RecordType::A, Some(1232));
        assert!(badvers(&q).is_none());
        if let Some(e) = q.edns.as_mut() {
            e.set_version(1);
        }
        let r = Message::from_vec(&badvers(&q).expect("BADVERS")).unwrap();
        // 16 is both BADVERS and BADSIG; hickory decodes it as the latter.
        assert_eq!(u16::from(r.response_code), 16);
        assert_eq!(r.edns.as_ref().map(|e| e.version()), Some(0));
    }

    #[test]
    fn relayed_reply_without_opt_gets_ours() {
        let q = edns_query("a.example.", RecordType::A, Some(1232));
        let mut upstream = Message::new(0x4321, MessageType::Response, OpCode::Query);
        upstream.add_query(q.queries[0].clone());
        let bytes = upstream.to_vec().unwrap();
        let fixed = Message::from_vec(&ensure_opt(&q, bytes.clone())).unwrap();
        assert_eq!(fixed.edns.map(|e| e.max_payload()), Some(1232));
        let plain = edns_query("a.example.", RecordType::A, None);
        assert_eq!(ensure_opt(&plain, bytes.clone()), bytes);
    }

    #[test]
    fn edns_truncation_keeps_up_to_1232_bytes() {
        let name = Name::from_str("big.example.").unwrap();
        let q = edns_query("big.example.", RecordType::TXT, Some(4096));
        let mut reply = reply_to(&q);
        for i in 0..20 {
            let text = format!("{i}{}", "x".repeat(99));
            reply.add_answer(Record::from_rdata(
                name.clone(),
                5,
                RData::TXT(TXT::new(vec![text])),
            ));
        }
        let limit = udp_reply_limit(&q);
        let cut = truncate(reply.to_vec().unwrap(), limit);
        assert!(cut.len() <= 1232 && cut.len() > 1000, "{}", cut.len());
        let msg = Message::from_vec(&cut).unwrap();
        assert!(msg.truncation);
        assert!(msg.edns.is_some());
        assert_eq!(msg.answers.len(), 10);
    }

    #[test]
    fn unparseable_large_reply_becomes_tc_header() {
        let mut junk = vec![0xab; 600];
        junk[2] = FLAG_QR;
        let cut = truncate(junk, UDP_REPLY_LIMIT);
        assert_eq!(cut.len(), HEADER_LEN);
        assert!(is_truncated(&cut));
        assert_eq!(&cut[..2], &[0xab, 0xab]);
    }
}
