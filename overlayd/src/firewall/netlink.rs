//! Which nf_tables tables and chains exist, straight from the kernel
//! (nfnetlink dumps of NFT_MSG_GETTABLE and NFT_MSG_GETCHAIN). `nft list
//! tables` reads the whole ruleset first (nft 1.0.6: ~0.4 s next to
//! kube-proxy's 10,000 iptables-nft rules); these two dumps carry names
//! only, so the periodic check stays cheap however large the ruleset is.
//! The chain dump also gives each chain's use count, which tells whether
//! any rule anywhere jumps to felt's chains.

use super::nft::TableId;
use super::FirewallError;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_USE: u16 = 6;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// One chain: its table, name and use count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainInfo {
    pub family: String,
    pub table: String,
    pub name: String,
    /// The kernel's NFTA_CHAIN_USE: the chain's own rules plus every rule
    /// (in any chain) that jumps or goes to it.
    pub uses: u32,
}

/// Every nf_tables table and chain of the namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub tables: Vec<TableId>,
    pub chains: Vec<ChainInfo>,
}

impl Inventory {
    /// What to assume when the dump failed: every table and chain felt
    /// removes (deleting what is absent is harmless, missing a leftover
    /// is not).
    pub fn everything() -> Self {
        let mut inv = Inventory::default();
        for (family, name) in super::nft::FLANNEL_TABLES
            .into_iter()
            .chain([(super::nft::FAMILY, super::nft::TABLE)])
        {
            inv.tables.push((family.to_string(), name.to_string()));
        }
        for family in ["ip", "ip6"] {
            for o in super::xtables::OWNED {
                inv.tables.push((family.to_string(), o.table.to_string()));
                inv.chains.push(ChainInfo {
                    family: family.to_string(),
                    table: o.table.to_string(),
                    name: o.chain.to_string(),
                    uses: 0,
                });
            }
        }
        inv
    }

    pub fn chain(&self, family: &str, table: &str, name: &str) -> Option<&ChainInfo> {
        self.chains
            .iter()
            .find(|c| c.family == family && c.table == table && c.name == name)
    }
}

fn family_name(nfproto: u8) -> String {
    match nfproto {
        1 => "inet".into(),
        2 => "ip".into(),
        3 => "arp".into(),
        5 => "netdev".into(),
        7 => "bridge".into(),
        10 => "ip6".into(),
        other => format!("family{other}"),
    }
}

fn err(detail: impl std::fmt::Display) -> FirewallError {
    FirewallError::Parse {
        command: "nfnetlink dump of nf_tables tables and chains".into(),
        detail: detail.to_string(),
    }
}

/// Reads the inventory. The socket is opened on the calling thread, so in
/// its network namespace; the dumps then run on the blocking pool.
pub async fn inventory() -> Result<Inventory, FirewallError> {
    let sock = match open() {
        Ok(s) => s,
        // No nf_tables in this kernel: nothing of it can exist.
        Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) => {
            return Ok(Inventory::default())
        }
        Err(e) => return Err(err(format!("cannot open the socket: {e}"))),
    };
    tokio::task::spawn_blocking(move || read_inventory(&sock))
        .await
        .map_err(|e| err(format!("dump task failed: {e}")))?
}

fn open() -> std::io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    Ok(sock)
}

fn read_inventory(sock: &Socket) -> Result<Inventory, FirewallError> {
    let mut inv = Inventory::default();
    for (family, attrs) in dump(sock, NFT_MSG_GETTABLE, NFT_MSG_NEWTABLE, 1)? {
        if let Some(name) = string_attr(&attrs, NFTA_TABLE_NAME) {
            inv.tables.push((family_name(family), name));
        }
    }
    for (family, attrs) in dump(sock, NFT_MSG_GETCHAIN, NFT_MSG_NEWCHAIN, 2)? {
        let (Some(table), Some(name)) = (
            string_attr(&attrs, NFTA_CHAIN_TABLE),
            string_attr(&attrs, NFTA_CHAIN_NAME),
        ) else {
            continue;
        };
        let uses = attrs
            .iter()
            .find(|(t, _)| *t == NFTA_CHAIN_USE)
            .and_then(|(_, v)| v.get(..4))
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        inv.chains.push(ChainInfo {
            family: family_name(family),
            table,
            name,
            uses,
        });
    }
    Ok(inv)
}

type Attrs = Vec<(u16, Vec<u8>)>;

/// A dump request for all families; returns each reply's family and attributes.
fn dump(sock: &Socket, get: u16, new: u16, seq: u32) -> Result<Vec<(u8, Attrs)>, FirewallError> {
    let mut req = Vec::with_capacity(20);
    req.extend_from_slice(&20u32.to_ne_bytes());
    req.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | get).to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&seq.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC (every family), NFNETLINK_V0, res_id 0.
    req.extend_from_slice(&[0, 0, 0, 0]);
    sock.send(&req, 0).map_err(|e| err(format!("send: {e}")))?;
    let mut out = Vec::new();
    let mut buf = Vec::with_capacity(1 << 16);
    loop {
        buf.clear();
        sock.recv(&mut buf, 0)
            .map_err(|e| err(format!("recv: {e}")))?;
        if parse_replies(&buf, seq, new, &mut out)? {
            return Ok(out);
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses one datagram of replies; true once the dump is complete.
fn parse_replies(
    buf: &[u8],
    seq: u32,
    new: u16,
    out: &mut Vec<(u8, Attrs)>,
) -> Result<bool, FirewallError> {
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32_at(buf, off).ok_or_else(|| err("short header"))? as usize;
        let (kind, flags) = (
            u16_at(buf, off + 4).unwrap_or(0),
            u16_at(buf, off + 6).unwrap_or(0),
        );
        let msg = buf
            .get(off..off + len)
            .filter(|_| len >= 16)
            .ok_or_else(|| err("bad message length"))?;
        off += (len + 3) & !3;
        if u32_at(msg, 8) != Some(seq) {
            continue;
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            return Err(err("the ruleset changed during the dump"));
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = u32_at(msg, 16).map_or(0, |c| c as i32);
                if code == 0 {
                    return Ok(true);
                }
                return Err(err(std::io::Error::from_raw_os_error(-code)));
            }
            k if k == (NFNL_SUBSYS_NFTABLES << 8) | new => {
                let family = *msg.get(16).ok_or_else(|| err("short nfgenmsg"))?;
                out.push((family, attrs(msg.get(20..).unwrap_or_default())));
            }
            _ => {}
        }
    }
    Ok(false)
}

fn attrs(mut b: &[u8]) -> Attrs {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let (len, kind) = (
            u16_at(b, 0).unwrap_or(0) as usize,
            u16_at(b, 2).unwrap_or(0),
        );
        if len < 4 || len > b.len() {
            break;
        }
        // Strip NLA_F_NESTED / NLA_F_NET_BYTEORDER.
        out.push((kind & 0x3fff, b[4..len].to_vec()));
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

fn string_attr(attrs: &Attrs, kind: u16) -> Option<String> {
    let (_, v) = attrs.iter().find(|(t, _)| *t == kind)?;
    let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
    std::str::from_utf8(&v[..end]).ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn message(kind: u16, flags: u16, seq: u32, family: u8, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((20 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[family, 0, 0, 0]);
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn chain_replies_give_table_name_and_use_count() {
        let chain = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN;
        let mut body = attr(NFTA_CHAIN_TABLE, b"nat\0");
        body.extend(attr(NFTA_CHAIN_NAME, b"FLANNEL-POSTRTG\0"));
        body.extend(attr(NFTA_CHAIN_USE, &2u32.to_be_bytes()));
        let mut buf = message(chain, 2, 7, 2, &body);
        buf.extend(message(chain, 2, 99, 10, &body)); // another request's
        buf.extend(message(NLMSG_DONE, 2, 7, 0, &[0; 4]));
        let mut out = Vec::new();
        assert!(parse_replies(&buf, 7, NFT_MSG_NEWCHAIN, &mut out).unwrap());
        assert_eq!(out.len(), 1);
        let (family, attrs) = &out[0];
        assert_eq!(family_name(*family), "ip");
        assert_eq!(
            string_attr(attrs, NFTA_CHAIN_NAME).as_deref(),
            Some("FLANNEL-POSTRTG")
        );
        assert_eq!(string_attr(attrs, NFTA_CHAIN_TABLE).as_deref(), Some("nat"));
    }

    #[test]
    fn an_interrupted_dump_is_an_error_not_a_short_listing() {
        let chain = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN;
        let buf = message(chain, 2 | NLM_F_DUMP_INTR, 7, 2, &[]);
        assert!(parse_replies(&buf, 7, NFT_MSG_NEWCHAIN, &mut Vec::new()).is_err());
        let mut more = Vec::new();
        assert!(!parse_replies(
            &message(chain, 2, 7, 2, &[]),
            7,
            NFT_MSG_NEWCHAIN,
            &mut more
        )
        .unwrap());
        assert_eq!(more.len(), 1, "no Done yet: the dump goes on");
    }
}
