//! Static host entries: `NAME=IP` and `NAME=OTHER-NAME` aliases, with Lima's canonicalisation,
//! alias-chain following and precedence rules (lima-behaviour.md §4.1, §4.2).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

/// The name Lima gives the host (the user-mode network's gateway).
pub const HOST_LIMA_INTERNAL: &str = "host.lima.internal";

/// Canonicalises a DNS name the way Lima does: lower case and fully qualified (trailing `.`).
pub fn canonical(name: &str) -> String {
    let mut name = name.to_ascii_lowercase();
    if !name.ends_with('.') {
        name.push('.');
    }
    name
}

/// Static host table: names that map to an address, and names that are aliases of other names.
///
/// Keys are canonical (see [`canonical`]). Alias chains are stored as given and followed at
/// look-up time, stopping at the first name without an alias or at the first repeated name.
///
/// A name may have one address of each family (dual-stack names such as `host.lima.internal`
/// on a network with IPv6): setting an address replaces the name's address of that family
/// and any alias, and keeps the other family's.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StaticHosts {
    host_to_ip: HashMap<String, IpAddr>,
    /// IPv6 addresses of names that have an IPv4 one as well (or only an IPv6 one).
    host_to_ip6: HashMap<String, IpAddr>,
    cname_to_host: HashMap<String, String>,
}

impl StaticHosts {
    /// Builds a table from `(name, value)` pairs, later pairs overriding earlier ones.
    pub fn new<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut hosts = Self::default();
        for (name, value) in entries {
            hosts.set(name, value);
        }
        hosts
    }

    /// Adds or replaces one entry. A value that parses as an IP address is an address; anything
    /// else is an alias of that name.
    pub fn set(&mut self, name: &str, value: &str) {
        let key = canonical(name);
        // One name is either addresses or an alias, never both.
        self.cname_to_host.remove(&key);
        match value.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V4(_)) => {
                self.host_to_ip.insert(key, ip);
            }
            Ok(ip @ IpAddr::V6(_)) => {
                self.host_to_ip6.insert(key, ip);
            }
            Err(_) => {
                self.host_to_ip.remove(&key);
                self.host_to_ip6.remove(&key);
                self.cname_to_host.insert(key, canonical(value));
            }
        }
    }

    /// Removes one entry; returns whether there was one.
    pub fn remove(&mut self, name: &str) -> bool {
        let key = canonical(name);
        let a = self.host_to_ip.remove(&key).is_some();
        let a6 = self.host_to_ip6.remove(&key).is_some();
        let b = self.cname_to_host.remove(&key).is_some();
        a || a6 || b
    }

    /// Follows the alias chain from `name` and returns the last name reached (canonical).
    /// Cycle-safe: stops when a name repeats and returns that name (`cycle1→cycle2→cycle1` gives
    /// `cycle1.`, as in Lima).
    pub fn resolve_alias(&self, name: &str) -> String {
        let mut current = canonical(name);
        let mut seen = Vec::new();
        while let Some(next) = self.cname_to_host.get(&current) {
            if seen.contains(&current) {
                break;
            }
            seen.push(std::mem::replace(&mut current, next.clone()));
        }
        current
    }

    /// The static address of a canonical name, if it has one (no alias following).
    /// (The IPv4 one when it has both.)
    pub fn address(&self, canonical_name: &str) -> Option<IpAddr> {
        self.host_to_ip
            .get(canonical_name)
            .or_else(|| self.host_to_ip6.get(canonical_name))
            .copied()
    }

    /// The static address of the given family (`v6`) of a canonical name.
    pub fn address_of_family(&self, canonical_name: &str, v6: bool) -> Option<IpAddr> {
        let table = if v6 {
            &self.host_to_ip6
        } else {
            &self.host_to_ip
        };
        table.get(canonical_name).copied()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.host_to_ip.is_empty() && self.host_to_ip6.is_empty() && self.cname_to_host.is_empty()
    }
}

/// The host name Lima gives an instance in its static hosts: `lima-<name>` with `.` and `_`
/// replaced by `-` (no `.internal` suffix, unlike user-v2).
pub fn instance_host_name(instance: &str) -> String {
    format!("lima-{}", instance.replace(['.', '_'], "-"))
}

/// Applies Lima's precedence to a user's `hostResolver.hosts`: the user's entries first, then
/// `host.lima.internal → gateway` and, when given, `lima-<instance> → guest address`, which
/// override user entries of the same name.
pub fn lima_hosts(
    user_hosts: &[(String, String)],
    gateway: IpAddr,
    instance: Option<(&str, IpAddr)>,
) -> Vec<(String, String)> {
    let mut hosts = user_hosts.to_vec();
    hosts.push((HOST_LIMA_INTERNAL.to_string(), gateway.to_string()));
    if let Some((name, ip)) = instance {
        hosts.push((instance_host_name(name), ip.to_string()));
    }
    hosts
}

/// A shared, runtime-editable handle on a server's static hosts (for user-v2's
/// `lima-<NAME>.internal` names). Cloning gives another handle on the same table.
#[derive(Debug, Clone, Default)]
pub struct HostsHandle {
    inner: Arc<RwLock<StaticHosts>>,
    /// Bumped by every edit, so caches of answers know when they are out of date.
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl HostsHandle {
    /// Wraps a table.
    pub fn new(hosts: StaticHosts) -> Self {
        Self {
            inner: Arc::new(RwLock::new(hosts)),
            generation: Arc::default(),
        }
    }

    /// Adds or replaces an entry (see [`StaticHosts::set`]).
    pub fn set(&self, name: &str, value: &str) {
        self.write().set(name, value);
        self.bump();
    }

    /// Removes an entry; returns whether there was one.
    pub fn remove(&self, name: &str) -> bool {
        let removed = self.write().remove(name);
        self.bump();
        removed
    }

    /// Changes with every edit of the table.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn bump(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// A copy of the current table.
    pub fn snapshot(&self) -> StaticHosts {
        self.read().clone()
    }

    /// Runs `f` with the table locked for reading.
    pub fn with<R>(&self, f: impl FnOnce(&StaticHosts) -> R) -> R {
        f(&self.read())
    }

    // A panic while holding the lock cannot leave the table half-updated (every mutation is a
    // single map operation), so a poisoned lock is safe to keep using.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, StaticHosts> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, StaticHosts> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lima_handler_construction_vectors() {
        // lima-behaviour.md §4.2
        let h = StaticHosts::new([("test.local", "192.168.1.1"), ("alias.local", "test.local")]);
        assert_eq!(
            h.address("test.local."),
            Some("192.168.1.1".parse().unwrap())
        );
        assert_eq!(
            h.cname_to_host.get("alias.local."),
            Some(&"test.local.".to_string())
        );
        let h = StaticHosts::new([("cname1", "host1.local"), ("cname2", "cname1")]);
        assert_eq!(h.cname_to_host.get("cname2."), Some(&"cname1.".to_string()));
        assert_eq!(h.resolve_alias("CNAME2"), "host1.local.");
    }

    #[test]
    fn cycles_stop_at_first_repeat() {
        let h = StaticHosts::new([
            ("cycle1.example.com", "cycle2.example.com"),
            ("cycle2.example.com", "cycle1.example.com"),
            ("self.example.com", "self.example.com"),
        ]);
        assert_eq!(
            h.resolve_alias("cycle1.example.com."),
            "cycle1.example.com."
        );
        assert_eq!(h.resolve_alias("cycle2.example.com"), "cycle2.example.com.");
        assert_eq!(h.resolve_alias("other.example.com"), "other.example.com.");
        assert_eq!(h.resolve_alias("SELF.example.com."), "self.example.com.");
    }

    #[test]
    fn lima_precedence_overrides_user_entries() {
        let user = vec![
            ("HOST.lima.internal".to_string(), "1.2.3.4".to_string()),
            ("lima-my-vm".to_string(), "5.6.7.8".to_string()),
            ("MY.Host".to_string(), "host.lima.internal".to_string()),
        ];
        let all = lima_hosts(
            &user,
            "192.168.5.2".parse().unwrap(),
            Some(("my.v_m", "192.168.5.15".parse().unwrap())),
        );
        let h = StaticHosts::new(all.iter().map(|(a, b)| (a.as_str(), b.as_str())));
        assert_eq!(
            h.address("host.lima.internal."),
            Some("192.168.5.2".parse().unwrap())
        );
        assert_eq!(
            h.address("lima-my-v-m."),
            Some("192.168.5.15".parse().unwrap())
        );
        assert_eq!(h.address("lima-my-vm."), Some("5.6.7.8".parse().unwrap()));
        assert_eq!(h.resolve_alias("my.host"), "host.lima.internal.");
    }

    #[test]
    fn set_replaces_kind_and_remove_works() {
        let handle = HostsHandle::default();
        handle.set("a.internal", "b.internal");
        handle.set("A.internal", "10.0.0.1");
        assert_eq!(
            handle.with(|h| h.resolve_alias("a.internal")),
            "a.internal."
        );
        assert_eq!(
            handle.with(|h| h.address("a.internal.")),
            Some("10.0.0.1".parse().unwrap())
        );
        assert!(handle.remove("a.INTERNAL."));
        assert!(handle.snapshot().is_empty());
        assert!(!handle.remove("a.internal"));
    }
}
