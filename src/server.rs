//! The HTTPS webhook listener and the plain-HTTP admin listener.
//!
//! axum routes behind a tokio-rustls acceptor served by hyper-util (HTTP/1.1 and h2 by ALPN).
//! Every resource a client can hold has its own bound ([`Limits`]), so no client can starve the
//! API server's reviews (with `failurePolicy: Ignore`, a review not answered is a pod admitted
//! unchecked):
//! - time: TLS handshake, first request, request headers, request body and idle time between
//!   requests each have a timeout; h2 connections are pinged;
//! - count: connections in total and per peer address (an attacker on one address leaves room
//!   for the API server's), h2 streams per connection, reviews in flight;
//! - bytes: one body, and all bodies being read or reviewed together.
//!
//! The body is read before a review slot is taken: a client that sends headers and then
//! dawdles holds a connection and a few bytes of budget until its body timeout, never a slot.
//! On shutdown the listener closes, connections are asked to finish (GOAWAY, `Connection:
//! close`), and whatever is left after [`Limits::drain_grace`] is dropped.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::admission::{self, Admission, ReviewObject};
use crate::metrics::Metrics;
use kube::core::admission::AdmissionRequest;

pub const VALIDATE_PATH: &str = "/validate";
pub const HEALTHZ_PATH: &str = "/healthz";
pub const READYZ_PATH: &str = "/readyz";
pub const METRICS_PATH: &str = "/metrics";
/// The API server sends whole objects; 4 MiB is above any real pod or pipeline run (etcd's
/// default request limit is 1.5 MiB).
pub const MAX_BODY_BYTES: usize = 4 << 20;
/// Bytes of request bodies held at once, being read or under review. Real reviews are a few
/// KiB, so this is hundreds of concurrent reviews; it keeps bodies (and their decoded form, a
/// few times larger) well inside the Deployment's 256 MiB limit however many clients send.
pub const MAX_BODY_BYTES_IN_FLIGHT: usize = 32 << 20;
/// Reviews handled at once; more wait their turn (up to the review deadline) rather than
/// thrashing the registry clients.
pub const MAX_IN_FLIGHT: usize = 512;
/// h2 streams one connection may have open. The API server multiplexes its webhook calls over
/// few h2 connections, and Go's HTTP/2 client opens another connection when a server's limit
/// is reached; 250 is Go's own server default, the value its client is tuned for. Memory is
/// bounded by [`MAX_BODY_BYTES_IN_FLIGHT`], not by this.
pub const MAX_CONCURRENT_STREAMS: u32 = 250;
/// Request header bytes (h1 read buffer, h2 header list); admission requests carry a handful.
pub const MAX_HEADER_BYTES: usize = 64 << 10;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds on what the clients of one listener can hold. [`Limits::webhook`] and
/// [`Limits::admin`] are the shipped values; tests shorten the timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// TLS handshake, from accept.
    pub handshake: Duration,
    /// From connect (or the handshake) to the first request's headers, and for any request's
    /// headers.
    pub first_request: Duration,
    /// One request body, from its headers to its last byte.
    pub body: Duration,
    /// A connection with no request in flight for this long is closed. Longer than the
    /// 90 s idle timeout of Go's HTTP client, so the API server closes first and never sends
    /// a review on a connection being closed. (HTTP/1.1 keep-alive connections close sooner:
    /// hyper's header timeout, `first_request`, also times the wait for the next request.)
    pub idle: Duration,
    /// h2 PING interval; a peer that does not answer within the same time is dropped.
    pub keep_alive: Duration,
    /// After shutdown begins, how long connections get to finish before they are dropped.
    /// Shorter than the pod's `terminationGracePeriodSeconds` (30) minus its preStop (5).
    pub drain_grace: Duration,
    /// Open connections, at most.
    pub max_connections: usize,
    /// Open connections from one IP address, at most.
    pub max_connections_per_peer: usize,
    /// Reviews handled at once ([`MAX_IN_FLIGHT`]).
    pub reviews_in_flight: usize,
}

impl Limits {
    /// The webhook port: the API server's connections and any other client in the cluster.
    pub fn webhook() -> Self {
        Self {
            handshake: HANDSHAKE_TIMEOUT,
            first_request: HEADER_READ_TIMEOUT,
            body: Duration::from_secs(10),
            idle: Duration::from_secs(120),
            keep_alive: Duration::from_secs(20),
            drain_grace: Duration::from_secs(15),
            max_connections: 4096,
            // An HTTP/1.1 API server opens up to one connection per review in flight.
            max_connections_per_peer: MAX_IN_FLIGHT,
            reviews_in_flight: MAX_IN_FLIGHT,
        }
    }

    /// The admin port: the kubelet's probes and a metrics scraper, a few connections.
    pub fn admin() -> Self {
        Self {
            max_connections: 128,
            max_connections_per_peer: 32,
            ..Self::webhook()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::webhook()
    }
}

/// What the review handler shares: the pipeline and its two budgets.
struct Reviews {
    admission: Arc<Admission>,
    slots: Arc<Semaphore>,
    body_bytes: Arc<Semaphore>,
    body_timeout: Duration,
}

/// The webhook router: `POST /validate`. Exposed so tests can drive it in process.
pub fn router(admission: Arc<Admission>) -> Router {
    router_with(admission, &Limits::webhook())
}

/// [`router`] with the body timeout of `limits`.
pub fn router_with(admission: Arc<Admission>, limits: &Limits) -> Router {
    let reviews = Reviews {
        admission,
        slots: Arc::new(Semaphore::new(limits.reviews_in_flight)),
        body_bytes: Arc::new(Semaphore::new(MAX_BODY_BYTES_IN_FLIGHT)),
        body_timeout: limits.body,
    };
    Router::new()
        .route(VALIDATE_PATH, post(validate))
        .route(crate::mutation::MUTATE_PATH, post(mutate))
        .with_state(Arc::new(reviews))
}

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("the request body is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("the request body did not arrive within {0:?}")]
    Timeout(Duration),
    #[error("cannot read the request body: {0}")]
    Read(String),
}

impl BodyError {
    fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Read(_) => StatusCode::BAD_REQUEST,
        }
    }
}

async fn validate(State(reviews): State<Arc<Reviews>>, request: Request) -> Response {
    let due = reviews.admission.due();
    match admit(&reviews, request, due).await {
        Ok((request, _held)) => json(&reviews.admission.review_by(request, due).await),
        Err(refused) => refused,
    }
}

/// `POST /mutate` (placement mode): the same bounds as `/validate`, then [`Admission::steer`].
async fn mutate(State(reviews): State<Arc<Reviews>>, request: Request) -> Response {
    let due = reviews.admission.due();
    match admit(&reviews, request, due).await {
        Ok((request, _held)) => json(&reviews.admission.steer(request, due).await),
        Err(refused) => refused,
    }
}

/// What a review holds while it is answered: its body's byte budget and its slot.
type Held = (Option<OwnedSemaphorePermit>, OwnedSemaphorePermit);

/// The body first, bounded in time and bytes and holding no review slot; then a slot, waited
/// for until the review is `due`; then the AdmissionReview. `Err` is the answer to send.
async fn admit(
    reviews: &Reviews,
    request: Request,
    due: tokio::time::Instant,
) -> Result<(AdmissionRequest<ReviewObject>, Held), Response> {
    let (body, bytes_held) = read_body(request, &reviews.body_bytes, reviews.body_timeout)
        .await
        .map_err(|e| {
            debug!(error = %e, "request body refused");
            (e.status(), e.to_string()).into_response()
        })?;
    let slot = tokio::time::timeout_at(due, reviews.slots.clone().acquire_owned()).await;
    let Ok(Ok(slot)) = slot else {
        warn!("no review slot within the review deadline");
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "archgate is busy: every review slot stayed taken for the review deadline",
        )
            .into_response());
    };
    match admission::decode(&body) {
        Ok(request) => Ok((request, (bytes_held, slot))),
        Err(e) => {
            debug!(error = %e, "bad review body");
            Err((StatusCode::BAD_REQUEST, e.to_string()).into_response())
        }
    }
}

fn json(answer: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(answer) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Reads the whole body within `timeout`, taking one permit of `budget` per byte as it
/// arrives (so a slow sender holds only what it sent). The permits travel with the bytes
/// until the review is answered.
async fn read_body(
    request: Request,
    budget: &Arc<Semaphore>,
    timeout: Duration,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), BodyError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(BodyError::TooLarge);
    }
    let read = async {
        let mut stream = request.into_body().into_data_stream();
        let mut body = Vec::with_capacity(declared.unwrap_or(0) as usize);
        let mut held: Option<OwnedSemaphorePermit> = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(BodyError::TooLarge);
            }
            if chunk.is_empty() {
                continue;
            }
            // `chunk.len()` <= MAX_BODY_BYTES, which fits u32; the semaphore is never closed.
            let permit = budget
                .clone()
                .acquire_many_owned(chunk.len() as u32)
                .await
                .map_err(|e| BodyError::Read(e.to_string()))?;
            match &mut held {
                Some(h) => h.merge(permit),
                None => held = Some(permit),
            }
            body.extend_from_slice(&chunk);
        }
        Ok((Bytes::from(body), held))
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| BodyError::Timeout(timeout))?
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

/// Serves `router` over TLS on `listener` with the webhook's [`Limits`] until `shutdown`
/// resolves, then drains.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    shutdown: impl Future<Output = ()>,
) {
    serve(
        listener,
        Some(acceptor),
        router,
        Limits::webhook(),
        shutdown,
    )
    .await
}

/// Serves the admin router over plain HTTP with the admin [`Limits`] until `shutdown`
/// resolves.
pub async fn serve_plain(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    serve(listener, None, router, Limits::admin(), shutdown).await
}

/// Serves `router` on `listener` (over TLS when `tls` is set) within `limits` until `shutdown`
/// resolves; then stops accepting, asks every connection to finish, and drops what is left
/// after `limits.drain_grace`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let limits = Arc::new(limits);
    let peers = Peers::new(limits.max_connections, limits.max_connections_per_peer);
    let builder = Arc::new(http_builder(&limits));
    let (drain, draining) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
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
        // Over a cap the connection is closed at once: a refused client learns it now
        // instead of waiting in the listen backlog.
        let Some(seat) = peers.admit(peer.ip()) else {
            debug!(%peer, "connection refused: connection cap reached");
            continue;
        };
        let conn = Conn {
            peer,
            limits: limits.clone(),
            builder: builder.clone(),
            router: router.clone(),
            draining: draining.clone(),
        };
        let tls = tls.clone();
        connections.spawn(async move {
            let _seat = seat;
            conn.run(tcp, tls).await
        });
    }
    drop(listener);
    info!(connections = connections.len(), "draining connections");
    let _ = drain.send(true);
    let drained = tokio::time::timeout(limits.drain_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            left = connections.len(),
            "drain grace over: dropping the connections left"
        );
        connections.shutdown().await;
    }
}

fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.first_request)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .keep_alive_interval(limits.keep_alive)
        .keep_alive_timeout(limits.keep_alive);
    builder
}

/// Open connections per peer address, within the caps. A [`Seat`] is one connection.
#[derive(Clone)]
struct Peers(Arc<PeersInner>);

struct PeersInner {
    total: usize,
    per_peer: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
    count: AtomicUsize,
}

impl Peers {
    fn new(total: usize, per_peer: usize) -> Self {
        Self(Arc::new(PeersInner {
            total,
            per_peer,
            open: Mutex::default(),
            count: AtomicUsize::new(0),
        }))
    }

    fn admit(&self, ip: IpAddr) -> Option<Seat> {
        let mut open = self.0.open.lock().unwrap_or_else(|e| e.into_inner());
        let total = self.0.count.load(Ordering::Relaxed);
        let mine = open.entry(ip).or_default();
        if total >= self.0.total || *mine >= self.0.per_peer {
            if *mine == 0 {
                open.remove(&ip);
            }
            return None;
        }
        *mine += 1;
        self.0.count.fetch_add(1, Ordering::Relaxed);
        Some(Seat {
            peers: self.clone(),
            ip,
        })
    }
}

struct Seat {
    peers: Peers,
    ip: IpAddr,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut open = self.peers.0.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
        self.peers.0.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Requests in flight on one connection and when the last one ended: what the idle timeout
/// looks at. h2 PINGs and other frames do not count as use.
struct Activity {
    in_flight: AtomicUsize,
    used: AtomicBool,
    last: Mutex<Instant>,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.used.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// When the connection is due to close if nothing happens meanwhile; `None` while a
    /// request is in flight.
    fn due(&self, limits: &Limits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        Some(if self.used.load(Ordering::Relaxed) {
            last + limits.idle
        } else {
            last + limits.first_request
        })
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One accepted connection and what it needs to be served.
struct Conn {
    peer: SocketAddr,
    limits: Arc<Limits>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    router: Router,
    draining: tokio::sync::watch::Receiver<bool>,
}

impl Conn {
    async fn run(self, tcp: TcpStream, tls: Option<TlsAcceptor>) {
        let _ = tcp.set_nodelay(true);
        let peer = self.peer;
        match tls {
            None => self.http(tcp).await,
            Some(acceptor) => {
                match tokio::time::timeout(self.limits.handshake, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => self.http(tls).await,
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            }
        }
    }

    /// Serves HTTP on `io` until the peer leaves, the connection idles out, or shutdown; a
    /// connection asked to close at shutdown gets `drain_grace` to finish its requests, an
    /// idle one `first_request`, and is then dropped.
    async fn http<I>(mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            used: AtomicBool::new(false),
            last: Mutex::new(Instant::now()),
        });
        let router = self.router.clone();
        let tracked = activity.clone();
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let in_flight = tracked.begin();
            let router = router.clone();
            async move {
                let response = router.oneshot(request.map(Body::new)).await;
                drop(in_flight);
                response
            }
        });
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        tokio::pin!(conn);
        let mut closing: Option<Instant> = None;
        loop {
            let due = match closing {
                Some(hard) => hard,
                None => activity
                    .due(&self.limits)
                    .unwrap_or_else(|| Instant::now() + self.limits.idle),
            };
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = self.draining.wait_for(|d| *d), if closing.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + self.limits.drain_grace);
                }
                () = tokio::time::sleep_until(due) => match closing {
                    Some(_) => {
                        debug!(%peer, "connection did not finish in time after being asked to close; dropping it");
                        return;
                    }
                    None => {
                        if activity.due(&self.limits).is_some_and(|d| d <= Instant::now()) {
                            debug!(%peer, "closing an idle connection");
                            conn.as_mut().graceful_shutdown();
                            // Nothing is in flight: a peer that does not go after GOAWAY
                            // (or races a last request in) gets a first request's time.
                            let grace = self.limits.first_request.min(self.limits.drain_grace);
                            closing = Some(Instant::now() + grace);
                        }
                    }
                },
            }
        }
    }
}

/// Binds `addr`, naming it in the error (a port in use is the usual cause).
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for {what}: {e}"))
}
