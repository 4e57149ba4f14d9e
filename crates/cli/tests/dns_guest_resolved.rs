//! A real systemd-resolved (the resolver of Ubuntu and Fedora guests) in a `limanet run`
//! namespace, with the embedded DNS at 192.168.5.3 as its only server: it must resolve
//! host-answered and forwarded names at its best feature level (UDP+EDNS0), never logging
//! "Using degraded feature set". systemd-resolved runs unprivileged with its own /run and
//! /etc/systemd (tmpfs in the command's private mount namespace), so nothing of the machine's
//! resolver is touched;
//! limanet's upstream is the test host's stub DNS (see usernet_support).

mod usernet_support;

use std::time::Duration;
use usernet_support::*;

/// Where `scripts/install-deps` unpacks the Debian package (not installed: that would take
/// over the machine's /etc/resolv.conf).
const RESOLVED: &str = "/opt/limanet-test/systemd-resolved/lib/systemd/systemd-resolved";

#[test]
fn systemd_resolved_keeps_its_full_feature_level() {
    assert!(
        std::path::Path::new(RESOLVED).exists(),
        "{RESOLVED} missing: run scripts/install-deps"
    );
    let env = Env::new("resolved");
    let log = env.dir.join("resolved.log");
    // As uid 65534 with the two capabilities it insists on (its stub listener on
    // 127.0.0.53:53, and dropping the rest). Cache=no: every dig reaches limanet.
    let script = format!(
        "set -e\n\
         mount -t tmpfs -o mode=755 tmpfs /run\n\
         mkdir -p /run/systemd/resolve\n\
         mount -t tmpfs -o mode=755 tmpfs /etc/systemd\n\
         printf '[Resolve]\\nDNS=192.168.5.3\\nDNSSEC=no\\nDNSOverTLS=no\\nLLMNR=no\\nMulticastDNS=no\\nCache=no\\nDNSStubListener=yes\\n' > /etc/systemd/resolved.conf\n\
         chown 65534:65534 /run/systemd/resolve\n\
         setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=+net_bind_service,+setpcap --ambient-caps=+net_bind_service,+setpcap env SYSTEMD_LOG_LEVEL=debug SYSTEMD_LOG_TARGET=console SYSTEMD_LOG_COLOR=0 {RESOLVED} > {log} 2>&1 &\n\
         RPID=$!\n\
         for i in $(seq 100); do dig +time=1 +tries=1 @127.0.0.53 host.lima.internal A +short > /dev/null 2>&1 && break; sleep 0.1; done\n\
         set +e\n\
         for round in 1 2 3; do\n\
           echo HOST$round=$(dig +time=3 +tries=1 @127.0.0.53 host.lima.internal A +short)\n\
           echo FWD$round=$(dig +time=3 +tries=1 @127.0.0.53 {STUB_NAME} A +short)\n\
         done\n\
         echo NX=$(dig +time=3 +tries=1 @127.0.0.53 nosuch.example.test A | grep -o 'status: [A-Z]*')\n\
         kill $RPID\n\
         wait $RPID\n\
         exit 0\n",
        log = log.display()
    );
    let out = env.run_sh(&[], &script, Duration::from_secs(60));
    let resolved_log = std::fs::read_to_string(&log).unwrap_or_default();
    let context = format!("{}\n--- systemd-resolved ---\n{resolved_log}", out.all());
    assert_eq!(out.code, Some(0), "{context}");
    for round in 1..=3 {
        assert_eq!(
            out.value(&format!("HOST{round}")).as_deref(),
            Some("192.168.5.2"),
            "{context}"
        );
        assert_eq!(
            out.value(&format!("FWD{round}")),
            Some(STUB_ADDR.to_string()),
            "{context}"
        );
    }
    assert_eq!(
        out.value("NX").as_deref(),
        Some("status: NXDOMAIN"),
        "{context}"
    );
    assert!(
        resolved_log.contains("Using feature level UDP+EDNS0 for transaction"),
        "systemd-resolved did not use EDNS0 towards limanet\n{context}"
    );
    // (An NXDOMAIN is retried once without EDNS by design, "DVE-2018-0001 mitigation"; only
    // a server-wide downgrade would be limanet's fault.)
    for bad in [
        "degraded feature set",
        "downgrading feature level",
        "downgrading server",
    ] {
        assert!(
            !resolved_log.contains(bad),
            "systemd-resolved logged {bad:?}\n{context}"
        );
    }
    assert!(env.stub.count(STUB_NAME) > 0, "stub never asked\n{context}");
}
