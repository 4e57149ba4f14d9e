//! Registering an instance whose eth0 is on a user-v2 network with that network's daemon, as
//! Lima's `usernet.Client.ConfigureDriver` does after QEMU starts (§1.10, §3.1):
//!
//! 1. find the VM's address: poll `GET /services/dhcp/leases` until one lease has the eth0 MAC
//!    (2 minutes, or `LIMA_USERNET_RESOLVE_IP_ADDRESS_TIMEOUT` minutes);
//! 2. expose the port forwards (`--ssh-port` is Lima's SSH forward, `--forward` adds more)
//!    with `POST /services/forwarder/expose`;
//! 3. add DNS zones built like Lima's `dnshosts.ExtractZones` from the `--host` entries,
//!    `lima-<NAME>.internal` → the VM's address and `host.lima.internal` → the gateway.
//!
//! When the instance stops its forwards are unexposed (Lima's `UnExposeSSH`), so the next
//! instance can use the host ports. The DNS zones stay, as in Lima (gvproxy has no call to
//! remove them); an instance that comes back gets its name re-added in front.

use crate::dnshosts;
use crate::process::read_pid_file;
use crate::store::{Attachment, InstanceState};
use crate::usernet_client::{self, Client, ExposeRequest, UnexposeRequest};
use anyhow::Context;
use limanet_config::networks::{Mode, NetworksConfig};
use limanet_config::usernet::{self as unet, SockKind};
use limanet_config::LimaHome;
use limanet_runtime::Forward;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

/// What registering one instance with its user-v2 eth0 network needs.
#[derive(Clone, Debug)]
pub struct Registration {
    /// The networks.yaml name of eth0's network.
    pub network: String,
    /// The daemon's API socket (`<name>_ep.sock`).
    pub endpoint: PathBuf,
    /// The daemon's pid file.
    pub pid_file: PathBuf,
    /// eth0's MAC.
    pub mac: String,
    /// Instance name.
    pub name: String,
    /// The network's gateway (network + 2), `host.lima.internal`.
    pub gateway: Ipv4Addr,
    /// `--host NAME=VALUE` entries.
    pub hosts: Vec<String>,
    /// Port forwards (checked specs).
    pub forwards: Vec<Forward>,
    /// How long to wait for the VM's lease.
    pub timeout: Duration,
}

impl Registration {
    /// The registration of `state`'s instance, or `None` when its eth0 is not on a user-v2
    /// network (the instance's own network gets hosts and forwards on its command line).
    pub fn for_instance(
        home: &LimaHome,
        cfg: &NetworksConfig,
        state: &InstanceState,
    ) -> anyhow::Result<Option<Self>> {
        let Some(eth0) = state.nics.first() else {
            return Ok(None);
        };
        let Attachment::Lima { network, mode, .. } = &eth0.attachment else {
            return Ok(None);
        };
        if mode != Mode::UserV2.as_str() {
            return Ok(None);
        }
        let (subnet, _) = unet::subnet(cfg.check(network)?)?;
        let dir = unet::dir(home, network);
        let forwards = state
            .forwards
            .iter()
            .map(|f| f.parse::<Forward>().map_err(|e| anyhow::anyhow!(e)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Some(Self {
            network: network.clone(),
            endpoint: unet::sock(&dir, network, SockKind::Ep)?,
            pid_file: unet::pid_file(home, network),
            mac: eth0.mac.clone(),
            name: state.name.clone(),
            gateway: unet::gateway_ip(subnet),
            hosts: state.hosts.clone(),
            forwards,
            timeout: usernet_client::resolve_ip_timeout(
                std::env::var(usernet_client::RESOLVE_IP_TIMEOUT_ENV)
                    .ok()
                    .as_deref(),
            ),
        }))
    }

    /// The host names to register: the `--host` entries, then `lima-<NAME>.internal` → `ip`
    /// and `host.lima.internal` → the gateway (these two win, as in Lima).
    pub fn hosts_map(&self, ip: &str) -> BTreeMap<String, String> {
        let mut hosts: BTreeMap<String, String> = self
            .hosts
            .iter()
            .filter_map(|h| h.split_once('='))
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        hosts.insert(
            format!("{}.internal", dnshosts::hostname_from_inst_name(&self.name)),
            ip.to_owned(),
        );
        hosts.insert("host.lima.internal".to_owned(), self.gateway.to_string());
        hosts
    }

    /// The expose requests for the VM at `ip`: a forward without a guest address goes to it.
    pub fn expose_requests(&self, ip: Ipv4Addr) -> Vec<ExposeRequest> {
        self.forwards
            .iter()
            .map(|f| ExposeRequest {
                local: f.host.to_string(),
                remote: std::net::SocketAddr::new(
                    f.guest.unwrap_or(std::net::IpAddr::V4(ip)),
                    f.guest_port,
                )
                .to_string(),
                protocol: protocol(f).to_owned(),
            })
            .collect()
    }

    /// Registers the instance (see the module docs); returns the VM's address. Stops waiting
    /// for the lease when `cancelled` returns true.
    pub fn register(&self, cancelled: &dyn Fn() -> bool) -> anyhow::Result<Ipv4Addr> {
        let client = Client::new(&self.endpoint)?;
        let ip = client.resolve_ip_address(&self.mac, self.timeout, cancelled)?;
        let addr: Ipv4Addr = ip
            .parse()
            .with_context(|| format!("the lease for {} is not an IPv4 address: {ip}", self.mac))?;
        tracing::info!(
            "instance `{}` has {addr} on network `{}`",
            self.name,
            self.network
        );
        // One failure (a port another instance holds, a zone the daemon refuses) is logged and
        // does not keep the rest from being registered.
        let mut failures = 0;
        for req in self.expose_requests(addr) {
            match client.expose(&req) {
                Ok(()) => {
                    tracing::info!("exposed {} {} -> {}", req.protocol, req.local, req.remote)
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!("failed to expose {} -> {}: {e:#}", req.local, req.remote);
                }
            }
        }
        for zone in dnshosts::extract_zones(&self.hosts_map(&ip)) {
            if let Err(e) = client.add_dns(&zone) {
                failures += 1;
                tracing::warn!("failed to add DNS zone `{}`: {e:#}", zone.name);
            }
        }
        if failures > 0 {
            anyhow::bail!(
                "instance `{}` has {addr}, but {failures} forward(s) or DNS zone(s) could not be registered (see the log)",
                self.name
            );
        }
        Ok(addr)
    }

    /// Unexposes the instance's forwards while the network's daemon runs; failures are logged
    /// (a forward that was never exposed is not an error worth more).
    pub fn unregister(&self) {
        if self.forwards.is_empty() || !matches!(read_pid_file(&self.pid_file), Ok(Some(_))) {
            return;
        }
        let client = match Client::new(&self.endpoint) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("{e:#}");
                return;
            }
        };
        // Only forwards that lead to this VM: a local address another instance exposed (ours
        // failed, or was never made) is left alone.
        let ours = match self.own_forwards(&client) {
            Ok(ours) => ours,
            Err(e) => {
                tracing::warn!("cannot tell which forwards are this instance's: {e:#}");
                return;
            }
        };
        for req in ours {
            match client.unexpose(&req) {
                Ok(()) => tracing::info!("unexposed {} {}", req.protocol, req.local),
                Err(e) => tracing::warn!("failed to unexpose {}: {e:#}", req.local),
            }
        }
    }
}

impl Registration {
    /// The daemon's forwards that this instance exposed: same local address, protocol and
    /// guest side as [`Registration::expose_requests`] for the VM's leased address.
    fn own_forwards(&self, client: &Client) -> anyhow::Result<Vec<UnexposeRequest>> {
        let leases = client.leases()?;
        let Some(ip) = leases
            .iter()
            .find(|(_, mac)| mac.eq_ignore_ascii_case(&self.mac))
            .and_then(|(ip, _)| ip.parse::<Ipv4Addr>().ok())
        else {
            return Ok(Vec::new());
        };
        let listed = client.forwards()?;
        Ok(self
            .expose_requests(ip)
            .into_iter()
            .filter(|want| listed.contains(want))
            .map(|want| UnexposeRequest {
                local: want.local,
                protocol: want.protocol,
            })
            .collect())
    }
}

fn protocol(f: &Forward) -> &'static str {
    if f.udp {
        "udp"
    } else {
        "tcp"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(forwards: &[&str]) -> Registration {
        Registration {
            network: "user-v2".into(),
            endpoint: "/nonexistent/user-v2_ep.sock".into(),
            pid_file: "/nonexistent/usernet_user-v2.pid".into(),
            mac: "52:55:55:12:34:56".into(),
            name: "my_vm.1".into(),
            gateway: Ipv4Addr::new(192, 168, 104, 2),
            hosts: vec![
                "db.test=10.1.2.3".into(),
                "alias.test=db.test".into(),
                "host.lima.internal=1.2.3.4".into(),
            ],
            forwards: forwards
                .iter()
                .map(|f| f.parse().expect("test forward"))
                .collect(),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn hosts_get_the_instance_name_and_the_gateway() {
        let r = registration(&[]);
        let hosts = r.hosts_map("192.168.104.1");
        assert_eq!(hosts["lima-my-vm-1.internal"], "192.168.104.1");
        // Lima sets host.lima.internal last, over a user entry.
        assert_eq!(hosts["host.lima.internal"], "192.168.104.2");
        assert_eq!(hosts["alias.test"], "db.test");
        let zones = dnshosts::extract_zones(&hosts);
        let internal = zones
            .iter()
            .find(|z| z.name == "internal.")
            .expect("internal. zone");
        let names: Vec<(&str, String)> = internal
            .records
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.ip.map(|i| i.to_string()).unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("host.lima", "192.168.104.2".to_owned()),
                ("lima-my-vm-1", "192.168.104.1".to_owned())
            ]
        );
        let test = zones
            .iter()
            .find(|z| z.name == "test.")
            .expect("test. zone");
        assert_eq!(test.records.len(), 2);
        assert!(test
            .records
            .iter()
            .all(|r| r.ip == Some("10.1.2.3".parse().expect("ip"))));
    }

    #[test]
    fn forwards_become_expose_requests() {
        let r = registration(&[
            "tcp:127.0.0.1:2222:22",
            "udp:5353:53",
            "tcp:0.0.0.0:8080:192.168.104.9:80",
        ]);
        let ip = Ipv4Addr::new(192, 168, 104, 1);
        let got: Vec<(String, String, String)> = r
            .expose_requests(ip)
            .into_iter()
            .map(|e| (e.local, e.remote, e.protocol))
            .collect();
        let want = [
            ("127.0.0.1:2222", "192.168.104.1:22", "tcp"),
            ("127.0.0.1:5353", "192.168.104.1:53", "udp"),
            ("0.0.0.0:8080", "192.168.104.9:80", "tcp"),
        ]
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()));
        assert_eq!(got, want);
    }

    #[test]
    fn register_fails_cleanly_without_a_daemon() {
        let r = registration(&[]);
        let err = r
            .register(&|| false)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("failed to connect"), "{err}");
    }
}
