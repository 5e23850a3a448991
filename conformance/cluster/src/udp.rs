//! UDP datagrams between namespaces, to see the source address a packet
//! arrives with (masquerade or not) without tcpdump: a one-way datagram
//! needs no route back, so a receiver outside the pod network still sees
//! what the sender's node sent.

use crate::error::{io_err, Result};
use crate::netns::Netns;
use crate::tcp::in_netns;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

/// A UDP socket bound inside a namespace that records where datagrams
/// came from.
pub struct UdpSink {
    socket: UdpSocket,
    pub addr: SocketAddr,
}

impl UdpSink {
    /// Binds `ip:port` (0: any port) in `ns`.
    pub fn start(ns: &Netns, ip: Ipv4Addr, port: u16) -> Result<Self> {
        let socket = in_netns(&ns.path(), move || {
            UdpSocket::bind((ip, port)).map_err(io_err(format!("cannot bind {ip}:{port}")))
        })?;
        let addr = socket.local_addr().map_err(io_err("sink address"))?;
        socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(io_err("sink timeout"))?;
        Ok(UdpSink { socket, addr })
    }

    /// The source of the next datagram carrying `payload` (others are
    /// skipped), within 3 s.
    pub fn source_of(&self, payload: &[u8]) -> Result<SocketAddr> {
        let mut buf = [0u8; 2048];
        loop {
            let (n, from) = self
                .socket
                .recv_from(&mut buf)
                .map_err(io_err(format!("no datagram {payload:?} at {}", self.addr)))?;
            if &buf[..n] == payload {
                return Ok(from);
            }
        }
    }
}

/// Sends one datagram from namespace `ns` to `to`.
pub fn send(ns: &Netns, to: SocketAddr, payload: &[u8]) -> Result<()> {
    let socket = in_netns(&ns.path(), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(io_err("cannot bind a UDP socket"))
    })?;
    socket
        .send_to(payload, to)
        .map_err(io_err(format!("cannot send to {to}")))?;
    Ok(())
}
