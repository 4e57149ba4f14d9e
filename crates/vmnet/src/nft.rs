//! The shared network's NAT, in an nftables table of limanet's own (one per network), built with
//! the `nftables` JSON crate (as netavark does) and applied by `nft -j -f -`.
//!
//! ```text
//! table ip limanet_vmnet_<id> {
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!     ip saddr <subnet> oifname != "<bridge>" masquerade }
//!   chain forward { type filter hook forward priority filter;
//!     oifname "<bridge>" ct state established,related accept
//!     oifname "<bridge>" drop                       # the outside cannot open connections to VMs
//!   }
//! }
//! ```
//! Every rule names this network's own bridge or subnet, so tables of several networks do not
//! interfere. Deleting the table removes everything; a table with this name is limanet's by
//! construction.
//!
//! The uplinks' guard, shared by all shared networks ([`crate::uplinks`]):
//! ```text
//! table ip limanet_vmnet_uplinks {
//!   chain forward { type filter hook forward priority filter;
//!     iifname "<uplink>" oifname != "<bridge A>" oifname != "<bridge B>" drop
//!   }   # one rule per uplink whose forwarding limanet turned on: nothing else gets routed
//! }
//! ```

use nftables::batch::Batch;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, CT,
};
use nftables::helper::{self, NftablesError};
use nftables::schema::{Chain, FlushObject, NfCmd, NfListObject, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainType, NfFamily, NfHook};
use std::borrow::Cow;
use std::net::Ipv4Addr;

/// What the NAT table is made of.
#[derive(Debug, Clone)]
pub struct NatSpec {
    pub table: String,
    pub bridge: String,
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn string(s: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(s.to_string()))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn rule(spec: &NatSpec, chain: &str, expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::IP,
        table: Cow::Owned(spec.table.clone()),
        chain: Cow::Owned(chain.to_string()),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: None,
    })
}

fn base_chain(
    spec: &NatSpec,
    name: &str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::IP,
        table: Cow::Owned(spec.table.clone()),
        name: Cow::Owned(name.to_string()),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        ..Chain::default()
    })
}

fn table(name: &str) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: NfFamily::IP,
        name: Cow::Owned(name.to_string()),
        handle: None,
    })
}

/// The batch that creates the table.
pub fn ruleset(spec: &NatSpec) -> Batch<'static> {
    let mut b = Batch::new();
    b.add(table(&spec.table));
    // srcnat = 100, filter = 0.
    b.add(base_chain(
        spec,
        "postrouting",
        NfChainType::NAT,
        NfHook::Postrouting,
        100,
    ));
    b.add(base_chain(
        spec,
        "forward",
        NfChainType::Filter,
        NfHook::Forward,
        0,
    ));
    let saddr = Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: "ip".into(),
            field: "saddr".into(),
        },
    )));
    let subnet = Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(string(&spec.network.to_string())),
        len: u32::from(spec.prefix_len),
    }));
    b.add(rule(
        spec,
        "postrouting",
        vec![
            matches(saddr, Operator::EQ, subnet),
            matches(meta(MetaKey::Oifname), Operator::NEQ, string(&spec.bridge)),
            Statement::Masquerade(None),
        ],
    ));
    let ct_state = Expression::Named(NamedExpression::CT(CT {
        key: "state".into(),
        family: None,
        dir: None,
    }));
    b.add(rule(
        spec,
        "forward",
        vec![
            matches(meta(MetaKey::Oifname), Operator::EQ, string(&spec.bridge)),
            matches(
                ct_state,
                Operator::IN,
                Expression::List(vec![string("established"), string("related")]),
            ),
            Statement::Accept(None),
        ],
    ));
    b.add(rule(
        spec,
        "forward",
        vec![
            matches(meta(MetaKey::Oifname), Operator::EQ, string(&spec.bridge)),
            Statement::Drop(None),
        ],
    ));
    b
}

/// The batch that makes the guard table hold exactly one rule per `(uplink, bridges)`, in one
/// transaction (no moment without a guard).
pub fn guard_ruleset(table_name: &str, uplinks: &[(String, Vec<String>)]) -> Batch<'static> {
    let mut b = Batch::new();
    b.add(table(table_name));
    b.add_cmd(NfCmd::Flush(FlushObject::Table(Table {
        family: NfFamily::IP,
        name: Cow::Owned(table_name.to_string()),
        handle: None,
    })));
    b.add(NfListObject::Chain(Chain {
        family: NfFamily::IP,
        table: Cow::Owned(table_name.to_string()),
        name: Cow::Borrowed("forward"),
        _type: Some(NfChainType::Filter),
        hook: Some(NfHook::Forward),
        prio: Some(0),
        ..Chain::default()
    }));
    for (uplink, bridges) in uplinks {
        let mut expr = vec![matches(
            meta(MetaKey::Iifname),
            Operator::EQ,
            string(uplink),
        )];
        expr.extend(
            bridges
                .iter()
                .map(|br| matches(meta(MetaKey::Oifname), Operator::NEQ, string(br))),
        );
        expr.push(Statement::Drop(None));
        b.add(NfListObject::Rule(Rule {
            family: NfFamily::IP,
            table: Cow::Owned(table_name.to_string()),
            chain: Cow::Borrowed("forward"),
            expr: Cow::Owned(expr),
            handle: None,
            index: None,
            comment: None,
        }));
    }
    b
}

/// Creates or updates the guard table.
pub fn apply_guard(
    table_name: &str,
    uplinks: &[(String, Vec<String>)],
) -> Result<(), NftablesError> {
    helper::apply_ruleset(&guard_ruleset(table_name, uplinks).to_nftables())
}

/// Creates the table (replacing a leftover of the same name first).
pub fn apply(spec: &NatSpec) -> Result<(), NftablesError> {
    delete_if_present(&spec.table)?;
    helper::apply_ruleset(&ruleset(spec).to_nftables())
}

/// Whether table `ip <name>` exists.
pub fn exists(name: &str) -> Result<bool, NftablesError> {
    match helper::get_current_ruleset_raw(helper::DEFAULT_NFT, ["list", "table", "ip", name]) {
        Ok(_) => Ok(true),
        Err(NftablesError::NftFailed { stderr, .. })
            if stderr.contains("No such file") || stderr.contains("does not exist") =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Deletes table `ip <name>` if it exists.
pub fn delete_if_present(name: &str) -> Result<bool, NftablesError> {
    if !exists(name)? {
        return Ok(false);
    }
    let mut b = Batch::new();
    b.delete(table(name));
    helper::apply_ruleset(&b.to_nftables())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_json_names_the_bridge_and_subnet() {
        let spec = NatSpec {
            table: "limanet_vmnet_0123abcd".into(),
            bridge: "lnvbr0123abcd".into(),
            network: Ipv4Addr::new(192, 168, 105, 0),
            prefix_len: 24,
        };
        let json = serde_json::to_string(&ruleset(&spec).to_nftables()).unwrap();
        for needle in [
            "\"masquerade\"",
            "192.168.105.0",
            "lnvbr0123abcd",
            "\"established\"",
            "\"postrouting\"",
        ] {
            assert!(json.contains(needle), "{needle} missing from {json}");
        }
    }

    #[test]
    fn guard_exempts_every_bridge_behind_an_uplink() {
        let json = serde_json::to_string(
            &guard_ruleset(
                "limanet_vmnet_uplinks",
                &[(
                    "eth0".into(),
                    vec!["lnvbr0000000a".into(), "lnvbr0000000b".into()],
                )],
            )
            .to_nftables(),
        )
        .unwrap();
        for needle in [
            "\"flush\"",
            "\"eth0\"",
            "lnvbr0000000a",
            "lnvbr0000000b",
            "\"drop\"",
        ] {
            assert!(json.contains(needle), "{needle} missing from {json}");
        }
    }
}
