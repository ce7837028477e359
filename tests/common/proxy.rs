//! A reverse proxy in front of a real plain-HTTP registry that counts the requests reaching it
//! and can inject faults (delays, error statuses, connection resets, truncated bodies).
//!
//! Counting proves caching ("the second admission made no registry request"); faults prove the
//! resolver's timeouts, retries and error messages. The registry behind stays real: only the
//! transport misbehaves.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::install_crypto_provider;

/// What a registry request is for, from its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RequestKind {
    /// `GET /v2/`: the API version check, also where auth challenges start.
    Base,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest,
    /// `/v2/<name>/blobs/...`, including uploads.
    Blob,
    /// A token endpoint (`/token`, `/auth...`), for registries with bearer auth.
    Token,
    Other,
}

impl RequestKind {
    pub fn of(path: &str) -> Self {
        if path == "/v2/" || path == "/v2" {
            RequestKind::Base
        } else if path.starts_with("/v2/") && path.contains("/manifests/") {
            RequestKind::Manifest
        } else if path.starts_with("/v2/") && path.contains("/blobs/") {
            RequestKind::Blob
        } else if path.starts_with("/token") || path.starts_with("/auth") {
            RequestKind::Token
        } else {
            RequestKind::Other
        }
    }
}

/// A snapshot of the requests that reached the proxy, by method and kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    by_request: BTreeMap<(String, RequestKind), u64>,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.by_request.values().sum()
    }

    /// Requests of `kind`, any method.
    pub fn kind(&self, kind: RequestKind) -> u64 {
        self.sum(|_, k| k == kind)
    }

    /// Requests with `method` (e.g. `"HEAD"`), any kind.
    pub fn method(&self, method: &str) -> u64 {
        self.sum(|m, _| m.eq_ignore_ascii_case(method))
    }

    /// Requests with `method` and `kind`, e.g. `get("HEAD", RequestKind::Manifest)`.
    pub fn get(&self, method: &str, kind: RequestKind) -> u64 {
        self.sum(|m, k| k == kind && m.eq_ignore_ascii_case(method))
    }

    fn sum(&self, include: impl Fn(&str, RequestKind) -> bool) -> u64 {
        self.by_request
            .iter()
            .filter(|((m, k), _)| include(m, *k))
            .map(|(_, n)| n)
            .sum()
    }

    fn record(&mut self, method: &str, kind: RequestKind) {
        *self
            .by_request
            .entry((method.to_owned(), kind))
            .or_default() += 1;
    }
}

/// A misbehaviour the proxy applies to matching requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Wait this long, then forward normally (for timeout tests).
    Delay(Duration),
    /// Answer with `status` and a distribution-style error body without asking the registry;
    /// `retry_after` (seconds) adds a `Retry-After` header, as rate limiters send with 429.
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Close the connection without any response.
    Reset,
    /// Forward, but send only the first half of the body after announcing its full length,
    /// then cut the connection.
    Truncate,
    /// Forward, then set the response header `name` to `value` (a registry, or a proxy in front
    /// of it, that states something else than what it serves).
    Header { name: &'static str, value: String },
}

/// A fault plus which requests it hits: all of them or one [`RequestKind`], forever or for the
/// next `times` matching requests (then the rule is cleared, e.g. "one 429, then recover").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRule {
    pub fault: Fault,
    pub only: Option<RequestKind>,
    pub times: Option<u32>,
}

impl FaultRule {
    pub fn new(fault: Fault) -> Self {
        Self {
            fault,
            only: None,
            times: None,
        }
    }

    /// Applies only to requests of `kind`.
    pub fn only(mut self, kind: RequestKind) -> Self {
        self.only = Some(kind);
        self
    }

    /// Applies to the next `times` matching requests only.
    pub fn times(mut self, times: u32) -> Self {
        self.times = Some(times);
        self
    }
}

impl From<Fault> for FaultRule {
    fn from(fault: Fault) -> Self {
        FaultRule::new(fault)
    }
}

/// State shared by the proxy handle and its connection tasks.
struct Shared {
    upstream: String,
    /// `127.0.0.1:PORT` of the proxy itself, sent upstream as `X-Forwarded-Host`.
    host: String,
    client: reqwest::Client,
    counts: Mutex<Counts>,
    fault: Mutex<Option<FaultRule>>,
    /// Requests being handled now, and the most ever handled at once.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Client connections currently open.
    connections: AtomicUsize,
    /// Added before serving each new connection and before answering each request: a
    /// network's round trip, for benchmarks that count round trips.
    latency: Mutex<Option<Duration>>,
    /// What happened since the last reset, and when (at most [`MAX_EVENTS`]).
    timeline: Mutex<Vec<Event>>,
    /// Numbers connections in the order they were accepted.
    next_connection: AtomicUsize,
}

/// Events kept per timeline, at most: a benchmark round sends a few dozen requests.
const MAX_EVENTS: usize = 4096;

/// One thing the proxy saw, for a benchmark's round-trip breakdown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub at: std::time::Instant,
    /// The connection, numbered from 0 in the order the proxy accepted them.
    pub connection: usize,
    pub what: EventKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A new connection was accepted (its latency, if any, starts now).
    Connected,
    /// A request's head arrived (its latency, if any, starts now), with the scheme of its
    /// `Authorization` header (`Basic`, `Bearer`), if it had one: never the credentials.
    Arrived {
        method: String,
        kind: RequestKind,
        authorization: Option<String>,
    },
    /// The response head is ready to go back, with this status.
    Answered { status: u16 },
}

/// A counting, fault-injecting HTTP/1.1 + h2c reverse proxy on 127.0.0.1. Stops on drop.
pub struct CountingProxy {
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl CountingProxy {
    /// Starts a proxy forwarding to the plain-HTTP registry at `upstream_host` (`127.0.0.1:PORT`).
    pub async fn start(upstream_host: &str) -> Self {
        install_crypto_provider();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy on 127.0.0.1:0");
        let host = listener.local_addr().expect("proxy address").to_string();
        let client = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("build proxy upstream client");
        let shared = Arc::new(Shared {
            upstream: upstream_host.to_owned(),
            host,
            client,
            counts: Mutex::default(),
            fault: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            latency: Mutex::default(),
            timeline: Mutex::default(),
            next_connection: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Self { shared, accept }
    }

    /// `127.0.0.1:PORT` of the proxy: use it as the registry host in image references.
    pub fn host(&self) -> &str {
        &self.shared.host
    }

    /// Requests that reached the proxy so far, faulted ones included.
    pub fn counts(&self) -> Counts {
        self.shared.counts.lock().unwrap().clone()
    }

    /// Forgets the counts, e.g. after pushing fixtures or warming a cache.
    pub fn reset(&self) {
        *self.shared.counts.lock().unwrap() = Counts::default();
        self.shared.timeline.lock().unwrap().clear();
    }

    /// Adds `latency` before serving each new connection and before answering each request,
    /// as a network round trip would.
    pub fn set_latency(&self, latency: Duration) {
        *self.shared.latency.lock().unwrap() = Some(latency);
    }

    /// When the first request since the last [`CountingProxy::reset`] arrived.
    pub fn first_request_at(&self) -> Option<std::time::Instant> {
        self.shared
            .timeline
            .lock()
            .unwrap()
            .iter()
            .find(|e| matches!(e.what, EventKind::Arrived { .. }))
            .map(|e| e.at)
    }

    /// Connections accepted, requests arrived and answers sent since the last
    /// [`CountingProxy::reset`], in order (the first [`MAX_EVENTS`]).
    pub fn timeline(&self) -> Vec<Event> {
        self.shared.timeline.lock().unwrap().clone()
    }

    /// Replaces the active fault rule (a bare [`Fault`] hits every request until cleared).
    pub fn set_fault(&self, rule: impl Into<FaultRule>) {
        *self.shared.fault.lock().unwrap() = Some(rule.into());
    }

    /// Removes the active fault rule: requests are forwarded untouched again.
    pub fn clear_fault(&self) {
        *self.shared.fault.lock().unwrap() = None;
    }

    /// The most requests this proxy has been handling at the same moment since it started (a
    /// request counts from arrival until its response head is ready, delays included).
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Client connections open right now (idle keep-alive ones included).
    pub fn open_connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

/// Decrements a counter when dropped, so cancelled and failed work is uncounted too.
struct Held<'a>(&'a AtomicUsize);

impl<'a> Held<'a> {
    fn enter(counter: &'a AtomicUsize) -> (Self, usize) {
        let now = counter.fetch_add(1, Ordering::SeqCst) + 1;
        (Self(counter), now)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        // The accept task owns every connection task, so this stops them all.
        self.accept.abort();
    }
}

/// Accepts connections and serves each in a task owned by this one, so aborting the accept task
/// also drops (aborts) open connections.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                let connection = shared.next_connection.fetch_add(1, Ordering::SeqCst);
                shared.note(connection, EventKind::Connected);
                connections.spawn(async move {
                    let _open = Held::enter(&shared.connections);
                    let latency = *shared.latency.lock().unwrap();
                    if let Some(latency) = latency {
                        tokio::time::sleep(latency).await;
                    }
                    let shared = shared.clone();
                    let service =
                        service_fn(move |request| handle(shared.clone(), connection, request));
                    // Errors here are clients going away or injected resets: nothing to report.
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

/// The error a service returns to make hyper drop the connection without answering.
#[derive(Debug)]
struct InjectedReset;

impl std::fmt::Display for InjectedReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset by fault injection")
    }
}

impl std::error::Error for InjectedReset {}

impl Shared {
    fn note(&self, connection: usize, what: EventKind) {
        let mut timeline = self.timeline.lock().unwrap();
        if timeline.len() < MAX_EVENTS {
            timeline.push(Event {
                at: std::time::Instant::now(),
                connection,
                what,
            });
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    connection: usize,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, InjectedReset> {
    let answer = respond(&shared, connection, request).await;
    if let Ok(response) = &answer {
        let status = response.status().as_u16();
        shared.note(connection, EventKind::Answered { status });
    }
    answer
}

async fn respond(
    shared: &Shared,
    connection: usize,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, InjectedReset> {
    let kind = RequestKind::of(request.uri().path());
    let method = request.method().to_string();
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .and_then(|v| v.split_whitespace().next().map(str::to_owned));
    shared.note(
        connection,
        EventKind::Arrived {
            method,
            kind,
            authorization,
        },
    );
    let latency = *shared.latency.lock().unwrap();
    if let Some(latency) = latency {
        tokio::time::sleep(latency).await;
    }
    let (_in_flight, now) = Held::enter(&shared.in_flight);
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    shared
        .counts
        .lock()
        .unwrap()
        .record(request.method().as_str(), kind);
    let fault = take_fault(shared, kind);
    match fault {
        Some(Fault::Reset) => return Err(InjectedReset),
        Some(Fault::Status {
            status,
            retry_after,
        }) => return Ok(error_response(status, retry_after)),
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::Truncate | Fault::Header { .. }) | None => {}
    }
    let mut response = forward(shared, request).await;
    Ok(match fault {
        Some(Fault::Truncate) => truncate(response),
        Some(Fault::Header { name, value }) => {
            response.headers_mut().insert(name, header_value(&value));
            response
        }
        _ => response,
    })
}

/// The fault for a request of `kind`, consuming one use of a counted rule.
fn take_fault(shared: &Shared, kind: RequestKind) -> Option<Fault> {
    let mut slot = shared.fault.lock().unwrap();
    let rule = slot.as_mut()?;
    if rule.only.is_some_and(|only| only != kind) {
        return None;
    }
    let fault = rule.fault.clone();
    if let Some(times) = &mut rule.times {
        *times -= 1;
        if *times == 0 {
            *slot = None;
        }
    }
    Some(fault)
}

/// Headers that describe one hop's connection, not the message, and so are not forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn forwardable(name: &HeaderName) -> bool {
    !HOP_BY_HOP.contains(&name.as_str())
}

/// Sends the request to the registry and returns its answer unchanged. `Host` becomes the
/// registry's while `X-Forwarded-Host/Proto` name the proxy, so URLs the registry builds (upload
/// `Location`s) point back through the proxy and every request stays counted.
async fn forward(shared: &Shared, request: Request<Incoming>) -> Response<ProxyBody> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("http://{}{path}", shared.upstream);
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if forwardable(name) && name != header::HOST && name != header::CONTENT_LENGTH {
            headers.append(name, value.clone());
        }
    }
    headers.insert("x-forwarded-host", header_value(&shared.host));
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    let body = match collect(body).await {
        Ok(body) => body,
        Err(e) => return error_response_with(502, &format!("reading request body: {e}")),
    };
    let upstream = shared
        .client
        .request(parts.method, url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    match upstream {
        Ok(upstream) => relay(upstream).await,
        Err(e) => error_response_with(502, &format!("registry unreachable: {e}")),
    }
}

/// Copies the registry's status, headers (including `Content-Length`, also for HEAD) and body.
async fn relay(upstream: reqwest::Response) -> Response<ProxyBody> {
    let status = upstream.status();
    let headers = upstream.headers().clone();
    let body = match upstream.bytes().await {
        Ok(body) => body,
        Err(e) => return error_response_with(502, &format!("reading registry body: {e}")),
    };
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if forwardable(name) {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}

/// Keeps the announced `Content-Length` but sends half the body, then aborts the connection.
fn truncate(response: Response<ProxyBody>) -> Response<ProxyBody> {
    let (parts, body) = response.into_parts();
    let full = body.data.unwrap_or_default();
    let half = full.slice(..full.len() / 2);
    Response::from_parts(parts, ProxyBody::truncated(half))
}

fn error_response(status: u16, retry_after: Option<u64>) -> Response<ProxyBody> {
    let mut response = error_response_with(status, "injected by the archgate test proxy");
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header_value(&seconds.to_string()));
    }
    response
}

/// A distribution-shaped JSON error, so clients parse it as they would a real registry's.
fn error_response_with(status: u16, message: &str) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(status).expect("valid HTTP status");
    let code = match status {
        StatusCode::TOO_MANY_REQUESTS => "TOOMANYREQUESTS",
        StatusCode::UNAUTHORIZED => "UNAUTHORIZED",
        _ => "UNKNOWN",
    };
    let body = serde_json::to_vec(&serde_json::json!({
        "errors": [{ "code": code, "message": message }]
    }))
    .expect("serialize error body");
    let mut response = Response::new(ProxyBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn header_value(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).expect("valid header value")
}

/// Reads a whole request body (registry requests are small: manifests and test blobs).
async fn collect(mut body: Incoming) -> Result<Bytes, hyper::Error> {
    let mut buffer = Vec::new();
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        if let Ok(data) = frame?.into_data() {
            buffer.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buffer))
}

/// A response body already in memory, optionally failing after it to cut the connection
/// mid-message (the [`Fault::Truncate`] case).
struct ProxyBody {
    data: Option<Bytes>,
    /// For a truncated body: a short pause after the partial data, then an error. The pause lets
    /// hyper flush the head and the partial data first; erroring at once would drop them unsent.
    cut: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ProxyBody {
    fn full(data: Bytes) -> Self {
        Self {
            data: Some(data),
            cut: None,
        }
    }

    fn truncated(data: Bytes) -> Self {
        Self {
            data: Some(data),
            cut: Some(Box::pin(tokio::time::sleep(Duration::from_millis(50)))),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        let Some(cut) = self.cut.as_mut() else {
            return Poll::Ready(None);
        };
        ready!(cut.as_mut().poll(cx));
        self.cut = None;
        let error = io::Error::new(io::ErrorKind::ConnectionAborted, "truncated by fault");
        Poll::Ready(Some(Err(error)))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.cut.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.data, &self.cut) {
            // Unknown length for a truncated body: hyper must use the upstream Content-Length.
            (_, Some(_)) => SizeHint::default(),
            (Some(data), None) => SizeHint::with_exact(data.len() as u64),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}
