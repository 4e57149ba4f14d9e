//! MAC addresses derived as Lima does: `52:55:55` + the first 3 bytes of
//! SHA-256(machine id ‖ unique id).

use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// The machine id: `/etc/machine-id`, else `/var/lib/dbus/machine-id` (trimmed), else the
/// hostname. Computed once per process.
pub fn machine_id() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        ["/etc/machine-id", "/var/lib/dbus/machine-id"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .map(|s| s.trim().to_owned())
            .find(|s| !s.is_empty())
            .unwrap_or_else(hostname)
    })
    .clone()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `52:55:55:xx:xx:xx` with the first 3 bytes of SHA-256(`machine_id` ‖ `unique_id`), lowercase.
pub fn mac_address(machine_id: &str, unique_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(machine_id.as_bytes());
    h.update(unique_id.as_bytes());
    let d = h.finalize();
    format!("52:55:55:{:02x}:{:02x}:{:02x}", d[0], d[1], d[2])
}
