//! The real [`Lookup`]: getaddrinfo for addresses (so /etc/hosts, nsswitch and the system's DNS
//! all count, as with Lima's cgo resolver), and the resolv.conf servers for the other types.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::sync::Semaphore;

use crate::handler::{BoxFuture, Lookup, LookupError, LOCAL_TTL};
use crate::hosts::canonical;
use crate::upstream::Upstreams;

/// Most CNAME links followed in one answer (loops in upstream data end here).
const MAX_CNAME_CHAIN: usize = 16;

/// How long a getaddrinfo result is reused: the TTL it is served with (Lima's 5 s), counted
/// down in the answers (see [`ttl_left`]), so a guest never holds it longer than one that asked
/// first. The resolver's files are watched as well ([`ResolverFiles`]): an edit to /etc/hosts,
/// nsswitch.conf or resolv.conf drops every result within a second. This spares glibc's files
/// backend from re-parsing /etc/hosts for each name once a second.
const ADDRESS_CACHE_TTL: Duration = Duration::from_secs(LOCAL_TTL as u64);

/// The files whose edits change what getaddrinfo answers.
const RESOLVER_FILES: [&str; 3] = ["/etc/hosts", "/etc/nsswitch.conf", "/etc/resolv.conf"];
/// How often they are checked (one `stat` each).
const RESOLVER_FILES_CHECK: Duration = Duration::from_secs(1);

/// Most cached getaddrinfo results (bounded memory under floods of distinct names).
const ADDRESS_CACHE_MAX: usize = 4096;

/// getaddrinfo's answer per (name, IPv6): the addresses, or why there are none (negative
/// answers are reused too, so a flood of queries for a missing name does not call it each time).
type AddressCache = HashMap<(String, bool), (Instant, Result<Vec<IpAddr>, String>)>;

/// Looks names up through the host's resolver.
pub struct SystemLookup {
    upstreams: Arc<Upstreams>,
    /// Bounds concurrent getaddrinfo calls (each holds a blocking-pool thread).
    getaddrinfo_slots: Arc<Semaphore>,
    /// Recent getaddrinfo results (see [`ADDRESS_CACHE_TTL`]), and the state of the files they
    /// came from.
    cache: Mutex<(AddressCache, ResolverFiles)>,
}

/// What the resolver's files looked like (modification time, size, inode of each), and when
/// they were last looked at.
#[derive(Debug, Default)]
struct ResolverFiles {
    checked: Option<Instant>,
    seen: Vec<Option<(std::time::SystemTime, u64, u64)>>,
}

impl ResolverFiles {
    /// Whether the files changed since the last check; looks at most once per
    /// [`RESOLVER_FILES_CHECK`].
    fn changed(&mut self, paths: &[&str], now: Instant) -> bool {
        if self
            .checked
            .is_some_and(|at| now.duration_since(at) < RESOLVER_FILES_CHECK)
        {
            return false;
        }
        self.checked = Some(now);
        let seen: Vec<_> = paths
            .iter()
            .map(|p| {
                use std::os::unix::fs::MetadataExt;
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len(), m.ino()))
            })
            .collect();
        let changed = !self.seen.is_empty() && seen != self.seen;
        self.seen = seen;
        changed
    }
}

/// The TTL left of a result looked up `age` ago: counted down from [`LOCAL_TTL`], at least 1.
fn ttl_left(age: Duration) -> u32 {
    let age = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
    LOCAL_TTL.saturating_sub(age).max(1)
}

impl SystemLookup {
    /// `max_blocking` bounds the getaddrinfo calls in flight; further look-ups wait.
    pub fn new(upstreams: Arc<Upstreams>, max_blocking: usize) -> Self {
        Self {
            upstreams,
            getaddrinfo_slots: Arc::new(Semaphore::new(max_blocking.max(1))),
            cache: Mutex::new((HashMap::new(), ResolverFiles::default())),
        }
    }

    /// Asks the upstream servers for `name`/`rtype` and returns the answer section's records of
    /// that type at the end of the CNAME chain, plus that final name.
    async fn query(
        &self,
        name: &Name,
        rtype: RecordType,
    ) -> Result<(Vec<RData>, Name), LookupError> {
        let mut request = Message::query();
        request.metadata.message_type = MessageType::Query;
        request.metadata.op_code = OpCode::Query;
        request.metadata.recursion_desired = true;
        request.add_query(Query::query(name.clone(), rtype));
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        request.set_edns(edns);
        let bytes = request
            .to_vec()
            .map_err(|e| LookupError(format!("cannot encode a query for {name}: {e}")))?;
        let reply = self
            .upstreams
            .exchange(&bytes, true)
            .await
            .map_err(|e| LookupError(e.to_string()))?;
        let reply = Message::from_vec(&reply).map_err(|e| {
            LookupError(format!(
                "unparseable upstream reply for {name} {rtype}: {e}"
            ))
        })?;
        if reply.response_code != ResponseCode::NoError {
            return Err(LookupError(format!(
                "{name} {rtype}: {}",
                reply.response_code
            )));
        }
        let mut current = name.clone();
        for _ in 0..MAX_CNAME_CHAIN {
            let next = reply.answers.iter().find_map(|r| match &r.data {
                RData::CNAME(target) if r.name == current && rtype != RecordType::CNAME => {
                    Some(target.0.clone())
                }
                _ => None,
            });
            match next {
                Some(target) => current = target,
                None => break,
            }
        }
        let records = reply
            .answers
            .iter()
            .filter(|r| r.name == current && r.data.record_type() == rtype)
            .map(|r| r.data.clone())
            .collect();
        Ok((records, current))
    }
}

impl SystemLookup {
    fn cache(&self) -> std::sync::MutexGuard<'_, (AddressCache, ResolverFiles)> {
        // Each critical section is one map operation: a poisoned lock holds consistent data.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A result still within its TTL, with the TTL it has left.
    fn cached(&self, key: &(String, bool)) -> Option<Result<(Vec<IpAddr>, u32), LookupError>> {
        let mut guard = self.cache();
        let (cache, files) = &mut *guard;
        let now = Instant::now();
        if files.changed(&RESOLVER_FILES, now) {
            cache.clear();
        }
        let (at, result) = cache.get(key)?;
        let age = now.duration_since(*at);
        (age < ADDRESS_CACHE_TTL).then(|| {
            result
                .clone()
                .map(|ips| (ips, ttl_left(age)))
                .map_err(LookupError)
        })
    }

    fn remember(&self, key: (String, bool), result: &Result<Vec<IpAddr>, LookupError>) {
        let mut guard = self.cache();
        let cache = &mut guard.0;
        if cache.len() >= ADDRESS_CACHE_MAX {
            cache.retain(|_, (at, _)| at.elapsed() < ADDRESS_CACHE_TTL);
            if cache.len() >= ADDRESS_CACHE_MAX {
                cache.clear();
            }
        }
        let stored = match result {
            Ok(ips) => Ok(ips.clone()),
            Err(e) => Err(e.0.clone()),
        };
        cache.insert(key, (Instant::now(), stored));
    }
}

impl Lookup for SystemLookup {
    fn addresses<'a>(
        &'a self,
        name: &'a str,
        ipv6: bool,
    ) -> BoxFuture<'a, Result<(Vec<IpAddr>, u32), LookupError>> {
        Box::pin(async move {
            let key = (name.to_string(), ipv6);
            if let Some(hit) = self.cached(&key) {
                return hit;
            }
            let _slot = self
                .getaddrinfo_slots
                .acquire()
                .await
                .map_err(|_| LookupError("look-up pool closed".into()))?;
            let owned = name.to_string();
            let result = tokio::task::spawn_blocking(move || getaddrinfo(&owned, ipv6))
                .await
                .map_err(|e| LookupError(format!("getaddrinfo task for {name} failed: {e}")))?;
            self.remember(key, &result);
            result.map(|ips| (ips, LOCAL_TTL))
        })
    }

    fn records<'a>(
        &'a self,
        name: &'a Name,
        rtype: RecordType,
    ) -> BoxFuture<'a, Result<Vec<RData>, LookupError>> {
        Box::pin(async move { Ok(self.query(name, rtype).await?.0) })
    }

    fn canonical_name<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<String, LookupError>> {
        Box::pin(async move {
            // Like Go's resolver: the canonical name is the end of the CNAME chain of an A query.
            let parsed = Name::from_ascii(canonical(name))
                .map_err(|e| LookupError(format!("bad name {name:?}: {e}")))?;
            let (_, end) = self.query(&parsed, RecordType::A).await?;
            Ok(canonical(&end.to_ascii()))
        })
    }
}

/// Calls getaddrinfo(3) for one address family. `name` may end in a dot; the dot is removed so
/// /etc/hosts entries match (glibc's files backend compares names literally).
pub fn getaddrinfo(name: &str, ipv6: bool) -> Result<Vec<IpAddr>, LookupError> {
    let host = name.strip_suffix('.').unwrap_or(name);
    if host.is_empty() {
        return Err(LookupError("empty name".into()));
    }
    let c_host =
        CString::new(host).map_err(|_| LookupError(format!("name {host:?} contains NUL")))?;
    // SAFETY: addrinfo is a plain C struct; all-zero is its documented "no hints" value.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut result: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: c_host is NUL-terminated, hints is initialised, result is an out-pointer.
    let rc = unsafe { libc::getaddrinfo(c_host.as_ptr(), std::ptr::null(), &hints, &mut result) };
    if rc != 0 {
        // SAFETY: gai_strerror returns a static NUL-terminated string for any code.
        let msg = unsafe { CStr::from_ptr(libc::gai_strerror(rc)) };
        return Err(LookupError(format!(
            "getaddrinfo({host}): {}",
            msg.to_string_lossy()
        )));
    }
    let mut addresses = Vec::new();
    let mut cursor = result;
    while !cursor.is_null() {
        // SAFETY: cursor walks the list getaddrinfo returned, which stays valid until freed.
        let info = unsafe { &*cursor };
        if !info.ai_addr.is_null() {
            let ip = match info.ai_family {
                // SAFETY: ai_family says which sockaddr type ai_addr points to.
                libc::AF_INET => {
                    let sa = unsafe { &*(info.ai_addr as *const libc::sockaddr_in) };
                    Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))))
                }
                libc::AF_INET6 => {
                    let sa = unsafe { &*(info.ai_addr as *const libc::sockaddr_in6) };
                    Some(IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr)))
                }
                _ => None,
            };
            if let Some(ip) = ip {
                if !addresses.contains(&ip) {
                    addresses.push(ip);
                }
            }
        }
        cursor = info.ai_next;
    }
    // SAFETY: result came from a successful getaddrinfo and is freed once.
    unsafe { libc::freeaddrinfo(result) };
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_results_are_served_with_the_ttl_they_have_left() {
        assert_eq!(ttl_left(Duration::ZERO), LOCAL_TTL);
        assert_eq!(ttl_left(Duration::from_millis(999)), LOCAL_TTL);
        assert_eq!(ttl_left(Duration::from_millis(2500)), LOCAL_TTL - 2);
        // Never 0 (a guest would not cache it at all) while the entry is still served.
        assert_eq!(ttl_left(ADDRESS_CACHE_TTL - Duration::from_millis(1)), 1);
        assert_eq!(ttl_left(Duration::from_secs(u64::MAX)), 1);
    }

    #[test]
    fn resolver_file_edits_are_noticed_within_a_check_interval() {
        let dir = std::env::temp_dir().join(format!("limanet-dns-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, "127.0.0.1 a\n").expect("write");
        let paths = [hosts.to_str().expect("utf-8"), "/nonexistent/limanet-test"];
        let mut files = ResolverFiles::default();
        let t0 = Instant::now();
        assert!(!files.changed(&paths, t0), "the first look is no change");
        std::fs::write(&hosts, "127.0.0.1 a b\n").expect("edit");
        assert!(
            !files.changed(&paths, t0 + Duration::from_millis(500)),
            "not looked at again within the interval"
        );
        assert!(files.changed(&paths, t0 + RESOLVER_FILES_CHECK), "the edit");
        assert!(
            !files.changed(&paths, t0 + 2 * RESOLVER_FILES_CHECK),
            "no edit since"
        );
        std::fs::remove_file(&hosts).expect("remove");
        assert!(
            files.changed(&paths, t0 + 3 * RESOLVER_FILES_CHECK),
            "removal"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn getaddrinfo_numeric_and_bad_names() {
        // Numeric hosts never touch the network.
        assert_eq!(
            getaddrinfo("127.0.0.1", false).unwrap(),
            vec![IpAddr::from([127, 0, 0, 1])]
        );
        assert_eq!(
            getaddrinfo("::1", true).unwrap(),
            vec!["::1".parse::<IpAddr>().unwrap()]
        );
        assert!(getaddrinfo("", false).is_err());
        assert!(getaddrinfo("a\0b", false).is_err());
    }
}
