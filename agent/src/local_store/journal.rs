//! `<data-dir>/tasks.journal`: every change to the task records, appended.
//!
//! ```text
//! file   = "MKAGJRN1" record*
//! record = payload length (u32 LE) | CRC-32 of payload (u32 LE) | payload
//! payload = Entry: a whole TaskRecord (put) or a task id (delete)
//! ```
//!
//! A change costs one append and one `fdatasync`, where a file per record
//! cost a new file, two fsyncs and a rename; changes staged one after
//! another go to the file in one write and share one `fdatasync`. The file
//! is rewritten with only the live records (temp file, fsync, rename) at
//! start-up and whenever superseded entries outnumber live ones. A crash can
//! only cut short the last write, which was never acknowledged: its torn
//! record is dropped.
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;

use super::{write_atomic, StoreError, TaskRecord};

/// File name under the data dir.
pub(super) const FILE: &str = "tasks.journal";
const MAGIC: &[u8; 8] = b"MKAGJRN1";
const RECORD_HEADER: usize = 8;
const PUT: u32 = 1;
const DELETE: u32 = 2;

#[derive(Clone, PartialEq, prost::Message)]
struct Entry {
    #[prost(oneof = "Op", tags = "1, 2")]
    op: Option<Op>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Op {
    #[prost(message, tag = "1")]
    Put(Box<TaskRecord>),
    #[prost(string, tag = "2")]
    Delete(String),
}

/// Live records by task id, each kept encoded.
pub(super) type Live = BTreeMap<String, Vec<u8>>;

/// What the journal file held.
#[derive(Debug, Default)]
pub(super) struct Loaded {
    /// Live records after every whole entry.
    pub(super) live: Live,
    /// The last record was cut short (a crash while writing it).
    pub(super) torn_tail: bool,
    /// A damaged record with data after it: where, and why. Entries before
    /// it are in `live`; the rest of the file is unreadable.
    pub(super) damage: Option<String>,
}

/// Reads the journal at `path`; `None` when there is none.
pub(super) fn read(path: &Path) -> io::Result<Option<Loaded>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut out = Loaded::default();
    if !bytes.starts_with(MAGIC) {
        if MAGIC.starts_with(&bytes) {
            out.torn_tail = true; // created, header not yet written
        } else {
            out.damage = Some("not a task journal (bad header)".into());
        }
        return Ok(Some(out));
    }
    let mut at = MAGIC.len();
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + RECORD_HEADER) else {
            out.torn_tail = true;
            break;
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let start = at + RECORD_HEADER;
        let end = start.saturating_add(len);
        let whole = bytes
            .get(start..end)
            .filter(|p| crc32fast::hash(p) == crc)
            .and_then(|p| Entry::decode(p).ok());
        match whole {
            Some(entry) => apply(&mut out.live, entry),
            // Appends are sequential: only the last record can be unfinished.
            None if end >= bytes.len() => {
                out.torn_tail = true;
                break;
            }
            None => {
                out.damage = Some(format!("unreadable record at byte {at}"));
                break;
            }
        }
        at = end;
    }
    Ok(Some(out))
}

fn apply(live: &mut Live, entry: Entry) {
    match entry.op {
        Some(Op::Put(rec)) => {
            live.insert(rec.task_id().to_string(), rec.encode_to_vec());
        }
        Some(Op::Delete(id)) => {
            live.remove(&id);
        }
        None => {} // a kind of change from a newer agent: nothing to keep
    }
}

/// The open journal, appended to.
#[derive(Debug)]
pub(super) struct Journal {
    file: File,
    /// Entries in the file; compared with the live count to decide a rewrite.
    entries: usize,
    /// Staged entries, not yet written: a round's records go to the file
    /// in one write, just before the one `fdatasync` that makes them
    /// durable. Until then nothing was promised about them.
    pending: Vec<u8>,
}

impl Journal {
    /// Writes a journal holding exactly `live` at `dir/FILE`, replacing the
    /// old one atomically, and opens it for appending.
    pub(super) fn write_fresh(dir: &Path, live: &Live) -> Result<Self, StoreError> {
        let mut buf = MAGIC.to_vec();
        for record in live.values() {
            push_record(&mut buf, PUT, record);
        }
        write_atomic(dir, FILE, &buf)?;
        let path = path(dir);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|source| StoreError::Io {
                action: "open",
                path,
                source,
            })?;
        Ok(Self {
            file,
            entries: live.len(),
            pending: Vec::new(),
        })
    }

    /// Entries in the file.
    pub(super) fn entries(&self) -> usize {
        self.entries
    }

    /// Appends a put of `record` (an encoded TaskRecord), durably.
    pub(super) fn put(&mut self, record: &[u8]) -> io::Result<()> {
        self.append(PUT, record)
    }

    /// Appends a delete of `task_id`, durably.
    pub(super) fn delete(&mut self, task_id: &str) -> io::Result<()> {
        self.append(DELETE, task_id.as_bytes())
    }

    /// Stages a put of `record` without touching the file: it is written
    /// and made durable by the next [`Journal::sync`] (or durable append).
    pub(super) fn stage(&mut self, record: &[u8]) {
        self.push(PUT, record);
    }

    /// Stages a delete of `task_id`, like [`Journal::stage`].
    pub(super) fn stage_delete(&mut self, task_id: &str) {
        self.push(DELETE, task_id.as_bytes());
    }

    /// Writes every staged entry and makes it durable; whether there was any.
    pub(super) fn sync(&mut self) -> io::Result<bool> {
        if self.pending.is_empty() {
            return Ok(false);
        }
        self.write_pending()?;
        self.file.sync_data()?;
        Ok(true)
    }

    fn append(&mut self, tag: u32, value: &[u8]) -> io::Result<()> {
        self.push(tag, value);
        self.write_pending()?;
        self.file.sync_data()
    }

    /// Adds an entry to the staged ones.
    fn push(&mut self, tag: u32, value: &[u8]) {
        push_record(&mut self.pending, tag, value);
        self.entries += 1;
    }

    /// One write for everything staged. On an error the store rewrites the
    /// whole file from its live records, so nothing here is kept.
    fn write_pending(&mut self) -> io::Result<()> {
        let written = self.file.write_all(&self.pending);
        self.pending.clear();
        written
    }
}

/// Appends one record whose entry is field `tag` holding `value`.
fn push_record(buf: &mut Vec<u8>, tag: u32, value: &[u8]) {
    let header_at = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEADER]);
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value);
    let payload = &buf[header_at + RECORD_HEADER..];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(payload);
    buf[header_at..header_at + 4].copy_from_slice(&len.to_le_bytes());
    buf[header_at + 4..header_at + RECORD_HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// Path of the journal under `dir`.
pub(super) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use minkube::pb;

    fn rec(id: &str, sequence: u64) -> TaskRecord {
        TaskRecord {
            assignment: Some(pb::Assignment {
                task_id: id.into(),
                attempt: 1,
                ..Default::default()
            }),
            sequence,
            ..Default::default()
        }
    }

    fn journal_with(dir: &Path, changes: &[(&str, Option<u64>)]) -> Journal {
        let mut j = Journal::write_fresh(dir, &Live::new()).unwrap();
        for (id, seq) in changes {
            match seq {
                Some(s) => j.put(&rec(id, *s).encode_to_vec()).unwrap(),
                None => j.delete(id).unwrap(),
            }
        }
        j
    }

    fn sequences(loaded: &Loaded) -> Vec<(String, u64)> {
        loaded
            .live
            .iter()
            .map(|(id, b)| {
                (
                    id.clone(),
                    TaskRecord::decode(b.as_slice()).unwrap().sequence,
                )
            })
            .collect()
    }

    #[test]
    fn the_last_put_wins_and_deletes_remove() {
        let dir = tempfile::tempdir().unwrap();
        let j = journal_with(
            dir.path(),
            &[("a", Some(1)), ("b", Some(1)), ("a", Some(2)), ("b", None)],
        );
        assert_eq!(j.entries(), 4);
        let loaded = read(&path(dir.path())).unwrap().unwrap();
        assert_eq!(sequences(&loaded), [("a".to_string(), 2)]);
        assert!(!loaded.torn_tail && loaded.damage.is_none());
        // Rewritten: one entry per live record, same content.
        let j = Journal::write_fresh(dir.path(), &loaded.live).unwrap();
        assert_eq!(j.entries(), 1);
        let again = read(&path(dir.path())).unwrap().unwrap();
        assert_eq!(sequences(&again), [("a".to_string(), 2)]);
        assert!(read(&dir.path().join("missing")).unwrap().is_none());
    }

    #[test]
    fn a_cut_short_last_record_is_dropped_and_damage_before_data_reported() {
        let dir = tempfile::tempdir().unwrap();
        journal_with(dir.path(), &[("a", Some(1)), ("b", Some(1))]);
        let p = path(dir.path());
        let full = fs::read(&p).unwrap();
        fs::write(&p, &full[..full.len() - 4]).unwrap();
        let loaded = read(&p).unwrap().unwrap();
        assert!(loaded.torn_tail);
        assert_eq!(sequences(&loaded), [("a".to_string(), 1)]);

        let mut bad = full.clone();
        bad[MAGIC.len() + RECORD_HEADER + 3] ^= 0xff;
        fs::write(&p, &bad).unwrap();
        let loaded = read(&p).unwrap().unwrap();
        assert!(loaded.damage.unwrap().contains("byte 8"));
        assert!(loaded.live.is_empty());

        fs::write(&p, b"MKAG").unwrap();
        assert!(read(&p).unwrap().unwrap().torn_tail);
        fs::write(&p, b"garbage!garbage!").unwrap();
        assert!(read(&p).unwrap().unwrap().damage.is_some());
    }

    #[test]
    fn staged_entries_reach_the_file_at_the_sync_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = journal_with(dir.path(), &[("a", Some(1))]);
        let p = path(dir.path());
        let before = fs::metadata(&p).unwrap().len();
        j.stage(&rec("a", 2).encode_to_vec());
        j.stage(&rec("b", 1).encode_to_vec());
        assert_eq!(
            fs::metadata(&p).unwrap().len(),
            before,
            "nothing written yet"
        );
        assert_eq!(j.entries(), 3);
        assert!(j.sync().unwrap());
        assert!(!j.sync().unwrap(), "nothing left to sync");
        let loaded = read(&p).unwrap().unwrap();
        assert_eq!(
            sequences(&loaded),
            [("a".to_string(), 2), ("b".to_string(), 1)]
        );
        // A durable change writes what was staged before it first.
        j.stage(&rec("b", 2).encode_to_vec());
        j.delete("a").unwrap();
        let loaded = read(&p).unwrap().unwrap();
        assert_eq!(sequences(&loaded), [("b".to_string(), 2)]);
        assert!(!j.sync().unwrap());
    }
}
