//! What goes on the wire: the User-Agent, the URL of each route and the body encoding.
//!
//! Invariants:
//! - every URL is `base + route` with every trailing `/` of the base removed, so it never holds `//`
//!   after the scheme; a session id in a path is percent-encoded as one segment;
//! - init, chunk and event bodies of ≥ [`COMPRESS_MIN_BYTES`] go out as one zstd frame (level 3,
//!   content size in the header); anything else, and the summary PATCH always, goes out as plain
//!   JSON (the caller sets `Content-Type: application/json` on every body).

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::sink::SinkError;

/// JSON bodies at least this big are zstd-compressed (on the routes that accept it).
pub const COMPRESS_MIN_BYTES: usize = 1024;
const ZSTD_LEVEL: i32 = 3;

pub(super) const ROUTE_INIT: &str = "/api/v1/sync/init";
pub(super) const ROUTE_CHUNK: &str = "/api/v1/sync/chunk";
pub(super) const ROUTE_EVENT: &str = "/api/v1/sync/event";

/// Everything but unreserved characters is encoded in a path segment (`/` included).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `confab-sync/<version> (<os>; <arch>)` with Go's names for macOS, x86_64 and aarch64.
pub fn user_agent() -> String {
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("confab-sync/{} ({os}; {arch})", env!("CARGO_PKG_VERSION"))
}

/// `base` (trailing `/`s removed) + `route` (which starts with `/`).
pub(super) fn join(base: &str, route: &str) -> String {
    format!("{}{}", base.trim_end_matches('/'), route)
}

/// The summary PATCH route of `external_id`.
pub(super) fn summary_route(external_id: &str) -> String {
    format!(
        "/api/v1/sessions/{}/summary",
        utf8_percent_encode(external_id, PATH_SEGMENT)
    )
}

/// Returns the wire bytes and whether they are zstd.
pub(super) fn encode_body(json: &[u8], compressible: bool) -> Result<(Vec<u8>, bool), SinkError> {
    if !compressible || json.len() < COMPRESS_MIN_BYTES {
        return Ok((json.to_vec(), false));
    }
    let compress = || -> std::io::Result<Vec<u8>> {
        let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
        c.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))?;
        c.compress(json)
    };
    let wire =
        compress().map_err(|e| SinkError::NotSent(format!("zstd compression failed: {e}")))?;
    Ok((wire, true))
}

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, SinkError> {
    serde_json::to_vec(value).map_err(|e| SinkError::NotSent(format!("cannot serialize: {e}")))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::super::test_server::*;
    use super::*;
    use crate::sink::*;

    #[tokio::test]
    async fn g1_threshold_1024_bytes_and_content_type() {
        let srv = serve(|_, _| ack(1)).await;
        let s = sink(&srv.url());
        for n in [1023, 1024, 5000] {
            assert_eq!(send_chunk(&s, &json_of_len(n)).await, Ok(1));
        }
        let seen = srv.seen();
        assert_eq!(seen.len(), 3);
        for r in &seen {
            assert_eq!(r.method, "POST");
            assert_eq!(r.path, "/api/v1/sync/chunk");
            assert_eq!(r.header("content-type"), Some("application/json"));
        }
        assert_eq!(seen[0].header("content-encoding"), None);
        assert_eq!(seen[0].body, json_of_len(1023));
        for (r, n) in seen[1..].iter().zip([1024, 5000]) {
            assert_eq!(r.header("content-encoding"), Some("zstd"));
            let size = zstd::zstd_safe::get_frame_content_size(&r.body).unwrap();
            assert_eq!(size, Some(n as u64), "content size in the frame header");
            assert_eq!(zstd::decode_all(&r.body[..]).unwrap(), json_of_len(n));
        }
    }

    #[tokio::test]
    async fn init_and_event_compress_only_when_large() {
        let srv = serve(|i, _| match i {
            0 | 1 => json(200, r#"{"session_id":"s-1","files":null}"#),
            _ => json(200, r#"{"success":true}"#),
        })
        .await;
        let s = sink(&srv.url());
        s.init(&init_req("/small")).await.unwrap();
        let big = format!("/{}", "d".repeat(2000));
        s.init(&init_req(&big)).await.unwrap();
        s.event(&event_req()).await.unwrap();
        let seen = srv.seen();
        assert_eq!(seen[0].header("content-encoding"), None);
        assert_eq!(
            seen[0].body,
            serde_json::to_vec(&init_req("/small")).unwrap()
        );
        assert_eq!(seen[1].header("content-encoding"), Some("zstd"));
        let plain = zstd::decode_all(&seen[1].body[..]).unwrap();
        assert_eq!(plain, serde_json::to_vec(&init_req(&big)).unwrap());
        assert_eq!(seen[2].path, "/api/v1/sync/event");
        assert_eq!(seen[2].header("content-encoding"), None);
        for r in &seen {
            assert_eq!(r.header("content-type"), Some("application/json"));
        }
    }

    #[tokio::test]
    async fn g2_repetitive_json_compresses_to_half_or_less() {
        let srv = serve(|_, _| ack(200)).await;
        let s = sink(&srv.url());
        let line = r#"{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"hello world"}]}}"#;
        let lines = vec![line.to_string(); 200];
        let req = chunk_req(&lines);
        let json = serde_json::to_vec(&req).unwrap();
        assert_eq!(s.chunk(&req, &json).await, Ok(200));
        let wire = &srv.seen()[0].body;
        assert!(
            wire.len() * 2 <= json.len(),
            "{} vs {}",
            wire.len(),
            json.len()
        );
        assert_eq!(zstd::decode_all(&wire[..]).unwrap(), json);
    }

    #[test]
    fn g7_join_never_doubles_slashes() {
        for base in ["http://h:1", "http://h:1/", "http://h:1//"] {
            assert_eq!(join(base, ROUTE_INIT), "http://h:1/api/v1/sync/init");
        }
        assert_eq!(
            join("http://h:1/pre/", ROUTE_INIT),
            "http://h:1/pre/api/v1/sync/init"
        );
        assert_eq!(
            join("http://h:1/pre", ROUTE_CHUNK),
            "http://h:1/pre/api/v1/sync/chunk"
        );
    }

    #[tokio::test]
    async fn patch_summary_is_never_compressed() {
        let srv = serve(|i, _| match i {
            0 => json(200, r#"{"status":"ok"}"#),
            1 => text(200, ""),
            _ => json(404, r#"{"error":"Session not found"}"#),
        })
        .await;
        let s = sink(&srv.url());
        let summary = "s".repeat(1500);
        assert_eq!(s.patch_summary("62d346b1-08c1", &summary).await, Ok(()));
        assert_eq!(s.patch_summary("a/b c", "short").await, Ok(()));
        assert_eq!(s.patch_summary("x", "y").await, Err(SinkError::SessionGone));
        let seen = srv.seen();
        assert_eq!(seen[0].method, "PATCH");
        assert_eq!(seen[0].path, "/api/v1/sessions/62d346b1-08c1/summary");
        assert_eq!(seen[0].header("content-encoding"), None);
        assert_eq!(seen[0].header("content-type"), Some("application/json"));
        let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
        assert_eq!(body, serde_json::json!({ "summary": summary }));
        assert_eq!(seen[1].path, "/api/v1/sessions/a%2Fb%20c/summary");
    }
}
