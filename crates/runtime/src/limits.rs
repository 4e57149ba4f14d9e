//! Descriptors: the one resource every guest's flows, the DNS server and new ports share.
//!
//! At start the soft `RLIMIT_NOFILE` is raised to the hard limit (the common soft limit of
//! 1024 would cap a network near a thousand connections). The flow tables are then sized so
//! that they refuse new flows *before* the process runs out: descriptors stay in reserve for
//! the DNS server, new ports and listeners, and one guest may hold at most half of the TCP
//! table, so a guest opening connections as fast as it can leaves the others room.

use limanet_netstack::NetConfig;
use tracing::{info, warn};

/// Descriptors kept out of the flow tables: the DNS server's TCP clients, upstream sockets
/// and lookups (its limits are 256 + 1024 + 64), plus ports, listeners and the event loop.
pub const RESERVED_FDS: u64 = 256 + 1024 + 64 + 256;

/// Raises the soft descriptor limit to the hard one; returns the soft limit now in force.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let before = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                info!(
                    from = before,
                    to = lim.rlim_max,
                    "raised the open file limit"
                );
            } else {
                warn!(
                    error = %std::io::Error::last_os_error(),
                    "cannot raise the open file limit"
                );
                lim.rlim_cur = before;
            }
        }
    }
    lim.rlim_cur
}

/// Sizes the flow tables of `cfg` for a process that may open `nofile` descriptors.
pub fn fit_flow_tables(cfg: &mut NetConfig, nofile: u64) {
    let reserve = RESERVED_FDS.min(nofile / 2);
    let flows = usize::try_from(nofile - reserve).unwrap_or(usize::MAX);
    cfg.max_udp_flows = cfg.max_udp_flows.min(flows / 8).max(1);
    cfg.max_icmp_flows = cfg.max_icmp_flows.min(flows / 32).max(1);
    let tcp = flows
        .saturating_sub(cfg.max_udp_flows + cfg.max_icmp_flows)
        .max(2);
    cfg.max_tcp_flows = cfg.max_tcp_flows.min(tcp);
    cfg.max_tcp_connecting = cfg.max_tcp_connecting.min(cfg.max_tcp_flows);
    cfg.max_tcp_flows_per_port = cfg
        .max_tcp_flows_per_port
        .min(cfg.max_tcp_flows * usize::from(cfg.max_tcp_table_percent_per_port.min(100)) / 100)
        .max(1);
    cfg.max_tcp_half_open_per_port = cfg
        .max_tcp_half_open_per_port
        .min(cfg.max_tcp_flows_per_port);
    info!(
        open_files = nofile,
        tcp_flows = cfg.max_tcp_flows,
        tcp_flows_per_guest = cfg.max_tcp_flows_per_port,
        half_open_per_guest = cfg.max_tcp_half_open_per_port,
        udp_flows = cfg.max_udp_flows,
        "flow tables sized to the descriptors"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_leave_a_reserve_and_a_share_for_other_guests() {
        for nofile in [256u64, 1024, 4096, 65536, 1 << 20] {
            let mut cfg = NetConfig::default();
            fit_flow_tables(&mut cfg, nofile);
            let used = (cfg.max_tcp_flows + cfg.max_udp_flows + cfg.max_icmp_flows) as u64;
            assert!(
                used + RESERVED_FDS.min(nofile / 2) <= nofile,
                "{nofile}: {used}"
            );
            assert!(cfg.max_tcp_flows_per_port <= cfg.max_tcp_flows / 2);
            assert!(cfg.max_tcp_half_open_per_port <= cfg.max_tcp_flows_per_port);
        }
        let mut cfg = NetConfig::default();
        fit_flow_tables(&mut cfg, 1 << 20);
        assert_eq!(
            cfg.max_tcp_flows, 65536,
            "defaults stand when there is room"
        );
        assert_eq!(cfg.max_tcp_flows_per_port, 16384);
    }

    #[test]
    fn a_chosen_per_guest_limit_may_exceed_half_the_table_but_not_the_table() {
        let mut cfg = NetConfig {
            max_tcp_flows_per_port: 12_000,
            max_tcp_table_percent_per_port: 100,
            ..NetConfig::default()
        };
        fit_flow_tables(&mut cfg, 20_000);
        assert_eq!(cfg.max_tcp_flows_per_port, 12_000);
        cfg.max_tcp_flows_per_port = 30_000;
        fit_flow_tables(&mut cfg, 20_000);
        assert_eq!(cfg.max_tcp_flows_per_port, cfg.max_tcp_flows);
    }
}
