//! What comes back: reading a response body within limits, turning a non-2xx answer or a
//! transport failure into a [`SinkError`] (protocol.md §2), and parsing the 2xx bodies.
//!
//! Invariants:
//! - a response is read up to [`MAX_RESPONSE_BYTES`] (after gzip decoding) and never parsed when
//!   cut; response text reaches logs and errors only through [`snippet`] (at most 256 escaped
//!   bytes);
//! - a transport failure is `NotSent` only when the connection never came up, else `Unknown`;
//! - every non-2xx, non-429 answer is classified per §2. A malformed 2xx body (empty, not JSON,
//!   wrong shape, empty `session_id`, negative or non-integer positions) is
//!   [`SinkError::Unknown`] on every route: for a chunk the outcome really is unknown, init is
//!   idempotent and simply retried, and an event is never retried by the engine anyway.

use std::collections::BTreeMap;

use reqwest::StatusCode;
use serde_json::Value;

use crate::sink::{InitResponse, SinkError};

/// Largest response body we read (protocol §1).
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
const LOG_BODY_BYTES: usize = 256;

pub(super) fn header_str(
    resp: &reqwest::Response,
    name: reqwest::header::HeaderName,
) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// A transport failure: nothing sent when the connection never came up, unknown otherwise.
pub(super) fn transport_error(e: reqwest::Error) -> SinkError {
    let msg = describe(&e);
    if e.is_connect() {
        SinkError::NotSent(msg)
    } else if e.is_builder() {
        SinkError::Config(msg)
    } else {
        after_start(&e, msg)
    }
}

/// A failure once the request has started: the outcome is unknown, and a timeout says so.
fn after_start(e: &reqwest::Error, msg: String) -> SinkError {
    if e.is_timeout() {
        SinkError::TimedOut(msg)
    } else {
        SinkError::Unknown(msg)
    }
}

/// The error and its causes on one line ("connection refused" hides in the sources).
fn describe(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// Reads the whole body, refusing more than [`MAX_RESPONSE_BYTES`] (after gzip decoding).
pub(super) async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, SinkError> {
    let too_large =
        || SinkError::Unknown(format!("response too large (over {MAX_RESPONSE_BYTES} B)"));
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(piece) = resp
        .chunk()
        .await
        .map_err(|e| after_start(&e, format!("reading the response: {}", describe(&e))))?
    {
        if body.len() + piece.len() > MAX_RESPONSE_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&piece);
    }
    Ok(body)
}

/// At most the first 256 B of `text`, control characters escaped, `… (truncated)` when cut.
pub(super) fn snippet(text: &[u8]) -> String {
    let head = &text[..text.len().min(LOG_BODY_BYTES)];
    let mut out = String::with_capacity(head.len() + 16);
    for c in String::from_utf8_lossy(head).chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if text.len() > LOG_BODY_BYTES {
        out.push_str("… (truncated)");
    }
    out
}

/// The backend's message: `error` of a JSON body (handler errors), else the text (middleware).
fn error_message(body: &[u8]) -> (String, bool) {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
        if let Some(Value::String(m)) = map.get("error") {
            return (m.trim().to_string(), true);
        }
    }
    (String::from_utf8_lossy(body).trim().to_string(), false)
}

/// Maps a non-2xx, non-429 answer to what the engine must do (protocol §2).
pub(super) fn classify(status: StatusCode, location: Option<&str>, body: &[u8]) -> SinkError {
    let (message, json) = error_message(body);
    let text = format!("HTTP {}: {}", status.as_u16(), snippet(message.as_bytes()));
    let code = status.as_u16();
    match code {
        300..=399 => SinkError::Config(format!(
            "HTTP {code}: backend_url redirects to {}; fix the config",
            location.map_or_else(|| "(no Location header)".into(), |l| snippet(l.as_bytes()))
        )),
        400 if message.contains("chunks must be contiguous") => SinkError::Contiguity(text),
        400 if message.starts_with("File has too many chunks") => SinkError::TooManyChunks(text),
        400 if message == "Invalid request body" || message == "Invalid JSON body" => {
            SinkError::BodyTooLarge(text)
        }
        400 => SinkError::BadRequest(text),
        413 => SinkError::BodyTooLarge(text),
        401 => SinkError::Auth(text),
        403 if json && message == "Storage access denied" => SinkError::Server(text),
        403 => SinkError::Auth(text),
        404 if json && message == "Session not found" => SinkError::SessionGone,
        404 if json && message == "File not found in storage" => SinkError::Server(text),
        404 | 405 | 415 => SinkError::Config(text),
        500..=599 => SinkError::Server(text),
        _ => SinkError::BadRequest(text),
    }
}

pub(super) fn protocol_error(what: &str) -> SinkError {
    SinkError::Unknown(format!("protocol error: {what}"))
}

fn parse_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, SinkError> {
    if body.is_empty() {
        return Err(protocol_error("empty 2xx response"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(protocol_error("2xx response is not a JSON object")),
        Err(e) => Err(protocol_error(&format!("2xx response is not JSON ({e})"))),
    }
}

pub(super) fn parse_init(body: &[u8]) -> Result<InitResponse, SinkError> {
    let map = parse_object(body)?;
    let session_id = match map.get("session_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(protocol_error("init response has no session_id")),
    };
    let mut files = BTreeMap::new();
    match map.get("files") {
        None | Some(Value::Null) => {}
        Some(Value::Object(entries)) => {
            for (name, entry) in entries {
                let line = entry
                    .get("last_synced_line")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| {
                        protocol_error(&format!(
                            "init position of {:?} is not a non-negative integer",
                            snippet(name.as_bytes())
                        ))
                    })?;
                files.insert(name.clone(), line);
            }
        }
        Some(_) => return Err(protocol_error("init `files` is not an object")),
    }
    Ok(InitResponse { session_id, files })
}

pub(super) fn parse_chunk(body: &[u8]) -> Result<u64, SinkError> {
    parse_object(body)?
        .get("last_synced_line")
        .and_then(Value::as_u64)
        .ok_or_else(|| protocol_error("chunk response has no valid last_synced_line"))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use axum::response::Response;
    use tokio_util::sync::CancellationToken;

    use super::super::test_server::*;
    use super::super::HttpSink;
    use super::*;
    use crate::sink::Sink;

    type Check = fn(&SinkError) -> bool;

    #[tokio::test]
    async fn g6_401_403_are_auth_404_500_are_not() {
        let answers: Vec<(Response, Check)> = vec![
            (text(401, "Invalid API key\n"), |e| e.is_auth()),
            (text(403, "Account deactivated\n"), |e| e.is_auth()),
            (
                json(403, r#"{"error":"read_only_user","message":"x"}"#),
                |e| e.is_auth(),
            ),
            (json(403, r#"{"error":"Access denied"}"#), |e| e.is_auth()),
            (json(403, r#"{"error":"Storage access denied"}"#), |e| {
                matches!(e, SinkError::Server(_))
            }),
            (text(404, "404 page not found\n"), |e| {
                matches!(e, SinkError::Config(_))
            }),
            (json(404, r#"{"error":"Session not found"}"#), |e| {
                *e == SinkError::SessionGone
            }),
            (json(404, r#"{"error":"File not found in storage"}"#), |e| {
                matches!(e, SinkError::Server(_))
            }),
            (json(500, r#"{"error":"Failed to upload chunk"}"#), |e| {
                matches!(e, SinkError::Server(_)) && e.outcome_unknown()
            }),
            (text(503, "Storage temporarily unavailable\n"), |e| {
                matches!(e, SinkError::Server(_))
            }),
        ];
        let (responses, checks): (Vec<_>, Vec<_>) = answers.into_iter().unzip();
        let responses = Mutex::new(responses.into_iter());
        let srv = serve(move |_, _| responses.lock().unwrap().next().unwrap()).await;
        let s = sink(&srv.url());
        for (i, check) in checks.into_iter().enumerate() {
            let err = send_chunk(&s, b"{}").await.unwrap_err();
            assert!(check(&err), "answer {i}: {err:?}");
            let auth = i < 4;
            assert_eq!(err.is_auth(), auth, "answer {i}: {err:?}");
        }
    }

    #[test]
    fn classify_400s_413_415_405() {
        let c = |status: u16, body: &str| {
            classify(StatusCode::from_u16(status).unwrap(), None, body.as_bytes())
        };
        let contiguity = r#"{"error":"first_line must be 5 (got 9) - chunks must be contiguous"}"#;
        assert!(matches!(c(400, contiguity), SinkError::Contiguity(m) if m.contains("got 9")));
        let many = "{\"error\":\"File has too many chunks (limit: 30000). Consider starting a new session.\"}\n";
        assert!(matches!(c(400, many), SinkError::TooManyChunks(_)));
        assert!(matches!(
            c(400, r#"{"error":"Invalid request body"}"#),
            SinkError::BodyTooLarge(_)
        ));
        assert!(matches!(
            c(400, r#"{"error":"Invalid JSON body"}"#),
            SinkError::BodyTooLarge(_)
        ));
        assert!(matches!(
            c(413, "<html>too big</html>"),
            SinkError::BodyTooLarge(_)
        ));
        assert!(
            matches!(c(400, r#"{"error":"summary too long"}"#), SinkError::BadRequest(m) if m.contains("summary too long"))
        );
        assert!(matches!(
            c(415, "Content-Type must be application/json\n"),
            SinkError::Config(_)
        ));
        assert!(matches!(c(405, ""), SinkError::Config(_)));
        assert!(matches!(c(409, "{}"), SinkError::BadRequest(_)));
        // Only a JSON "Session not found" means the session is gone.
        assert!(matches!(
            c(404, "Session not found\n"),
            SinkError::Config(_)
        ));
    }

    #[tokio::test]
    async fn g8_redirect_not_followed_and_reported_with_location() {
        let srv = serve(|i, _| match i {
            0 => with_header(
                text(301, ""),
                "location",
                "https://elsewhere.example/api/v1/sync/chunk",
            ),
            _ => ack(1),
        })
        .await;
        let s = sink(&srv.url());
        let err = send_chunk(&s, b"{}").await.unwrap_err();
        match &err {
            SinkError::Config(m) => {
                assert!(m.contains("301"), "{m}");
                assert!(
                    m.contains("redirects to https://elsewhere.example/api/v1/sync/chunk"),
                    "{m}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(srv.seen().len(), 1, "the redirect was not followed");
    }

    #[tokio::test]
    async fn g9_bad_2xx_chunk_body_is_unknown() {
        let bodies = [
            "",
            "not json",
            "{}",
            r#"{"last_synced_line":-1}"#,
            r#"{"last_synced_line":1.5}"#,
            "[1]",
        ];
        let srv = serve(move |i, _| {
            let ct = if i == 1 {
                "text/plain"
            } else {
                "application/json"
            };
            with_header(text(200, bodies[i]), "content-type", ct)
        })
        .await;
        let s = sink(&srv.url());
        for body in bodies {
            let err = send_chunk(&s, b"{}").await.unwrap_err();
            assert!(matches!(err, SinkError::Unknown(_)), "{body:?}: {err:?}");
            assert!(err.outcome_unknown());
        }
    }

    #[test]
    fn init_response_parsing() {
        let ok = parse_init(br#"{"session_id":"abc","provider":"claude-code","extra":1,"files":{"a.jsonl":{"last_synced_line":12},"subagents/x":{"last_synced_line":0}}}"#).unwrap();
        assert_eq!(ok.session_id, "abc");
        assert_eq!(
            ok.files.len(),
            2,
            "raw keys are kept for the engine to validate"
        );
        assert_eq!(ok.files["a.jsonl"], 12);
        for empty in [
            r#"{"session_id":"abc","files":null}"#,
            r#"{"session_id":"abc"}"#,
            r#"{"session_id":"abc","files":{}}"#,
        ] {
            assert_eq!(
                parse_init(empty.as_bytes()).unwrap().files.len(),
                0,
                "{empty}"
            );
        }
        for bad in [
            "",
            "[]",
            r#"{"session_id":""}"#,
            r#"{"files":{}}"#,
            r#"{"session_id":7}"#,
            r#"{"session_id":"a","files":{"f":{"last_synced_line":-1}}}"#,
            r#"{"session_id":"a","files":{"f":{"last_synced_line":2.5}}}"#,
            r#"{"session_id":"a","files":{"f":{}}}"#,
            r#"{"session_id":"a","files":[]}"#,
        ] {
            assert!(
                matches!(parse_init(bad.as_bytes()), Err(SinkError::Unknown(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn event_needs_valid_json() {
        let srv = serve(|i, _| match i {
            0 => json(200, r#"{"success":true}"#),
            1 => json(200, ""),
            _ => json(404, r#"{"error":"Session not found"}"#),
        })
        .await;
        let s = sink(&srv.url());
        assert_eq!(s.event(&event_req()).await, Ok(()));
        assert!(matches!(
            s.event(&event_req()).await,
            Err(SinkError::Unknown(_))
        ));
        assert_eq!(s.event(&event_req()).await, Err(SinkError::SessionGone));
    }

    #[tokio::test]
    async fn response_over_32_mib_is_an_error() {
        // With a Content-Length.
        let srv = serve(|_, _| json(200, &" ".repeat(MAX_RESPONSE_BYTES + 1))).await;
        let err = send_chunk(&sink(&srv.url()), b"{}").await.unwrap_err();
        assert!(
            matches!(&err, SinkError::Unknown(m) if m.contains("response too large")),
            "{err:?}"
        );

        // Without one: the body is streamed until the connection closes.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let head =
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n";
            conn.write_all(head.as_bytes()).await.unwrap();
            let piece = vec![b' '; 1 << 20];
            for _ in 0..40 {
                if conn.write_all(&piece).await.is_err() {
                    return; // the client gave up, as it should
                }
            }
        });
        let err = send_chunk(&sink(&format!("http://{addr}")), b"{}")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, SinkError::Unknown(m) if m.contains("response too large")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn connect_refused_is_not_sent_and_timeout_is_timed_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = send_chunk(&sink(&format!("http://{addr}")), b"{}")
            .await
            .unwrap_err();
        assert!(matches!(err, SinkError::NotSent(_)), "{err:?}");
        assert!(!err.outcome_unknown());

        let srv = serve(|_, _| ack(1)).await;
        let hold = axum::Router::new().fallback(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "late"
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let slow = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, hold).await.unwrap() });
        let s = HttpSink::new(
            &format!("http://{slow}"),
            KEY,
            Duration::from_millis(300),
            CancellationToken::new(),
        )
        .unwrap();
        let err = send_chunk(&s, b"{}").await.unwrap_err();
        assert!(matches!(err, SinkError::TimedOut(_)), "{err:?}");
        assert!(err.outcome_unknown());
        drop(srv);
    }

    #[test]
    fn snippet_escapes_and_truncates() {
        assert_eq!(snippet(b"a\nb\x1b"), "a\\nb\\u{1b}");
        let long = "x".repeat(300);
        let s = snippet(long.as_bytes());
        assert_eq!(s, format!("{}… (truncated)", "x".repeat(256)));
    }
}
