//! The journal: committed mutations appended to numbered segment files.
//!
//! ```text
//! <data-dir>/journal/<segment, 20 digits>.log
//! segment = "MKJRNL03" record* rest
//! record  = payload length (u32 LE) | CRC-32 of payload (u32 LE)
//!           | segment number, low 32 bits (u32 LE)
//!           | CRC-32 of the 12 bytes before (u32 LE) | payload
//! payload = Entry*, each as field 1 (length-delimited): one group commit
//! rest    = zeros (a new file), or what an earlier use of the file left
//! ```
//!
//! Appending one record and one `fdatasync` is all a commit costs: a few KiB
//! written into a file that is full-size beforehand, so the sync writes
//! those pages and no file-size or block-allocation change. A new file is
//! made full of zeros; once a segment's changes are in the B-tree its file is
//! *recycled* as a later segment, which spares writing (and syncing) 2 MiB
//! of zeros per segment on the disk the commits wait on. Each record names
//! its segment, so the records an earlier use left after the last one read
//! as the end. A crash can only damage the record being written, which was
//! never acknowledged: the reader reports it as a torn tail. Entries carry
//! each record's key next to its encoded bytes, so a checkpoint moves bytes
//! into the B-tree without decoding them.
//!
//! Segments of the previous format (`"MKJRNL02"`: no segment number in the
//! header, zeros after the records) are still read, so a journal a crash
//! left behind is applied after an upgrade; they are never written.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use prost::encoding::{
    self, decode_key, decode_varint, encode_key, encode_varint, encoded_len_varint, key_len,
    WireType,
};
use prost::Message;

use super::Mutation;

/// Directory under the data dir.
pub(super) const DIR: &str = "journal";
/// Size a segment is made with; once its records reach it, it is sealed.
/// Small enough that each checkpoint is a short burst (its B-tree writes and
/// syncs hold the disk that commits wait on: with 8 MiB, every checkpoint
/// under 20,000 CreateTasks/s showed as a latency spike), large enough that
/// most tasks' four puts still meet in one segment.
pub(super) const SEGMENT_BYTES: u64 = 2 * 1024 * 1024;
const MAGIC: &[u8; 8] = b"MKJRNL03";
/// The previous format: read, never written.
const MAGIC_V2: &[u8; 8] = b"MKJRNL02";
const RECORD_HEADER: usize = 16;
const RECORD_HEADER_V2: usize = 12;
const EXT: &str = "log";
/// Segments made ready ahead of need (not `.log`: never read as segments).
const SPARE_EXT: &str = "spare";
/// Bytes of a spare written (and synced) at a time: see [`prepare`].
const SPARE_CHUNK: usize = 128 * 1024;
/// Pause between a spare's chunks: see [`prepare`].
const SPARE_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// The header field naming a record's segment: the low 32 bits of its
/// number (files are reused among recent segments, never 2^32 apart).
fn segment_tag(seq: u64) -> [u8; 4] {
    let b = seq.to_le_bytes();
    [b[0], b[1], b[2], b[3]]
}

/// How a segment's records are framed, from its first 8 bytes.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// `MKJRNL02`: 12-byte headers, zeros after the records.
    V2,
    /// `MKJRNL03`: 16-byte headers naming the segment (its tag here).
    V3([u8; 4]),
}

impl Framing {
    fn header_len(self) -> usize {
        match self {
            Framing::V2 => RECORD_HEADER_V2,
            Framing::V3(_) => RECORD_HEADER,
        }
    }
}

// Entry tags (one field per entry).
const PUT_TASK: u32 = 1;
const DELETE_TASK: u32 = 2;
const PUT_EVENT: u32 = 3;
const PUT_NODE: u32 = 4;
const PUT_TOKEN: u32 = 5;
const DELETE_TOKEN: u32 = 6;
const PUT_JOIN_TOKEN: u32 = 7;
const REMOVE_NODE: u32 = 8;

/// One journaled mutation, borrowing its strings and encoded records from
/// the segment's bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Op<'a> {
    /// A task record (encoded `StoredTask`) under its id.
    PutTask { id: &'a str, record: &'a [u8] },
    /// A task and its events removed.
    DeleteTask(&'a str),
    /// An encoded `pb::TaskEvent` at `index` of a task's history.
    PutEvent {
        task_id: &'a str,
        index: u32,
        event: &'a [u8],
    },
    /// An encoded `pb::Node` under its id.
    PutNode { id: &'a str, record: &'a [u8] },
    /// An encoded `StoredToken` under its name.
    PutToken { name: &'a str, record: &'a [u8] },
    /// A token removed.
    DeleteToken(&'a str),
    /// The join token's hash and issue time.
    PutJoinToken { sha256: &'a str, issued_at: u64 },
    /// A node removed; its name's certificates issued until then revoked.
    RemoveNode {
        id: &'a str,
        name: &'a str,
        removed_at: u64,
    },
}

/// Length of a length-delimited field of `len` bytes.
fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn put_bytes(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

fn put_message(tag: u32, len: usize, msg: &impl Message, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
    msg.encode_raw(buf);
}

/// A record under a key: `1: key, 2: encoded record`.
fn keyed(tag: u32, key: &str, msg: &impl Message, buf: &mut Vec<u8>) {
    let len = msg.encoded_len();
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint((field_len(1, key.len()) + field_len(2, len)) as u64, buf);
    put_bytes(1, key.as_bytes(), buf);
    put_message(2, len, msg, buf);
}

/// Appends `m` as one entry (field 1 of the payload).
fn encode_entry(m: &Mutation, entry: &mut Vec<u8>, event_buf: &mut Vec<u8>, buf: &mut Vec<u8>) {
    entry.clear();
    match m {
        Mutation::PutTask(t) => {
            let id = t.task.as_ref().map_or("", |t| t.id.as_str());
            keyed(PUT_TASK, id, t.as_ref(), entry);
        }
        Mutation::DeleteTask(id) => put_bytes(DELETE_TASK, id.as_bytes(), entry),
        Mutation::PutEvent {
            task_id,
            index,
            event,
        } => {
            // Without its task id: the entry's key holds it.
            event_buf.clear();
            super::event_record::encode(event, event_buf);
            encode_key(PUT_EVENT, WireType::LengthDelimited, entry);
            encode_varint(
                (field_len(1, task_id.len())
                    + encoding::uint32::encoded_len(2, index)
                    + field_len(3, event_buf.len())) as u64,
                entry,
            );
            put_bytes(1, task_id.as_bytes(), entry);
            encoding::uint32::encode(2, index, entry);
            put_bytes(3, event_buf, entry);
        }
        Mutation::PutNode(n) => keyed(PUT_NODE, &n.id, n.as_ref(), entry),
        Mutation::PutToken(t) => keyed(PUT_TOKEN, &t.name, t.as_ref(), entry),
        Mutation::DeleteToken(name) => put_bytes(DELETE_TOKEN, name.as_bytes(), entry),
        Mutation::PutJoinToken { sha256, issued_at } => {
            encode_key(PUT_JOIN_TOKEN, WireType::LengthDelimited, entry);
            encode_varint(
                (field_len(1, sha256.len()) + encoding::uint64::encoded_len(2, issued_at)) as u64,
                entry,
            );
            put_bytes(1, sha256.as_bytes(), entry);
            encoding::uint64::encode(2, issued_at, entry);
        }
        Mutation::RemoveNode {
            id,
            name,
            removed_at,
        } => {
            encode_key(REMOVE_NODE, WireType::LengthDelimited, entry);
            encode_varint(
                (field_len(1, id.len())
                    + encoding::uint64::encoded_len(2, removed_at)
                    + field_len(3, name.len())) as u64,
                entry,
            );
            put_bytes(1, id.as_bytes(), entry);
            encoding::uint64::encode(2, removed_at, entry);
            put_bytes(3, name.as_bytes(), entry);
        }
    }
    put_bytes(1, entry, buf);
}

/// Encodes a batch as one record payload.
pub(super) fn encode_payload(batch: &[Mutation], buf: &mut Vec<u8>) {
    let mut entry = Vec::new();
    let mut event = Vec::new();
    for m in batch {
        encode_entry(m, &mut entry, &mut event, buf);
    }
}

/// A protobuf field value, borrowed.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// The next field of a message, or `None` at its end.
fn next_field<'a>(buf: &mut &'a [u8]) -> Result<Option<(u32, Field<'a>)>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    let (tag, wire) = decode_key(buf).map_err(|e| e.to_string())?;
    let value = match wire {
        WireType::Varint => Field::Varint(decode_varint(buf).map_err(|e| e.to_string())?),
        WireType::LengthDelimited => {
            let len = usize::try_from(decode_varint(buf).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            if len > buf.len() {
                return Err("a field runs past its message".into());
            }
            let (value, rest) = buf.split_at(len);
            *buf = rest;
            Field::Bytes(value)
        }
        other => return Err(format!("unexpected wire type {other:?}")),
    };
    Ok(Some((tag, value)))
}

fn text(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|e| e.to_string())
}

/// The fields 1..=3 of an entry's body (absent ones empty / zero).
#[derive(Default)]
struct Parts<'a> {
    one: &'a [u8],
    two: &'a [u8],
    two_int: u64,
    three: &'a [u8],
}

fn parts(mut body: &[u8]) -> Result<Parts<'_>, String> {
    let mut p = Parts::default();
    while let Some((tag, value)) = next_field(&mut body)? {
        match (tag, value) {
            (1, Field::Bytes(b)) => p.one = b,
            (2, Field::Bytes(b)) => p.two = b,
            (2, Field::Varint(v)) => p.two_int = v,
            (3, Field::Bytes(b)) => p.three = b,
            _ => return Err(format!("unexpected field {tag}")),
        }
    }
    Ok(p)
}

fn decode_entry(mut entry: &[u8]) -> Result<Op<'_>, String> {
    let Some((tag, Field::Bytes(body))) = next_field(&mut entry)? else {
        return Err("an empty or malformed entry".into());
    };
    // Deletions carry the key itself; every other kind is a small message.
    match tag {
        DELETE_TASK => return Ok(Op::DeleteTask(text(body)?)),
        DELETE_TOKEN => return Ok(Op::DeleteToken(text(body)?)),
        PUT_TASK | PUT_EVENT | PUT_NODE | PUT_TOKEN | PUT_JOIN_TOKEN | REMOVE_NODE => {}
        other => {
            return Err(format!(
                "a change of kind {other}, unknown to this minkube-manager (written by a newer version?)"
            ))
        }
    }
    let p = parts(body)?;
    Ok(match tag {
        PUT_TASK => Op::PutTask {
            id: text(p.one)?,
            record: p.two,
        },
        PUT_EVENT => Op::PutEvent {
            task_id: text(p.one)?,
            index: u32::try_from(p.two_int).map_err(|e| e.to_string())?,
            event: p.three,
        },
        PUT_NODE => Op::PutNode {
            id: text(p.one)?,
            record: p.two,
        },
        PUT_TOKEN => Op::PutToken {
            name: text(p.one)?,
            record: p.two,
        },
        REMOVE_NODE => Op::RemoveNode {
            id: text(p.one)?,
            name: text(p.three)?,
            removed_at: p.two_int,
        },
        _ => Op::PutJoinToken {
            sha256: text(p.one)?,
            issued_at: p.two_int,
        },
    })
}

/// The entries of one record payload, in order.
#[cfg(test)]
pub(super) fn decode_payload(payload: &[u8]) -> Result<Vec<Op<'_>>, String> {
    let mut ops = Vec::new();
    decode_payload_into(payload, &mut ops)?;
    Ok(ops)
}

/// Appends the entries of one record payload to `ops`, in order.
fn decode_payload_into<'a>(mut payload: &'a [u8], ops: &mut Vec<Op<'a>>) -> Result<(), String> {
    while let Some((tag, value)) = next_field(&mut payload)? {
        let (1, Field::Bytes(entry)) = (tag, value) else {
            return Err(format!("unexpected field {tag} in a record"));
        };
        ops.push(decode_entry(entry)?);
    }
    Ok(())
}

/// Path of segment `seq`.
pub(super) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.{EXT}"))
}

/// Path of spare segment number `n`.
pub(super) fn spare_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n}.{SPARE_EXT}"))
}

/// Removes spare segments (one may be half-written by a crash).
pub(super) fn remove_spares(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) == Some(SPARE_EXT) {
            fs::remove_file(path)?;
        }
    }
    Ok(())
}

/// The segments in `dir`, oldest first (other files are left alone).
pub(super) fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(EXT) {
            continue;
        }
        if let Some(seq) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((seq, path));
        }
    }
    out.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(out)
}

/// Makes a directory entry change (a new or removed file) durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes an empty, full-size segment at `path` (replacing a leftover),
/// [`SPARE_CHUNK`] bytes at a time, each synced: a commit's `fdatasync`
/// then never queues behind more than one chunk of zeros on the disk.
/// (Whole MiBs made commits stall for up to ~12 ms each right after a
/// segment switch.) With `paced` (a spare made in the background), chunks
/// are [`SPARE_PAUSE`] apart so commits get the disk in between; at ~3 ms a
/// chunk the spare is ready in ~50 ms, well before the segment fills at the
/// highest commit rate measured (~0.17 s at 27,000 CreateTasks/s).
pub(super) fn prepare(path: &Path, paced: bool) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(MAGIC)?;
    let zeros = vec![0u8; SPARE_CHUNK];
    let mut left = usize::try_from(SEGMENT_BYTES).unwrap_or(usize::MAX) - MAGIC.len();
    while left > 0 {
        let n = left.min(zeros.len());
        file.write_all(&zeros[..n])?;
        file.sync_data()?;
        left -= n;
        if paced && left > 0 {
            std::thread::sleep(SPARE_PAUSE);
        }
    }
    file.sync_all()
}

/// Why an append failed, and whether the segment can take more records.
#[derive(Debug)]
pub(super) struct AppendError {
    pub(super) error: io::Error,
    /// `fdatasync` failed, or a partial record could not be wiped: what
    /// reached the disk is unknown, so nothing more may be appended.
    pub(super) fatal: bool,
}

/// The segment being appended to.
pub(super) struct SegmentWriter {
    file: File,
    seq: u64,
    len: u64,
    buf: Vec<u8>,
}

impl SegmentWriter {
    /// Makes segment `seq` (which must not exist) from `spare` (a file
    /// [`prepare`] made), else writes it here; durable when this returns.
    pub(super) fn create(dir: &Path, seq: u64, spare: Option<&Path>) -> io::Result<Self> {
        let path = segment_path(dir, seq);
        if path.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists already", path.display()),
            ));
        }
        if let Some(spare) = spare {
            fs::rename(spare, &path)?;
        } else {
            prepare(&path, false)?;
        }
        sync_dir(dir)?;
        let file = OpenOptions::new().write(true).open(&path)?;
        Ok(Self {
            file,
            seq,
            len: MAGIC.len() as u64,
            buf: Vec::new(),
        })
    }

    /// Segment number.
    pub(super) fn seq(&self) -> u64 {
        self.seq
    }

    /// Bytes written, the header included.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Whether the segment holds any record.
    pub(super) fn is_empty(&self) -> bool {
        self.len == MAGIC.len() as u64
    }

    /// Wipes `n` bytes after the last whole record, so the next record
    /// follows it with nothing stale after it: zeros inside the preallocated
    /// part (its blocks exist, so this works on a full disk too), the file
    /// cut back beyond it. False when that failed.
    fn wipe_from_end(&self, n: u64) -> bool {
        let end = self.len + n;
        let inside = end.min(SEGMENT_BYTES).saturating_sub(self.len);
        let zeros = vec![0u8; usize::try_from(inside).unwrap_or(0)];
        let zeroed = inside == 0 || self.file.write_all_at(&zeros, self.len).is_ok();
        let cut = end <= SEGMENT_BYTES || self.file.set_len(self.len.max(SEGMENT_BYTES)).is_ok();
        zeroed && cut
    }

    /// Appends `batch` as one record and waits until it is on disk.
    pub(super) fn append(&mut self, batch: &[Mutation]) -> Result<(), AppendError> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; RECORD_HEADER]);
        encode_payload(batch, &mut self.buf);
        let payload = u32::try_from(self.buf.len() - RECORD_HEADER).map_err(|_| AppendError {
            error: io::Error::new(io::ErrorKind::InvalidInput, "one commit over 4 GiB"),
            fatal: false,
        })?;
        let crc = crc32fast::hash(&self.buf[RECORD_HEADER..]);
        self.buf[..4].copy_from_slice(&payload.to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        self.buf[8..12].copy_from_slice(&segment_tag(self.seq));
        let header_crc = crc32fast::hash(&self.buf[..12]);
        self.buf[12..RECORD_HEADER].copy_from_slice(&header_crc.to_le_bytes());
        if let Err(error) = self.file.write_all_at(&self.buf, self.len) {
            let fatal = !self.wipe_from_end(self.buf.len() as u64);
            return Err(AppendError { error, fatal });
        }
        self.file
            .sync_data()
            .map_err(|error| AppendError { error, fatal: true })?;
        self.len += self.buf.len() as u64;
        // A rare huge commit should not pin its buffer for good.
        if self.buf.capacity() > 4 * 1024 * 1024 {
            self.buf = Vec::new();
        }
        Ok(())
    }
}

/// A segment file read into memory.
#[derive(Debug, Default)]
pub(super) struct Segment {
    bytes: Vec<u8>,
    /// Payloads of the whole records, in order.
    records: Vec<Range<usize>>,
    /// Set when the file ends in a partly written record (a crash while
    /// appending it; it was never acknowledged): where and why.
    pub(super) torn_tail: Option<String>,
}

impl Segment {
    /// Every mutation of every whole record, in order. `expected` sizes
    /// the list (e.g. the previous segment's count): grown by doubling, a
    /// list of tens of thousands of entries per checkpoint was a measurable
    /// share of the checkpointer's time in copies and fresh pages.
    pub(super) fn ops(&self, expected: usize) -> Result<Vec<Op<'_>>, String> {
        let mut ops = Vec::with_capacity(expected);
        for r in &self.records {
            decode_payload_into(&self.bytes[r.clone()], &mut ops)?;
        }
        Ok(ops)
    }

    /// The file's bytes, for reuse as the next read's buffer.
    pub(super) fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Number of whole records.
    #[cfg(test)]
    pub(super) fn records(&self) -> usize {
        self.records.len()
    }
}

/// The payload range of a whole, intact record of this segment starting
/// at `at`.
fn record_at(bytes: &[u8], at: usize, framing: Framing) -> Option<Range<usize>> {
    let header = bytes.get(at..at + framing.header_len())?;
    // Cheap checks first: readers scan the unused part byte by byte.
    let crc_at = match framing {
        Framing::V3(tag) if header[8..12] == tag => 12,
        // Zeros, or an earlier use's record.
        Framing::V3(_) => return None,
        Framing::V2 if header.iter().all(|&b| b == 0) => return None,
        Framing::V2 => 8,
    };
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    if crc32fast::hash(&header[..crc_at]) != word(crc_at) {
        return None;
    }
    let len = word(0) as usize;
    let start = at + header.len();
    let payload = bytes.get(start..start.checked_add(len)?)?;
    (len > 0 && crc32fast::hash(payload) == word(4)).then_some(start..start + len)
}

/// Reads segment `seq`. Where its records stop comes the unused part (zeros,
/// or records of an earlier use of the file), or the remains of one
/// unfinished record (a torn tail); an intact record of this segment after
/// damage means acknowledged changes were damaged: an error naming the file
/// and offset.
pub(super) fn read_segment(path: &Path, seq: u64) -> Result<Segment, String> {
    read_segment_into(path, seq, Vec::new())
}

/// [`read_segment`] into `buf` (cleared first), so a caller reading one
/// segment after another reuses one allocation.
pub(super) fn read_segment_into(
    path: &Path,
    seq: u64,
    mut buf: Vec<u8>,
) -> Result<Segment, String> {
    use std::io::Read as _;
    buf.clear();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let bytes = buf;
    let mut out = Segment::default();
    let framing = match bytes.get(..MAGIC.len()) {
        Some(m) if m == MAGIC => Framing::V3(segment_tag(seq)),
        Some(m) if m == MAGIC_V2 => Framing::V2,
        _ => {
            return Err(format!(
                "{} is not a journal segment of this version",
                path.display()
            ))
        }
    };
    let mut at = MAGIC.len();
    while let Some(r) = record_at(&bytes, at, framing) {
        at = r.end;
        out.records.push(r);
    }
    let begun = match framing {
        // Something other than zeros: a record was being written.
        Framing::V2 => bytes[at..].iter().any(|&b| b != 0),
        // A header naming this segment: a record was being written (what
        // else follows is an earlier use's, or zeros).
        Framing::V3(tag) => bytes.get(at + 8..at + 12) == Some(&tag[..]),
    };
    // In V2 only a begun record can hide damage (the rest is zeros); in V3
    // an earlier use's records can follow too, so always look.
    if begun || matches!(framing, Framing::V3(_)) {
        if let Some(later) =
            (at + 1..bytes.len()).find(|&i| record_at(&bytes, i, framing).is_some())
        {
            return Err(format!(
                "{} is damaged at byte {at}: the record there is unreadable and an intact one follows at byte {later}",
                path.display()
            ));
        }
    }
    if begun {
        out.torn_tail = Some(format!("an unfinished record at byte {at}"));
    }
    out.bytes = bytes;
    Ok(out)
}

#[cfg(test)]
mod tests;
