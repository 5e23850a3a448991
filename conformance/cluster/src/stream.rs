//! A long TCP stream between two pods that measures how long the data
//! ever stopped flowing: the receiver timestamps every read, so a restart
//! or a route flap on the path shows up as the longest gap. The payload
//! is a known pattern, checked byte for byte, so "completed" means every
//! byte arrived intact and in order.

use crate::error::{io_err, HarnessError, Result};
use crate::netns::Netns;
use crate::tcp::in_netns;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes per write, and the pause between writes: about 16 MB/s, enough to
/// notice any stall, modest enough not to starve a 2-core machine.
const CHUNK: usize = 16 * 1024;
const PAUSE: Duration = Duration::from_millis(1);

/// What the receiver saw.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamReport {
    pub bytes: u64,
    pub longest_gap: Duration,
    pub elapsed: Duration,
}

/// A stream running from one pod to another until `finish`.
pub struct TcpStreamRun {
    sender: Option<JoinHandle<Result<u64>>>,
    receiver: Option<JoinHandle<Result<StreamReport>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8
}

impl TcpStreamRun {
    /// Listens in `to` on `to_ip`, connects from `from`, starts sending.
    pub fn start(from: &Netns, to: &Netns, to_ip: Ipv4Addr) -> Result<Self> {
        let listener = in_netns(&to.path(), move || {
            TcpListener::bind((to_ip, 0)).map_err(io_err(format!("cannot listen on {to_ip}")))
        })?;
        let addr: SocketAddr = listener.local_addr().map_err(io_err("listener address"))?;
        let receiver = std::thread::spawn(move || receive(listener));
        let stream = in_netns(&from.path(), move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .map_err(io_err(format!("cannot connect to {addr}")))
        })?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let sender = std::thread::spawn(move || send(stream, &flag));
        Ok(TcpStreamRun {
            sender: Some(sender),
            receiver: Some(receiver),
            stop,
        })
    }

    /// Stops sending, waits for the receiver to see the end, and checks
    /// that everything sent arrived.
    pub fn finish(mut self) -> Result<StreamReport> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let sent = join(self.sender.take())??;
        let report = join(self.receiver.take())??;
        if report.bytes != sent {
            return Err(HarnessError::Setup(format!(
                "stream sent {sent} bytes but {} arrived",
                report.bytes
            )));
        }
        Ok(report)
    }
}

fn join<T>(h: Option<JoinHandle<T>>) -> Result<T> {
    h.ok_or_else(|| HarnessError::Setup("stream already finished".into()))?
        .join()
        .map_err(|_| HarnessError::Setup("stream thread panicked".into()))
}

fn send(mut stream: TcpStream, stop: &std::sync::atomic::AtomicBool) -> Result<u64> {
    let mut offset = 0u64;
    let mut buf = vec![0u8; CHUNK];
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = pattern(offset + i as u64);
        }
        stream.write_all(&buf).map_err(io_err("stream send"))?;
        offset += CHUNK as u64;
        std::thread::sleep(PAUSE);
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(io_err("stream shutdown"))?;
    Ok(offset)
}

fn receive(listener: TcpListener) -> Result<StreamReport> {
    let (mut stream, _) = listener.accept().map_err(io_err("stream accept"))?;
    // A stall longer than this ends the stream as broken.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io_err("stream timeout"))?;
    let start = Instant::now();
    let (mut bytes, mut longest) = (0u64, Duration::ZERO);
    let mut last: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf).map_err(io_err("stream receive"))?;
        let now = Instant::now();
        if n == 0 {
            break;
        }
        if let Some(prev) = last {
            longest = longest.max(now - prev);
        }
        last = Some(now);
        for (i, b) in buf[..n].iter().enumerate() {
            if *b != pattern(bytes + i as u64) {
                return Err(HarnessError::Setup(format!(
                    "stream corrupted at byte {}",
                    bytes + i as u64
                )));
            }
        }
        bytes += n as u64;
    }
    Ok(StreamReport {
        bytes,
        longest_gap: longest,
        elapsed: start.elapsed(),
    })
}
