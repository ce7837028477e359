//! The HTTPS webhook listener and the plain-HTTP admin listener.
//!
//! axum routes behind a tokio-rustls acceptor served by hyper-util (HTTP/1.1 and h2 by ALPN), with
//! a TLS handshake timeout, an HTTP/1 header-read timeout, a 4 MiB body limit, bounded concurrency
//! and connection count, and a graceful drain: on shutdown the listener closes, in-flight reviews
//! finish, then the process exits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::limit::ConcurrencyLimitLayer;
use tracing::{debug, info, warn};

use crate::admission::{self, Admission};
use crate::metrics::Metrics;

pub const VALIDATE_PATH: &str = "/validate";
pub const HEALTHZ_PATH: &str = "/healthz";
pub const READYZ_PATH: &str = "/readyz";
pub const METRICS_PATH: &str = "/metrics";
/// The API server sends whole objects; 4 MiB is above any real pod or pipeline run.
pub const MAX_BODY_BYTES: usize = 4 << 20;
/// Reviews handled at once; more wait their turn rather than thrashing the registry clients.
pub const MAX_IN_FLIGHT: usize = 512;
pub const MAX_CONNECTIONS: usize = 4096;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The webhook router: `POST /validate`. Exposed so tests can drive it in process.
pub fn router(admission: Arc<Admission>) -> Router {
    Router::new()
        .route(VALIDATE_PATH, post(validate))
        .route(crate::mutation::MUTATE_PATH, post(crate::mutation::mutate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(ConcurrencyLimitLayer::new(MAX_IN_FLIGHT))
        .with_state(admission)
}

async fn validate(State(admission): State<Arc<Admission>>, body: Bytes) -> Response {
    match admission::decode(&body) {
        Ok(request) => {
            let review = admission.review(request).await;
            match serde_json::to_vec(&review) {
                Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
            }
        }
        Err(e) => {
            debug!(error = %e, "bad review body");
            (StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
    }
}

/// Readiness: the TLS listener is bound and every cluster watch has synced.
#[derive(Clone)]
pub struct Readiness {
    listening: Arc<AtomicBool>,
    synced: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl Readiness {
    pub fn new(synced: Arc<dyn Fn() -> bool + Send + Sync>) -> Self {
        Self {
            listening: Arc::default(),
            synced,
        }
    }

    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.listening.load(Ordering::Acquire) && (self.synced)()
    }
}

/// The admin router: health, readiness and metrics.
pub fn admin_router(readiness: Readiness, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(HEALTHZ_PATH, get(|| async { "ok" }))
        .route(
            READYZ_PATH,
            get(move || {
                let ready = readiness.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
        .route(
            METRICS_PATH,
            get(move || {
                let text = metrics.encode();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        )
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves, then drains.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let conn = builder
                .serve_connection(TokioIo::new(tls), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    info!("draining connections");
    graceful.shutdown().await;
}

/// Serves the admin router over plain HTTP until `shutdown` resolves.
pub async fn serve_plain(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        warn!(error = %e, "admin listener failed");
    }
}

/// Binds `addr`, naming it in the error (a port in use is the usual cause).
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for {what}: {e}"))
}
