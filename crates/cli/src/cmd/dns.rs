//! `limanet dns`: the host-resolver DNS server, standalone on loopback.
//!
//! Once listening it prints one line of JSON to stdout, `{"udp":"ADDR:PORT","tcp":"ADDR:PORT"}`,
//! so a caller that asked for port 0 can wire the chosen ports. It stops on SIGINT or SIGTERM.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use limanet_dns::{DnsConfig, DnsServer};

/// Command-line arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on (UDP and TCP).
    #[arg(long, default_value = "127.0.0.1")]
    listen: IpAddr,
    /// UDP port; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    udp_port: u16,
    /// TCP port; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    tcp_port: u16,
    /// Static host, NAME=IP or NAME=OTHER-NAME (an alias); repeatable, later entries win.
    #[arg(long = "host", value_name = "NAME=VALUE", value_parser = parse_host)]
    hosts: Vec<(String, String)>,
    /// Answer AAAA queries (otherwise they get NOERROR with no answer, as in Lima's default).
    #[arg(long)]
    ipv6: bool,
    /// Upstream server, IP or IP:PORT (port 53 by default); repeatable. Replaces resolv.conf.
    #[arg(long = "upstream", value_name = "IP[:PORT]", value_parser = parse_upstream)]
    upstreams: Vec<SocketAddr>,
    /// The resolv.conf whose nameservers are the upstreams (re-read when it changes).
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// When resolv.conf names no server, answer forwarded queries with SERVFAIL instead of
    /// sending them to 8.8.8.8 and 1.1.1.1 (Lima's fallback).
    #[arg(long)]
    no_fallback_dns: bool,
}

fn parse_host(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() && !value.is_empty() => {
            Ok((name.to_string(), value.to_string()))
        }
        _ => Err(format!("expected NAME=IP or NAME=OTHER-NAME, got {s:?}")),
    }
}

fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("expected IP or IP:PORT ([IPv6]:PORT), got {s:?}"))
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<u8> {
    let config = DnsConfig {
        listen: args.listen,
        udp_port: args.udp_port,
        tcp_port: args.tcp_port,
        hosts: args.hosts,
        ipv6: args.ipv6,
        upstreams: args.upstreams,
        resolv_conf: args.resolv_conf,
        fallback_servers: !args.no_fallback_dns,
        ..DnsConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))?;
    Ok(0)
}

async fn serve(config: DnsConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let server = DnsServer::bind(config).await?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let line = serde_json::json!({
        "udp": server.udp_addr().to_string(),
        "tcp": server.tcp_addr().to_string(),
    });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").context("cannot write the listening addresses to stdout")?;
    stdout.flush().context("cannot flush stdout")?;
    drop(stdout);
    tokio::select! {
        () = server.run() => {}
        _ = sigterm.recv() => tracing::info!("SIGTERM: stopping"),
        _ = sigint.recv() => tracing::info!("SIGINT: stopping"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_and_upstreams() {
        assert_eq!(
            parse_host("a.test=1.2.3.4"),
            Ok(("a.test".into(), "1.2.3.4".into()))
        );
        assert_eq!(parse_host("x=y.test"), Ok(("x".into(), "y.test".into())));
        assert!(parse_host("novalue=").is_err());
        assert!(parse_host("noequals").is_err());
        assert_eq!(
            parse_upstream("127.0.0.2"),
            Ok("127.0.0.2:53".parse().unwrap())
        );
        assert_eq!(
            parse_upstream("127.0.0.2:5353"),
            Ok("127.0.0.2:5353".parse().unwrap())
        );
        assert_eq!(parse_upstream("::1"), Ok("[::1]:53".parse().unwrap()));
        assert_eq!(
            parse_upstream("[::1]:5353"),
            Ok("[::1]:5353".parse().unwrap())
        );
        assert!(parse_upstream("dns.example").is_err());
    }
}
