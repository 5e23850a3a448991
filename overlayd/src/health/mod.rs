//! The health endpoint (flannel's --healthz-ip/--healthz-port):
//! `/healthz` answers 200 while the process runs, `/readyz` 200 once every
//! readiness condition holds (503 with the reasons until then), and
//! `/metrics` the Prometheus exposition. Plain HTTP/1.1 GETs; anything
//! else gets 404 or 405.

pub mod readiness;

use crate::metrics::Metrics;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use readiness::Readiness;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A request must arrive within this (slow or idle clients cannot pile up).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("health endpoint: cannot listen on {addr}: {source}")]
pub struct HealthError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// What the endpoint serves from.
#[derive(Clone)]
pub struct Endpoints {
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
}

/// Binds `addr` and serves until the task is dropped. Binding happens
/// before this returns, so a bad address fails the start-up clearly.
pub async fn serve(
    addr: SocketAddr,
    endpoints: Endpoints,
) -> Result<tokio::task::JoinHandle<()>, HealthError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError { addr, source })?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    Ok(tokio::spawn(accept_loop(listener, endpoints)))
}

async fn accept_loop(listener: TcpListener, endpoints: Endpoints) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "health endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ep = endpoints.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ep = ep.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&ep, &req)) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = http.serve_connection(io, service).await {
                tracing::debug!(error = %e, "health endpoint: connection ended");
            }
        });
    }
}

fn respond(ep: &Endpoints, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let (ready, body) = ep.readiness.report();
            let code = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(code, body)
        }
        "/metrics" => {
            let mut r = text(StatusCode::OK, ep.metrics.encode());
            if let Ok(v) = "application/openmetrics-text; version=1.0.0; charset=utf-8".parse() {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz, /metrics\n".into(),
        ),
    }
}

fn text(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    if let Ok(v) = "text/plain; charset=utf-8".parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}
