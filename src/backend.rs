//! The confab HTTP backend sink (protocol.md). STUB.

use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigError;
use crate::sink::*;

pub struct HttpSink {
    base_url: String,
}

impl HttpSink {
    pub fn new(
        base_url: &str,
        api_key: &str,
        timeout: Duration,
        cancel: CancellationToken,
    ) -> Result<HttpSink, ConfigError> {
        let _ = (api_key, timeout, cancel);
        Ok(HttpSink { base_url: base_url.to_string() })
    }
}

#[async_trait]
impl Sink for HttpSink {
    fn identity(&self) -> String {
        self.base_url.clone()
    }
    async fn init(&self, _req: &InitRequest) -> Result<InitResponse, SinkError> {
        todo!()
    }
    async fn chunk(&self, _req: &ChunkRequest<'_>, _json: &[u8]) -> Result<u64, SinkError> {
        todo!()
    }
    async fn event(&self, _req: &EventRequest) -> Result<(), SinkError> {
        todo!()
    }
    async fn patch_summary(&self, _external_id: &str, _summary: &str) -> Result<(), SinkError> {
        todo!()
    }
}
