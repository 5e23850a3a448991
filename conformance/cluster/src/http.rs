//! A minimal HTTP/1.1 GET from inside a namespace (overlayd's /healthz,
//! /readyz and /metrics), without curl: the socket is created in the
//! namespace by `tcp::in_netns` and read from the calling thread.

use crate::error::{io_err, parse_err, Result};
use crate::tcp::in_netns;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// `GET path` on `addr` from the namespace at `ns`: (status, body).
pub fn get(ns: &Path, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = in_netns(ns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(io_err(format!("cannot connect to {addr}")))
    })?;
    let what = format!("GET http://{addr}{path}");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io_err(what.clone()))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .map_err(io_err(what.clone()))?;
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .map_err(io_err(what.clone()))?;
    parse_response(&raw).ok_or_else(|| parse_err(what, raw.chars().take(200).collect::<String>()))
}

fn parse_response(raw: &str) -> Option<(u16, String)> {
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn dechunk(mut s: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n")?;
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..n)?);
        s = rest.get(n + 2..)?;
    }
}

/// The value of one sample in a Prometheus/OpenMetrics exposition:
/// `sample` is the name with its labels as printed, e.g.
/// `felt_reconcile_corrections_total{kind="route"}`. Absent reads as 0.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses_and_samples() {
        let plain = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nnope";
        assert_eq!(parse_response(plain), Some((503, "nope".into())));
        let chunked =
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((200, "abcde".into())));
        let text = "# TYPE x counter\nfelt_x_total{kind=\"route\"} 3\nfelt_y 1.5\n# EOF\n";
        assert_eq!(metric(text, "felt_x_total{kind=\"route\"}"), 3.0);
        assert_eq!(metric(text, "felt_y"), 1.5);
        assert_eq!(metric(text, "felt_z"), 0.0);
    }
}
