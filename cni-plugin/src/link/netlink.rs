//! A thin synchronous rtnetlink socket: sequence numbers, acks, multipart
//! dumps, errno mapped to typed `Exists`/`NotFound` errors.
//!
//! A socket acts on the network namespace of the thread that opened it, for
//! its whole life: open one socket per namespace.

use crate::error::{kernel_error, Error, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::link::{
    BridgePortState, InfoBridgePort, InfoPortData, LinkAttribute, LinkFlags,
    LinkInfo as LinkInfoAttr, LinkMessage, State,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket as RawSocket, SocketAddr};

const RECV_BUF: usize = 64 * 1024;

pub struct Socket {
    sock: RawSocket,
    seq: u32,
    buf: Vec<u8>,
}

impl Socket {
    /// Opens a route socket in the calling thread's current netns.
    pub fn open() -> Result<Self> {
        let k = |e| kernel_error("open netlink socket", e);
        let mut sock = RawSocket::new(NETLINK_ROUTE).map_err(k)?;
        sock.bind_auto().map_err(k)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(k)?;
        // Strict checking lets the kernel filter dumps (addresses by index).
        let _ = sock.set_netlink_get_strict_chk(true);
        Ok(Socket {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16, what: &str) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.sock.send(&out, 0).map_err(|e| kernel_error(what, e))?;
        Ok(self.seq)
    }

    /// Sends a request that expects only an ack.
    pub fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16, what: &str) -> Result<()> {
        self.request(msg, flags, what).map(|_| ())
    }

    /// Sends a request and returns every reply message (one for a GET by
    /// name/index, many for a dump).
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, flags | NLM_F_ACK, what)?;
        self.collect(seq, what)
    }

    /// A multipart dump.
    pub fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_DUMP, what)?;
        self.collect(seq, what)
    }

    /// Reads until the ack, error or end of dump for `seq`.
    fn collect(&mut self, seq: u32, what: &str) -> Result<Vec<RouteNetlinkMessage>> {
        let mut out = Vec::new();
        loop {
            self.buf.clear();
            self.sock
                .recv(&mut self.buf, 0)
                .map_err(|e| kernel_error(what, e))?;
            let mut off = 0;
            while off < self.buf.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..])
                    .map_err(|e| Error::Kernel {
                        what: what.to_string(),
                        source: std::io::Error::other(format!("bad netlink reply: {e}")),
                    })?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number != seq {
                    off += aligned(len.max(16));
                    continue;
                }
                match msg.payload {
                    // A GET answer is followed by its ack; a dump ends with Done.
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    NetlinkPayload::Error(err) => {
                        return match err.code {
                            None => Ok(out),
                            Some(_) => Err(kernel_error(what, err.to_io())),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    _ => {}
                }
                off += aligned(len.max(16));
            }
        }
    }
}

fn aligned(len: usize) -> usize {
    (len + 3) & !3
}

/// What felt needs to know about a link.
#[derive(Debug, Clone, Default)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<Vec<u8>>,
    pub up: bool,
    pub master: Option<u32>,
    pub kind: Option<String>,
    /// Set when the veth peer lives in another netns.
    pub link_netnsid: Option<i32>,
    /// IFLA_LINK: the peer's index for a veth.
    pub peer_index: Option<u32>,
    pub carrier: Option<u8>,
    pub mtu: Option<u32>,
    pub oper_up: bool,
    /// IFLA_QDISC: "noop" until linkwatch has activated the device.
    pub qdisc: Option<String>,
    /// IFLA_BRPORT_STATE == forwarding, for a bridge port.
    pub port_forwarding: Option<bool>,
}

impl Link {
    /// Linkwatch has run for this device: it is oper-UP and has its real
    /// qdisc (until then `noop` drops everything it transmits).
    pub fn activated(&self) -> bool {
        self.oper_up && self.qdisc.as_deref().is_some_and(|q| q != "noop")
    }

    fn from_message(msg: LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            up: msg.header.flags.contains(LinkFlags::Up),
            ..Default::default()
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Address(a) => link.mac = Some(a),
                LinkAttribute::Controller(m) => link.master = Some(m),
                LinkAttribute::LinkNetNsId(id) => link.link_netnsid = Some(id),
                LinkAttribute::Link(p) => link.peer_index = Some(p),
                LinkAttribute::Carrier(c) => link.carrier = Some(c),
                LinkAttribute::Mtu(m) => link.mtu = Some(m),
                LinkAttribute::OperState(st) => link.oper_up = st == State::Up,
                LinkAttribute::Qdisc(q) => link.qdisc = Some(q),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfoAttr::Kind(kind) => link.kind = Some(kind.to_string()),
                            LinkInfoAttr::PortData(InfoPortData::BridgePort(port)) => {
                                link.port_forwarding = Some(port.iter().any(|p| {
                                    matches!(p, InfoBridgePort::State(BridgePortState::Forwarding))
                                }));
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// The links among netlink replies.
fn links(replies: Vec<RouteNetlinkMessage>) -> impl Iterator<Item = Link> {
    replies.into_iter().filter_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
        _ => None,
    })
}

impl Socket {
    /// Looks a link up by name; `Ok(None)` when it does not exist.
    pub fn get_link(&mut self, name: &str) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(
            RouteNetlinkMessage::GetLink(msg),
            0,
            &format!("get link {name}"),
        ) {
            Ok(replies) => Ok(links(replies).next()),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn dump_links(&mut self) -> Result<Vec<Link>> {
        let replies = self.dump(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            "dump links",
        )?;
        Ok(links(replies).collect())
    }

    pub fn del_link(&mut self, index: u32, what: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.ack(RouteNetlinkMessage::DelLink(msg), 0, what)
    }

    /// Sets a link up and, when given, its MAC in the same request.
    pub fn set_link_up(&mut self, index: u32, mac: Option<&[u8]>, what: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        if let Some(mac) = mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        self.ack(RouteNetlinkMessage::SetLink(msg), 0, what)
    }
}

impl Socket {
    /// Opens a socket inside the netns `file` (at `path`, for messages).
    pub fn open_in(file: &std::fs::File, path: &std::path::Path) -> Result<Self> {
        let _in = felt_common::netns::NetnsGuard::enter(file, path)?;
        Socket::open()
    }
}

/// rtnetlink multicast group of link events (RTNLGRP_LINK).
const RTNLGRP_LINK: u32 = 1;

impl Socket {
    /// Subscribes to link add/remove events of this socket's netns.
    pub fn subscribe_links(&mut self) -> Result<()> {
        self.sock
            .add_membership(RTNLGRP_LINK)
            .map_err(|e| kernel_error("subscribe to link events", e))
    }

    /// Waits up to `timeout` for the next batch of events; empty on timeout.
    pub fn recv_events(
        &mut self,
        timeout: std::time::Duration,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        // A zero SO_RCVTIMEO would mean "block forever".
        let timeout = timeout.max(std::time::Duration::from_micros(1));
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: setsockopt with a pointer to a live timeval of the right size.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&self.sock),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(kernel_error(
                "set netlink receive timeout",
                std::io::Error::last_os_error(),
            ));
        }
        self.buf.clear();
        match self.sock.recv(&mut self.buf, 0) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Vec::new()),
            Err(e) => return Err(kernel_error("receive link events", e)),
        }
        let mut out = Vec::new();
        let mut off = 0;
        while off < self.buf.len() {
            let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..])
            else {
                break;
            };
            off += aligned((msg.header.length as usize).max(16));
            if let NetlinkPayload::InnerMessage(inner) = msg.payload {
                out.push(inner);
            }
        }
        Ok(out)
    }
}
