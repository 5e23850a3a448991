//! When things appear in a namespace's kernel, event-driven: an rtnetlink
//! socket opened inside the namespace, subscribed to IPv4 route and
//! neighbour notifications (FDB entries are AF_BRIDGE neighbours), read by
//! a dedicated thread that stamps each message on arrival. Nothing polls.
//!
//! The thread decodes only the few fields the benchmarks look at, by hand:
//! at 65,000 peers a node sees ~200,000 notifications, and the monitor
//! must not compete with the daemon it measures for the CPU.

use crate::error::{io_err, BenchError, Result};
use ipnet::Ipv4Net;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const AF_INET: u8 = 2;
const AF_BRIDGE: u8 = 7;
/// Room for a burst of notifications while the reader is descheduled.
const RCVBUF: libc::c_int = 256 << 20;

/// One notification, reduced to what the benchmarks compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Route {
        new: bool,
        dst: Ipv4Net,
        oif: u32,
        table: u32,
    },
    Neigh {
        new: bool,
        ifindex: u32,
        ip: Ipv4Addr,
        mac: Option<[u8; 6]>,
        state: u16,
    },
    Fdb {
        new: bool,
        ifindex: u32,
        mac: [u8; 6],
        dst: Option<Ipv4Addr>,
        state: u16,
    },
}

/// A running monitor; stops on drop.
pub struct Monitor {
    pub rx: Receiver<(Instant, Event)>,
    stop: Arc<AtomicBool>,
    overruns: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Subscribes in the namespace at `ns` (routes and neighbours).
    pub fn start(ns: &Path) -> Result<Self> {
        let socket = crate::ns::with_netns(ns, open_socket)??;
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let overruns = Arc::new(AtomicU64::new(0));
        let (s, o) = (stop.clone(), overruns.clone());
        let thread = std::thread::spawn(move || read_loop(&socket, &tx, &s, &o));
        Ok(Monitor {
            rx,
            stop,
            overruns,
            thread: Some(thread),
        })
    }

    /// How many times the kernel dropped notifications (ENOBUFS): a
    /// result depending on them is then incomplete and says so.
    pub fn overruns(&self) -> u64 {
        self.overruns.load(Ordering::SeqCst)
    }

    /// The next event, waiting until `deadline` at most.
    pub fn next_until(&self, deadline: Instant) -> Option<(Instant, Event)> {
        let wait = deadline.saturating_duration_since(Instant::now());
        self.rx.recv_timeout(wait).ok()
    }

    /// Throws away everything received so far.
    pub fn drain(&self) {
        while self.rx.try_recv().is_ok() {}
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_socket() -> Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(io_err("netlink socket"))?;
    socket
        .bind(&SocketAddr::new(0, RTMGRP_IPV4_ROUTE | RTMGRP_NEIGH))
        .map_err(io_err("bind netlink monitor"))?;
    let fd = socket.as_raw_fd();
    // Root may exceed rmem_max; the read timeout lets the thread notice
    // that it should stop.
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    setsockopt(fd, libc::SO_RCVBUFFORCE, &RCVBUF)?;
    setsockopt(fd, libc::SO_RCVTIMEO, &timeout)?;
    Ok(socket)
}

fn setsockopt<T>(fd: std::os::fd::RawFd, opt: libc::c_int, value: &T) -> Result<()> {
    // SAFETY: `value` points to a live T of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(BenchError::Io {
            what: format!("setsockopt {opt} on the netlink monitor"),
            source: std::io::Error::last_os_error(),
        })
    }
}

fn read_loop(
    socket: &Socket,
    tx: &Sender<(Instant, Event)>,
    stop: &AtomicBool,
    overruns: &AtomicU64,
) {
    let mut buf = vec![0u8; 1 << 20];
    while !stop.load(Ordering::SeqCst) {
        // SAFETY: recv into a buffer we own, of the length given.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let at = Instant::now();
        if n < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::ENOBUFS) => {
                    overruns.fetch_add(1, Ordering::SeqCst);
                }
                Some(libc::EAGAIN | libc::EINTR) => {}
                _ => return,
            }
            continue;
        }
        for event in parse_messages(&buf[..n as usize]) {
            if tx.send((at, event)).is_err() {
                return;
            }
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Every route/neighbour event in one datagram (several netlink messages
/// may share it).
pub fn parse_messages(buf: &[u8]) -> Vec<Event> {
    let mut out = Vec::new();
    let mut at = 0;
    while let (Some(len), Some(kind)) = (u32_at(buf, at), u16_at(buf, at + 4)) {
        let len = len as usize;
        if len < 16 || at + len > buf.len() {
            break;
        }
        let body = &buf[at + 16..at + len];
        let event = match kind {
            RTM_NEWROUTE | RTM_DELROUTE => parse_route(body, kind == RTM_NEWROUTE),
            RTM_NEWNEIGH | RTM_DELNEIGH => parse_neigh(body, kind == RTM_NEWNEIGH),
            _ => None,
        };
        out.extend(event);
        at += align4(len);
    }
    out
}

/// (type, payload) of each attribute after a fixed header of `skip` bytes.
fn attrs(body: &[u8], skip: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = align4(skip);
    while let (Some(len), Some(kind)) = (u16_at(body, at), u16_at(body, at + 2)) {
        let len = usize::from(len);
        if len < 4 || at + len > body.len() {
            break;
        }
        out.push((kind & 0x3fff, &body[at + 4..at + len]));
        at += align4(len);
    }
    out
}

fn ipv4(raw: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(raw).ok().map(Ipv4Addr::from)
}

fn parse_route(body: &[u8], new: bool) -> Option<Event> {
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope,
    // type, flags (u32).
    if *body.first()? != AF_INET {
        return None;
    }
    let (dst_len, mut table) = (*body.get(1)?, u32::from(*body.get(4)?));
    let (mut dst, mut oif) = (Ipv4Addr::UNSPECIFIED, 0);
    for (kind, data) in attrs(body, 12) {
        match kind {
            1 => dst = ipv4(data)?,
            4 => oif = u32_at(data, 0)?,
            15 => table = u32_at(data, 0)?,
            _ => {}
        }
    }
    Some(Event::Route {
        new,
        dst: Ipv4Net::new(dst, dst_len).ok()?,
        oif,
        table,
    })
}

fn parse_neigh(body: &[u8], new: bool) -> Option<Event> {
    // struct ndmsg: family, pad, pad (u16), ifindex (i32), state (u16),
    // flags, type.
    let family = *body.first()?;
    let ifindex = u32_at(body, 4)?;
    let state = u16_at(body, 8)?;
    let (mut dst, mut mac) = (None, None);
    for (kind, data) in attrs(body, 12) {
        match kind {
            1 => dst = ipv4(data),
            2 => mac = <[u8; 6]>::try_from(data).ok(),
            _ => {}
        }
    }
    match family {
        AF_INET => Some(Event::Neigh {
            new,
            ifindex,
            ip: dst?,
            mac,
            state,
        }),
        AF_BRIDGE => Some(Event::Fdb {
            new,
            ifindex,
            mac: mac?,
            dst,
            state,
        }),
        _ => None,
    }
}

/// Waits up to `timeout` for `done` to say the events so far suffice;
/// returns the arrival time of the event that completed it.
pub fn wait_events(
    monitor: &Monitor,
    timeout: Duration,
    mut done: impl FnMut(&Event) -> bool,
) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    while let Some((at, e)) = monitor.next_until(deadline) {
        if done(&e) {
            return Some(at);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
    use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
    use rtnetlink::RouteMessageBuilder;

    fn wire(msg: RouteNetlinkMessage) -> Vec<u8> {
        let mut m = NetlinkMessage::new(Default::default(), NetlinkPayload::InnerMessage(msg));
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        buf
    }

    fn neigh(family: AddressFamily, dst: Option<Ipv4Addr>, mac: [u8; 6]) -> NeighbourMessage {
        let mut n = NeighbourMessage::default();
        n.header.family = family;
        n.header.ifindex = 7;
        n.header.state = netlink_packet_route::neighbour::NeighbourState::Permanent;
        if let Some(d) = dst {
            n.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(d)));
        }
        n.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        n
    }

    #[test]
    fn decodes_what_netlink_packet_route_encodes() {
        let gw = Ipv4Addr::new(10, 1, 2, 0);
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(gw, 24)
            .gateway(gw)
            .output_interface(7)
            .onlink()
            .build();
        let mac = [0x0e, 0xfe, 0, 0, 0, 1];
        let mut buf = wire(RouteNetlinkMessage::NewRoute(route.clone()));
        buf.extend(wire(RouteNetlinkMessage::DelRoute(route)));
        buf.extend(wire(RouteNetlinkMessage::NewNeighbour(neigh(
            AddressFamily::Inet,
            Some(gw),
            mac,
        ))));
        buf.extend(wire(RouteNetlinkMessage::NewNeighbour(neigh(
            AddressFamily::Bridge,
            Some(Ipv4Addr::new(172, 16, 0, 1)),
            mac,
        ))));
        let dst: Ipv4Net = "10.1.2.0/24".parse().unwrap();
        assert_eq!(
            parse_messages(&buf),
            vec![
                Event::Route {
                    new: true,
                    dst,
                    oif: 7,
                    table: 254
                },
                Event::Route {
                    new: false,
                    dst,
                    oif: 7,
                    table: 254
                },
                Event::Neigh {
                    new: true,
                    ifindex: 7,
                    ip: gw,
                    mac: Some(mac),
                    state: 0x80
                },
                Event::Fdb {
                    new: true,
                    ifindex: 7,
                    mac,
                    dst: Some(Ipv4Addr::new(172, 16, 0, 1)),
                    state: 0x80
                },
            ]
        );
        // A truncated datagram yields what is complete, never garbage.
        assert_eq!(parse_messages(&buf[..buf.len() - 3]).len(), 3);
    }
}
