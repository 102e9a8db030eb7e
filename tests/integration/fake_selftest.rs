//! Tests of the fake backend itself, driven by a raw reqwest client: if these hold, a failure in a
//! daemon test is the daemon's, not F's.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::fake::{Fake, Fault, Route, Times, API_KEY};

const EXT: &str = "62d346b1-08c1-4949-8229-f1eb8b44cb46";
const FILE: &str = "62d346b1-08c1-4949-8229-f1eb8b44cb46.jsonl";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .user_agent("confab-sync/0.1.0 (linux; amd64)")
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// A raw response: status, content type, Retry-After, body text.
struct Resp {
    status: u16,
    content_type: String,
    retry_after: Option<String>,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

struct Req<'a> {
    method: reqwest::Method,
    path: &'a str,
    body: Vec<u8>,
    content_type: Option<&'a str>,
    auth: Option<String>,
    encoding: Option<&'a str>,
    /// Compress like the real client: sync routes, JSON of 1,024 B or more.
    auto_zstd: bool,
}

impl<'a> Req<'a> {
    fn post(path: &'a str, body: &Value) -> Self {
        Req {
            method: reqwest::Method::POST,
            path,
            body: serde_json::to_vec(body).unwrap(),
            content_type: Some("application/json"),
            auth: Some(format!("Bearer {API_KEY}")),
            encoding: None,
            auto_zstd: path.starts_with("/api/v1/sync/"),
        }
    }

    fn raw(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self.auto_zstd = false;
        self
    }

    fn plain(mut self) -> Self {
        self.auto_zstd = false;
        self
    }

    fn auth(mut self, v: Option<&str>) -> Self {
        self.auth = v.map(str::to_string);
        self
    }

    fn content_type(mut self, v: Option<&'a str>) -> Self {
        self.content_type = v;
        self
    }

    fn zstd(mut self) -> Self {
        // One frame with the content size in its header, as protocol.md §1 asks.
        self.body = zstd::bulk::compress(&self.body, 3).unwrap();
        self.encoding = Some("zstd");
        self
    }

    fn encoding(mut self, v: &'a str) -> Self {
        self.encoding = Some(v);
        self.auto_zstd = false;
        self
    }

    async fn try_send(mut self, fake: &Fake) -> reqwest::Result<Resp> {
        if self.auto_zstd && self.encoding.is_none() && self.body.len() >= 1024 {
            self = self.zstd();
        }
        let mut rb = client()
            .request(self.method, format!("{}{}", fake.url(), self.path))
            .body(self.body);
        if let Some(ct) = self.content_type {
            rb = rb.header("content-type", ct);
        }
        if let Some(a) = self.auth {
            rb = rb.header("authorization", a);
        }
        if let Some(e) = self.encoding {
            rb = rb.header("content-encoding", e);
        }
        let r = rb.send().await?;
        let status = r.status().as_u16();
        let header = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
        let content_type = header("content-type").unwrap_or_default();
        let retry_after = header("retry-after");
        let body = r.text().await?;
        Ok(Resp {
            status,
            content_type,
            retry_after,
            body,
        })
    }

    async fn send(self, fake: &Fake) -> Resp {
        self.try_send(fake).await.expect("request failed")
    }
}

const INIT: &str = "/api/v1/sync/init";
const CHUNK: &str = "/api/v1/sync/chunk";
const EVENT: &str = "/api/v1/sync/event";

fn init_body() -> Value {
    json!({"external_id": EXT, "transcript_path": format!("/home/u/.claude/projects/p/{FILE}"),
           "provider": "claude-code", "metadata": {"cwd": "/home/u/p", "hostname": "box"}})
}

async fn init(fake: &Fake) -> String {
    let r = Req::post(INIT, &init_body()).send(fake).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["session_id"].as_str().unwrap().to_string()
}

fn chunk_body(sid: &str, first: u64, lines: &[&str]) -> Value {
    json!({"session_id": sid, "file_name": FILE, "file_type": "transcript", "first_line": first,
           "lines": lines, "metadata": {}})
}

async fn chunk(fake: &Fake, sid: &str, first: u64, lines: &[&str]) -> Resp {
    Req::post(CHUNK, &chunk_body(sid, first, lines))
        .send(fake)
        .await
}

fn assert_error(r: &Resp, status: u16, msg: &str) {
    assert_eq!(r.status, status, "body {:?}", r.body);
    assert_eq!(r.content_type, "application/json");
    assert_eq!(r.body, format!("{}\n", json!({ "error": msg })));
}

fn assert_text(r: &Resp, status: u16, msg: &str) {
    assert_eq!(r.status, status, "body {:?}", r.body);
    assert_eq!(r.content_type, "text/plain; charset=utf-8");
    assert_eq!(r.body, format!("{msg}\n"));
}

#[tokio::test]
async fn init_then_chunks_roundtrip() {
    let fake = Fake::start().await;
    assert!(fake.url().starts_with("http://127.0.0.1:") && !fake.url().ends_with('/'));
    let sid = init(&fake).await;
    assert_eq!(fake.session_id(EXT).as_deref(), Some(sid.as_str()));
    assert_eq!(fake.stored_cwd(EXT).as_deref(), Some("/home/u/p"));
    let r = chunk(&fake, &sid, 1, &["a", "", "c"]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "{\"last_synced_line\":3}\n");
    let r = chunk(&fake, &sid, 4, &["d"]).await;
    assert_eq!(r.json(), json!({"last_synced_line": 4}));
    assert_eq!(fake.lines(EXT, FILE), ["a", "", "c", "d"]);
    assert_eq!(fake.merged_lines(EXT, FILE), fake.lines(EXT, FILE));
    assert_eq!(fake.position(EXT, FILE), 4);
    // Init is idempotent and reports positions.
    let r = Req::post(INIT, &init_body()).send(&fake).await;
    assert_eq!(r.json()["session_id"], json!(sid));
    assert_eq!(r.json()["files"], json!({ FILE: {"last_synced_line": 4} }));
    let reqs = fake.chunk_requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].first_line(), Some(1));
    assert_eq!(reqs[0].line_count(), Some(3));
    assert!(reqs[0].used_key(API_KEY));
    assert!(reqs[0].header("authorization").is_none());
    assert_eq!(reqs[0].json_size, reqs[0].wire_size);
    fake.assert_no_violations();
}

#[tokio::test]
async fn auth_failures_are_text_plain() {
    let fake = Fake::start().await;
    let body = init_body();
    let cases: [(Option<&str>, u16, &str); 5] = [
        (None, 401, "Missing Authorization header"),
        (
            Some("Basic abc"),
            401,
            "Invalid Authorization header format",
        ),
        (
            Some("Bearertest"),
            401,
            "Invalid Authorization header format",
        ),
        (
            Some("Bearer  test-api-key-12345678"),
            401,
            "Invalid API key",
        ),
        (Some("Bearer nope"), 401, "Invalid API key"),
    ];
    for (auth, status, msg) in cases {
        let r = Req::post(INIT, &body).auth(auth).send(&fake).await;
        assert_text(&r, status, msg);
    }
    fake.add_key("k2", "u2");
    let ok = Req::post(INIT, &body)
        .auth(Some("Bearer k2"))
        .send(&fake)
        .await;
    assert_eq!(ok.status, 200);
    fake.revoke_key("k2");
    let r = Req::post(INIT, &body)
        .auth(Some("Bearer k2"))
        .send(&fake)
        .await;
    assert_text(&r, 401, "Invalid API key");
    fake.deactivate_user("u1");
    let r = Req::post(INIT, &body).send(&fake).await;
    assert_text(&r, 403, "Account deactivated");
    fake.reactivate_user("u1");
    fake.set_read_only("u1", true);
    let r = Req::post(INIT, &body).send(&fake).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json(),
        json!({"error": "read_only_user", "message": "This identity is read-only."})
    );
    fake.set_read_only("u1", false);
    assert_eq!(Req::post(INIT, &body).send(&fake).await.status, 200);
}

#[tokio::test]
async fn content_type_is_checked_before_auth() {
    let fake = Fake::start().await;
    let body = init_body();
    let r = Req::post(INIT, &body)
        .content_type(None)
        .auth(None)
        .send(&fake)
        .await;
    assert_text(&r, 415, "Content-Type header required");
    let r = Req::post(INIT, &body)
        .content_type(Some("text/plain"))
        .auth(None)
        .send(&fake)
        .await;
    assert_text(&r, 415, "Content-Type must be application/json");
    let r = Req::post(INIT, &body)
        .content_type(Some("application/json; charset=utf-8"))
        .auth(None)
        .send(&fake)
        .await;
    assert_text(&r, 401, "Missing Authorization header");
    let r = Req::post(INIT, &body).encoding("gzip").send(&fake).await;
    assert_error(&r, 415, "Unsupported Content-Encoding: gzip");
}

#[tokio::test]
async fn unknown_path_and_wrong_method() {
    let fake = Fake::start().await;
    let r = Req::post("/api/v1/sync/init/", &init_body())
        .send(&fake)
        .await;
    assert_text(&r, 404, "404 page not found");
    let r = Req::post("//api/v1/sync/init", &init_body())
        .send(&fake)
        .await;
    assert_eq!(r.status, 404);
    let mut get = Req::post(INIT, &init_body());
    get.method = reqwest::Method::GET;
    let r = get.send(&fake).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.body, "");
}

#[tokio::test]
async fn zstd_bodies_decode_streaming_and_concatenated() {
    let fake = Fake::start().await;
    let sid = init(&fake).await;
    let big: Vec<String> = (0..500)
        .map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(50)))
        .collect();
    let refs: Vec<&str> = big.iter().map(String::as_str).collect();
    // One frame with content size, upper-case encoding name.
    let r = Req::post(CHUNK, &chunk_body(&sid, 1, &refs[..200]))
        .zstd()
        .encoding("ZSTD")
        .send(&fake)
        .await;
    assert_eq!(r.json(), json!({"last_synced_line": 200}));
    // Two concatenated frames written by the streaming encoder (no content size in the header).
    let json = serde_json::to_vec(&chunk_body(&sid, 201, &refs[200..])).unwrap();
    let (a, b) = json.split_at(json.len() / 2);
    let mut wire = Vec::new();
    for part in [a, b] {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        std::io::Write::write_all(&mut enc, part).unwrap();
        wire.extend(enc.finish().unwrap());
    }
    let r = Req::post(CHUNK, &Value::Null)
        .raw(wire)
        .encoding("zstd")
        .send(&fake)
        .await;
    assert_eq!(r.json(), json!({"last_synced_line": 500}), "{}", r.body);
    assert_eq!(fake.lines(EXT, FILE), big);
    let last = fake.chunk_requests().pop().unwrap();
    assert_eq!(last.json_size, json.len());
    assert!(last.wire_size < last.json_size);
    assert_eq!(last.header("content-encoding"), Some("zstd"));
    // Garbage with a zstd header is an invalid body.
    let r = Req::post(CHUNK, &Value::Null)
        .raw(b"not zstd".to_vec())
        .encoding("zstd")
        .send(&fake)
        .await;
    assert_error(&r, 400, "Invalid request body");
    // Decoded fine, but the client rule (one frame with content size) was broken once.
    let v = fake.violations();
    assert!(
        v.len() == 1 && v[0].contains("not exactly one zstd frame"),
        "{v:?}"
    );
    // A single streamed frame without content size is decoded too, and recorded.
    let json = serde_json::to_vec(&chunk_body(&sid, 501, &refs[..100])).unwrap();
    let wire = zstd::encode_all(&json[..], 3).unwrap();
    let r = Req::post(CHUNK, &Value::Null)
        .raw(wire)
        .encoding("zstd")
        .send(&fake)
        .await;
    assert_eq!(r.json(), json!({"last_synced_line": 600}));
    let v = fake.violations();
    assert!(
        v.len() == 2 && v[1].contains("lacks the content size"),
        "{v:?}"
    );
}

#[tokio::test]
async fn oversize_bodies_get_400_never_413() {
    let fake = Fake::start().await;
    let mut body = init_body();
    body["metadata"]["git_info"] = json!({"commit_message": "m".repeat(140_000)});
    let r = Req::post(INIT, &body).zstd().send(&fake).await;
    assert_error(&r, 400, "Invalid request body");
    let sid = init(&fake).await;
    let line = "y".repeat(1024 * 1024);
    let lines: Vec<&str> = (0..17).map(|_| line.as_str()).collect();
    let r = Req::post(CHUNK, &chunk_body(&sid, 1, &lines))
        .zstd()
        .send(&fake)
        .await;
    assert_error(&r, 400, "Invalid request body");
    let ev = json!({"session_id": sid, "event_type": "session_end", "timestamp": "2026-03-28T09:08:15Z",
                    "payload": {"x": "z".repeat(140_000)}});
    let r = Req::post(EVENT, &ev).send(&fake).await;
    assert_error(&r, 400, "Invalid JSON body");
    let v = fake.violations();
    assert_eq!(v.len(), 3, "{v:?}");
    assert!(v.iter().all(|m| m.contains("Z4")), "{v:?}");
    assert_eq!(fake.position(EXT, FILE), 0);
}

#[tokio::test]
async fn chunk_validation_order_and_messages() {
    let fake = Fake::start().await;
    let sid = init(&fake).await;
    let base = chunk_body(&sid, 1, &["a"]);
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let cases = [
        (with("session_id", json!("")), 400, "session_id is required"),
        (with("file_name", json!("")), 400, "file_name is required"),
        (with("file_type", json!("")), 400, "file_type is required"),
        (
            with("file_type", json!("todo")),
            400,
            "todo file sync is no longer supported",
        ),
        (with("first_line", json!(0)), 400, "first_line must be >= 1"),
        (with("lines", json!([])), 400, "lines array cannot be empty"),
        (
            with("file_name", json!("f".repeat(513))),
            400,
            "file_name exceeds maximum length of 512 characters",
        ),
        (
            with("metadata", json!({"summary": "s".repeat(2049)})),
            400,
            "summary exceeds maximum length of 2048 characters",
        ),
        (
            with("session_id", json!("not-a-session")),
            404,
            "Session not found",
        ),
        (
            with("first_line", json!(2)),
            400,
            "first_line must be 1 (got 2) - chunks must be contiguous",
        ),
        (with("first_line", json!(1.5)), 400, "Invalid request body"),
    ];
    for (body, status, msg) in cases {
        let r = Req::post(CHUNK, &body).send(&fake).await;
        assert_error(&r, status, msg);
    }
    // Another user's session.
    fake.add_key("k2", "u2");
    let r = Req::post(CHUNK, &base)
        .auth(Some("Bearer k2"))
        .send(&fake)
        .await;
    assert_error(&r, 403, "Access denied");
    assert_eq!(fake.position(EXT, FILE), 0);
}

#[tokio::test]
async fn contiguity_and_resend_violations() {
    let fake = Fake::start().await;
    let sid = init(&fake).await;
    assert_eq!(chunk(&fake, &sid, 1, &["a", "b"]).await.status, 200);
    fake.assert_no_violations();
    // Resending an acknowledged chunk: 400, and Z17 is recorded.
    let r = chunk(&fake, &sid, 1, &["a", "b"]).await;
    assert_error(
        &r,
        400,
        "first_line must be 3 (got 1) - chunks must be contiguous",
    );
    let v = fake.violations();
    assert!(
        v.len() == 1 && v[0].contains("Z17") && v[0].contains("resent after a 200"),
        "{v:?}"
    );
    // Sending again without an init after that 400: the refresh rule is recorded.
    let r = chunk(&fake, &sid, 3, &["c"]).await;
    assert_eq!(r.status, 200);
    let v = fake.violations();
    assert!(v.len() == 2 && v[1].contains("without an init"), "{v:?}");
    assert_eq!(fake.lines(EXT, FILE), ["a", "b", "c"]);
}

#[tokio::test]
async fn strict_line_and_name_checks_are_recorded() {
    let fake = Fake::start().await;
    let sid = init(&fake).await;
    assert_eq!(chunk(&fake, &sid, 1, &["x\ny", "z\r"]).await.status, 200);
    let v = fake.violations();
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v[0].contains("Z11") && v[0].contains("contains \\n"));
    assert!(v[1].contains("Z11") && v[1].contains("ends in \\r"));
    // Stored anyway, as the real backend does.
    assert_eq!(fake.position(EXT, FILE), 2);
    let mut b = chunk_body(&sid, 1, &["q"]);
    b["file_name"] = json!("../evil.jsonl");
    b["file_type"] = json!("weird");
    assert_eq!(Req::post(CHUNK, &b).send(&fake).await.status, 200);
    let v = fake.violations();
    assert!(
        v.iter().any(|m| m.contains("Z12")) && v.iter().any(|m| m.contains("Z13")),
        "{v:?}"
    );
    // Z16: an upper-cased session id still works on the real backend, but is recorded.
    let before = fake.violations().len();
    assert_eq!(
        chunk(&fake, &sid.to_uppercase(), 3, &["c"]).await.status,
        200
    );
    let v = fake.violations();
    assert!(v[before..].iter().any(|m| m.contains("Z16")), "{v:?}");
}

#[tokio::test]
async fn nul_in_chunk_metadata_fails_after_storing() {
    let fake = Fake::start().await;
    let sid = init(&fake).await;
    let mut b = chunk_body(&sid, 1, &["a", "b"]);
    b["metadata"] = json!({"summary": "bad\u{0}summary"});
    let r = Req::post(CHUNK, &b).send(&fake).await;
    assert_eq!(r.status, 500);
    assert_eq!(fake.position(EXT, FILE), 0);
    assert_eq!(fake.merged_lines(EXT, FILE), ["a", "b"]);
    assert!(fake.violations().iter().any(|m| m.contains("Z14")));
}

#[tokio::test]
async fn chunk_cap_is_configurable() {
    let fake = Fake::start().await;
    fake.set_chunk_cap(2);
    let sid = init(&fake).await;
    assert_eq!(chunk(&fake, &sid, 1, &["a"]).await.status, 200);
    assert_eq!(chunk(&fake, &sid, 2, &["b"]).await.status, 200);
    let r = chunk(&fake, &sid, 3, &["c"]).await;
    assert_error(
        &r,
        400,
        "File has too many chunks (limit: 2). Consider starting a new session.",
    );
    assert_eq!(fake.chunks_accepted(EXT, FILE), 2);
}

#[tokio::test]
async fn line_number_limit_gives_500() {
    let fake = Fake::start().await;
    fake.preset_position(EXT, FILE, 99_999_998);
    let sid = init(&fake).await;
    let r = chunk(&fake, &sid, 99_999_999, &["a", "b"]).await;
    assert_error(&r, 500, "Failed to upload chunk");
    init(&fake).await;
    assert_eq!(chunk(&fake, &sid, 99_999_999, &["a"]).await.status, 200);
    assert_eq!(fake.lines(EXT, FILE), ["a"]);
}

#[tokio::test]
async fn storage_faults_and_orphans() {
    let fake = Fake::start().await;
    let sid = init(&fake).await;
    fake.fault(Route::Chunk, Fault::Status503, Times::Next(1));
    fake.fault(Route::Chunk, Fault::OrphanThen500, Times::Next(1));
    let r = chunk(&fake, &sid, 1, &["a", "b"]).await;
    assert_error(&r, 503, "Storage temporarily unavailable");
    assert_eq!(fake.position(EXT, FILE), 0);
    init(&fake).await;
    let r = chunk(&fake, &sid, 1, &["a", "b"]).await;
    assert_error(&r, 500, "Failed to update sync state");
    assert_eq!(fake.position(EXT, FILE), 0);
    assert_eq!(fake.merged_lines(EXT, FILE), ["a", "b"]);
    assert!(fake.lines(EXT, FILE).is_empty());
    init(&fake).await;
    // The resend covers the orphan's lines; read-back merge equals the ideal file.
    assert_eq!(chunk(&fake, &sid, 1, &["a", "b", "c"]).await.status, 200);
    assert_eq!(fake.lines(EXT, FILE), ["a", "b", "c"]);
    assert_eq!(fake.merged_lines(EXT, FILE), fake.lines(EXT, FILE));
    // Exhausted faults no longer fire; WrongLastSyncedLine commits but lies.
    fake.fault(Route::Chunk, Fault::WrongLastSyncedLine(5), Times::Next(1));
    assert_eq!(
        chunk(&fake, &sid, 4, &["d"]).await.json(),
        json!({"last_synced_line": 9})
    );
    assert_eq!(fake.position(EXT, FILE), 4);
    fake.fault(Route::Chunk, Fault::FileNotFoundInStorage404, Times::Always);
    for _ in 0..2 {
        init(&fake).await;
        assert_error(
            &chunk(&fake, &sid, 5, &["e"]).await,
            404,
            "File not found in storage",
        );
    }
    fake.clear_faults();
    fake.fault(Route::Init, Fault::Status429, Times::Next(1));
    let r = Req::post(INIT, &init_body()).send(&fake).await;
    assert_text(&r, 429, "Rate limit exceeded. Please try again later.");
    init(&fake).await;
    assert_eq!(chunk(&fake, &sid, 5, &["e"]).await.status, 200);
    fake.assert_no_violations();
    let faults: Vec<_> = fake
        .requests()
        .into_iter()
        .filter_map(|r| r.fault)
        .collect();
    assert_eq!(faults.len(), 6);
}

#[tokio::test]
async fn drop_after_commit_gives_client_an_error() {
    let fake = Fake::start().await;
    let sid = init(&fake).await;
    fake.fault(Route::Chunk, Fault::DropAfterCommit, Times::Next(1));
    let res = Req::post(CHUNK, &chunk_body(&sid, 1, &["a", "b"]))
        .try_send(&fake)
        .await;
    assert!(res.is_err(), "client must see a transport error");
    assert_eq!(fake.position(EXT, FILE), 2, "committed before the drop");
    let rec = fake.chunk_requests().pop().unwrap();
    assert!(rec.dropped && rec.status == 0);
    init(&fake).await;
    // Before processing: nothing stored.
    fake.fault(Route::Any, Fault::CloseConnection, Times::Next(1));
    let res = Req::post(CHUNK, &chunk_body(&sid, 3, &["c"]))
        .try_send(&fake)
        .await;
    assert!(res.is_err());
    assert_eq!(fake.position(EXT, FILE), 2);
    // Sending again for that file without a refresh is recorded; with one it is clean.
    assert_eq!(chunk(&fake, &sid, 3, &["c"]).await.status, 200);
    assert_eq!(fake.violations().len(), 1, "{:?}", fake.violations());
    init(&fake).await;
    assert_eq!(chunk(&fake, &sid, 4, &["d"]).await.status, 200);
    assert_eq!(fake.violations().len(), 1);
}

#[tokio::test]
async fn hold_delays_response_after_commit() {
    let fake = Fake::start().await;
    let sid = init(&fake).await;
    fake.hold(Route::Chunk, Duration::from_millis(1500), Times::Next(1));
    let t = Instant::now();
    let fut = chunk(&fake, &sid, 1, &["a"]);
    let watcher = async {
        // Committed while the response is still held.
        assert!(
            fake.wait_until(Duration::from_secs(5), |f| f.position(EXT, FILE) == 1)
                .await
        );
        assert_eq!(fake.chunk_requests()[0].status, 0);
        t.elapsed()
    };
    let (r, seen) = tokio::join!(fut, watcher);
    assert_eq!(r.status, 200);
    assert!(seen < Duration::from_millis(1200), "{seen:?}");
    assert!(t.elapsed() >= Duration::from_millis(1500));
    // Next request is not held.
    let t = Instant::now();
    assert_eq!(chunk(&fake, &sid, 2, &["b"]).await.status, 200);
    assert!(t.elapsed() < Duration::from_millis(1200));
    // Before commit: nothing stored during the hold, i.e. the position moves only once it ends.
    fake.hold_before_commit(Route::Chunk, Duration::from_millis(1000), Times::Next(1));
    let t = Instant::now();
    let fut = chunk(&fake, &sid, 3, &["c"]);
    let watcher = async {
        assert!(
            fake.wait_until(Duration::from_secs(5), |f| f.count(Route::Chunk) == 3)
                .await
        );
        assert_eq!(fake.position(EXT, FILE), 2);
        assert!(
            fake.wait_until(Duration::from_secs(5), |f| f.position(EXT, FILE) == 3)
                .await
        );
        t.elapsed()
    };
    let (r, stored_after) = tokio::join!(fut, watcher);
    assert_eq!(r.status, 200);
    assert!(
        stored_after >= Duration::from_millis(1000),
        "stored during the hold: {stored_after:?}"
    );
}

#[tokio::test]
async fn concurrent_chunks_for_one_file_are_violations() {
    let fake = Fake::start().await;
    let sid = init(&fake).await;
    fake.hold_before_commit(Route::Chunk, Duration::from_millis(300), Times::Next(2));
    let (a, b) = tokio::join!(chunk(&fake, &sid, 1, &["a"]), chunk(&fake, &sid, 1, &["a"]));
    // Both pass the position check after the hold? No: processing is serialized after it, so one
    // wins and the other gets the contiguity 400 — but both were in flight together.
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 400]);
    assert!(fake.peak_concurrency() >= 2);
    assert!(
        fake.violations().iter().any(|v| v.contains("Z15")),
        "{:?}",
        fake.violations()
    );
}

#[tokio::test]
async fn sequential_requests_have_peak_one() {
    let fake = Fake::start().await;
    let sid = init(&fake).await;
    for i in 1..=5u64 {
        assert_eq!(chunk(&fake, &sid, i, &["l"]).await.status, 200);
    }
    assert_eq!(fake.peak_concurrency(), 1);
    fake.assert_no_violations();
}

#[tokio::test]
async fn rate_limit_429_is_text_without_retry_after_by_default() {
    let fake = Fake::start().await;
    fake.set_rate_limit(2, 0.0, 1000, 1000.0);
    init(&fake).await;
    init(&fake).await;
    let r = Req::post(INIT, &init_body()).send(&fake).await;
    assert_text(&r, 429, "Rate limit exceeded. Please try again later.");
    assert_eq!(r.retry_after, None);
    fake.set_retry_after(Some("7".into()));
    let r = Req::post(INIT, &init_body()).send(&fake).await;
    assert_eq!((r.status, r.retry_after.as_deref()), (429, Some("7")));
    // The per-IP bucket applies to every route, before auth.
    fake.set_rate_limit(1000, 1000.0, 1, 0.0);
    assert_eq!(init_status(&fake).await, 200);
    let r = Req::post(INIT, &init_body()).auth(None).send(&fake).await;
    assert_eq!(r.status, 429);
    // Default limits do not get in the way of a burst of requests.
    fake.set_rate_limit(2000, 2.78, 200, 100.0);
    for _ in 0..50 {
        assert_eq!(init_status(&fake).await, 200);
    }
}

async fn init_status(fake: &Fake) -> u16 {
    Req::post(INIT, &init_body()).send(fake).await.status
}

#[tokio::test]
async fn rollback_and_presets() {
    let fake = Fake::start().await;
    let sid = init(&fake).await;
    assert_eq!(
        chunk(&fake, &sid, 1, &["1", "2", "3", "4", "5", "6"])
            .await
            .status,
        200
    );
    fake.rollback(EXT, FILE, 3);
    assert_eq!(fake.position(EXT, FILE), 3);
    assert_eq!(fake.lines(EXT, FILE), ["1", "2", "3"]);
    let r = Req::post(INIT, &init_body()).send(&fake).await;
    assert_eq!(r.json()["files"][FILE], json!({"last_synced_line": 3}));
    assert_eq!(chunk(&fake, &sid, 4, &["4", "5", "6"]).await.status, 200);
    assert_eq!(fake.merged_lines(EXT, FILE), fake.lines(EXT, FILE));
    fake.assert_no_violations();
    fake.preset_position(EXT, "agent-ok123456.jsonl", 5);
    fake.preset_lines(EXT, "agent-abcdef12.jsonl", &["x", "y"]);
    let r = Req::post(INIT, &init_body()).send(&fake).await;
    assert_eq!(
        r.json()["files"]["agent-ok123456.jsonl"],
        json!({"last_synced_line": 5})
    );
    assert_eq!(
        r.json()["files"]["agent-abcdef12.jsonl"],
        json!({"last_synced_line": 2})
    );
    assert_eq!(fake.files(EXT).len(), 3);
}

#[tokio::test]
async fn deleted_session_gets_404_then_a_new_id() {
    let fake = Fake::start().await;
    let sid = init(&fake).await;
    assert_eq!(chunk(&fake, &sid, 1, &["a"]).await.status, 200);
    fake.delete_session(EXT);
    assert_error(
        &chunk(&fake, &sid, 2, &["b"]).await,
        404,
        "Session not found",
    );
    let ev = json!({"session_id": sid, "event_type": "session_end",
                    "timestamp": "2026-03-28T09:08:15.123456789-07:00", "payload": {}});
    assert_error(
        &Req::post(EVENT, &ev).send(&fake).await,
        404,
        "Session not found",
    );
    let r = Req::post(INIT, &init_body()).send(&fake).await;
    let new_sid = r.json()["session_id"].as_str().unwrap().to_string();
    assert_ne!(new_sid, sid);
    assert_eq!(r.json()["files"], json!({}));
    assert_eq!(fake.session_id(EXT), Some(new_sid));
    assert_eq!(fake.position(EXT, FILE), 0);
}

#[tokio::test]
async fn events_are_validated_and_recorded() {
    let fake = Fake::start().await;
    let sid = init(&fake).await;
    let ev = |ts: &str, ty: &str| {
        json!({"session_id": sid, "event_type": ty, "timestamp": ts,
               "payload": {"session_id": EXT, "transcript_path": "/t", "cwd": "/c",
                           "permission_mode": "default", "hook_event_name": "SessionEnd",
                           "reason": "exit"}})
    };
    let r = Req::post(EVENT, &ev("2026-03-28T09:08:15Z", "session_end"))
        .send(&fake)
        .await;
    assert_eq!(r.json(), json!({"success": true}));
    assert_eq!(
        Req::post(EVENT, &ev("0001-01-01T00:00:00Z", "session_end"))
            .send(&fake)
            .await
            .status,
        400
    );
    assert_eq!(
        Req::post(EVENT, &ev("2026-03-28T09:08:15Z", "other"))
            .send(&fake)
            .await
            .status,
        400
    );
    assert_eq!(
        Req::post(EVENT, &ev("yesterday", "session_end"))
            .send(&fake)
            .await
            .status,
        400
    );
    // Events are not idempotent.
    Req::post(EVENT, &ev("2026-03-28T09:08:16Z", "session_end"))
        .send(&fake)
        .await;
    assert_eq!(fake.events().len(), 2);
    assert_eq!(fake.events()[0]["payload"]["reason"], json!("exit"));
    fake.assert_no_violations();
    let short = json!({"session_id": sid, "event_type": "session_end",
                       "timestamp": "2026-03-28T09:08:15Z", "payload": {"reason": "exit"}});
    assert_eq!(Req::post(EVENT, &short).send(&fake).await.status, 200);
    let v = fake.violations();
    assert!(v.len() == 1 && v[0].contains("payload lacks"), "{v:?}");
}

fn patch<'a>(path: &'a str, body: &Value) -> Req<'a> {
    let mut r = Req::post(path, body);
    r.method = reqwest::Method::PATCH;
    r
}

#[tokio::test]
async fn summary_patch_rejects_compressed_body() {
    let fake = Fake::start().await;
    let path = format!("/api/v1/sessions/{EXT}/summary");
    let r = patch(&path, &json!({"summary": "s".repeat(1500)}))
        .zstd()
        .send(&fake)
        .await;
    assert_error(&r, 400, "Invalid request body");
    assert!(fake.violations()[0].contains("Content-Encoding"));
    let r = patch(&path, &json!({"summary": "s".repeat(1500)}))
        .send(&fake)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"status": "ok"}));
    let r = patch(&path, &json!({"summary": "s".repeat(2049)}))
        .send(&fake)
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(fake.summaries(), vec![(EXT.to_string(), "s".repeat(1500))]);
    // Content-Type is required here too, before auth.
    let r = patch(&path, &json!({"summary": "x"}))
        .content_type(None)
        .auth(None)
        .send(&fake)
        .await;
    assert_text(&r, 415, "Content-Type header required");
    // A percent-encoded segment is recorded decoded.
    let r = patch("/api/v1/sessions/a%2Db/summary", &json!({"summary": "y"}))
        .send(&fake)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(fake.summaries()[1], ("a-b".to_string(), "y".to_string()));
}

#[tokio::test]
async fn big_bodies_are_recorded_with_lines_elided() {
    let fake = Fake::start().await;
    let sid = init(&fake).await;
    let line = "z".repeat(300_000);
    let lines: Vec<&str> = vec![line.as_str(); 4];
    assert_eq!(
        Req::post(CHUNK, &chunk_body(&sid, 1, &lines))
            .zstd()
            .send(&fake)
            .await
            .status,
        200
    );
    let rec = fake.chunk_requests().pop().unwrap();
    assert!(rec.body_elided);
    assert_eq!(rec.line_count(), Some(4));
    assert_eq!(rec.first_line(), Some(1));
    assert!(rec.json_size > 1_200_000);
    assert_eq!(fake.lines(EXT, FILE)[3], line);
}

#[tokio::test]
async fn wait_until_times_out_and_wakes_on_requests() {
    let fake = Fake::start().await;
    let t = Instant::now();
    assert!(
        !fake
            .wait_until(Duration::from_millis(100), |f| f.request_count() > 0)
            .await
    );
    assert!(t.elapsed() >= Duration::from_millis(100));
    let (ok, _) = tokio::join!(
        fake.wait_until(Duration::from_secs(5), |f| f.count(Route::Init) == 1),
        init(&fake)
    );
    assert!(ok);
}

#[tokio::test]
async fn stop_ends_keep_alive_connections() {
    let fake = Fake::start().await;
    let c = client();
    let send = || {
        c.post(format!("{}{INIT}", fake.url()))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {API_KEY}"))
            .body(serde_json::to_vec(&init_body()).unwrap())
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200);
    fake.stop();
    assert!(send().await.is_err());
    assert_eq!(
        fake.count(Route::Init),
        1,
        "nothing is processed after stop"
    );
}

#[tokio::test]
async fn client_rule_violations_are_recorded() {
    let fake = Fake::start().await;
    let mut body = init_body();
    body.as_object_mut().unwrap().remove("metadata");
    body.as_object_mut().unwrap().remove("provider");
    assert_eq!(Req::post(INIT, &body).send(&fake).await.status, 200);
    let v = fake.violations();
    assert!(
        v.len() == 2 && v[0].contains("without metadata") && v[1].contains("without provider"),
        "{v:?}"
    );
    // A small body compressed, a big one sent plain.
    let small = Req::post(INIT, &init_body()).zstd().send(&fake).await;
    assert_eq!(small.status, 200);
    let sid = small.json()["session_id"].as_str().unwrap().to_string();
    let line = "p".repeat(2000);
    let big = Req::post(CHUNK, &chunk_body(&sid, 1, &[&line]))
        .plain()
        .send(&fake)
        .await;
    assert_eq!(big.status, 200);
    let v = fake.violations();
    assert!(
        v[2].contains("compressed (threshold") && v[3].contains("uncompressed"),
        "{v:?}"
    );
    // Agent chunks carry no metadata key; transcript chunks always do.
    let mut agent = chunk_body(&sid, 1, &["a"]);
    agent["file_name"] = json!("agent-abc12345.jsonl");
    agent["file_type"] = json!("agent");
    assert_eq!(Req::post(CHUNK, &agent).send(&fake).await.status, 200);
    assert!(fake.violations()[4].contains("agent chunk with a metadata key"));
    // A foreign User-Agent.
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}{INIT}", fake.url()))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {API_KEY}"))
        .body(serde_json::to_vec(&init_body()).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = fake.violations();
    assert!(v.len() == 6 && v[5].contains("User-Agent"), "{v:?}");
}

#[tokio::test]
async fn tens_of_megabytes_flow_through() {
    let fake = Fake::start().await;
    let sid = init(&fake).await;
    let lines: Vec<String> = (0..24_000)
        .map(|i| format!("{{\"i\":{i},\"t\":\"{}\"}}", "q".repeat(1000)))
        .collect();
    let t = Instant::now();
    let mut first = 1;
    for part in lines.chunks(4000) {
        let refs: Vec<&str> = part.iter().map(String::as_str).collect();
        let r = chunk(&fake, &sid, first, &refs).await;
        assert_eq!(r.status, 200, "{}", r.body);
        first += part.len() as u64;
    }
    assert_eq!(fake.lines(EXT, FILE), lines);
    assert_eq!(fake.merged_lines(EXT, FILE).len(), lines.len());
    assert!(fake
        .chunk_requests()
        .iter()
        .all(|r| r.body_elided && r.line_count() == Some(4000)));
    fake.assert_no_violations();
    eprintln!("24 MB through the fake in {:?}", t.elapsed());
}

#[tokio::test]
async fn client_timeout_during_hold_is_recorded_and_commit_survives() {
    let fake = Fake::start().await;
    let sid = init(&fake).await;
    fake.hold(Route::Chunk, Duration::from_millis(800), Times::Next(1));
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let res = impatient
        .post(format!("{}{CHUNK}", fake.url()))
        .header("content-type", "application/json")
        .header("user-agent", "confab-sync/0.1.0 (linux; amd64)")
        .header("authorization", format!("Bearer {API_KEY}"))
        .body(serde_json::to_vec(&chunk_body(&sid, 1, &["a"])).unwrap())
        .send()
        .await;
    assert!(res.unwrap_err().is_timeout());
    let done = fake
        .wait_until(Duration::from_secs(5), |f| f.chunk_requests()[0].done())
        .await;
    assert!(done);
    let rec = fake.chunk_requests().remove(0);
    assert!(rec.client_gone, "{rec:?}");
    assert_eq!(rec.status, 200);
    assert_eq!(fake.position(EXT, FILE), 1);
    fake.assert_no_violations();
}
