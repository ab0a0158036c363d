//! The HTTPS listener: accept with a connection cap, TLS handshake under a
//! timeout, the peer's certificate turned into a [`Peer`] (and kept as a
//! [`crate::verify::ClientCertificate`]) placed in every request's
//! extensions, HTTP/1.1 or HTTP/2 with a header-read timeout, and
//! graceful shutdown.

mod early;
pub mod limit;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::config::Limits;
use crate::identity::peer::Peer;

/// How long shutdown waits for in-flight requests, unless configured
/// (`[server] drain_timeout`).
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Most concurrent HTTP/2 streams per connection.
pub const MAX_H2_STREAMS: u32 = 128;

/// Turns the verified client certificate (if any) into a [`Peer`].
pub fn peer_from_certs(certs: Option<&[rustls_pki_types::CertificateDer<'static>]>) -> Peer {
    match certs.and_then(|c| c.first()) {
        None => Peer::Anonymous,
        Some(leaf) => match crate::identity::peer::from_leaf_der(leaf.as_ref()) {
            Ok(p) => Peer::Identified(Arc::new(p)),
            Err(e) => Peer::Unusable(e.reason()),
        },
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` completes, then
/// drains in-flight connections (up to [`DRAIN_TIMEOUT`]).
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) {
    serve_https_draining(listener, tls, router, limits, shutdown, DRAIN_TIMEOUT).await;
}

/// [`serve_https`] with the drain deadline given: once `shutdown`
/// completes, the listener is closed at once (new connections are refused),
/// idle keep-alive connections are closed, and requests already in flight
/// get up to `drain` to finish before their connections are dropped.
pub async fn serve_https_draining(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
    drain: std::time::Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let conns = Arc::new(Semaphore::new(limits.max_connections));
    let peers = limit::PeerLimiter::new(limits.peer_rate, limits.peer_burst).map(Arc::new);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        // Before the (expensive) handshake: a peer over its rate is closed.
        if let Some(p) = &peers {
            if p.check(remote.ip()).is_err() {
                crate::telemetry::metrics().peer_rate_limited.inc();
                drop(tcp);
                continue;
            }
        }
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "connection cap reached; closing new connection");
            crate::telemetry::metrics().connections_refused.inc();
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        let limits = limits.clone();
        let peers = peers.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let stream =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        crate::telemetry::metrics().handshake_failures.inc();
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake timed out");
                        crate::telemetry::metrics().handshake_failures.inc();
                        return;
                    }
                };
            let certs = stream.get_ref().1.peer_certificates();
            let peer = peer_from_certs(certs);
            // The raw leaf too, for handlers that verify tokens bound to it
            // (`tessera::verify::Bearer`, RFC 8705).
            let leaf = certs
                .and_then(|c| c.first())
                .map(|c| crate::verify::ClientCertificate(c.to_vec()));
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                // Every request is charged to the peer before routing.
                let limited = peers.as_ref().and_then(|p| p.check(remote.ip()).err());
                req.extensions_mut().insert(peer.clone());
                if let Some(l) = &leaf {
                    req.extensions_mut().insert(l.clone());
                }
                let router = router.clone();
                async move {
                    if let Some(wait) = limited {
                        crate::telemetry::metrics().peer_rate_limited.inc();
                        let secs = wait.as_secs().saturating_add(1);
                        return Ok(crate::oauth::OAuthError::rate_limited(secs).into_response());
                    }
                    if req.version() != hyper::Version::HTTP_2 {
                        return router.oneshot(req.map(Body::new)).await;
                    }
                    let (req, unread) = early::share_body(req);
                    let resp = router.oneshot(req.map(Body::new)).await;
                    early::drain(unread).await;
                    resp
                }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(MAX_H2_STREAMS);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
    // Stop accepting before draining: new connections are refused, not
    // left waiting in the backlog.
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            drain_timeout = ?drain,
            "drain timed out; closing remaining connections"
        );
    }
}
