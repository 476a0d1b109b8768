//! A sink that writes JSON lines.

use async_trait::async_trait;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use super::{Batch, ChangeSink, SinkStart, SourceInfo};
use crate::change::Change;
use crate::error::{Error, ErrorKind, Result};

/// Writes each change as one JSON object per line (the serialized [`Change`](crate::Change))
/// to any `AsyncWrite`, flushing after every batch.
///
/// It keeps no position, so delivery is at least once across restarts: deduplicate by
/// `commit_lsn` + `ordinal` downstream, or write to a file with
/// [`JsonLinesFileSink`](super::JsonLinesFileSink), which keeps one. A batch counts as stored once the writer's `flush`
/// returns, and the slot moves on: `flush` on a `tokio::fs::File` does not fsync, so lines
/// written there survive the process dying but not the host losing power.
///
/// ```
/// let sink = bemi_core::sink::JsonLinesSink::new(tokio::io::stdout());
/// # drop(sink);
/// ```
#[derive(Debug)]
pub struct JsonLinesSink<W> {
    writer: W,
    line: Vec<u8>,
}

impl<W: AsyncWrite + Unpin + Send + 'static> JsonLinesSink<W> {
    /// A sink writing to `writer`.
    pub fn new(writer: W) -> Self {
        JsonLinesSink {
            writer,
            line: Vec::with_capacity(1024),
        }
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.writer
    }
}

#[async_trait]
impl<W: AsyncWrite + Unpin + Send + 'static> ChangeSink for JsonLinesSink<W> {
    async fn open(&mut self, _source: &SourceInfo) -> Result<SinkStart> {
        Ok(SinkStart::at(None))
    }

    async fn write(&mut self, batch: Batch) -> Result<()> {
        let failed = |e: std::io::Error| {
            Error::new(ErrorKind::Sink, "could not write JSON lines").with_source(e)
        };
        for change in &batch.changes {
            self.line.clear();
            append_line(&mut self.line, change)?;
            self.writer.write_all(&self.line).await.map_err(failed)?;
        }
        self.writer.flush().await.map_err(failed)
    }
}

/// Appends `change` as one line of JSON to `buffer`.
pub(super) fn append_line(buffer: &mut Vec<u8>, change: &Change) -> Result<()> {
    serde_json::to_writer(&mut *buffer, change)
        .map_err(|e| Error::new(ErrorKind::Sink, "could not serialize a change").with_source(e))?;
    buffer.push(b'\n');
    Ok(())
}
