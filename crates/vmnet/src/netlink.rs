//! The few rtnetlink requests the backend needs, made synchronous on a private current-thread
//! tokio runtime (the daemon's data plane is a mio loop; netlink is only used at setup and exit).

use futures_util::stream::TryStreamExt;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::RouteAttribute;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, RouteMessageBuilder};
use std::io;
use std::net::{IpAddr, Ipv4Addr};

/// What the backend needs to know about an existing interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfoSummary {
    pub index: u32,
    pub name: String,
    pub alias: Option<String>,
    pub kind: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
}

/// A netlink connection with its own runtime.
pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

fn nl_err(what: &str, e: rtnetlink::Error) -> io::Error {
    let errno = match &e {
        rtnetlink::Error::NetlinkError(m) => m.raw_code().checked_neg(),
        _ => None,
    };
    let kind = match errno {
        Some(libc::EEXIST) => io::ErrorKind::AlreadyExists,
        Some(libc::ENODEV) | Some(libc::ENOENT) => io::ErrorKind::NotFound,
        Some(libc::EPERM) | Some(libc::EACCES) => io::ErrorKind::PermissionDenied,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("{what}: {e}"))
}

fn summarize(msg: &LinkMessage) -> LinkInfoSummary {
    let mut s = LinkInfoSummary {
        index: msg.header.index,
        name: String::new(),
        alias: None,
        kind: None,
        mac: None,
        mtu: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => s.name = n.clone(),
            LinkAttribute::IfAlias(a) => s.alias = Some(a.clone()),
            LinkAttribute::Mtu(m) => s.mtu = Some(*m),
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(a);
                s.mac = Some(mac);
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        s.kind = Some(match k {
                            InfoKind::Bridge => "bridge".to_string(),
                            InfoKind::Tun => "tun".to_string(),
                            other => format!("{other:?}").to_lowercase(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    s
}

impl Netlink {
    pub fn new() -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let (connection, handle, _) = {
            let _guard = rt.enter();
            rtnetlink::new_connection()?
        };
        rt.spawn(connection);
        Ok(Netlink { rt, handle })
    }

    /// The interface called `name`, if any.
    pub fn link(&self, name: &str) -> io::Result<Option<LinkInfoSummary>> {
        let handle = self.handle.clone();
        let name = name.to_string();
        self.rt.block_on(async move {
            let mut links = handle.link().get().match_name(name.clone()).execute();
            match links.try_next().await {
                Ok(Some(msg)) => Ok(Some(summarize(&msg))),
                Ok(None) => Ok(None),
                Err(e) => {
                    let e = nl_err(&format!("look up interface {name}"), e);
                    if e.kind() == io::ErrorKind::NotFound {
                        Ok(None)
                    } else {
                        Err(e)
                    }
                }
            }
        })
    }

    /// Creates a bridge with a fixed MAC and MTU; it starts down.
    pub fn add_bridge(&self, name: &str, mac: [u8; 6], mtu: u32) -> io::Result<()> {
        let msg = LinkBridge::new(name).address(mac.to_vec()).mtu(mtu).build();
        let handle = self.handle.clone();
        self.rt
            .block_on(async move { handle.link().add(msg).execute().await })
            .map_err(|e| nl_err(&format!("create bridge {name}"), e))
    }

    /// Sets the alias (the marker that says limanet owns the interface).
    pub fn set_alias(&self, index: u32, alias: &str) -> io::Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).alias(alias).build(),
            "set interface alias",
        )
    }

    pub fn set_up(&self, index: u32) -> io::Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).up().build(),
            "bring interface up",
        )
    }

    /// Makes `index` a port of bridge `bridge`, and brings it up.
    pub fn set_controller(&self, index: u32, bridge: u32) -> io::Result<()> {
        self.set(
            LinkUnspec::new_with_index(index)
                .controller(bridge)
                .up()
                .build(),
            "attach interface to bridge",
        )
    }

    fn set(&self, msg: LinkMessage, what: &str) -> io::Result<()> {
        let handle = self.handle.clone();
        self.rt
            .block_on(async move { handle.link().set(msg).execute().await })
            .map_err(|e| nl_err(what, e))
    }

    pub fn add_address(&self, index: u32, addr: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        let handle = self.handle.clone();
        self.rt
            .block_on(async move {
                handle
                    .address()
                    .add(index, IpAddr::V4(addr), prefix_len)
                    .execute()
                    .await
            })
            .map_err(|e| nl_err(&format!("add address {addr}/{prefix_len}"), e))
    }

    pub fn delete_link(&self, index: u32) -> io::Result<()> {
        let handle = self.handle.clone();
        self.rt
            .block_on(async move { handle.link().del(index).execute().await })
            .map_err(|e| nl_err("delete interface", e))
    }

    /// Interfaces of limanet's (alias starting with `marker`).
    pub fn links_with_alias_prefix(&self, marker: &str) -> io::Result<Vec<LinkInfoSummary>> {
        let handle = self.handle.clone();
        let all: Vec<LinkMessage> = self
            .rt
            .block_on(async move { handle.link().get().execute().try_collect().await })
            .map_err(|e| nl_err("list interfaces", e))?;
        Ok(all
            .iter()
            .map(summarize)
            .filter(|l| l.alias.as_deref().is_some_and(|a| a.starts_with(marker)))
            .collect())
    }

    /// Names of the interfaces IPv4 default routes (main table) leave through.
    pub fn default_route_interfaces(&self) -> io::Result<Vec<u32>> {
        let handle = self.handle.clone();
        let routes: Vec<_> = self
            .rt
            .block_on(async move {
                handle
                    .route()
                    .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                    .execute()
                    .try_collect()
                    .await
            })
            .map_err(|e| nl_err("list routes", e))?;
        let mut out = Vec::new();
        for r in routes {
            if r.header.destination_prefix_length != 0 || r.header.table != 254 {
                continue;
            }
            for a in &r.attributes {
                if let RouteAttribute::Oif(i) = a {
                    if !out.contains(i) {
                        out.push(*i);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The name of interface `index`.
    pub fn link_name(&self, index: u32) -> io::Result<Option<String>> {
        let handle = self.handle.clone();
        self.rt.block_on(async move {
            let mut links = handle.link().get().match_index(index).execute();
            match links.try_next().await {
                Ok(Some(msg)) => Ok(Some(summarize(&msg).name)),
                Ok(None) => Ok(None),
                Err(e) => {
                    let e = nl_err("look up interface", e);
                    if e.kind() == io::ErrorKind::NotFound {
                        Ok(None)
                    } else {
                        Err(e)
                    }
                }
            }
        })
    }
}
