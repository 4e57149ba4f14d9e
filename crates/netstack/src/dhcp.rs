//! I/O-free DHCPv4 server for limanet's user-mode networks.
//!
//! The server is a pure state machine: the caller hands it the UDP payload
//! of a datagram sent to port 67 together with the current time, and gets
//! back at most one reply plus the IPv4 and Ethernet destination the reply
//! must be sent to (RFC 2131 §4.1). No clock is read and no socket is used.
//!
//! One allocation rule serves both network flavours Lima knows:
//!
//! * the default (slirp-like) network: pool from 192.168.5.15 upward, so the
//!   first guest gets `.15` and later guests the next free address;
//! * user-v2 (gvisor-tap-vsock): pool from network+1 upward with the gateway
//!   (network+2) reserved, so guests get `.1`, `.3`, `.4`, ...
//!
//! The rule is: a client keeps its static lease, otherwise its current or
//! previous address when that is still free, otherwise the address it asks
//! for when that is free, otherwise the lowest free pool address, preferring
//! addresses no other client used before.
//!
//! Incoming messages are parsed by hand (only the fixed header and the few
//! options a server needs), so malformed input yields a [`DhcpError`] and
//! never a panic; replies are encoded with `dhcproto`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{
    DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use dhcproto::Encodable;
use tracing::{debug, info, warn};

/// An Ethernet MAC address.
pub type MacAddr = [u8; 6];

/// The Ethernet broadcast address.
pub const BROADCAST_MAC: MacAddr = [0xff; 6];

/// How long an offered address stays reserved for the client it was offered to.
pub const OFFER_HOLD: Duration = Duration::from_secs(60);

/// An offer unanswered for this long may go to a new client when the pool is exhausted: an
/// honest client answers an offer at once.
pub const OFFER_GRACE: Duration = Duration::from_secs(5);

/// How long an address a client declined (RFC 2131 DHCPDECLINE) is not handed out.
pub const DECLINE_HOLD: Duration = Duration::from_secs(10 * 60);

/// Largest pool the server manages; bounds the lease table.
pub const MAX_POOL_SIZE: u32 = 1 << 16;

/// Smallest and largest interface MTU the server announces.
const MTU_RANGE: std::ops::RangeInclusive<u16> = 68..=65520;

/// Size of the fixed BOOTP header before the magic cookie.
const HEADER_LEN: usize = 236;
/// The DHCP magic cookie (RFC 2131 §3).
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Options space every client accepts: a 576-byte IP datagram minus IP, UDP,
/// BOOTP header and magic cookie (RFC 2131 §2).
const MAX_OPTIONS_LEN: usize = 576 - 20 - 8 - HEADER_LEN - 4;
/// BOOTP clients expect replies of at least 300 bytes (RFC 1542 §3.5).
const MIN_REPLY_LEN: usize = 300;

/// Errors from configuring the server or from parsing a client message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhcpError {
    /// The configuration is unusable.
    #[error("invalid DHCP configuration: {field}: {reason}")]
    Config {
        /// The offending [`DhcpConfig`] field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The message is shorter than its fixed part.
    #[error("DHCP message truncated: {len} bytes, at least {need} needed")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The BOOTP op field is not BOOTREQUEST (1).
    #[error("not a BOOTREQUEST: op {0}")]
    NotBootRequest(u8),
    /// Hardware type or length is not Ethernet (1, 6).
    #[error("unsupported hardware address: htype {htype}, hlen {hlen} (want 1, 6)")]
    UnsupportedHardware {
        /// The htype field.
        htype: u8,
        /// The hlen field.
        hlen: u8,
    },
    /// The magic cookie is wrong (a plain BOOTP message, or garbage).
    #[error("bad DHCP magic cookie {0:02x?}")]
    BadMagic([u8; 4]),
    /// An option runs past the end of the message.
    #[error("DHCP option {code} truncated at offset {offset}")]
    TruncatedOption {
        /// The option code.
        code: u8,
        /// Offset of the option in the message.
        offset: usize,
    },
    /// An option the server uses has the wrong length.
    #[error("DHCP option {code} has length {len}, want {want}")]
    BadOptionLength {
        /// The option code.
        code: u8,
        /// Its length.
        len: usize,
        /// The expected length.
        want: usize,
    },
    /// The message has no DHCP message type option (53).
    #[error("DHCP message type option (53) missing")]
    MissingMessageType,
    /// The message type is not one a client sends to a server.
    #[error("unsupported DHCP message type {0}")]
    UnsupportedMessageType(u8),
    /// The reply could not be encoded (a bug, reported rather than panicking).
    #[error("encoding DHCP reply failed: {0}")]
    Encode(String),
}

/// Server configuration. See [`DhcpConfig::default`] and [`DhcpConfig::user_v2`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// Server identifier (option 54); the gateway's address.
    pub server_ip: Ipv4Addr,
    /// Network address of the subnet.
    pub network: Ipv4Addr,
    /// Prefix length of the subnet (1..=30).
    pub prefix_len: u8,
    /// Default router (option 3).
    pub router: Ipv4Addr,
    /// DNS servers (option 6); the option is left out when empty.
    pub dns_servers: Vec<Ipv4Addr>,
    /// First address of the dynamic pool.
    pub pool_start: Ipv4Addr,
    /// Last address of the dynamic pool (inclusive).
    pub pool_end: Ipv4Addr,
    /// Addresses never handed out. The server identifier, router and DNS
    /// servers are reserved as well even when not listed.
    pub reserved: Vec<Ipv4Addr>,
    /// Lease time (option 51); 1 hour by default.
    pub lease_time: Duration,
    /// Interface MTU (option 26), 68..=65520.
    pub mtu: u16,
    /// Domain search list (option 119, RFC 3397); left out when empty.
    pub search_domains: Vec<String>,
    /// Host name (option 12), sent when set.
    pub hostname: Option<String>,
    /// Fixed bindings: this IP for this MAC only. They may lie outside the pool.
    pub static_leases: Vec<(Ipv4Addr, MacAddr)>,
    /// Offers one port may hold at once (see [`Origin`]); a DISCOVER beyond that withdraws
    /// the port's oldest offer, so spoofed client MACs cannot reserve the pool.
    pub max_offers_per_port: usize,
}

impl Default for DhcpConfig {
    /// Lima's default user-mode network: 192.168.5.0/24, gateway 192.168.5.2,
    /// DNS 192.168.5.3, guests from 192.168.5.15.
    fn default() -> Self {
        let gateway = Ipv4Addr::new(192, 168, 5, 2);
        let dns = Ipv4Addr::new(192, 168, 5, 3);
        DhcpConfig {
            server_ip: gateway,
            network: Ipv4Addr::new(192, 168, 5, 0),
            prefix_len: 24,
            router: gateway,
            dns_servers: vec![dns],
            pool_start: Ipv4Addr::new(192, 168, 5, 15),
            pool_end: Ipv4Addr::new(192, 168, 5, 254),
            reserved: vec![gateway, dns],
            lease_time: Duration::from_secs(3600),
            mtu: 1500,
            search_domains: Vec::new(),
            hostname: None,
            static_leases: Vec::new(),
            max_offers_per_port: 4,
        }
    }
}

impl DhcpConfig {
    /// gvisor-tap-vsock (Lima user-v2) layout for `network/prefix_len`:
    /// gateway, router and DNS at network+2 (reserved), pool from network+1
    /// to the last address below broadcast. gvisor can hand out the broadcast
    /// address itself; that quirk is deliberately not copied. The pool is
    /// capped at [`MAX_POOL_SIZE`] addresses. Static leases outside the
    /// subnet are dropped, as Lima does.
    pub fn user_v2(
        network: Ipv4Addr,
        prefix_len: u8,
        static_leases: Vec<(Ipv4Addr, MacAddr)>,
    ) -> Self {
        let mask = prefix_mask(prefix_len);
        let net = u32::from(network) & mask;
        let gateway = Ipv4Addr::from(net.wrapping_add(2));
        let broadcast = net | !mask;
        let pool_start = net.wrapping_add(1);
        let pool_end = broadcast
            .wrapping_sub(1)
            .min(pool_start.saturating_add(MAX_POOL_SIZE - 1));
        let static_leases = static_leases
            .into_iter()
            .filter(|(ip, mac)| {
                let inside = u32::from(*ip) & mask == net;
                if !inside {
                    debug!(%ip, mac = %fmt_mac(mac), "static lease outside the subnet dropped");
                }
                inside
            })
            .collect();
        DhcpConfig {
            server_ip: gateway,
            network: Ipv4Addr::from(net),
            prefix_len,
            router: gateway,
            dns_servers: vec![gateway],
            pool_start: Ipv4Addr::from(pool_start),
            pool_end: Ipv4Addr::from(pool_end),
            reserved: vec![gateway],
            static_leases,
            ..DhcpConfig::default()
        }
    }

    /// The subnet mask as an address.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(prefix_mask(self.prefix_len))
    }

    /// The subnet's broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !prefix_mask(self.prefix_len))
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = prefix_mask(self.prefix_len);
        u32::from(ip) & mask == u32::from(self.network)
    }

    /// A usable host address of the subnet (not the network or broadcast address).
    fn is_host(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip != self.network && ip != self.broadcast()
    }
}

/// One binding, as reported by [`DhcpServer::leases`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The address.
    pub ip: Ipv4Addr,
    /// The client's MAC address.
    pub mac: MacAddr,
    /// When the lease ends; `None` for static leases, which never end.
    pub expires: Option<Instant>,
}

/// A reply for the stack to send as UDP from `server_ip:67` to `dst_ip:68`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpReply {
    /// The encoded DHCP message (UDP payload).
    pub payload: Vec<u8>,
    /// IPv4 destination (255.255.255.255 or the client's address).
    pub dst_ip: Ipv4Addr,
    /// Ethernet destination. For unicast to a client without a configured
    /// address this is its MAC; the stack must not ARP for `dst_ip`.
    pub dst_mac: MacAddr,
}

/// What a dynamic pool address is currently doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Offered to `mac`, held until the instant.
    Offered(Instant),
    /// Bound to `mac` until the instant.
    Bound(Instant),
    /// Free, but last used by `mac` (released or expired); `mac` gets it
    /// back first and other clients only when nothing else is free.
    Free,
    /// Declined by a client: unusable until the instant.
    Declined(Instant),
    /// Used by a guest that did not get it from DHCP (static configuration), as long as
    /// the network says so ([`DhcpServer::mark_in_use`]).
    InUse,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    mac: MacAddr,
    state: State,
    /// The port the client's message came in on, when known.
    port: Option<usize>,
}

impl Entry {
    /// Whether the address is taken at `now` (not available to anyone else).
    fn held(&self, now: Instant) -> bool {
        match self.state {
            State::Offered(until) | State::Bound(until) | State::Declined(until) => now < until,
            State::InUse => true,
            State::Free => false,
        }
    }
}

/// Where a client message came from, as the network's switch knows it: DHCP state is bound
/// to that port.
#[derive(Clone, Copy)]
pub struct Origin<'a> {
    pub port: usize,
    /// Whether a MAC is learned on that port. Messages whose client MAC (`chaddr`) is not
    /// are ignored: a guest cannot DECLINE, RELEASE or REQUEST for another guest's MAC.
    pub mac_on_port: &'a dyn Fn(&MacAddr) -> bool,
}

/// Counters for logs and the stats API.
#[derive(Debug, Default, Clone, Copy)]
pub struct DhcpStats {
    /// Messages ignored because their client MAC is not on the port they came in on.
    pub foreign_client: u64,
    /// Offers withdrawn because their port held too many.
    pub offers_withdrawn: u64,
    /// Offers taken from another client because the pool was exhausted.
    pub offers_reclaimed: u64,
    /// DISCOVERs that got no offer: every address is leased, declined or in use.
    pub exhausted: u64,
}

/// The DHCPv4 server state machine.
#[derive(Debug)]
pub struct DhcpServer {
    config: DhcpConfig,
    /// Addresses never handed out dynamically.
    reserved: HashSet<Ipv4Addr>,
    /// Static leases both ways.
    static_by_mac: HashMap<MacAddr, Ipv4Addr>,
    static_by_ip: HashMap<Ipv4Addr, MacAddr>,
    /// Dynamic pool state, keyed by address; at most one entry per pool address.
    entries: BTreeMap<Ipv4Addr, Entry>,
    /// Encoded option 119, computed once.
    search_option: Option<Vec<u8>>,
    pub stats: DhcpStats,
    log: crate::limits::LimitLog,
}

/// The parts of a client message the server uses.
#[derive(Debug, Clone, Copy)]
struct Request {
    msg_type: u8,
    xid: u32,
    flags: u16,
    ciaddr: Ipv4Addr,
    giaddr: Ipv4Addr,
    chaddr: MacAddr,
    requested_ip: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
}

impl Request {
    fn broadcast_flag(&self) -> bool {
        self.flags & 0x8000 != 0
    }
}

// DHCP message type values (RFC 2132 §9.6).
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const DECLINE: u8 = 4;
const ACK: u8 = 5;
const NAK: u8 = 6;
const RELEASE: u8 = 7;
const INFORM: u8 = 8;

impl DhcpServer {
    /// Checks `config` and builds a server with an empty lease table.
    pub fn new(config: DhcpConfig) -> Result<Self, DhcpError> {
        let bad = |field: &'static str, reason: String| Err(DhcpError::Config { field, reason });
        if !(1..=30).contains(&config.prefix_len) {
            return bad(
                "prefix_len",
                format!("{} is not in 1..=30", config.prefix_len),
            );
        }
        if u32::from(config.network) & !prefix_mask(config.prefix_len) != 0 {
            return bad(
                "network",
                format!(
                    "{} has host bits set for /{}",
                    config.network, config.prefix_len
                ),
            );
        }
        let subnet = format!("{}/{}", config.network, config.prefix_len);
        for (field, ip) in [
            ("server_ip", config.server_ip),
            ("router", config.router),
            ("pool_start", config.pool_start),
            ("pool_end", config.pool_end),
        ] {
            if !config.is_host(ip) {
                return bad(field, format!("{ip} is not a host address of {subnet}"));
            }
        }
        let (start, end) = (u32::from(config.pool_start), u32::from(config.pool_end));
        if start > end {
            return bad(
                "pool_end",
                format!(
                    "{} is below pool_start {}",
                    config.pool_end, config.pool_start
                ),
            );
        }
        if end - start >= MAX_POOL_SIZE {
            return bad(
                "pool_end",
                format!(
                    "pool has {} addresses, at most {MAX_POOL_SIZE} allowed",
                    u64::from(end - start) + 1
                ),
            );
        }
        let lease_secs = config.lease_time.as_secs();
        if lease_secs == 0 || lease_secs >= u64::from(u32::MAX) {
            return bad(
                "lease_time",
                format!("{lease_secs} s is not in 1..{} s", u32::MAX),
            );
        }
        if !MTU_RANGE.contains(&config.mtu) {
            return bad("mtu", format!("{} is not in {MTU_RANGE:?}", config.mtu));
        }
        if let Some(name) = &config.hostname {
            if name.is_empty() || name.len() > 255 || !name.bytes().all(is_name_byte) {
                return bad(
                    "hostname",
                    format!("{name:?} must be 1..=255 letters, digits, '-', '_' or '.'"),
                );
            }
        }
        let search_option = if config.search_domains.is_empty() {
            None
        } else {
            match encode_search_list(&config.search_domains) {
                Ok(bytes) => Some(bytes),
                Err(reason) => return bad("search_domains", reason),
            }
        };

        let mut reserved: HashSet<Ipv4Addr> = config.reserved.iter().copied().collect();
        reserved.insert(config.server_ip);
        reserved.insert(config.router);
        reserved.extend(config.dns_servers.iter().copied());

        let mut static_by_mac = HashMap::new();
        let mut static_by_ip = HashMap::new();
        for &(ip, mac) in &config.static_leases {
            if !config.is_host(ip) {
                return bad(
                    "static_leases",
                    format!("{ip} is not a host address of {subnet}"),
                );
            }
            if reserved.contains(&ip) {
                return bad("static_leases", format!("{ip} is reserved"));
            }
            if is_multicast_or_zero(&mac) {
                return bad(
                    "static_leases",
                    format!("{} is not a unicast MAC", fmt_mac(&mac)),
                );
            }
            if let Some(other) = static_by_ip.insert(ip, mac) {
                return bad(
                    "static_leases",
                    format!(
                        "{ip} is given to both {} and {}",
                        fmt_mac(&other),
                        fmt_mac(&mac)
                    ),
                );
            }
            if let Some(other) = static_by_mac.insert(mac, ip) {
                return bad(
                    "static_leases",
                    format!("{} has both {other} and {ip}", fmt_mac(&mac)),
                );
            }
        }

        let server = DhcpServer {
            config,
            reserved,
            static_by_mac,
            static_by_ip,
            entries: BTreeMap::new(),
            search_option,
            stats: DhcpStats::default(),
            log: crate::limits::LimitLog::default(),
        };
        // Reject configurations whose replies would not fit the options space
        // every client must accept, rather than sending truncated replies.
        let options_len = server
            .reply_options(ACK, true)
            .iter()
            .try_fold(0usize, |acc, opt| encoded_len(opt).map(|len| acc + len))?
            + 1;
        if options_len > MAX_OPTIONS_LEN {
            return bad(
                "search_domains",
                format!(
                    "reply options take {options_len} bytes, at most {MAX_OPTIONS_LEN} fit; shorten search_domains or hostname"
                ),
            );
        }
        info!(
            subnet = %subnet,
            pool = %format!("{}-{}", server.config.pool_start, server.config.pool_end),
            server = %server.config.server_ip,
            "DHCP server configured"
        );
        Ok(server)
    }

    /// The configuration in use.
    pub fn config(&self) -> &DhcpConfig {
        &self.config
    }

    /// Handles one client message (`payload` is the UDP payload of a datagram
    /// to port 67, `src_mac` its Ethernet source) and returns the reply to
    /// send, if any. Messages that need no reply (RELEASE, DECLINE, a REQUEST
    /// for another server, relayed messages) give `Ok(None)`.
    pub fn handle(
        &mut self,
        now: Instant,
        src_mac: MacAddr,
        payload: &[u8],
    ) -> Result<Option<DhcpReply>, DhcpError> {
        self.handle_from(now, src_mac, payload, None)
    }

    /// [`DhcpServer::handle`] for a message that came in on a known port of a switch.
    pub fn handle_from(
        &mut self,
        now: Instant,
        src_mac: MacAddr,
        payload: &[u8],
        origin: Option<Origin>,
    ) -> Result<Option<DhcpReply>, DhcpError> {
        let req = parse_request(payload)?;
        if let Some(o) = origin {
            if !(o.mac_on_port)(&req.chaddr) {
                self.stats.foreign_client += 1;
                if self.log.first(crate::limits::Limit::DhcpForeignClient) {
                    warn!(port = o.port, chaddr = %fmt_mac(&req.chaddr), src = %fmt_mac(&src_mac), "ignoring DHCP messages for a client MAC that is not on the port they came from (logged once)");
                }
                return Ok(None);
            }
        }
        let port = origin.map(|o| o.port);
        if req.chaddr != src_mac {
            debug!(
                chaddr = %fmt_mac(&req.chaddr),
                src = %fmt_mac(&src_mac),
                "DHCP chaddr differs from the Ethernet source; using chaddr"
            );
        }
        if req.giaddr != Ipv4Addr::UNSPECIFIED {
            debug!(giaddr = %req.giaddr, "relayed DHCP message ignored (no relay support)");
            return Ok(None);
        }
        if is_multicast_or_zero(&req.chaddr) {
            debug!(chaddr = %fmt_mac(&req.chaddr), "DHCP message with non-unicast chaddr ignored");
            return Ok(None);
        }
        self.expire(now);
        match req.msg_type {
            DISCOVER => self.discover(now, &req, port),
            REQUEST => self.request(now, &req, port),
            DECLINE => {
                self.decline(now, &req);
                Ok(None)
            }
            RELEASE => {
                self.release(&req);
                Ok(None)
            }
            INFORM => self.inform(&req),
            other => Err(DhcpError::UnsupportedMessageType(other)),
        }
    }

    /// Current bindings: every static lease, and every dynamic lease that is
    /// bound (possibly past its expiry if [`DhcpServer::expire`] was not
    /// called since; see [`Lease::expires`]). Sorted by address.
    pub fn leases(&self) -> Vec<Lease> {
        let mut leases: Vec<Lease> = self
            .static_by_ip
            .iter()
            .map(|(&ip, &mac)| Lease {
                ip,
                mac,
                expires: None,
            })
            .chain(self.entries.iter().filter_map(|(&ip, e)| match e.state {
                State::Bound(until) => Some(Lease {
                    ip,
                    mac: e.mac,
                    expires: Some(until),
                }),
                _ => None,
            }))
            .collect();
        leases.sort_by_key(|l| l.ip);
        leases
    }

    /// The address bound to `mac` (static or dynamic lease), if any.
    pub fn address_of(&self, mac: MacAddr) -> Option<Ipv4Addr> {
        if let Some(&ip) = self.static_by_mac.get(&mac) {
            return Some(ip);
        }
        self.entries
            .iter()
            .find(|(_, e)| e.mac == mac && matches!(e.state, State::Bound(_)))
            .map(|(&ip, _)| ip)
    }

    /// The MAC address `ip` is bound to (static or dynamic lease), if any.
    /// Cheaper than searching [`DhcpServer::leases`].
    pub fn mac_of(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        if let Some(&mac) = self.static_by_ip.get(&ip) {
            return Some(mac);
        }
        self.entries
            .get(&ip)
            .filter(|e| matches!(e.state, State::Bound(_)))
            .map(|e| e.mac)
    }

    /// Ends leases, offers and declines that ran out at `now`. [`DhcpServer::handle`]
    /// does this itself; call it before [`DhcpServer::leases`] for an exact view.
    pub fn expire(&mut self, now: Instant) {
        self.entries.retain(|ip, e| match e.state {
            State::Bound(until) | State::Offered(until) if now >= until => {
                if matches!(e.state, State::Bound(_)) {
                    info!(%ip, mac = %fmt_mac(&e.mac), "DHCP lease expired");
                }
                e.state = State::Free;
                true
            }
            // A declined address without an owner is simply forgotten.
            State::Declined(until) => now < until,
            _ => true,
        });
    }

    fn discover(
        &mut self,
        now: Instant,
        req: &Request,
        port: Option<usize>,
    ) -> Result<Option<DhcpReply>, DhcpError> {
        if let Some(port) = port {
            self.limit_offers(now, port, req.chaddr);
        }
        let mut chosen = self.choose(now, req.chaddr, req.requested_ip);
        if chosen.is_none() && self.reclaim_offer(now, req.chaddr) {
            chosen = self.choose(now, req.chaddr, req.requested_ip);
        }
        let Some(ip) = chosen else {
            self.stats.exhausted += 1;
            if self.stats.exhausted.is_power_of_two() {
                warn!(
                    mac = %fmt_mac(&req.chaddr),
                    pool = %format!("{}-{}", self.config.pool_start, self.config.pool_end),
                    times = self.stats.exhausted,
                    "DHCP pool exhausted: every address is leased, declined or in use; no offer (logged at powers of two)"
                );
            }
            return Ok(None);
        };
        if !self.static_by_ip.contains_key(&ip) {
            self.forget_mac(req.chaddr, ip);
            let entry = self.entries.entry(ip).or_insert(Entry {
                mac: req.chaddr,
                state: State::Free,
                port,
            });
            entry.mac = req.chaddr;
            entry.port = port;
            // An offer never shortens an existing binding.
            let hold = now + OFFER_HOLD;
            entry.state = match entry.state {
                State::Bound(until) if until > hold => State::Bound(until),
                _ => State::Offered(hold),
            };
        }
        debug!(mac = %fmt_mac(&req.chaddr), %ip, "DHCPOFFER");
        self.reply(req, OFFER, ip).map(Some)
    }

    fn request(
        &mut self,
        now: Instant,
        req: &Request,
        port: Option<usize>,
    ) -> Result<Option<DhcpReply>, DhcpError> {
        let mac = req.chaddr;
        let (ip, strict) = match (req.server_id, req.requested_ip) {
            // SELECTING: the client picked a server.
            (Some(server), requested) => {
                if server != self.config.server_ip {
                    debug!(mac = %fmt_mac(&mac), %server, "DHCPREQUEST for another server");
                    self.withdraw_offer(mac);
                    return Ok(None);
                }
                match requested.or(non_zero(req.ciaddr)) {
                    Some(ip) => (ip, true),
                    None => return self.nak(req, "requested address missing"),
                }
            }
            // INIT-REBOOT: verifying a remembered address.
            (None, Some(ip)) if req.ciaddr == Ipv4Addr::UNSPECIFIED => (ip, false),
            // RENEWING / REBINDING: extending the lease on ciaddr.
            (None, _) => match non_zero(req.ciaddr) {
                Some(ip) => (ip, false),
                None => return self.nak(req, "neither requested address nor ciaddr"),
            },
        };
        if !self.config.is_host(ip) {
            return self.nak(req, "address not in this subnet");
        }
        let acceptable = if strict {
            // SELECTING must confirm what we offered (or would offer again).
            self.preferred(now, mac) == Some(ip)
        } else {
            match self.current(now, mac) {
                Some(current) => current == ip,
                // No record (e.g. after a restart): accept a free pool address.
                None => self.free_for(now, mac, ip) && self.in_pool(ip),
            }
        };
        if !acceptable {
            return self.nak(req, "address not available to this client");
        }
        if !self.static_by_ip.contains_key(&ip) {
            self.forget_mac(mac, ip);
            self.entries.insert(
                ip,
                Entry {
                    mac,
                    state: State::Bound(now + self.config.lease_time),
                    port,
                },
            );
        }
        info!(mac = %fmt_mac(&mac), %ip, "DHCPACK");
        self.reply(req, ACK, ip).map(Some)
    }

    fn decline(&mut self, now: Instant, req: &Request) {
        if req.server_id.is_some_and(|s| s != self.config.server_ip) {
            return;
        }
        let Some(ip) = req.requested_ip else {
            debug!(mac = %fmt_mac(&req.chaddr), "DHCPDECLINE without requested address ignored");
            return;
        };
        if self.static_by_ip.get(&ip) == Some(&req.chaddr) {
            warn!(%ip, mac = %fmt_mac(&req.chaddr), "client declined its static address (address conflict?)");
            return;
        }
        match self.entries.get_mut(&ip) {
            Some(entry) if entry.mac == req.chaddr && entry.held(now) => {
                warn!(%ip, mac = %fmt_mac(&req.chaddr), "DHCPDECLINE: address in use on the network, withheld");
                // No owner: the address must not count as the client's previous one.
                *entry = Entry {
                    mac: [0; 6],
                    state: State::Declined(now + DECLINE_HOLD),
                    port: None,
                };
            }
            _ => {
                debug!(%ip, mac = %fmt_mac(&req.chaddr), "DHCPDECLINE for an address not leased to the client ignored")
            }
        }
    }

    fn release(&mut self, req: &Request) {
        if req.server_id.is_some_and(|s| s != self.config.server_ip) {
            return;
        }
        match self.entries.get_mut(&req.ciaddr) {
            Some(entry)
                if entry.mac == req.chaddr
                    && matches!(entry.state, State::Bound(_) | State::Offered(_)) =>
            {
                info!(ip = %req.ciaddr, mac = %fmt_mac(&req.chaddr), "DHCPRELEASE");
                entry.state = State::Free;
            }
            _ => {
                debug!(ip = %req.ciaddr, mac = %fmt_mac(&req.chaddr), "DHCPRELEASE for an address not leased to the client ignored")
            }
        }
    }

    fn inform(&self, req: &Request) -> Result<Option<DhcpReply>, DhcpError> {
        debug!(mac = %fmt_mac(&req.chaddr), ciaddr = %req.ciaddr, "DHCPINFORM");
        self.reply(req, ACK, Ipv4Addr::UNSPECIFIED).map(Some)
    }

    /// The address `mac` holds right now: its static lease, or an offered or
    /// bound pool address.
    fn current(&self, now: Instant, mac: MacAddr) -> Option<Ipv4Addr> {
        if let Some(&ip) = self.static_by_mac.get(&mac) {
            return Some(ip);
        }
        self.entries
            .iter()
            .find(|(_, e)| e.mac == mac && e.held(now) && !matches!(e.state, State::Declined(_)))
            .map(|(&ip, _)| ip)
    }

    /// The address `mac` should get back: its static lease, or its current or
    /// previous pool address while nobody else holds it.
    fn preferred(&self, now: Instant, mac: MacAddr) -> Option<Ipv4Addr> {
        if let Some(&ip) = self.static_by_mac.get(&mac) {
            return Some(ip);
        }
        self.entries
            .iter()
            .find(|(_, e)| e.mac == mac)
            .map(|(&ip, _)| ip)
            .filter(|&ip| self.free_for(now, mac, ip))
    }

    /// Whether `ip` may be given to `mac` dynamically (ignoring pool bounds).
    fn free_for(&self, now: Instant, mac: MacAddr, ip: Ipv4Addr) -> bool {
        self.config.is_host(ip)
            && !self.reserved.contains(&ip)
            && !self.static_by_ip.contains_key(&ip)
            && !self.static_by_mac.contains_key(&mac)
            && self.entries.get(&ip).is_none_or(|e| {
                !e.held(now) || (e.mac == mac && !matches!(e.state, State::Declined(_)))
            })
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        (self.config.pool_start..=self.config.pool_end).contains(&ip)
    }

    /// The address to offer `mac` (RFC 2131 §4.3.1 order), or `None` when
    /// the pool is exhausted.
    fn choose(&self, now: Instant, mac: MacAddr, requested: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        if let Some(ip) = self.preferred(now, mac) {
            return Some(ip);
        }
        if let Some(ip) = requested.filter(|&ip| self.in_pool(ip) && self.free_for(now, mac, ip)) {
            if self.entries.get(&ip).is_none_or(|e| e.mac == mac) {
                return Some(ip);
            }
        }
        let pool = u32::from(self.config.pool_start)..=u32::from(self.config.pool_end);
        let free = || {
            pool.clone()
                .map(Ipv4Addr::from)
                .filter(|&ip| self.free_for(now, mac, ip))
        };
        // Prefer addresses no other client used, so released addresses can go
        // back to their previous owner.
        free()
            .find(|ip| !self.entries.contains_key(ip))
            .or_else(|| free().next())
    }

    /// Withdraws the oldest offers of `port` (other than `mac`'s) until it holds fewer than
    /// its share, so that a new DISCOVER from it can be offered an address.
    fn limit_offers(&mut self, now: Instant, port: usize, mac: MacAddr) {
        let max = self.config.max_offers_per_port.max(1);
        let mut offers: Vec<(Instant, Ipv4Addr)> = self
            .entries
            .iter()
            .filter_map(|(&ip, e)| match e.state {
                State::Offered(until) if until > now && e.port == Some(port) && e.mac != mac => {
                    Some((until, ip))
                }
                _ => None,
            })
            .collect();
        if offers.len() < max {
            return;
        }
        offers.sort();
        for &(_, ip) in &offers[..=offers.len() - max] {
            if let Some(e) = self.entries.get_mut(&ip) {
                e.state = State::Free;
            }
            self.stats.offers_withdrawn += 1;
        }
        if self.log.first(crate::limits::Limit::DhcpOffersPerPort) {
            warn!(port, max, "a port holds as many DHCP offers as it may: withdrawing its oldest (spoofed client MACs?; logged once)");
        }
    }

    /// With the pool exhausted, withdraws the offer that has waited longest for its REQUEST,
    /// if that is longer than [`OFFER_GRACE`]; true if one was withdrawn. Leases stay.
    fn reclaim_offer(&mut self, now: Instant, mac: MacAddr) -> bool {
        let stale = now + OFFER_HOLD.saturating_sub(OFFER_GRACE);
        let oldest = self
            .entries
            .iter()
            .filter_map(|(&ip, e)| match e.state {
                State::Offered(until) if until > now && until <= stale && e.mac != mac => {
                    Some((until, ip))
                }
                _ => None,
            })
            .min();
        let Some((_, ip)) = oldest else {
            return false;
        };
        if let Some(e) = self.entries.get_mut(&ip) {
            e.state = State::Free;
        }
        self.stats.offers_reclaimed += 1;
        if self.log.first(crate::limits::Limit::DhcpPoolExhausted) {
            warn!(%ip, "DHCP pool exhausted: withdrawing the oldest unanswered offer for a new client (logged once)");
        }
        true
    }

    /// The MAC an address is offered or leased to (static leases included), if any.
    pub fn holder(&self, now: Instant, ip: Ipv4Addr) -> Option<MacAddr> {
        if let Some(&mac) = self.static_by_ip.get(&ip) {
            return Some(mac);
        }
        self.entries
            .get(&ip)
            .filter(|e| matches!(e.state, State::Offered(_) | State::Bound(_)) && e.held(now))
            .map(|e| e.mac)
    }

    /// A guest uses `ip` without a lease (static configuration): it is not offered to anyone
    /// until [`DhcpServer::clear_in_use`].
    pub fn mark_in_use(&mut self, now: Instant, ip: Ipv4Addr) {
        if !self.in_pool(ip) || self.static_by_ip.contains_key(&ip) {
            return;
        }
        if self.entries.get(&ip).is_none_or(|e| !e.held(now)) {
            self.entries.insert(
                ip,
                Entry {
                    mac: [0; 6],
                    state: State::InUse,
                    port: None,
                },
            );
        }
    }

    /// The guest that used `ip` without a lease went away.
    pub fn clear_in_use(&mut self, ip: Ipv4Addr) {
        if self
            .entries
            .get(&ip)
            .is_some_and(|e| e.state == State::InUse)
        {
            self.entries.remove(&ip);
        }
    }

    /// Drops `mac`'s entries other than `keep` (a client has one address).
    fn forget_mac(&mut self, mac: MacAddr, keep: Ipv4Addr) {
        self.entries
            .retain(|&ip, e| ip == keep || e.mac != mac || matches!(e.state, State::Declined(_)));
    }

    /// The client chose another server: free what we offered it.
    fn withdraw_offer(&mut self, mac: MacAddr) {
        for e in self.entries.values_mut() {
            if e.mac == mac && matches!(e.state, State::Offered(_)) {
                e.state = State::Free;
            }
        }
    }

    fn nak(&self, req: &Request, reason: &str) -> Result<Option<DhcpReply>, DhcpError> {
        info!(
            mac = %fmt_mac(&req.chaddr),
            requested = ?req.requested_ip,
            ciaddr = %req.ciaddr,
            reason,
            "DHCPNAK"
        );
        self.reply(req, NAK, Ipv4Addr::UNSPECIFIED).map(Some)
    }

    /// Options of an OFFER, ACK (`with_lease` false for INFORM) or NAK.
    fn reply_options(&self, msg_type: u8, with_lease: bool) -> Vec<DhcpOption> {
        let c = &self.config;
        let mut opts = vec![
            DhcpOption::MessageType(MessageType::from(msg_type)),
            DhcpOption::ServerIdentifier(c.server_ip),
        ];
        if msg_type == NAK {
            return opts;
        }
        if with_lease {
            // Validated to fit in u32 by `new`.
            let secs = u32::try_from(c.lease_time.as_secs()).unwrap_or(u32::MAX - 1);
            opts.extend([
                DhcpOption::AddressLeaseTime(secs),
                DhcpOption::Renewal(secs / 2),
                DhcpOption::Rebinding((u64::from(secs) * 7 / 8) as u32),
            ]);
        }
        opts.extend([
            DhcpOption::SubnetMask(c.netmask()),
            DhcpOption::BroadcastAddr(c.broadcast()),
            DhcpOption::Router(vec![c.router]),
            DhcpOption::InterfaceMtu(c.mtu),
        ]);
        if !c.dns_servers.is_empty() {
            opts.push(DhcpOption::DomainNameServer(c.dns_servers.clone()));
        }
        if let Some(name) = &c.hostname {
            opts.push(DhcpOption::Hostname(name.clone()));
        }
        if let Some(bytes) = &self.search_option {
            opts.push(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::DomainSearch,
                bytes.clone(),
            )));
        }
        opts
    }

    /// Builds and addresses a reply (RFC 2131 §4.1 and table 3).
    fn reply(&self, req: &Request, msg_type: u8, yiaddr: Ipv4Addr) -> Result<DhcpReply, DhcpError> {
        let ciaddr = match msg_type {
            NAK | OFFER => Ipv4Addr::UNSPECIFIED,
            _ => req.ciaddr,
        };
        let mut msg = Message::default();
        msg.set_opcode(Opcode::BootReply)
            .set_htype(HType::Eth)
            .set_xid(req.xid)
            .set_flags(Flags::from(req.flags))
            .set_ciaddr(ciaddr)
            .set_yiaddr(yiaddr)
            .set_siaddr(Ipv4Addr::UNSPECIFIED)
            .set_giaddr(req.giaddr)
            .set_chaddr(&req.chaddr);
        let with_lease = msg_type != ACK || yiaddr != Ipv4Addr::UNSPECIFIED;
        for opt in self.reply_options(msg_type, with_lease) {
            msg.opts_mut().insert(opt);
        }
        let mut payload = msg.to_vec().map_err(|e| DhcpError::Encode(e.to_string()))?;
        if payload.len() < MIN_REPLY_LEN {
            payload.resize(MIN_REPLY_LEN, 0);
        }
        let (dst_ip, dst_mac) = if msg_type == NAK {
            (Ipv4Addr::BROADCAST, BROADCAST_MAC)
        } else if ciaddr != Ipv4Addr::UNSPECIFIED {
            (ciaddr, req.chaddr)
        } else if req.broadcast_flag() || yiaddr == Ipv4Addr::UNSPECIFIED {
            (Ipv4Addr::BROADCAST, BROADCAST_MAC)
        } else {
            (yiaddr, req.chaddr)
        };
        Ok(DhcpReply {
            payload,
            dst_ip,
            dst_mac,
        })
    }
}

/// Parses the header and the options the server needs. Repeated options
/// keep their first occurrence; unknown options are skipped.
fn parse_request(b: &[u8]) -> Result<Request, DhcpError> {
    let need = HEADER_LEN + MAGIC_COOKIE.len();
    if b.len() < need {
        return Err(DhcpError::Truncated { len: b.len(), need });
    }
    if b[0] != 1 {
        return Err(DhcpError::NotBootRequest(b[0]));
    }
    if b[1] != 1 || b[2] != 6 {
        return Err(DhcpError::UnsupportedHardware {
            htype: b[1],
            hlen: b[2],
        });
    }
    let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let ip_at = |i: usize| Ipv4Addr::from(u32_at(i));
    let magic = [b[236], b[237], b[238], b[239]];
    if magic != MAGIC_COOKIE {
        return Err(DhcpError::BadMagic(magic));
    }
    let mut chaddr = [0u8; 6];
    chaddr.copy_from_slice(&b[28..34]);

    let mut msg_type = None;
    let mut requested_ip = None;
    let mut server_id = None;
    let mut i = need;
    while i < b.len() {
        let code = b[i];
        match code {
            0 => {
                i += 1;
                continue;
            }
            255 => break,
            _ => {}
        }
        let Some(&len) = b.get(i + 1) else {
            return Err(DhcpError::TruncatedOption { code, offset: i });
        };
        let Some(data) = b.get(i + 2..i + 2 + usize::from(len)) else {
            return Err(DhcpError::TruncatedOption { code, offset: i });
        };
        let fixed = |want: usize| {
            if data.len() == want {
                Ok(data)
            } else {
                Err(DhcpError::BadOptionLength {
                    code,
                    len: data.len(),
                    want,
                })
            }
        };
        match code {
            53 if msg_type.is_none() => msg_type = Some(fixed(1)?[0]),
            50 if requested_ip.is_none() => requested_ip = Some(ipv4(fixed(4)?)),
            54 if server_id.is_none() => server_id = Some(ipv4(fixed(4)?)),
            _ => {}
        }
        i += 2 + usize::from(len);
    }
    Ok(Request {
        msg_type: msg_type.ok_or(DhcpError::MissingMessageType)?,
        xid: u32_at(4),
        flags: u16::from_be_bytes([b[10], b[11]]),
        ciaddr: ip_at(12),
        giaddr: ip_at(24),
        chaddr,
        requested_ip,
        server_id,
    })
}

/// Encodes a domain search list as RFC 3397 (RFC 1035 names with
/// compression pointers into the option data).
pub fn encode_search_list(domains: &[String]) -> Result<Vec<u8>, String> {
    let mut out: Vec<u8> = Vec::new();
    // Lower-cased suffix -> offset of its first encoding.
    let mut suffixes: HashMap<String, usize> = HashMap::new();
    for domain in domains {
        let name = domain.strip_suffix('.').unwrap_or(domain);
        let labels: Vec<&str> = name.split('.').collect();
        for label in &labels {
            if label.is_empty() || label.len() > 63 || !label.bytes().all(is_name_byte) {
                return Err(format!(
                    "{domain:?}: label {label:?} must be 1..=63 letters, digits, '-' or '_'"
                ));
            }
        }
        if name.len() + 2 > 255 {
            return Err(format!("{domain:?} is longer than 253 characters"));
        }
        let mut pointer = None;
        for (k, label) in labels.iter().enumerate() {
            let suffix = labels[k..].join(".").to_ascii_lowercase();
            if let Some(&offset) = suffixes.get(&suffix) {
                pointer = Some(offset);
                break;
            }
            // Pointers have 14 bits.
            if out.len() < 0x4000 {
                suffixes.insert(suffix, out.len());
            }
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        match pointer {
            Some(offset) => out.extend_from_slice(&(0xC000 | offset as u16).to_be_bytes()),
            None => out.push(0),
        }
    }
    Ok(out)
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
}

fn prefix_mask(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        n => u32::MAX << (32 - u32::from(n.min(32))),
    }
}

fn ipv4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn non_zero(ip: Ipv4Addr) -> Option<Ipv4Addr> {
    (ip != Ipv4Addr::UNSPECIFIED).then_some(ip)
}

fn is_multicast_or_zero(mac: &MacAddr) -> bool {
    mac[0] & 1 == 1 || *mac == [0; 6]
}

/// Encoded size of one option (RFC 3396 splitting included).
fn encoded_len(opt: &DhcpOption) -> Result<usize, DhcpError> {
    let mut buf = Vec::new();
    opt.encode(&mut dhcproto::Encoder::new(&mut buf))
        .map_err(|e| DhcpError::Encode(e.to_string()))?;
    Ok(buf.len())
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: &MacAddr) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
