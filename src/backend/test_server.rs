//! The backend's unit-test fixtures: a catch-all loopback server that records every request and
//! answers from a closure, canned answers, and request builders.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName as AxHeaderName, StatusCode as AxStatus};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::HttpSink;
use crate::sink::*;

pub(super) const KEY: &str = "cfb_TESTKEY_0123456789abcdef";

/// One request as the test server saw it.
#[derive(Clone, Debug)]
pub(super) struct Seen {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) headers: HeaderMap,
    pub(super) body: Vec<u8>,
    pub(super) at: Instant,
}

impl Seen {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

pub(super) struct Server {
    addr: SocketAddr,
    log: Log,
}

impl Server {
    pub(super) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub(super) fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }
}

/// A catch-all server answering request number `i` (0-based) with `answer(i, &seen)`.
pub(super) async fn serve<F>(answer: F) -> Server
where
    F: Fn(usize, &Seen) -> Response + Send + Sync + 'static,
{
    let log: Log = Arc::default();
    let answer = Arc::new(answer);
    let handler_log = log.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (log, answer) = (handler_log.clone(), answer.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let seen = Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                headers: parts.headers,
                body: body.to_vec(),
                at: Instant::now(),
            };
            let i = {
                let mut log = log.lock().unwrap();
                log.push(seen.clone());
                log.len() - 1
            };
            answer(i, &seen)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { addr, log }
}

fn respond(status: u16, content_type: &'static str, body: &str) -> Response {
    (
        AxStatus::from_u16(status).unwrap(),
        [(AxHeaderName::from_static("content-type"), content_type)],
        body.to_string(),
    )
        .into_response()
}

pub(super) fn json(status: u16, body: &str) -> Response {
    respond(status, "application/json", body)
}

pub(super) fn text(status: u16, body: &str) -> Response {
    respond(status, "text/plain; charset=utf-8", body)
}

pub(super) fn with_header(mut r: Response, name: &'static str, value: &str) -> Response {
    r.headers_mut().insert(
        AxHeaderName::from_static(name),
        value.parse().expect("header value"),
    );
    r
}

pub(super) fn rate_limited() -> Response {
    text(429, "Rate limit exceeded. Please try again later.\n")
}

pub(super) fn sink(url: &str) -> HttpSink {
    HttpSink::new(url, KEY, Duration::from_secs(30), CancellationToken::new()).unwrap()
}

pub(super) fn chunk_req(lines: &[String]) -> ChunkRequest<'_> {
    ChunkRequest {
        session_id: "s-1",
        file_name: "f.jsonl",
        file_type: FileType::Transcript,
        first_line: 1,
        lines,
        metadata: None,
    }
}

/// Sends `json` as a chunk body (the sink sends exactly these bytes).
pub(super) async fn send_chunk(s: &HttpSink, json: &[u8]) -> Result<u64, SinkError> {
    let lines = vec![String::new()];
    s.chunk(&chunk_req(&lines), json).await
}

/// A JSON object of exactly `n` bytes.
pub(super) fn json_of_len(n: usize) -> Vec<u8> {
    let filler = n - r#"{"x":""}"#.len();
    let v = format!(r#"{{"x":"{}"}}"#, "a".repeat(filler));
    assert_eq!(v.len(), n);
    v.into_bytes()
}

pub(super) fn init_req(cwd: &str) -> InitRequest {
    InitRequest {
        external_id: "62d346b1-08c1-4949-8229-f1eb8b44cb46".into(),
        transcript_path: "/home/u/.claude/projects/p/62d346b1.jsonl".into(),
        provider: PROVIDER,
        metadata: InitMetadata {
            cwd: cwd.into(),
            ..Default::default()
        },
    }
}

pub(super) fn event_req() -> EventRequest {
    EventRequest {
        session_id: "s-1".into(),
        event_type: "session_end",
        timestamp: "2026-03-28T09:08:15Z".into(),
        payload: serde_json::json!({"reason": "exit"}),
    }
}

pub(super) fn ack(n: u64) -> Response {
    json(200, &format!(r#"{{"last_synced_line":{n}}}"#))
}
