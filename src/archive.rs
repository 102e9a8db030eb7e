//! The local archive sink (sync-engine §13). STUB.

use std::path::PathBuf;

use async_trait::async_trait;

use crate::sink::*;

pub struct ArchiveSink {
    root: PathBuf,
}

impl ArchiveSink {
    /// `root` is absolute; directories are created on init.
    pub fn new(root: PathBuf) -> ArchiveSink {
        ArchiveSink { root }
    }
}

#[async_trait]
impl Sink for ArchiveSink {
    fn identity(&self) -> String {
        format!("file://{}", self.root.display())
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
