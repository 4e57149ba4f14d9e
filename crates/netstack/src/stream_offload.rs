//! The offload extension of the stream protocol (QEMU's `-netdev stream` framing: a 4-byte
//! big-endian length, then the frame), negotiated per connection. Pure: frame building and
//! parsing only, the transports do the I/O.
//!
//! A client that can carry offload state (`limanet attach`; QEMU cannot) sends, as its very
//! first frame, a *hello*: an Ethernet frame from its own MAC to itself with the local
//! experimental EtherType [`ETHERTYPE`] and a payload of [`MAGIC`], [`VERSION`], the kind
//! ([`Kind::Hello`]) and the features it wants. It sends nothing else until the *ack* arrives or
//! a short timeout passes. A limanet server (vmnet daemon, usernet stream listeners) that sees a
//! hello as a connection's first frame does not switch it, and answers with an ack (same
//! layout, [`Kind::Ack`]). From the ack on, every record in both directions is
//! `length | virtio_net_hdr_v1 (12 bytes, little-endian) | frame`; the length counts the header.
//! Frames the server sent before the ack stay plain, so the client knows exactly where the mode
//! changes. A server that does not know the hello (socket_vmnet, QEMU, gvproxy) treats it as
//! one odd frame (nobody's kernel accepts the EtherType) and never acks: the client stays plain.
//!
//! With [`FEATURE_TAP_FD`] in the ack as well, the client hands the server its TAP instead of
//! relaying: its next and last record is a control frame of kind [`Kind::TapFd`], sent in one
//! `sendmsg` with the TAP's descriptor (opened with `IFF_VNET_HDR`) as `SCM_RIGHTS`. The server
//! then reads and writes the TAP itself; the connection carries nothing more and only ties the
//! TAP's life to the client's: when it closes, the server drops the TAP. A server that does not
//! offer the feature acks without it, and the client relays as before.
//!
//! Headers from the peer are not trusted: [`parse_record`] rejects any that describe something
//! the receiver cannot handle, and the caller drops that frame (and counts it).

use crate::vnet::{
    VnetHeader, F_DATA_VALID, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4,
    VNET_HDR_LEN,
};
use crate::wire::{MacAddr, ETH_HEADER_LEN};

/// IEEE 802 "local experimental EtherType 1".
pub const ETHERTYPE: u16 = 0x88b5;
/// First bytes of the payload of a hello or ack.
pub const MAGIC: [u8; 8] = *b"LIMANET\0";
/// Version of this extension.
pub const VERSION: u8 = 1;
/// Feature bit: records carry a `virtio_net_hdr_v1` before the frame.
pub const FEATURE_VNET_HDR_V1: u32 = 1;
/// Feature bit: the client passes its TAP's descriptor after the ack (see the module docs).
/// Only together with [`FEATURE_VNET_HDR_V1`].
pub const FEATURE_TAP_FD: u32 = 2;
/// Length of the header on the wire: `struct virtio_net_hdr_v1` (`virtio_net_hdr` plus
/// `num_buffers`, which is ignored on receipt and sent as 0).
pub const WIRE_HDR_LEN: usize = VNET_HDR_LEN + 2;
/// Smallest segment size accepted for a super-segment: a peer asking for tiny segments would
/// make a 64 KiB frame cost the switch hundreds of packets to cut (an MTU of 296 still fits).
pub const MIN_GSO_SIZE: u16 = 256;
/// Minimum Ethernet frame without FCS: hellos and acks are padded to it.
const MIN_FRAME: usize = 60;
const PAYLOAD_LEN: usize = MAGIC.len() + 1 + 1 + 4;

/// Which end of the negotiation a control frame comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Hello = 1,
    Ack = 2,
    /// The record that carries the client's TAP descriptor.
    TapFd = 3,
}

/// A parsed hello or ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    pub kind: Kind,
    /// The client's MAC (source and destination of both frames).
    pub mac: MacAddr,
    pub features: u32,
}

/// Builds a hello (client), ack (server) or TAP-passing (client) frame for the client with `mac`.
pub fn build(kind: Kind, mac: MacAddr, features: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(MIN_FRAME);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(&MAGIC);
    f.push(VERSION);
    f.push(kind as u8);
    f.extend_from_slice(&features.to_be_bytes());
    f.resize(MIN_FRAME, 0);
    f
}

/// Parses a hello or ack; `None` for any other frame (also other versions).
pub fn parse(frame: &[u8]) -> Option<Control> {
    let payload = frame.get(ETH_HEADER_LEN..ETH_HEADER_LEN + PAYLOAD_LEN)?;
    if frame[12..14] != ETHERTYPE.to_be_bytes() || payload[..MAGIC.len()] != MAGIC {
        return None;
    }
    let rest = &payload[MAGIC.len()..];
    if rest[0] != VERSION {
        return None;
    }
    let kind = match rest[1] {
        1 => Kind::Hello,
        2 => Kind::Ack,
        3 => Kind::TapFd,
        _ => return None,
    };
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&frame[6..12]);
    Some(Control {
        kind,
        mac,
        features: u32::from_be_bytes([rest[2], rest[3], rest[4], rest[5]]),
    })
}

/// The ack a server sends for `hello`, with the features both sides have; `None` if `frame` is
/// not a hello or shares no feature.
pub fn answer(frame: &[u8], supported: u32) -> Option<Vec<u8>> {
    let hello = parse(frame).filter(|c| c.kind == Kind::Hello)?;
    let features = hello.features & supported;
    (features & FEATURE_VNET_HDR_V1 != 0).then(|| build(Kind::Ack, hello.mac, features))
}

/// Why a record's header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("record shorter than its virtio-net header")]
    Truncated,
    #[error("unknown virtio-net header flags or GSO type")]
    Unknown,
    #[error("virtio-net header does not fit the frame")]
    Inconsistent,
}

/// Splits an offload record into its header and frame, refusing headers that lie: unknown
/// flags or GSO types, a checksum field outside the frame, a super-segment without a partial
/// checksum or with a segment size under [`MIN_GSO_SIZE`], or a frame not even holding an
/// Ethernet header.
pub fn parse_record(record: &[u8]) -> Result<(VnetHeader, &[u8]), HeaderError> {
    if record.len() < WIRE_HDR_LEN {
        return Err(HeaderError::Truncated);
    }
    let (hdr, _) = VnetHeader::parse(record).map_err(|_| HeaderError::Truncated)?;
    let frame = &record[WIRE_HDR_LEN..];
    check(&hdr, frame.len())?;
    Ok((hdr, frame))
}

/// Whether `hdr` is one a receiver can act on for a frame of `len` bytes.
pub fn check(hdr: &VnetHeader, len: usize) -> Result<(), HeaderError> {
    if hdr.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
        return Err(HeaderError::Unknown);
    }
    let gso = hdr.gso();
    let ecn_ok = hdr.gso_type & GSO_ECN == 0 || matches!(gso, GSO_TCPV4 | GSO_TCPV6);
    if !matches!(gso, GSO_NONE | GSO_TCPV4 | GSO_TCPV6 | GSO_UDP_L4) || !ecn_ok {
        return Err(HeaderError::Unknown);
    }
    if len < ETH_HEADER_LEN {
        return Err(HeaderError::Inconsistent);
    }
    if hdr.flags & F_NEEDS_CSUM != 0 {
        let field = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset);
        if usize::from(hdr.csum_start) < ETH_HEADER_LEN || field + 2 > len {
            return Err(HeaderError::Inconsistent);
        }
    }
    if gso != GSO_NONE && (hdr.gso_size < MIN_GSO_SIZE || hdr.flags & F_NEEDS_CSUM == 0) {
        return Err(HeaderError::Inconsistent);
    }
    Ok(())
}

/// The wire form of `hdr` (`num_buffers` 0).
pub fn header_bytes(hdr: &VnetHeader) -> [u8; WIRE_HDR_LEN] {
    let mut b = [0u8; WIRE_HDR_LEN];
    hdr.emit(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

    #[test]
    fn hello_is_answered_with_an_ack_for_the_same_mac() {
        let hello = build(Kind::Hello, MAC, FEATURE_VNET_HDR_V1);
        assert_eq!(hello.len(), MIN_FRAME);
        assert_eq!(&hello[0..6], &MAC);
        let ack = answer(&hello, FEATURE_VNET_HDR_V1).expect("ack");
        assert_eq!(
            parse(&ack),
            Some(Control {
                kind: Kind::Ack,
                mac: MAC,
                features: FEATURE_VNET_HDR_V1
            })
        );
        // An ack is not a hello, and a server without the feature does not answer.
        assert_eq!(answer(&ack, FEATURE_VNET_HDR_V1), None);
        assert_eq!(answer(&hello, 0), None);
        assert_eq!(
            answer(&build(Kind::Hello, MAC, 0), FEATURE_VNET_HDR_V1),
            None
        );
    }

    #[test]
    fn tap_passing_is_acked_only_by_servers_that_offer_it() {
        let both = FEATURE_VNET_HDR_V1 | FEATURE_TAP_FD;
        let hello = build(Kind::Hello, MAC, both);
        let features = |ack: Option<Vec<u8>>| ack.and_then(|a| parse(&a)).map(|c| c.features);
        // An older server (or usernet) knows only the header: the client relays.
        assert_eq!(features(answer(&hello, FEATURE_VNET_HDR_V1)), Some(1));
        assert_eq!(features(answer(&hello, both)), Some(both));
        // The TAP alone (no header feature) is not a valid offer.
        assert_eq!(answer(&build(Kind::Hello, MAC, FEATURE_TAP_FD), both), None);
        let tap = build(Kind::TapFd, MAC, both);
        assert_eq!(parse(&tap).map(|c| c.kind), Some(Kind::TapFd));
        assert_eq!(answer(&tap, both), None, "only a hello is answered");
    }

    #[test]
    fn other_frames_are_not_control_frames() {
        let hello = build(Kind::Hello, MAC, 1);
        for n in 0..ETH_HEADER_LEN + PAYLOAD_LEN {
            assert_eq!(parse(&hello[..n]), None, "truncated to {n}");
        }
        let mut other = hello.clone();
        other[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        assert_eq!(parse(&other), None);
        let mut version = hello.clone();
        version[ETH_HEADER_LEN + MAGIC.len()] = 2;
        assert_eq!(parse(&version), None);
        let mut kind = hello.clone();
        kind[ETH_HEADER_LEN + MAGIC.len() + 1] = 9;
        assert_eq!(parse(&kind), None);
        let mut magic = hello;
        magic[ETH_HEADER_LEN] ^= 1;
        assert_eq!(parse(&magic), None);
    }

    #[test]
    fn records_round_trip_and_lying_headers_are_refused() {
        let hdr = VnetHeader::tcpv4(54, 3000, 1448);
        let mut record = header_bytes(&hdr).to_vec();
        record.extend_from_slice(&[0u8; 3054]);
        let (back, frame) = parse_record(&record).expect("valid");
        assert_eq!(back, hdr);
        assert_eq!(frame.len(), 3054);
        // A plain frame: an all-zero header.
        let mut plain = vec![0u8; WIRE_HDR_LEN];
        plain.extend_from_slice(&[0u8; 60]);
        assert_eq!(parse_record(&plain).unwrap().0, VnetHeader::default());
        for n in 0..WIRE_HDR_LEN {
            assert_eq!(parse_record(&record[..n]), Err(HeaderError::Truncated));
        }
        let lies = [
            VnetHeader { flags: 0x80, ..hdr },
            VnetHeader { gso_type: 9, ..hdr },
            VnetHeader {
                gso_type: GSO_UDP_L4 | GSO_ECN,
                ..hdr
            },
            VnetHeader { gso_size: 0, ..hdr },
            VnetHeader {
                gso_size: MIN_GSO_SIZE - 1,
                ..hdr
            },
            VnetHeader { flags: 0, ..hdr },
            VnetHeader {
                csum_start: 60_000,
                ..hdr
            },
            VnetHeader {
                csum_offset: 3040,
                ..hdr
            },
            VnetHeader {
                csum_start: 2,
                ..hdr
            },
        ];
        for lie in lies {
            let mut r = header_bytes(&lie).to_vec();
            r.extend_from_slice(&record[WIRE_HDR_LEN..]);
            assert!(parse_record(&r).is_err(), "{lie:?}");
        }
        // A header alone, without even an Ethernet header.
        assert_eq!(
            parse_record(&header_bytes(&VnetHeader::default())),
            Err(HeaderError::Inconsistent)
        );
    }

    #[test]
    fn random_records_never_panic_and_accepted_ones_cut_safely() {
        // xorshift: deterministic, no dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // A real TCP/IPv4 frame under random headers, and random bytes under random headers.
        let mut tcp = vec![0u8; 14 + 20 + 20];
        crate::wire::write_ethernet(&mut tcp, [2; 6], [4; 6], crate::wire::ETHERTYPE_IPV4);
        crate::wire::write_ipv4(
            &mut tcp[14..],
            [10, 0, 0, 1].into(),
            [10, 0, 0, 2].into(),
            crate::wire::PROTO_TCP,
            20 + 3000,
        );
        tcp[34 + 12] = 5 << 4;
        tcp.extend_from_slice(&[7u8; 3000]);
        let mut accepted = 0;
        for round in 0..20_000 {
            let mut hdr = [0u8; WIRE_HDR_LEN];
            hdr.iter_mut().for_each(|b| *b = next() as u8);
            // Bias towards plausible values so the checks past the first ones run too.
            if round % 2 == 0 {
                hdr[0] &= 3;
                hdr[1] = [0, 1, 4, 5, 0x81][(next() % 5) as usize];
            }
            let mut record = hdr.to_vec();
            if round % 3 == 0 {
                let n = (next() % 200) as usize;
                record.extend((0..n).map(|_| next() as u8));
            } else {
                let n = (next() as usize) % (tcp.len() + 1);
                record.extend_from_slice(&tcp[..n]);
            }
            if let Ok((h, frame)) = parse_record(&record) {
                accepted += 1;
                assert!(check(&h, frame.len()).is_ok());
                let _ = crate::vnet::to_plain(frame, &h, Vec::new, drop);
            }
        }
        assert!(
            accepted > 100,
            "only {accepted} accepted: the test exercises too little"
        );
    }
}
