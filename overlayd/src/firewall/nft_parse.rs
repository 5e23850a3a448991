//! Reading `nft -j` listings (libnftables' JSON schema) back into the rule
//! model. Only the expression shapes felt writes are recognised; anything
//! else in felt's table (a counter, a log statement, a set, a chain
//! comment) becomes "not ours", which the comparison treats as a
//! difference to repair.

use super::rules::{AddrMatch, Rule, Verdict};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// A base chain's hook, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: String,
    pub hook: String,
    pub prio: i64,
    pub policy: String,
}

impl BaseChain {
    pub fn new(kind: &str, hook: &str, prio: i64) -> Self {
        BaseChain {
            kind: kind.into(),
            hook: hook.into(),
            prio,
            policy: "accept".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    /// None for a regular (non-base) chain.
    pub base: Option<BaseChain>,
    /// In order; None for a rule felt would not have written.
    pub rules: Vec<Option<Rule>>,
}

/// One table as listed: its chains, and a description of every object or
/// attribute felt does not write (empty for a table exactly felt's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableState {
    pub chains: BTreeMap<String, ChainState>,
    pub foreign: Vec<String>,
}

fn objects(text: &str) -> Result<Vec<Value>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    match v.get("nftables") {
        Some(Value::Array(items)) => Ok(items.clone()),
        _ => Err("no \"nftables\" array".into()),
    }
}

/// `nft -j list table FAMILY NAME` → the table's state.
pub fn parse_table(text: &str, family: &str, name: &str) -> Result<TableState, String> {
    let mut state = TableState {
        chains: BTreeMap::new(),
        foreign: Vec::new(),
    };
    for obj in objects(text)? {
        let Some((kind, body)) = obj.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        match kind.as_str() {
            "metainfo" => {}
            "table" => note_extra_keys(&mut state, body, &["family", "name", "handle"]),
            "chain" => add_chain(&mut state, body),
            "rule" => add_rule(&mut state, body)?,
            other => state.foreign.push(format!("{other}: {body}")),
        }
        let belongs = |k: &str, want: &str| body.get(k).and_then(Value::as_str) == Some(want);
        if kind != "metainfo" && !(belongs("family", family) && belongs_table(body, name)) {
            return Err(format!("listing holds an object of another table: {body}"));
        }
    }
    Ok(state)
}

fn belongs_table(body: &Value, name: &str) -> bool {
    // A table object carries its name in "name", the others in "table".
    let key = if body.get("table").is_some() {
        "table"
    } else {
        "name"
    };
    body.get(key).and_then(Value::as_str) == Some(name)
}

fn note_extra_keys(state: &mut TableState, body: &Value, known: &[&str]) {
    if let Some(o) = body.as_object() {
        for (k, v) in o {
            if !known.contains(&k.as_str()) {
                state.foreign.push(format!("{k}: {v}"));
            }
        }
    }
}

fn add_chain(state: &mut TableState, body: &Value) {
    let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let Some(name) = s("name") else {
        state.foreign.push(format!("chain without name: {body}"));
        return;
    };
    let base = match (
        s("type"),
        s("hook"),
        body.get("prio").and_then(Value::as_i64),
        s("policy"),
    ) {
        (Some(kind), Some(hook), Some(prio), Some(policy)) => Some(BaseChain {
            kind,
            hook,
            prio,
            policy,
        }),
        _ => None,
    };
    let known = [
        "family", "table", "name", "handle", "type", "hook", "prio", "policy",
    ];
    note_extra_keys(state, body, &known);
    state.chains.insert(
        name,
        ChainState {
            base,
            rules: Vec::new(),
        },
    );
}

fn add_rule(state: &mut TableState, body: &Value) -> Result<(), String> {
    let chain = body
        .get("chain")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("rule without chain: {body}"))?;
    let known = ["family", "table", "chain", "handle", "expr"];
    let plain = body
        .as_object()
        .is_some_and(|o| o.keys().all(|k| known.contains(&k.as_str())));
    let rule = body
        .get("expr")
        .and_then(Value::as_array)
        .filter(|_| plain)
        .and_then(|e| parse_rule(e));
    let c = state
        .chains
        .get_mut(chain)
        .ok_or_else(|| format!("rule of an unlisted chain {chain}"))?;
    c.rules.push(rule);
    Ok(())
}

/// A rule's expressions → the rule, if it is one felt writes.
pub fn parse_rule(exprs: &[Value]) -> Option<Rule> {
    let (last, matches) = exprs.split_last()?;
    let mut rule = Rule {
        mark: None,
        src: None,
        dst: None,
        verdict: parse_verdict(last)?,
    };
    for m in matches {
        let m = m.get("match")?;
        let negated = match m.get("op")?.as_str()? {
            "==" => false,
            "!=" => true,
            _ => return None,
        };
        let (left, right) = (m.get("left")?, m.get("right")?);
        if let Some(and) = left.get("&") {
            let mask = parse_mark(and, right)?;
            if negated || rule.mark.replace(mask).is_some() {
                return None;
            }
            continue;
        }
        let payload = left.get("payload")?;
        let net = parse_addr(right)?;
        let proto_ok = match net {
            IpNet::V4(_) => payload.get("protocol")? == "ip",
            IpNet::V6(_) => payload.get("protocol")? == "ip6",
        };
        let slot = match payload.get("field")?.as_str()? {
            "saddr" if proto_ok => &mut rule.src,
            "daddr" if proto_ok => &mut rule.dst,
            _ => return None,
        };
        if slot.replace(AddrMatch { net, negated }).is_some() {
            return None;
        }
    }
    Some(rule)
}

/// `meta mark & M == M` → M.
fn parse_mark(and: &Value, right: &Value) -> Option<u32> {
    let [meta, mask] = and.as_array()?.as_slice() else {
        return None;
    };
    if meta.get("meta")?.get("key")? != "mark" {
        return None;
    }
    let mask = u32::try_from(mask.as_u64()?).ok()?;
    (right.as_u64()? == u64::from(mask)).then_some(mask)
}

/// `{"prefix": {"addr": A, "len": L}}`, or a bare address (nft lists a
/// full-length prefix that way).
fn parse_addr(v: &Value) -> Option<IpNet> {
    let (addr, len) = match v {
        Value::String(a) => (a.as_str(), None),
        _ => {
            let p = v.get("prefix")?;
            (
                p.get("addr")?.as_str()?,
                Some(u8::try_from(p.get("len")?.as_u64()?).ok()?),
            )
        }
    };
    match addr.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => Ipv4Net::new(a, len.unwrap_or(32)).ok().map(IpNet::V4),
        IpAddr::V6(a) => Ipv6Net::new(a, len.unwrap_or(128)).ok().map(IpNet::V6),
    }
}

fn parse_verdict(v: &Value) -> Option<Verdict> {
    let o = v.as_object().filter(|o| o.len() == 1)?;
    let (k, body) = o.iter().next()?;
    match (k.as_str(), body) {
        ("return", Value::Null) => Some(Verdict::Return),
        ("accept", Value::Null) => Some(Verdict::Accept),
        ("masquerade", m) => {
            let o = m.as_object().filter(|o| o.len() == 1)?;
            // One flag prints as a string, several as an array.
            let flags = match o.get("flags")? {
                Value::String(f) => vec![f.as_str()],
                Value::Array(a) => a.iter().map(Value::as_str).collect::<Option<_>>()?,
                _ => return None,
            };
            (flags == ["fully-random"]).then_some(Verdict::Masquerade)
        }
        _ => None,
    }
}
