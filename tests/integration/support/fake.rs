//! F: a stateful fake confab backend for the integration tests (acceptance.md §Z, protocol.md).
//!
//! It speaks the real wire protocol (routes, status codes, text/plain vs JSON error forms, size
//! limits, contiguity, ownership) and adds what a real backend cannot: runtime knobs (faults,
//! held responses, rollbacks, rate limits) and observations (request log, violation log, the
//! "ideal file" per (session, file), a read-back merge of stored chunk objects).
//!
//! Invariants:
//! - Everything the real backend would accept but the protocol forbids ("strict" items Z11–Z17, plus
//!   "a chunk for a file whose outcome is unknown to the client, sent without a refresh") is written
//!   to the violation log; the request is still answered as the real backend would.
//! - Each request is processed in its own task, so a client that disconnects (timeout, kill) does
//!   not cancel a commit: like the real backend, work that started finishes.
//! - Each accepted line is stored once (shared `Arc` between the ideal file and the chunk object), so
//!   tens of MB can flow through without copies; recorded request bodies above
//!   [`Fake::set_record_body_limit`] have their `lines` elided.
//! - Connections are dropped without writing a byte (no status line) through a per-connection kill
//!   switch in the listener's IO type, so a client sees a transport error, never a partial response.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{patch, post};
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// The key every test config uses; known to F for user [`DEFAULT_USER`].
pub const API_KEY: &str = "test-api-key-12345678";
pub const DEFAULT_USER: &str = "u1";
pub const PROVIDER: &str = "claude-code";
/// Decompressed body limit of init and event (protocol.md §4).
pub const SMALL_BODY_LIMIT: usize = 131_072;
/// Decompressed body limit of a chunk (protocol.md §4).
pub const CHUNK_BODY_LIMIT: usize = 16_777_216;
/// Highest line number the backend can store (8 digits).
pub const MAX_LINE_NUMBER: u64 = 99_999_999;
pub const DEFAULT_CHUNK_CAP: usize = 30_000;
pub const RATE_LIMIT_MESSAGE: &str = "Rate limit exceeded. Please try again later.";
/// Default for [`Fake::set_record_body_limit`].
pub const DEFAULT_RECORD_BODY_LIMIT: usize = 1024 * 1024;
/// Bodies bigger than this on the wire are refused before decoding (far above every real limit).
const WIRE_LIMIT: usize = 64 * 1024 * 1024;

/// Which route a knob applies to. `Any` matches all four.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    Init,
    Chunk,
    Event,
    Summary,
    Any,
}

impl Route {
    fn matches(self, actual: Route) -> bool {
        self == Route::Any || self == actual
    }

    fn is_sync(self) -> bool {
        matches!(self, Route::Init | Route::Chunk | Route::Event)
    }

    fn body_limit(self) -> usize {
        if self == Route::Chunk {
            CHUNK_BODY_LIMIT
        } else {
            SMALL_BODY_LIMIT
        }
    }

    fn invalid_body_message(self) -> &'static str {
        if self == Route::Event {
            "Invalid JSON body"
        } else {
            "Invalid request body"
        }
    }
}

/// How many requests a knob applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Times {
    Next(u32),
    Always,
}

impl Times {
    fn live(self) -> bool {
        self != Times::Next(0)
    }

    fn consume(&mut self) {
        if let Times::Next(n) = self {
            *n = n.saturating_sub(1);
        }
    }
}

/// Injected failures (Z19). "Pre" faults replace processing after the body is decoded; "post"
/// faults (`OrphanThen500`, `CommitThen500`, `DropAfterCommit`, `WrongLastSyncedLine`) fire only
/// when a request reaches its commit, so an invalid request does not consume them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 500 `Failed to upload chunk`, nothing stored.
    Status500BeforeStore,
    /// Chunk: lines stored as an object, position unchanged, 500 `Failed to update sync state`.
    OrphanThen500,
    /// Committed, then 500 `Internal server error`.
    CommitThen500,
    /// Committed, then the connection is dropped without a response.
    DropAfterCommit,
    /// 503 `Storage temporarily unavailable`.
    Status503,
    /// 404 `File not found in storage`.
    FileNotFoundInStorage404,
    /// 403 `Storage access denied`.
    StorageAccessDenied403,
    /// 404 `Session not found` without looking anything up.
    SessionNotFound404,
    /// 429 text/plain (with Retry-After if [`Fake::set_retry_after`] set one).
    Status429,
    /// 400 with a message no client special-cases.
    Generic400,
    /// 400 `Invalid request body` (event: `Invalid JSON body`).
    InvalidBody400,
    /// Chunk: committed, but the response's `last_synced_line` is off by this delta.
    WrongLastSyncedLine(i64),
    /// The connection is dropped before processing: nothing is stored.
    CloseConnection,
}

impl Fault {
    fn is_post(&self) -> bool {
        matches!(
            self,
            Fault::OrphanThen500
                | Fault::CommitThen500
                | Fault::DropAfterCommit
                | Fault::WrongLastSyncedLine(_)
        )
    }
}

/// One request as F saw it. Bodies are the decoded JSON; `headers` never holds `Authorization`.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub index: usize,
    pub method: String,
    pub path: String,
    pub route: Option<Route>,
    /// Lower-case names, in arrival order, without `authorization`.
    pub headers: Vec<(String, String)>,
    /// Body bytes as received (compressed if it was).
    pub wire_size: usize,
    /// Decoded body bytes (0 when decoding failed or was not attempted).
    pub json_size: usize,
    /// Decoded JSON body, if it parsed. Above the record limit, `lines` holds
    /// `"<elided N bytes>"` strings (same count) and `body_elided` is set.
    pub body: Option<Value>,
    pub body_elided: bool,
    /// Final status; 0 while pending and for dropped connections.
    pub status: u16,
    pub response_body: String,
    pub dropped: bool,
    /// The client went away (timeout, kill, reset) before F answered; processing went on.
    pub client_gone: bool,
    pub fault: Option<Fault>,
    /// The user the key resolved to, if auth succeeded.
    pub user: Option<String>,
    key_sha256: Option<[u8; 32]>,
    pub started: Instant,
    pub finished: Option<Instant>,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the `Authorization` header was exactly `Bearer <key>` (the key itself is not kept).
    pub fn used_key(&self, key: &str) -> bool {
        self.key_sha256 == Some(sha256(key))
    }

    pub fn is_chunk(&self) -> bool {
        self.route == Some(Route::Chunk)
    }

    pub fn first_line(&self) -> Option<u64> {
        self.body.as_ref()?.get("first_line")?.as_u64()
    }

    pub fn line_count(&self) -> Option<usize> {
        Some(self.body.as_ref()?.get("lines")?.as_array()?.len())
    }

    pub fn file_name(&self) -> Option<&str> {
        self.body.as_ref()?.get("file_name")?.as_str()
    }

    pub fn done(&self) -> bool {
        self.finished.is_some()
    }
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

// ---------------------------------------------------------------------------------------------
// State

struct Shared {
    inner: Mutex<Inner>,
    notify: Notify,
    /// Kill switches of open connections, so that stopping F also ends keep-alive connections.
    conns: Mutex<Vec<std::sync::Weak<AtomicBool>>>,
    stopped: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.notify.notify_waiters();
    }
}

/// A run of accepted lines: `lines[..len]` are lines `first..first+len`.
#[derive(Clone)]
struct Segment {
    first: u64,
    lines: Arc<Vec<String>>,
    len: usize,
}

#[derive(Default)]
struct FileState {
    file_type: Option<String>,
    /// Lines `1..=base` were set by a preset and have no known content.
    base: u64,
    segments: Vec<Segment>,
    position: u64,
    /// Stored chunk objects incl. orphans, keyed like the real object names (first, last).
    objects: BTreeMap<(u64, u64), Arc<Vec<String>>>,
    chunks_accepted: usize,
}

impl FileState {
    fn ideal_lines(&self) -> Vec<String> {
        self.segments
            .iter()
            .flat_map(|s| s.lines[..s.len].iter().cloned())
            .collect()
    }

    fn merged_lines(&self) -> Vec<String> {
        let max = self.objects.keys().map(|k| k.1).max().unwrap_or(0);
        if max <= self.base {
            return Vec::new();
        }
        let mut out: Vec<Option<&String>> = vec![None; (max - self.base) as usize];
        for (&(first, _), lines) in &self.objects {
            for (i, l) in lines.iter().enumerate() {
                let n = first + i as u64;
                if n > self.base {
                    out[(n - self.base - 1) as usize] = Some(l);
                }
            }
        }
        out.into_iter()
            .enumerate()
            .map(|(i, l)| match l {
                Some(l) => l.clone(),
                None => format!("<<missing line {}>>", self.base + 1 + i as u64),
            })
            .collect()
    }

    /// Lowers the position to `n`, cutting accepted lines and stored objects above it.
    fn truncate(&mut self, n: u64) {
        if n >= self.position {
            return;
        }
        if n < self.base {
            self.base = n;
        }
        self.segments.retain(|s| s.first <= n);
        if let Some(last) = self.segments.last_mut() {
            last.len = last.len.min((n + 1 - last.first) as usize);
        }
        let objects = std::mem::take(&mut self.objects);
        for ((first, last), lines) in objects {
            if first > n {
                continue;
            }
            if last <= n {
                self.objects.insert((first, last), lines);
            } else {
                let keep = (n + 1 - first) as usize;
                self.objects
                    .insert((first, n), Arc::new(lines[..keep].to_vec()));
            }
        }
        self.position = n;
    }
}

/// Per (session, file) facts about what the client was told, for Z17 and the refresh rule.
#[derive(Default)]
struct Track {
    /// Highest line acknowledged with a correct 200 (lowered by rollbacks and presets).
    acked_through: u64,
    /// Why the client must refresh (init) before its next chunk for this file.
    needs_refresh: Option<String>,
}

struct Session {
    id: String,
    user: String,
    provider: String,
    external_id: String,
    deleted: bool,
    cwd: Option<String>,
    transcript_path: String,
    files: BTreeMap<String, FileState>,
    track: HashMap<String, Track>,
    summary: Option<String>,
    first_user_message: Option<String>,
}

impl Session {
    fn new(id: String, user: &str, provider: &str, external_id: &str) -> Self {
        Session {
            id,
            user: user.to_string(),
            provider: provider.to_string(),
            external_id: external_id.to_string(),
            deleted: false,
            cwd: None,
            transcript_path: String::new(),
            files: BTreeMap::new(),
            track: HashMap::new(),
            summary: None,
            first_user_message: None,
        }
    }
}

struct ArmedFault {
    route: Route,
    fault: Fault,
    times: Times,
}

struct ArmedHold {
    route: Route,
    delay: Duration,
    times: Times,
    before_commit: bool,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

struct RateLimits {
    user_burst: u32,
    user_rate: f64,
    ip_burst: u32,
    ip_rate: f64,
    users: HashMap<String, Bucket>,
    ips: HashMap<IpAddr, Bucket>,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            user_burst: 2000,
            user_rate: 2.78,
            ip_burst: 200,
            ip_rate: 100.0,
            users: HashMap::new(),
            ips: HashMap::new(),
        }
    }
}

fn take_token(bucket: &mut Bucket, burst: u32, rate: f64) -> bool {
    let now = Instant::now();
    let elapsed = now.duration_since(bucket.last).as_secs_f64();
    bucket.tokens = (bucket.tokens + elapsed * rate).min(burst as f64);
    bucket.last = now;
    if bucket.tokens >= 1.0 {
        bucket.tokens -= 1.0;
        true
    } else {
        false
    }
}

impl RateLimits {
    fn take_ip(&mut self, ip: IpAddr) -> bool {
        let burst = self.ip_burst;
        let b = self.ips.entry(ip).or_insert_with(|| Bucket {
            tokens: burst as f64,
            last: Instant::now(),
        });
        take_token(b, burst, self.ip_rate)
    }

    fn take_user(&mut self, user: &str) -> bool {
        let burst = self.user_burst;
        let b = self
            .users
            .entry(user.to_string())
            .or_insert_with(|| Bucket {
                tokens: burst as f64,
                last: Instant::now(),
            });
        take_token(b, burst, self.user_rate)
    }
}

struct Inner {
    keys: HashMap<String, String>,
    deactivated: HashSet<String>,
    read_only: HashSet<String>,
    sessions: HashMap<String, Session>,
    /// (user, provider, external_id) → live session id.
    by_identity: HashMap<(String, String, String), String>,
    /// external_id → the most recently created live session id (for observations).
    latest_by_ext: HashMap<String, String>,
    faults: Vec<ArmedFault>,
    holds: Vec<ArmedHold>,
    retry_after: Option<String>,
    chunk_cap: usize,
    limits: RateLimits,
    record_body_limit: Option<usize>,
    requests: Vec<RecordedRequest>,
    violations: Vec<String>,
    events: Vec<Value>,
    summaries: Vec<(String, String)>,
    in_flight_files: HashMap<(String, String), usize>,
    in_flight: usize,
    peak: usize,
}

impl Inner {
    fn new() -> Self {
        let mut keys = HashMap::new();
        keys.insert(API_KEY.to_string(), DEFAULT_USER.to_string());
        Inner {
            keys,
            deactivated: HashSet::new(),
            read_only: HashSet::new(),
            sessions: HashMap::new(),
            by_identity: HashMap::new(),
            latest_by_ext: HashMap::new(),
            faults: Vec::new(),
            holds: Vec::new(),
            retry_after: None,
            chunk_cap: DEFAULT_CHUNK_CAP,
            limits: RateLimits::default(),
            record_body_limit: Some(DEFAULT_RECORD_BODY_LIMIT),
            requests: Vec::new(),
            violations: Vec::new(),
            events: Vec::new(),
            summaries: Vec::new(),
            in_flight_files: HashMap::new(),
            in_flight: 0,
            peak: 0,
        }
    }

    fn violation(&mut self, idx: Option<usize>, msg: String) {
        let prefix = match idx.and_then(|i| self.requests.get(i)) {
            Some(r) => format!("#{} {} {}: ", r.index, r.method, r.path),
            None => String::new(),
        };
        self.violations.push(format!("{prefix}{msg}"));
    }

    /// The first live fault for `route`; it fires only if its stage matches (queue order is kept).
    fn take_fault(&mut self, route: Route, post: bool) -> Option<Fault> {
        let pos = self
            .faults
            .iter()
            .position(|f| f.route.matches(route) && f.times.live())?;
        if self.faults[pos].fault.is_post() != post {
            return None;
        }
        let armed = &mut self.faults[pos];
        armed.times.consume();
        let fault = armed.fault.clone();
        if !armed.times.live() {
            self.faults.remove(pos);
        }
        Some(fault)
    }

    fn take_hold(&mut self, route: Route, before_commit: bool) -> Option<Duration> {
        let pos = self.holds.iter().position(|h| {
            h.route.matches(route) && h.times.live() && h.before_commit == before_commit
        })?;
        let armed = &mut self.holds[pos];
        armed.times.consume();
        let delay = armed.delay;
        if !armed.times.live() {
            self.holds.remove(pos);
        }
        Some(delay)
    }

    fn new_session_id() -> String {
        use rand::Rng;
        let mut r = rand::thread_rng();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            r.gen::<u32>(),
            r.gen::<u16>(),
            r.gen::<u16>() & 0x0fff,
            (r.gen::<u16>() & 0x3fff) | 0x8000,
            r.gen::<u64>() & 0xffff_ffff_ffff
        )
    }

    fn live_session_for(&mut self, user: &str, provider: &str, external_id: &str) -> String {
        let key = (
            user.to_string(),
            provider.to_string(),
            external_id.to_string(),
        );
        if let Some(id) = self.by_identity.get(&key) {
            return id.clone();
        }
        let id = Self::new_session_id();
        self.sessions.insert(
            id.clone(),
            Session::new(id.clone(), user, provider, external_id),
        );
        self.by_identity.insert(key, id.clone());
        self.latest_by_ext
            .insert(external_id.to_string(), id.clone());
        id
    }

    fn session_by_ext(&self, external_id: &str) -> Option<&Session> {
        self.sessions.get(self.latest_by_ext.get(external_id)?)
    }

    fn session_by_ext_mut(&mut self, external_id: &str) -> Option<&mut Session> {
        let id = self.latest_by_ext.get(external_id)?.clone();
        self.sessions.get_mut(&id)
    }

    /// Exact lookup, else a lookup the real backend's UUID parsing would also succeed with (Z16).
    fn resolve_session(&self, sent: &str) -> Option<(String, bool)> {
        if self.sessions.contains_key(sent) {
            return Some((sent.to_string(), true));
        }
        let norm = normalize_uuid(sent)?;
        self.sessions
            .keys()
            .find(|id| normalize_uuid(id).as_deref() == Some(norm.as_str()))
            .map(|id| (id.clone(), false))
    }

    fn record_violation_for_session(&mut self, idx: usize, sent: &str) -> Option<String> {
        let (id, exact) = self.resolve_session(sent)?;
        if !exact {
            self.violation(
                Some(idx),
                format!("Z16 session_id {sent:?} is not byte-identical to {id:?}"),
            );
        }
        Some(id)
    }
}

/// Canonical 32-hex form of what Go's uuid.Parse accepts, or None.
fn normalize_uuid(s: &str) -> Option<String> {
    let lower = s.to_ascii_lowercase();
    let t = lower.strip_prefix("urn:uuid:").unwrap_or(&lower);
    let t = t
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(t);
    let hex: String = t.chars().filter(|c| *c != '-').collect();
    (hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex)
}

// ---------------------------------------------------------------------------------------------
// Connections that can be dropped without a response

/// Per-connection info handed to handlers; `kill` makes the connection's IO fail.
#[derive(Clone, Debug)]
struct ConnMeta {
    peer: SocketAddr,
    kill: Arc<AtomicBool>,
}

impl Connected<IncomingStream<'_, KillListener>> for ConnMeta {
    fn connect_info(stream: IncomingStream<'_, KillListener>) -> Self {
        stream.remote_addr().clone()
    }
}

struct KillListener(TcpListener, Arc<Shared>);

impl Listener for KillListener {
    type Io = KillableStream;
    type Addr = ConnMeta;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let kill = Arc::new(AtomicBool::new(false));
                    let mut conns = self.1.conns.lock().unwrap_or_else(|e| e.into_inner());
                    conns.retain(|w| w.strong_count() > 0);
                    conns.push(Arc::downgrade(&kill));
                    drop(conns);
                    let io = KillableStream {
                        inner: stream,
                        kill: kill.clone(),
                    };
                    return (io, ConnMeta { peer, kill });
                }
                // Out of file descriptors and the like: wait instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(ConnMeta {
            peer: self.0.local_addr()?,
            kill: Arc::default(),
        })
    }
}

/// A TCP stream whose reads and writes fail once `kill` is set, so hyper drops the connection
/// before writing the response.
struct KillableStream {
    inner: TcpStream,
    kill: Arc<AtomicBool>,
}

fn killed_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "fake dropped connection",
    )
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.kill.load(Ordering::SeqCst) {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.kill.load(Ordering::SeqCst) {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.kill.load(Ordering::SeqCst) {
            return Poll::Ready(Err(killed_error()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// Responses

/// What a request ends with; built by processing, turned into a response by the handler.
struct Outcome {
    status: u16,
    json: bool,
    body: String,
    retry_after: Option<String>,
    drop_conn: bool,
}

impl Outcome {
    fn json(status: u16, value: Value) -> Self {
        Outcome {
            status,
            json: true,
            body: format!("{value}\n"),
            retry_after: None,
            drop_conn: false,
        }
    }

    fn error(status: u16, msg: &str) -> Self {
        Self::json(status, json!({ "error": msg }))
    }

    fn text(status: u16, msg: &str) -> Self {
        Outcome {
            status,
            json: false,
            body: format!("{msg}\n"),
            retry_after: None,
            drop_conn: false,
        }
    }

    fn dropped() -> Self {
        Outcome {
            status: 0,
            json: false,
            body: String::new(),
            retry_after: None,
            drop_conn: true,
        }
    }

    fn rate_limited(retry_after: Option<String>) -> Self {
        Outcome {
            retry_after,
            ..Self::text(429, RATE_LIMIT_MESSAGE)
        }
    }

    fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    fn into_response(self) -> Response {
        let content_type = if self.json {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        };
        let mut resp = Response::new(Body::from(self.body));
        *resp.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some(v) = self
            .retry_after
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

fn fault_outcome(route: Route, fault: &Fault, retry_after: Option<String>) -> Outcome {
    match fault {
        Fault::Status500BeforeStore => Outcome::error(
            500,
            match route {
                Route::Init => "Failed to create session",
                Route::Event => "Failed to record event",
                Route::Summary => "Failed to update summary",
                Route::Chunk | Route::Any => "Failed to upload chunk",
            },
        ),
        Fault::OrphanThen500 => Outcome::error(500, "Failed to update sync state"),
        Fault::CommitThen500 => Outcome::error(500, "Internal server error"),
        Fault::DropAfterCommit | Fault::CloseConnection => Outcome::dropped(),
        Fault::Status503 => Outcome::error(503, "Storage temporarily unavailable"),
        Fault::FileNotFoundInStorage404 => Outcome::error(404, "File not found in storage"),
        Fault::StorageAccessDenied403 => Outcome::error(403, "Storage access denied"),
        Fault::SessionNotFound404 => Outcome::error(404, "Session not found"),
        Fault::Status429 => Outcome::rate_limited(retry_after),
        Fault::Generic400 => Outcome::error(400, "injected validation failure"),
        Fault::InvalidBody400 => Outcome::error(400, route.invalid_body_message()),
        // Only meaningful on a chunk commit; elsewhere it has no effect.
        Fault::WrongLastSyncedLine(_) => Outcome::error(500, "Internal server error"),
    }
}

// ---------------------------------------------------------------------------------------------
// Guards

/// Counts a request as in flight (global peak) while the client is waiting for it.
struct GlobalGuard(Arc<Shared>);

impl GlobalGuard {
    fn new(shared: &Arc<Shared>) -> Self {
        let mut g = shared.lock();
        g.in_flight += 1;
        g.peak = g.peak.max(g.in_flight);
        drop(g);
        GlobalGuard(shared.clone())
    }
}

impl Drop for GlobalGuard {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
        self.0.changed();
    }
}

/// Z15: a chunk being processed for (session, file); a second one at the same time is a violation.
struct FileGuard {
    shared: Arc<Shared>,
    key: (String, String),
}

impl FileGuard {
    fn new(shared: &Arc<Shared>, idx: usize, session_id: &str, file_name: &str) -> Self {
        let key = (session_id.to_string(), file_name.to_string());
        let mut g = shared.lock();
        let n = g.in_flight_files.entry(key.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            let n = *n;
            g.violation(
                Some(idx),
                format!("Z15 {n} requests in flight at once for session {session_id:?} file {file_name:?}"),
            );
        }
        FileGuard {
            shared: shared.clone(),
            key,
        }
    }
}

impl Drop for FileGuard {
    fn drop(&mut self) {
        let mut g = self.shared.lock();
        if let Some(n) = g.in_flight_files.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                g.in_flight_files.remove(&self.key);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request bodies (Go semantics: unknown keys ignored, missing = zero value, wrong type = error)

#[derive(Deserialize)]
struct InitMeta {
    cwd: Option<String>,
    git_info: Option<Value>,
    hostname: Option<String>,
    username: Option<String>,
}

#[derive(Deserialize)]
struct InitReq {
    external_id: Option<String>,
    transcript_path: Option<String>,
    provider: Option<String>,
    metadata: Option<InitMeta>,
}

#[derive(Deserialize)]
struct ChunkMeta {
    git_info: Option<Value>,
    summary: Option<String>,
    first_user_message: Option<String>,
}

#[derive(Deserialize)]
struct ChunkReq {
    session_id: Option<String>,
    file_name: Option<String>,
    file_type: Option<String>,
    first_line: Option<i64>,
    lines: Option<Vec<String>>,
    metadata: Option<ChunkMeta>,
}

#[derive(Deserialize)]
struct EventReq {
    session_id: Option<String>,
    event_type: Option<String>,
    timestamp: Option<String>,
    payload: Option<Value>,
}

#[derive(Deserialize)]
struct SummaryReq {
    summary: Option<String>,
}

fn has_nul(s: &str) -> bool {
    s.contains('\0')
}

fn value_has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => has_nul(s),
        Value::Array(a) => a.iter().any(value_has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| has_nul(k) || value_has_nul(v)),
        _ => false,
    }
}

fn too_long(field: &str, max: usize) -> Outcome {
    Outcome::error(
        400,
        &format!("{field} exceeds maximum length of {max} characters"),
    )
}

// ---------------------------------------------------------------------------------------------
// Pipeline

enum Decoded {
    Json(Vec<u8>),
    TooLarge(usize),
    Corrupt,
}

/// Streaming zstd decode (concatenated frames, frames without content size), capped at `limit`.
fn decode_body(bytes: &[u8], zstd: bool, limit: usize) -> Decoded {
    if !zstd {
        return if bytes.len() > limit {
            Decoded::TooLarge(bytes.len())
        } else {
            Decoded::Json(bytes.to_vec())
        };
    }
    let Ok(decoder) = zstd::stream::read::Decoder::new(bytes) else {
        return Decoded::Corrupt;
    };
    let mut out = Vec::new();
    match decoder.take(limit as u64 + 1).read_to_end(&mut out) {
        Ok(_) if out.len() > limit => Decoded::TooLarge(out.len()),
        Ok(_) => Decoded::Json(out),
        Err(_) => Decoded::Corrupt,
    }
}

/// protocol.md §1: a compressed body is one zstd frame with the content size in its header.
fn frame_issue(wire: &[u8], json_len: usize) -> Option<String> {
    use zstd::zstd_safe;
    if zstd_safe::find_frame_compressed_size(wire).ok() != Some(wire.len()) {
        return Some("compressed body is not exactly one zstd frame".to_string());
    }
    match zstd_safe::get_frame_content_size(wire) {
        Ok(Some(n)) if n == json_len as u64 => None,
        Ok(Some(n)) => Some(format!(
            "zstd frame content size {n} != {json_len} B decoded"
        )),
        _ => Some("zstd frame header lacks the content size".to_string()),
    }
}

/// protocol.md §1: JSON of 1,024 B or more goes as zstd, smaller JSON goes plain.
fn compression_issue(wire: &[u8], json_len: usize, zstd: bool) -> Option<String> {
    match (zstd, json_len >= 1024) {
        (true, true) => frame_issue(wire, json_len),
        (false, false) => None,
        (true, false) => Some(format!(
            "{json_len} B of JSON compressed (threshold 1024 B)"
        )),
        (false, true) => Some(format!(
            "{json_len} B of JSON sent uncompressed (threshold 1024 B)"
        )),
    }
}

fn user_agent_issue(headers: &HeaderMap) -> Option<String> {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(r"^confab-sync/[^ ]+ \((linux|darwin|[a-z]+); [a-z0-9_]+\)$")
            .expect("user agent regex")
    });
    let ua = headers
        .get(header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match ua {
        Some(ua) if re.is_match(&ua) => None,
        other => Some(format!(
            "User-Agent {other:?} does not match protocol.md §1"
        )),
    }
}

/// The recorded form of a body: `lines` elided when the decoded body is over `limit`.
fn recorded_body(mut v: Value, json_size: usize, limit: Option<usize>) -> (Value, bool) {
    if limit.is_none_or(|l| json_size <= l) {
        return (v, false);
    }
    let mut elided = false;
    if let Some(Value::Array(lines)) = v.get_mut("lines") {
        for l in lines.iter_mut() {
            let n = l.as_str().map_or(0, str::len);
            *l = Value::String(format!("<elided {n} bytes>"));
        }
        elided = true;
    }
    (v, elided)
}

fn check_content_type(headers: &HeaderMap) -> Result<(), &'static str> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Err("Content-Type header required");
    };
    let media = v
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media == "application/json" {
        Ok(())
    } else {
        Err("Content-Type must be application/json")
    }
}

enum Auth {
    User(String, [u8; 32]),
    Fail(Outcome),
}

fn authenticate(inner: &Inner, headers: &HeaderMap) -> Auth {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Auth::Fail(Outcome::text(401, "Missing Authorization header"));
    };
    let Ok(v) = v.to_str() else {
        return Auth::Fail(Outcome::text(401, "Invalid Authorization header format"));
    };
    let Some(("Bearer", key)) = v.split_once(' ') else {
        return Auth::Fail(Outcome::text(401, "Invalid Authorization header format"));
    };
    let Some(user) = inner.keys.get(key) else {
        return Auth::Fail(Outcome::text(401, "Invalid API key"));
    };
    if inner.deactivated.contains(user) {
        return Auth::Fail(Outcome::text(403, "Account deactivated"));
    }
    Auth::User(user.clone(), sha256(key))
}

type AppState = Arc<Shared>;

async fn handle(
    route: Route,
    shared: AppState,
    conn: ConnMeta,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let _global = GlobalGuard::new(&shared);
    let started = Instant::now();
    let bytes = axum::body::to_bytes(body, WIRE_LIMIT).await;
    let wire_size = bytes.as_ref().map_or(0, Bytes::len);
    let idx = {
        let mut g = shared.lock();
        let idx = g.requests.len();
        g.requests.push(RecordedRequest {
            index: idx,
            method: method.to_string(),
            path: uri.path().to_string(),
            route: Some(route),
            headers: headers
                .iter()
                .filter(|(n, _)| *n != header::AUTHORIZATION)
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            wire_size,
            json_size: 0,
            body: None,
            body_elided: false,
            status: 0,
            response_body: String::new(),
            dropped: false,
            client_gone: false,
            fault: None,
            user: None,
            key_sha256: None,
            started,
            finished: None,
        });
        idx
    };
    shared.changed();
    let mut watch = ClientWatch {
        shared: shared.clone(),
        idx,
        armed: true,
    };
    let outcome = match bytes {
        _ if shared.stopped.load(Ordering::SeqCst) => Outcome::dropped(),
        Err(_) => Outcome::error(400, route.invalid_body_message()),
        Ok(bytes) => {
            // A separate task, which also completes the record: a client that goes away does
            // not cancel a commit.
            let sh = shared.clone();
            let path = uri.path().to_string();
            let task = tokio::spawn(async move {
                let o = process(&sh, route, idx, conn.peer.ip(), &headers, bytes, &path).await;
                finish_record(&sh, idx, &o);
                o
            });
            let outcome = task
                .await
                .unwrap_or_else(|_| Outcome::error(500, "fake backend task panicked"));
            watch.armed = false;
            return respond(&conn, outcome);
        }
    };
    watch.armed = false;
    finish_record(&shared, idx, &outcome);
    respond(&conn, outcome)
}

/// Marks the record `client_gone` if hyper drops the handler (the client disconnected) first.
struct ClientWatch {
    shared: Arc<Shared>,
    idx: usize,
    armed: bool,
}

impl Drop for ClientWatch {
    fn drop(&mut self) {
        if self.armed {
            self.shared.lock().requests[self.idx].client_gone = true;
            self.shared.changed();
        }
    }
}

fn finish_record(shared: &Shared, idx: usize, outcome: &Outcome) {
    {
        let mut g = shared.lock();
        let r = &mut g.requests[idx];
        r.status = outcome.status;
        r.response_body = outcome.body.clone();
        r.dropped = outcome.drop_conn;
        r.finished = Some(Instant::now());
    }
    shared.changed();
}

fn respond(conn: &ConnMeta, outcome: Outcome) -> Response {
    if outcome.drop_conn {
        conn.kill.store(true, Ordering::SeqCst);
    }
    outcome.into_response()
}

/// Middleware-equivalent checks, then the route. Order: IP rate limit, Content-Type, auth, user
/// rate limit, read-only, Content-Encoding, decode.
async fn process(
    sh: &Arc<Shared>,
    route: Route,
    idx: usize,
    ip: IpAddr,
    headers: &HeaderMap,
    bytes: Bytes,
    path: &str,
) -> Outcome {
    let retry_after = {
        let mut g = sh.lock();
        if let Some(issue) = user_agent_issue(headers) {
            g.violation(Some(idx), issue);
        }
        let retry_after = g.retry_after.clone();
        if !g.limits.take_ip(ip) {
            return Outcome::rate_limited(retry_after);
        }
        retry_after
    };
    if let Err(msg) = check_content_type(headers) {
        return Outcome::text(415, msg);
    }
    let user = {
        let mut g = sh.lock();
        let user = match authenticate(&g, headers) {
            Auth::Fail(o) => return o,
            Auth::User(u, key) => {
                g.requests[idx].user = Some(u.clone());
                g.requests[idx].key_sha256 = Some(key);
                u
            }
        };
        if route.is_sync() && !g.limits.take_user(&user) {
            return Outcome::rate_limited(retry_after);
        }
        if g.read_only.contains(&user) {
            return Outcome::json(
                403,
                json!({"error": "read_only_user", "message": "This identity is read-only."}),
            );
        }
        user
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let zstd = match (&encoding, route) {
        (None, _) => false,
        (Some(enc), Route::Summary) => {
            sh.lock().violation(
                Some(idx),
                format!(
                    "PATCH summary sent with Content-Encoding {enc:?} (must never be compressed)"
                ),
            );
            return Outcome::error(400, "Invalid request body");
        }
        (Some(enc), _) if enc.eq_ignore_ascii_case("zstd") => true,
        (Some(enc), _) => {
            return Outcome::error(415, &format!("Unsupported Content-Encoding: {enc}"));
        }
    };
    let limit = route.body_limit();
    let wire = bytes.len();
    let decoded = tokio::task::spawn_blocking(move || {
        let d = decode_body(&bytes, zstd, limit);
        let issue = match &d {
            Decoded::Json(j) if route.is_sync() => compression_issue(&bytes, j.len(), zstd),
            _ => None,
        };
        (d, issue)
    })
    .await
    .unwrap_or((Decoded::Corrupt, None));
    let json = match decoded {
        (Decoded::Json(j), issue) => {
            if let Some(issue) = issue {
                sh.lock()
                    .violation(Some(idx), format!("compression: {issue}"));
            }
            j
        }
        (Decoded::Corrupt, _) => return Outcome::error(400, route.invalid_body_message()),
        (Decoded::TooLarge(n), _) => {
            sh.lock().violation(
                Some(idx),
                format!("Z4 body over the {limit} B limit: decoded at least {n} B, {wire} B on the wire"),
            );
            return Outcome::error(400, route.invalid_body_message());
        }
    };
    let record_limit = sh.lock().record_body_limit;
    let json = Arc::new(json);
    let parsed = {
        let json = json.clone();
        tokio::task::spawn_blocking(move || {
            serde_json::from_slice::<Value>(&json)
                .ok()
                .map(|v| recorded_body(v, json.len(), record_limit))
        })
        .await
        .ok()
        .flatten()
    };
    {
        let mut g = sh.lock();
        let r = &mut g.requests[idx];
        r.json_size = json.len();
        if let Some((v, elided)) = parsed {
            r.body = Some(v);
            r.body_elided = elided;
        }
    }
    let json = Arc::try_unwrap(json).unwrap_or_else(|a| (*a).clone());
    match route {
        Route::Init => init_route(sh, idx, &user, &json, retry_after).await,
        Route::Chunk => chunk_route(sh, idx, &user, json, retry_after).await,
        Route::Event => event_route(sh, idx, &user, &json, retry_after).await,
        Route::Summary | Route::Any => summary_route(sh, idx, &json, path, retry_after).await,
    }
}

/// Hold-before-commit, then a "pre" fault if one is armed.
async fn pre_stage(
    sh: &Arc<Shared>,
    route: Route,
    idx: usize,
    retry_after: Option<String>,
) -> Option<Outcome> {
    let hold = sh.lock().take_hold(route, true);
    if let Some(d) = hold {
        tokio::time::sleep(d).await;
    }
    let mut g = sh.lock();
    let fault = g.take_fault(route, false)?;
    g.requests[idx].fault = Some(fault.clone());
    Some(fault_outcome(route, &fault, retry_after))
}

async fn post_hold(sh: &Arc<Shared>, route: Route) {
    let hold = sh.lock().take_hold(route, false);
    if let Some(d) = hold {
        tokio::time::sleep(d).await;
    }
}

async fn init_route(
    sh: &Arc<Shared>,
    idx: usize,
    user: &str,
    json: &[u8],
    retry_after: Option<String>,
) -> Outcome {
    let Ok(req) = serde_json::from_slice::<InitReq>(json) else {
        return Outcome::error(400, "Invalid request body");
    };
    if let Some(o) = pre_stage(sh, Route::Init, idx, retry_after).await {
        return o;
    }
    let outcome = sh.lock().init(idx, user, req);
    post_hold(sh, Route::Init).await;
    outcome
}

async fn chunk_route(
    sh: &Arc<Shared>,
    idx: usize,
    user: &str,
    json: Vec<u8>,
    retry_after: Option<String>,
) -> Outcome {
    let parsed = tokio::task::spawn_blocking(move || serde_json::from_slice::<ChunkReq>(&json))
        .await
        .ok()
        .and_then(Result::ok);
    let Some(req) = parsed else {
        return Outcome::error(400, "Invalid request body");
    };
    let sid = req.session_id.clone().unwrap_or_default();
    let fname = req.file_name.clone().unwrap_or_default();
    let guard =
        (!sid.is_empty() && !fname.is_empty()).then(|| FileGuard::new(sh, idx, &sid, &fname));
    sh.lock().chunk_strict_checks(idx, user, &req);
    let outcome = match pre_stage(sh, Route::Chunk, idx, retry_after).await {
        Some(o) => o,
        None => sh.lock().chunk_commit(idx, user, req),
    };
    sh.lock().after_chunk(&sid, &fname, &outcome);
    // A held response after commit is no longer "processing" for the Z15 detector.
    drop(guard);
    post_hold(sh, Route::Chunk).await;
    outcome
}

async fn event_route(
    sh: &Arc<Shared>,
    idx: usize,
    user: &str,
    json: &[u8],
    retry_after: Option<String>,
) -> Outcome {
    let Ok(req) = serde_json::from_slice::<EventReq>(json) else {
        return Outcome::error(400, "Invalid JSON body");
    };
    if let Some(o) = pre_stage(sh, Route::Event, idx, retry_after).await {
        return o;
    }
    let body: Value = serde_json::from_slice(json).unwrap_or(Value::Null);
    let outcome = sh.lock().event(idx, user, req, body);
    post_hold(sh, Route::Event).await;
    outcome
}

async fn summary_route(
    sh: &Arc<Shared>,
    idx: usize,
    json: &[u8],
    path: &str,
    retry_after: Option<String>,
) -> Outcome {
    let Ok(req) = serde_json::from_slice::<SummaryReq>(json) else {
        return Outcome::error(400, "Invalid request body");
    };
    if let Some(o) = pre_stage(sh, Route::Summary, idx, retry_after).await {
        return o;
    }
    let segment = path
        .strip_prefix("/api/v1/sessions/")
        .and_then(|p| p.strip_suffix("/summary"))
        .unwrap_or("");
    let external_id = percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned();
    let outcome = sh.lock().summary(idx, external_id, req);
    post_hold(sh, Route::Summary).await;
    outcome
}

impl Inner {
    fn post_fault_outcome(&mut self, idx: usize, route: Route) -> Option<(Fault, Outcome)> {
        let fault = self.take_fault(route, true)?;
        self.requests[idx].fault = Some(fault.clone());
        let o = fault_outcome(route, &fault, self.retry_after.clone());
        Some((fault, o))
    }

    fn init(&mut self, idx: usize, user: &str, req: InitReq) -> Outcome {
        if req.metadata.is_none() {
            self.violation(
                Some(idx),
                "init without metadata (protocol.md §3.1: always sent)".to_string(),
            );
        }
        if req.provider.is_none() {
            self.violation(
                Some(idx),
                "init without provider (protocol.md §3.1: always sent)".to_string(),
            );
        }
        let external_id = req.external_id.unwrap_or_default();
        let transcript_path = req.transcript_path.unwrap_or_default();
        if external_id.is_empty() {
            return Outcome::error(400, "external_id is required");
        }
        if external_id.len() > 512 {
            return too_long("external_id", 512);
        }
        if transcript_path.is_empty() {
            return Outcome::error(400, "transcript_path is required");
        }
        if transcript_path.len() > 8192 {
            return too_long("transcript_path", 8192);
        }
        let provider = req.provider.unwrap_or_default();
        let provider = if provider.is_empty() {
            PROVIDER.to_string()
        } else {
            provider
        };
        if provider != PROVIDER {
            return Outcome::error(400, &format!("unsupported provider: {provider}"));
        }
        let meta = req.metadata.unwrap_or(InitMeta {
            cwd: None,
            git_info: None,
            hostname: None,
            username: None,
        });
        let caps = [
            ("cwd", &meta.cwd, 8192),
            ("hostname", &meta.hostname, 255),
            ("username", &meta.username, 255),
        ];
        for (field, value, max) in caps {
            if value.as_ref().is_some_and(|v| v.len() > max) {
                return too_long(field, max);
            }
        }
        let nul_fields: Vec<&str> = [
            ("external_id", has_nul(&external_id)),
            ("transcript_path", has_nul(&transcript_path)),
            ("cwd", meta.cwd.as_deref().is_some_and(has_nul)),
            ("hostname", meta.hostname.as_deref().is_some_and(has_nul)),
            ("username", meta.username.as_deref().is_some_and(has_nul)),
            (
                "git_info",
                meta.git_info.as_ref().is_some_and(value_has_nul),
            ),
        ]
        .into_iter()
        .filter_map(|(f, bad)| bad.then_some(f))
        .collect();
        if !nul_fields.is_empty() {
            self.violation(Some(idx), format!("Z14 NUL in init {nul_fields:?}"));
            return Outcome::error(500, "Failed to create session");
        }
        let id = self.live_session_for(user, &provider, &external_id);
        let session = self.sessions.get_mut(&id).expect("live session");
        session.cwd = Some(meta.cwd.unwrap_or_default());
        session.transcript_path = transcript_path;
        for t in session.track.values_mut() {
            t.needs_refresh = None;
        }
        let files: serde_json::Map<String, Value> = session
            .files
            .iter()
            .map(|(name, f)| (name.clone(), json!({ "last_synced_line": f.position })))
            .collect();
        let ok = Outcome::json(
            200,
            json!({ "session_id": id, "provider": provider, "files": files }),
        );
        match self.post_fault_outcome(idx, Route::Init) {
            Some((Fault::CommitThen500 | Fault::DropAfterCommit, o)) => o,
            _ => ok,
        }
    }

    /// Z11–Z13, Z16, Z17 and the refresh rule: recorded only, never change the answer.
    fn chunk_strict_checks(&mut self, idx: usize, user: &str, req: &ChunkReq) {
        let mut found = Vec::new();
        for (i, l) in req.lines.iter().flatten().enumerate() {
            if l.contains('\n') {
                found.push(format!("Z11 lines[{i}] contains \\n"));
            }
            if l.ends_with('\r') {
                found.push(format!("Z11 lines[{i}] ends in \\r"));
            }
        }
        let ftype = req.file_type.as_deref().unwrap_or("");
        if !["transcript", "agent", "workflow_journal"].contains(&ftype) || ftype.len() > 50 {
            found.push(format!("Z12 file_type {ftype:?} is not allowed"));
        }
        match (ftype, req.metadata.is_some()) {
            ("transcript", false) => found
                .push("transcript chunk without a metadata object (protocol.md §3.2)".to_string()),
            ("agent", true) => {
                found.push("agent chunk with a metadata key (protocol.md §3.2)".to_string())
            }
            _ => {}
        }
        let fname = req.file_name.as_deref().unwrap_or("");
        if fname.contains("..")
            || fname.starts_with('/')
            || fname.ends_with('/')
            || fname.contains("//")
            || has_nul(fname)
        {
            found.push(format!(
                "Z13 file_name {fname:?} is not a clean relative name"
            ));
        }
        for msg in found {
            self.violation(Some(idx), msg);
        }
        let Some(sent) = req.session_id.as_deref().filter(|s| !s.is_empty()) else {
            return;
        };
        let Some(sid) = self.record_violation_for_session(idx, sent) else {
            return;
        };
        let mut found = Vec::new();
        let session = self.sessions.get_mut(&sid).expect("resolved session");
        if session.user != user {
            return;
        }
        if let Some(known) = session
            .files
            .get(fname)
            .and_then(|f| f.file_type.as_deref())
        {
            if known != ftype {
                found.push(format!(
                    "Z12 file_type {ftype:?} differs from the first type {known:?} of {fname:?}"
                ));
            }
        }
        for other in session.files.keys() {
            if other != fname
                && (other.starts_with(&format!("{fname}/"))
                    || fname.starts_with(&format!("{other}/")))
            {
                found.push(format!(
                    "Z13 file_name {fname:?} is a path prefix of (or under) {other:?}"
                ));
            }
        }
        let first = req.first_line.unwrap_or(0);
        let track = session.track.entry(fname.to_string()).or_default();
        if let Some(reason) = &track.needs_refresh {
            let z17 = if first == 1 {
                "Z17 resend from line 1: "
            } else {
                ""
            };
            found.push(format!("{z17}chunk for {fname:?} (first_line {first}) sent after {reason} without an init in between"));
        }
        if first >= 1 && (first as u64) <= track.acked_through {
            found.push(format!(
                "Z17 chunk for {fname:?} resent after a 200: first_line {first} <= acknowledged {}",
                track.acked_through
            ));
        }
        for msg in found {
            self.violation(Some(idx), msg);
        }
    }

    /// Z5 validation order, then storage and commit (with post faults).
    fn chunk_commit(&mut self, idx: usize, user: &str, req: ChunkReq) -> Outcome {
        let sid = req.session_id.unwrap_or_default();
        let fname = req.file_name.unwrap_or_default();
        let ftype = req.file_type.unwrap_or_default();
        if sid.is_empty() {
            return Outcome::error(400, "session_id is required");
        }
        if fname.is_empty() {
            return Outcome::error(400, "file_name is required");
        }
        if ftype.is_empty() {
            return Outcome::error(400, "file_type is required");
        }
        if ftype == "todo" {
            return Outcome::error(400, "todo file sync is no longer supported");
        }
        let first = req.first_line.unwrap_or(0);
        if first < 1 {
            return Outcome::error(400, "first_line must be >= 1");
        }
        let first = first as u64;
        let lines = req.lines.unwrap_or_default();
        if lines.is_empty() {
            return Outcome::error(400, "lines array cannot be empty");
        }
        if fname.len() > 512 {
            return too_long("file_name", 512);
        }
        let meta = req.metadata;
        let summary = meta.as_ref().and_then(|m| m.summary.clone());
        let fum = meta.as_ref().and_then(|m| m.first_user_message.clone());
        let git_info = meta.as_ref().and_then(|m| m.git_info.clone());
        if summary.as_ref().is_some_and(|s| s.len() > 2048) {
            return too_long("summary", 2048);
        }
        if fum.as_ref().is_some_and(|s| s.len() > 8192) {
            return too_long("first_user_message", 8192);
        }
        let Some((sid, _)) = self.resolve_session(&sid) else {
            return Outcome::error(404, "Session not found");
        };
        let cap = self.chunk_cap;
        let session = self.sessions.get_mut(&sid).expect("resolved session");
        if session.deleted {
            return Outcome::error(404, "Session not found");
        }
        if session.user != user {
            return Outcome::error(403, "Access denied");
        }
        let position = session.files.get(&fname).map_or(0, |f| f.position);
        if first != position + 1 {
            return Outcome::error(
                400,
                &format!(
                    "first_line must be {} (got {first}) - chunks must be contiguous",
                    position + 1
                ),
            );
        }
        if session.files.get(&fname).map_or(0, |f| f.chunks_accepted) >= cap {
            return Outcome::error(
                400,
                &format!(
                    "File has too many chunks (limit: {cap}). Consider starting a new session."
                ),
            );
        }
        let last = first + lines.len() as u64 - 1;
        if last > MAX_LINE_NUMBER || has_nul(&fname) {
            if has_nul(&fname) {
                self.violation(Some(idx), "Z14 NUL in file_name".to_string());
            }
            return Outcome::error(500, "Failed to upload chunk");
        }
        let meta_nul = summary.as_deref().is_some_and(has_nul)
            || fum.as_deref().is_some_and(has_nul)
            || git_info.as_ref().is_some_and(value_has_nul);
        let post = self.post_fault_outcome(idx, Route::Chunk);
        if meta_nul {
            self.violation(Some(idx), "Z14 NUL in chunk metadata".to_string());
        }
        let session = self.sessions.get_mut(&sid).expect("resolved session");
        let file = session.files.entry(fname.clone()).or_default();
        let lines = Arc::new(lines);
        file.objects.insert((first, last), lines.clone());
        if let Some((Fault::OrphanThen500, o)) = post {
            return o;
        }
        if meta_nul {
            return Outcome::error(500, "Failed to update session metadata");
        }
        file.segments.push(Segment {
            first,
            len: lines.len(),
            lines,
        });
        file.position = last;
        file.chunks_accepted += 1;
        file.file_type.get_or_insert(ftype);
        if let Some(s) = summary.filter(|s| !s.is_empty()) {
            session.summary = Some(s);
        }
        if let Some(f) = fum.filter(|s| !s.is_empty()) {
            session.first_user_message.get_or_insert(f);
        }
        let track = session.track.entry(fname).or_default();
        match post {
            Some((Fault::WrongLastSyncedLine(delta), _)) => {
                track.acked_through = last;
                // The client cannot trust this answer and must refresh.
                track.needs_refresh = Some("a wrong last_synced_line".to_string());
                Outcome::json(200, json!({ "last_synced_line": last as i64 + delta }))
            }
            Some((_, o)) => o,
            None => {
                track.acked_through = last;
                Outcome::json(200, json!({ "last_synced_line": last }))
            }
        }
    }

    /// The client must refresh after any outcome that is an error other than 429 / 404 session.
    fn after_chunk(&mut self, sent_sid: &str, fname: &str, o: &Outcome) {
        let reason = match o.status {
            _ if o.drop_conn => "a dropped connection".to_string(),
            400 | 403 | 500..=599 => format!("a {} response", o.status),
            404 if o.body.contains("File not found in storage") => "a 404 (storage)".to_string(),
            _ => return,
        };
        if o.status == 403 && !o.body.contains("Storage access denied") {
            return;
        }
        let Some((sid, _)) = self.resolve_session(sent_sid) else {
            return;
        };
        let session = self.sessions.get_mut(&sid).expect("resolved session");
        session
            .track
            .entry(fname.to_string())
            .or_default()
            .needs_refresh = Some(reason);
    }

    fn event(&mut self, idx: usize, user: &str, req: EventReq, body: Value) -> Outcome {
        let sent = req.session_id.unwrap_or_default();
        if sent.is_empty() {
            return Outcome::error(400, "session_id is required");
        }
        let event_type = req.event_type.unwrap_or_default();
        if event_type != "session_end" {
            return Outcome::error(400, &format!("invalid event_type: {event_type}"));
        }
        let Some(ts) = req.timestamp else {
            return Outcome::error(400, "timestamp is required");
        };
        let Ok(parsed) = chrono::DateTime::parse_from_rfc3339(&ts) else {
            return Outcome::error(400, "Invalid JSON body");
        };
        if parsed.timestamp() == -62_135_596_800 && parsed.timestamp_subsec_nanos() == 0 {
            return Outcome::error(400, "timestamp is required");
        }
        let Some(sid) = self.record_violation_for_session(idx, &sent) else {
            return Outcome::error(404, "Session not found");
        };
        let session = &self.sessions[&sid];
        if session.deleted {
            return Outcome::error(404, "Session not found");
        }
        if session.user != user {
            return Outcome::error(403, "Access denied");
        }
        if req.payload.as_ref().is_some_and(value_has_nul) {
            self.violation(Some(idx), "Z14 NUL in event payload".to_string());
            return Outcome::error(500, "Failed to record event");
        }
        const KEYS: [&str; 6] = [
            "session_id",
            "transcript_path",
            "cwd",
            "permission_mode",
            "hook_event_name",
            "reason",
        ];
        let missing: Vec<&str> = KEYS
            .into_iter()
            .filter(|k| req.payload.as_ref().and_then(|p| p.get(k)).is_none())
            .collect();
        if !missing.is_empty() {
            self.violation(
                Some(idx),
                format!("event payload lacks {missing:?} (protocol.md §3.3)"),
            );
        }
        self.events.push(body);
        match self.post_fault_outcome(idx, Route::Event) {
            Some((Fault::CommitThen500 | Fault::DropAfterCommit, o)) => o,
            _ => Outcome::json(200, json!({ "success": true })),
        }
    }

    fn summary(&mut self, idx: usize, external_id: String, req: SummaryReq) -> Outcome {
        let summary = req.summary.unwrap_or_default();
        if summary.len() > 2048 {
            self.violation(
                Some(idx),
                format!("summary of {} B is over the 2048 B cap", summary.len()),
            );
            return too_long("summary", 2048);
        }
        if summary.is_empty() {
            self.violation(
                Some(idx),
                "empty summary sent (it clears the stored one)".to_string(),
            );
        }
        if has_nul(&summary) {
            self.violation(Some(idx), "Z14 NUL in summary".to_string());
            return Outcome::error(500, "Failed to update summary");
        }
        self.summaries.push((external_id, summary));
        match self.post_fault_outcome(idx, Route::Summary) {
            Some((Fault::CommitThen500 | Fault::DropAfterCommit, o)) => o,
            _ => Outcome::json(200, json!({ "status": "ok" })),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Router

fn router(shared: AppState) -> Router {
    /// One handler per route; all share [`handle`].
    macro_rules! route_handler {
        ($route:expr) => {
            move |State(s): State<AppState>,
                  ConnectInfo(c): ConnectInfo<ConnMeta>,
                  m: Method,
                  u: Uri,
                  h: HeaderMap,
                  b: Body| handle($route, s, c, m, u, h, b)
        };
    }
    Router::new()
        .route("/api/v1/sync/init", post(route_handler!(Route::Init)))
        .route("/api/v1/sync/chunk", post(route_handler!(Route::Chunk)))
        .route("/api/v1/sync/event", post(route_handler!(Route::Event)))
        .route(
            "/api/v1/sessions/{external_id}/summary",
            patch(route_handler!(Route::Summary)),
        )
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(shared)
}

async fn not_found(State(shared): State<AppState>, method: Method, uri: Uri) -> Response {
    let outcome = Outcome::text(404, "404 page not found");
    let mut g = shared.lock();
    let index = g.requests.len();
    let now = Instant::now();
    g.requests.push(RecordedRequest {
        index,
        method: method.to_string(),
        path: uri.path().to_string(),
        route: None,
        headers: Vec::new(),
        wire_size: 0,
        json_size: 0,
        body: None,
        body_elided: false,
        status: 404,
        response_body: outcome.body.clone(),
        dropped: false,
        client_gone: false,
        fault: None,
        user: None,
        key_sha256: None,
        started: now,
        finished: Some(now),
    });
    drop(g);
    shared.changed();
    outcome.into_response()
}

// ---------------------------------------------------------------------------------------------
// Public handle

/// The running fake. Dropping it stops the server (in-flight held requests are abandoned).
pub struct Fake {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Fake {
    /// Binds 127.0.0.1:0 and serves; `API_KEY` is known for user `u1`.
    pub async fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        Self::start_on(listener)
    }

    /// Serves on a pre-bound listener.
    pub fn start_on(listener: TcpListener) -> Fake {
        let addr = listener.local_addr().expect("listener address");
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::new()),
            notify: Notify::new(),
            conns: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
        });
        let (tx, rx) = oneshot::channel::<()>();
        let shared2 = shared.clone();
        let app = router(shared.clone()).into_make_service_with_connect_info::<ConnMeta>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(KillListener(listener, shared2), app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Fake {
            shared,
            addr,
            shutdown: Mutex::new(Some(tx)),
            task,
        }
    }

    /// Stops accepting connections at once; a request arriving on a kept-alive connection is
    /// dropped without a response. Idempotent.
    pub fn stop(&self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        for w in self
            .shared
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            if let Some(k) = w.upgrade() {
                k.store(true, Ordering::SeqCst);
            }
        }
        if let Some(tx) = self
            .shutdown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = tx.send(());
        }
        self.task.abort();
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let r = f(&mut self.shared.lock());
        self.shared.changed();
        r
    }

    // ----- knobs -----

    pub fn add_key(&self, key: &str, user: &str) {
        self.with(|g| g.keys.insert(key.to_string(), user.to_string()));
    }

    pub fn revoke_key(&self, key: &str) {
        self.with(|g| g.keys.remove(key));
    }

    pub fn deactivate_user(&self, user: &str) {
        self.with(|g| g.deactivated.insert(user.to_string()));
    }

    pub fn reactivate_user(&self, user: &str) {
        self.with(|g| g.deactivated.remove(user));
    }

    pub fn set_read_only(&self, user: &str, on: bool) {
        self.with(|g| {
            if on {
                g.read_only.insert(user.to_string());
            } else {
                g.read_only.remove(user);
            }
        });
    }

    /// Queues a fault; faults for a route fire in the order they were queued.
    pub fn fault(&self, route: Route, fault: Fault, times: Times) {
        self.with(|g| {
            g.faults.push(ArmedFault {
                route,
                fault,
                times,
            })
        });
    }

    pub fn clear_faults(&self) {
        self.with(|g| g.faults.clear());
    }

    /// Delays the response by `d` after processing (after the commit for a chunk).
    pub fn hold(&self, route: Route, d: Duration, times: Times) {
        self.with(|g| {
            g.holds.push(ArmedHold {
                route,
                delay: d,
                times,
                before_commit: false,
            })
        });
    }

    /// Delays processing by `d` (the request counts as in flight for Z15 meanwhile).
    pub fn hold_before_commit(&self, route: Route, d: Duration, times: Times) {
        self.with(|g| {
            g.holds.push(ArmedHold {
                route,
                delay: d,
                times,
                before_commit: true,
            })
        });
    }

    pub fn clear_holds(&self) {
        self.with(|g| g.holds.clear());
    }

    /// `Retry-After` value added to every 429 (rate limit and fault alike).
    pub fn set_retry_after(&self, v: Option<String>) {
        self.with(|g| g.retry_after = v);
    }

    pub fn set_chunk_cap(&self, cap: usize) {
        self.with(|g| g.chunk_cap = cap);
    }

    /// Recorded bodies whose decoded size exceeds `limit` get their `lines` elided
    /// (`None`: keep everything). Default [`DEFAULT_RECORD_BODY_LIMIT`].
    pub fn set_record_body_limit(&self, limit: Option<usize>) {
        self.with(|g| g.record_body_limit = limit);
    }

    fn file_mut<R>(
        &self,
        external_id: &str,
        file: &str,
        f: impl FnOnce(&mut FileState, &mut Track) -> R,
    ) -> R {
        self.with(|g| {
            let id = match g.latest_by_ext.get(external_id) {
                Some(id) if !g.sessions[id].deleted => id.clone(),
                _ => g.live_session_for(DEFAULT_USER, PROVIDER, external_id),
            };
            let s = g.sessions.get_mut(&id).expect("session");
            let fs = s.files.entry(file.to_string()).or_default();
            let track = s.track.entry(file.to_string()).or_default();
            f(fs, track)
        })
    }

    /// Sets a file's position to `n` with no known content (as if another client had sent it);
    /// creates the session (user `u1`) if needed. Stored lines of that file are discarded.
    pub fn preset_position(&self, external_id: &str, file: &str, n: u64) {
        self.file_mut(external_id, file, |fs, track| {
            let file_type = fs.file_type.take();
            *fs = FileState {
                file_type,
                base: n,
                position: n,
                ..FileState::default()
            };
            track.acked_through = track.acked_through.min(n);
        });
    }

    /// Sets a file's content to `lines` (position = their count), as if uploaded by another client.
    pub fn preset_lines(&self, external_id: &str, file: &str, lines: &[&str]) {
        self.file_mut(external_id, file, |fs, track| {
            let file_type = fs.file_type.take();
            let lines: Arc<Vec<String>> = Arc::new(lines.iter().map(|l| l.to_string()).collect());
            let n = lines.len() as u64;
            *fs = FileState {
                file_type,
                position: n,
                ..FileState::default()
            };
            if n > 0 {
                fs.objects.insert((1, n), lines.clone());
                fs.segments.push(Segment {
                    first: 1,
                    len: lines.len(),
                    lines,
                });
            }
            track.acked_through = track.acked_through.min(n);
        });
    }

    /// Lowers the stored position to `n`, cutting stored lines and objects above it.
    pub fn rollback(&self, external_id: &str, file: &str, n: u64) {
        self.file_mut(external_id, file, |fs, track| {
            fs.truncate(n);
            track.acked_through = track.acked_through.min(n);
        });
    }

    /// As if deleted in the web UI: chunk/event get 404 `Session not found`; the next init
    /// creates a new session id with empty files. Observations by external id then follow the
    /// new session.
    pub fn delete_session(&self, external_id: &str) {
        self.with(|g| {
            let ids: Vec<String> = g
                .sessions
                .values()
                .filter(|s| s.external_id == external_id && !s.deleted)
                .map(|s| s.id.clone())
                .collect();
            for id in ids {
                g.sessions.get_mut(&id).expect("session").deleted = true;
            }
            g.by_identity.retain(|(_, _, ext), _| ext != external_id);
        });
    }

    /// Scales the token buckets (Z18). Buckets restart full.
    pub fn set_rate_limit(
        &self,
        per_user_burst: u32,
        per_user_rate: f64,
        ip_burst: u32,
        ip_rate: f64,
    ) {
        self.with(|g| {
            g.limits = RateLimits {
                user_burst: per_user_burst,
                user_rate: per_user_rate,
                ip_burst,
                ip_rate,
                ..RateLimits::default()
            }
        });
    }

    // ----- observations -----

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// Requests to one route (`Route::Any`: all routed requests), in arrival order.
    pub fn requests_to(&self, route: Route) -> Vec<RecordedRequest> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.route.is_some_and(|rr| route.matches(rr)))
            .cloned()
            .collect()
    }

    /// How many requests a route got so far (cheap; for wait_until conditions).
    pub fn count(&self, route: Route) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.route.is_some_and(|rr| route.matches(rr)))
            .count()
    }

    /// Statuses of a route's requests in order (0 = pending or dropped).
    pub fn statuses(&self, route: Route) -> Vec<u16> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.route.is_some_and(|rr| route.matches(rr)))
            .map(|r| r.status)
            .collect()
    }

    pub fn chunk_requests(&self) -> Vec<RecordedRequest> {
        self.requests_to(Route::Chunk)
    }

    /// Connections accepted and not closed yet (a handler still running keeps its own open).
    pub fn open_connections(&self) -> usize {
        self.shared
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    pub fn violations(&self) -> Vec<String> {
        self.shared.lock().violations.clone()
    }

    pub fn assert_no_violations(&self) {
        let v = self.violations();
        assert!(
            v.is_empty(),
            "fake backend recorded {} violation(s):\n  {}",
            v.len(),
            v.join("\n  ")
        );
    }

    /// The ideal file: accepted lines in order (after a preset position: only lines after it).
    pub fn lines(&self, external_id: &str, file: &str) -> Vec<String> {
        let g = self.shared.lock();
        g.session_by_ext(external_id)
            .and_then(|s| s.files.get(file))
            .map(FileState::ideal_lines)
            .unwrap_or_default()
    }

    /// Read-back merge of all stored chunk objects incl. orphans, in object-key order with later
    /// keys winning; a hole shows as `<<missing line N>>`.
    pub fn merged_lines(&self, external_id: &str, file: &str) -> Vec<String> {
        let g = self.shared.lock();
        g.session_by_ext(external_id)
            .and_then(|s| s.files.get(file))
            .map(FileState::merged_lines)
            .unwrap_or_default()
    }

    pub fn position(&self, external_id: &str, file: &str) -> u64 {
        let g = self.shared.lock();
        g.session_by_ext(external_id)
            .and_then(|s| s.files.get(file))
            .map_or(0, |f| f.position)
    }

    /// Accepted chunks of a file (what the chunk cap counts).
    pub fn chunks_accepted(&self, external_id: &str, file: &str) -> usize {
        let g = self.shared.lock();
        g.session_by_ext(external_id)
            .and_then(|s| s.files.get(file))
            .map_or(0, |f| f.chunks_accepted)
    }

    /// File names F holds for the session, with their positions.
    pub fn files(&self, external_id: &str) -> BTreeMap<String, u64> {
        let g = self.shared.lock();
        g.session_by_ext(external_id)
            .map(|s| {
                s.files
                    .iter()
                    .map(|(k, f)| (k.clone(), f.position))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn session_id(&self, external_id: &str) -> Option<String> {
        let g = self.shared.lock();
        g.session_by_ext(external_id).map(|s| s.id.clone())
    }

    pub fn events(&self) -> Vec<Value> {
        self.shared.lock().events.clone()
    }

    pub fn summaries(&self) -> Vec<(String, String)> {
        self.shared.lock().summaries.clone()
    }

    pub fn stored_cwd(&self, external_id: &str) -> Option<String> {
        let g = self.shared.lock();
        g.session_by_ext(external_id).and_then(|s| s.cwd.clone())
    }

    /// The latest non-empty chunk metadata `summary` of the session.
    pub fn stored_summary(&self, external_id: &str) -> Option<String> {
        let g = self.shared.lock();
        g.session_by_ext(external_id)
            .and_then(|s| s.summary.clone())
    }

    /// The first non-empty `first_user_message` the session received.
    pub fn stored_first_user_message(&self, external_id: &str) -> Option<String> {
        let g = self.shared.lock();
        g.session_by_ext(external_id)
            .and_then(|s| s.first_user_message.clone())
    }

    /// Highest number of requests the server was answering at once.
    pub fn peak_concurrency(&self) -> usize {
        self.shared.lock().peak
    }

    /// Re-checks `cond` after every request event and every 20 ms; false on timeout.
    pub async fn wait_until(&self, timeout: Duration, cond: impl Fn(&Fake) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            if cond(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}
