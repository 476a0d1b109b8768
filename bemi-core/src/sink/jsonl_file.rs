//! A sink that appends JSON lines to a file and keeps its position, for exactly once.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::jsonl::append_line;
use super::{Batch, ChangeSink, SinkStart, SourceInfo};
use crate::error::{Error, ErrorKind, Result};
use crate::Lsn;

/// Appends each change as one JSON object per line (the serialized [`Change`](crate::Change))
/// to a file, exactly once across restarts and crashes.
///
/// Beside the file, `<file>.position` holds the source's identity and the position the file is
/// complete through (replaced atomically after the lines of every batch that completes a
/// transaction). When it opens, the sink cuts a torn last line (a crash in the middle of a
/// write), reads the key (`commit_lsn`, `ordinal`) of the last complete line, and reports the
/// stored position: the tracker resumes there, and any change at or before the last line's key
/// (lines written after the position was last stored) is skipped. So every change is in the
/// file exactly once, also with [catch-up](crate::TrackerBuilder::catch_up).
///
/// A batch is durable once its lines are written and, with [`fsync`](Self::fsync) (the
/// default), synced to disk with `fdatasync` before the position file is replaced and synced
/// too; without it they survive the process dying but not the host losing power. A file
/// written for another source or slot is refused.
///
/// ```no_run
/// # async fn run(options: bemi_core::ConnectOptions) -> bemi_core::Result<()> {
/// let sink = bemi_core::sink::JsonLinesFileSink::new("changes.jsonl");
/// let tracker = bemi_core::Tracker::builder(options, sink).start().await?;
/// # drop(tracker); Ok(()) }
/// ```
#[derive(Debug)]
pub struct JsonLinesFileSink {
    path: PathBuf,
    fsync: bool,
    file: Option<std::fs::File>,
    position: Option<Position>,
    /// The key of the last line in the file.
    last: Option<(Lsn, u32)>,
    lines: Vec<u8>,
}

/// What `<file>.position` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Position {
    system_id: String,
    database: String,
    slot: String,
    durable_through: Option<Lsn>,
}

/// The key of a line, all a recovery reads of it.
#[derive(Deserialize)]
struct Key {
    commit_lsn: Lsn,
    ordinal: u32,
}

impl JsonLinesFileSink {
    /// A sink appending to the file at `path` (created when missing, when the sink opens).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        JsonLinesFileSink {
            path: path.into(),
            fsync: true,
            file: None,
            position: None,
            last: None,
            lines: Vec::with_capacity(64 * 1024),
        }
    }

    /// Whether every batch is synced to disk before it counts as stored (default `true`).
    pub fn fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    /// Where the position is kept: `<file>.position`.
    pub fn position_path(&self) -> PathBuf {
        let mut path = self.path.clone().into_os_string();
        path.push(".position");
        PathBuf::from(path)
    }

    /// Replaces the position file (written aside, then renamed over it).
    async fn store_position(&self, position: &Position) -> Result<()> {
        let (path, fsync) = (self.position_path(), self.fsync);
        let text = serde_json::to_vec(position).map_err(|e| {
            Error::new(ErrorKind::Sink, "could not serialize the position").with_source(e)
        })?;
        blocking(move || {
            let mut aside = path.clone().into_os_string();
            aside.push(".new");
            let mut file = std::fs::File::create(&aside)?;
            file.write_all(&text)?;
            if fsync {
                file.sync_data()?;
            }
            std::fs::rename(&aside, &path)
        })
        .await
        .map_err(|e| io_error(e, "could not store the position of", &self.position_path()))
    }
}

#[async_trait]
impl ChangeSink for JsonLinesFileSink {
    async fn open(&mut self, source: &SourceInfo) -> Result<SinkStart> {
        self.file = None;
        let stored = read_position(&self.position_path()).await?;
        let position = match stored {
            Some(stored) => {
                if (&stored.system_id, &stored.slot) != (&source.system_id, &source.slot) {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!(
                            "{} holds changes of slot {:?} of system {}, not of slot {:?} of \
                             system {}; write to another file",
                            self.path.display(),
                            stored.slot,
                            stored.system_id,
                            source.slot,
                            source.system_id
                        ),
                    ));
                }
                stored
            }
            None => Position {
                system_id: source.system_id.clone(),
                database: source.database.clone(),
                slot: source.slot.clone(),
                durable_through: None,
            },
        };
        let path = self.path.clone();
        let (file, last) = blocking(move || recover(&path))
            .await
            .map_err(|e| io_error(e, "could not open", &self.path))?;
        self.last = last;
        self.file = Some(file);
        let durable = position.durable_through;
        self.position = Some(position);
        Ok(SinkStart::at(durable))
    }

    async fn write(&mut self, batch: Batch) -> Result<()> {
        self.lines.clear();
        for change in &batch.changes {
            let key = (change.commit_lsn, change.ordinal);
            if self.last.is_some_and(|last| key <= last) {
                continue;
            }
            append_line(&mut self.lines, change)?;
            self.last = Some(key);
        }
        if !self.lines.is_empty() {
            let mut file = self
                .file
                .take()
                .ok_or_else(|| Error::new(ErrorKind::Sink, "the sink was not opened"))?;
            let (lines, fsync) = (std::mem::take(&mut self.lines), self.fsync);
            let (file, lines) = blocking(move || {
                file.write_all(&lines)?;
                if fsync {
                    file.sync_data()?;
                }
                Ok((file, lines))
            })
            .await
            .map_err(|e| io_error(e, "could not write to", &self.path))?;
            (self.file, self.lines) = (Some(file), lines);
        }
        let Some(durable) = batch.durable_through else {
            return Ok(());
        };
        let mut position = self
            .position
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::Sink, "the sink was not opened"))?;
        if position.durable_through >= Some(durable) {
            return Ok(());
        }
        position.durable_through = Some(durable);
        self.store_position(&position).await?;
        self.position = Some(position);
        Ok(())
    }
}

/// Reads the position file, if there is one.
async fn read_position(path: &Path) -> Result<Option<Position>> {
    let read = path.to_owned();
    let text = match blocking(move || std::fs::read(read)).await {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(e, "could not read", path)),
    };
    serde_json::from_slice(&text).map(Some).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!(
                "{} is not a position file of a JSON-lines sink",
                path.display()
            ),
        )
        .with_source(e)
    })
}

/// Opens the file for appending, cuts a torn last line and reads the last line's key.
fn recover(path: &Path) -> std::io::Result<(std::fs::File, Option<(Lsn, u32)>)> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)?;
    let length = file.metadata()?.len();
    // The last newline ends the last complete line; what follows it is torn.
    let Some(end) = last_newline(&mut file, length)? else {
        file.set_len(0)?;
        return Ok((file, None));
    };
    if end + 1 < length {
        tracing::warn!(path = %path.display(), bytes = length - end - 1, "cutting a torn last line");
        file.set_len(end + 1)?;
        file.sync_data()?;
    }
    let start = last_newline(&mut file, end)?.map_or(0, |n| n + 1);
    let mut line = vec![0; (end - start) as usize];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut line)?;
    let key: Key = serde_json::from_slice(&line).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("its last line is no change: {e}"),
        )
    })?;
    Ok((file, Some((key.commit_lsn, key.ordinal))))
}

/// The offset of the last `\n` before `before`, reading backwards in blocks.
fn last_newline(file: &mut std::fs::File, before: u64) -> std::io::Result<Option<u64>> {
    let mut block = vec![0; 64 * 1024];
    let mut end = before;
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let block = &mut block[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(block)?;
        if let Some(i) = block.iter().rposition(|b| *b == b'\n') {
            return Ok(Some(start + i as u64));
        }
        end = start;
    }
    Ok(None)
}

/// Runs file I/O off the runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

fn io_error(e: std::io::Error, doing: &str, path: &Path) -> Error {
    Error::new(ErrorKind::Sink, format!("{doing} {}", path.display()))
        .with_source(e)
        .with_transient(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Change;

    fn change(commit: u64, ordinal: u32) -> Change {
        let mut change = Change::gap("db", Lsn(0), Lsn(commit), "test", chrono::Utc::now());
        change.ordinal = ordinal;
        change
    }

    fn source() -> SourceInfo {
        SourceInfo::new("7", "db", "slot")
    }

    fn keys(path: &Path) -> Vec<(Lsn, u32)> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|line| {
                let key: Key = serde_json::from_str(line).unwrap();
                (key.commit_lsn, key.ordinal)
            })
            .collect()
    }

    #[tokio::test]
    async fn resumes_after_its_position_and_skips_lines_written_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("changes.jsonl");
        let mut sink = JsonLinesFileSink::new(&path);
        assert_eq!(sink.open(&source()).await.unwrap().durable, None);
        sink.write(Batch::new(
            vec![change(100, 0), change(100, 1)],
            Some(Lsn(110)),
        ))
        .await
        .unwrap();
        // part of a transaction: written, position unchanged
        sink.write(Batch::new(vec![change(200, 0)], None))
            .await
            .unwrap();

        let mut sink = JsonLinesFileSink::new(&path);
        assert_eq!(sink.open(&source()).await.unwrap().durable, Some(Lsn(110)));
        // the replay from the position: the part already written is skipped
        sink.write(Batch::new(
            vec![change(200, 0), change(200, 1)],
            Some(Lsn(210)),
        ))
        .await
        .unwrap();
        assert_eq!(
            keys(&path),
            [(Lsn(100), 0), (Lsn(100), 1), (Lsn(200), 0), (Lsn(200), 1)]
        );
        let mut sink = JsonLinesFileSink::new(&path);
        assert_eq!(sink.open(&source()).await.unwrap().durable, Some(Lsn(210)));
    }

    #[tokio::test]
    async fn cuts_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("changes.jsonl");
        let mut sink = JsonLinesFileSink::new(&path).fsync(false);
        sink.open(&source()).await.unwrap();
        sink.write(Batch::new(vec![change(100, 0)], Some(Lsn(110))))
            .await
            .unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, b"{\"primary_key\":nu").unwrap();

        let mut sink = JsonLinesFileSink::new(&path).fsync(false);
        sink.open(&source()).await.unwrap();
        sink.write(Batch::new(
            vec![change(100, 0), change(200, 0)],
            Some(Lsn(210)),
        ))
        .await
        .unwrap();
        assert_eq!(keys(&path), [(Lsn(100), 0), (Lsn(200), 0)]);
    }

    #[tokio::test]
    async fn refuses_a_file_of_another_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("changes.jsonl");
        let mut sink = JsonLinesFileSink::new(&path);
        sink.open(&source()).await.unwrap();
        sink.write(Batch::new(Vec::new(), Some(Lsn(110))))
            .await
            .unwrap();
        let other = SourceInfo::new("7", "db", "other");
        let e = JsonLinesFileSink::new(&path)
            .open(&other)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    }
}
