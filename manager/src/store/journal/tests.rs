#![allow(clippy::unwrap_used)]
use super::*;
use crate::store::{StoredTask, StoredToken};
use minkube::pb;
use std::sync::Arc;

pub(crate) fn every_kind() -> Vec<Mutation> {
    vec![
        Mutation::PutTask(Box::new(StoredTask {
            task: Some(pb::Task {
                id: "t1".into(),
                trace_id: "abc".into(),
                ..Default::default()
            }),
            last_sequence: 3,
            trace_context: Arc::new(
                [("traceparent".to_string(), "00-ab-cd-01".to_string())].into(),
            ),
        })),
        Mutation::DeleteTask("t0".into()),
        Mutation::PutEvent {
            task_id: "t1".into(),
            index: 0,
            event: Box::new(pb::TaskEvent {
                task_id: "t1".into(),
                reason: "accepted".into(),
                ..Default::default()
            }),
        },
        Mutation::PutEvent {
            task_id: "t1".into(),
            index: 7,
            // Nothing but the task it belongs to (which the key holds).
            event: Box::new(pb::TaskEvent {
                task_id: "t1".into(),
                ..Default::default()
            }),
        },
        Mutation::PutNode(Box::new(pb::Node {
            id: "n1".into(),
            name: "a".into(),
            ..Default::default()
        })),
        Mutation::PutToken(Box::new(StoredToken {
            name: "ci".into(),
            role: 2,
            sha256: "ff".into(),
            created_at: None,
        })),
        Mutation::DeleteToken("old".into()),
        Mutation::PutJoinToken {
            sha256: "aa".into(),
            issued_at: 0,
        },
        Mutation::PutJoinToken {
            sha256: String::new(),
            issued_at: 1_700_000_000,
        },
        Mutation::RemoveNode {
            id: "n1".into(),
            name: "host-1".into(),
            removed_at: 1_800_000_000,
        },
    ]
}

/// Decodes what an op carries back into the mutation that wrote it.
fn owned(op: Op<'_>) -> Mutation {
    match op {
        Op::PutTask { id, record } => {
            let t = StoredTask::decode(record).unwrap();
            assert_eq!(t.task.as_ref().unwrap().id, id);
            Mutation::PutTask(Box::new(t))
        }
        Op::DeleteTask(id) => Mutation::DeleteTask(id.into()),
        Op::PutEvent {
            task_id,
            index,
            event,
        } => Mutation::PutEvent {
            task_id: task_id.into(),
            index,
            event: Box::new(crate::store::event_record::decode(task_id, event).unwrap()),
        },
        Op::PutNode { id, record } => {
            let n = pb::Node::decode(record).unwrap();
            assert_eq!(n.id, id);
            Mutation::PutNode(Box::new(n))
        }
        Op::PutToken { name, record } => {
            let t = StoredToken::decode(record).unwrap();
            assert_eq!(t.name, name);
            Mutation::PutToken(Box::new(t))
        }
        Op::DeleteToken(name) => Mutation::DeleteToken(name.into()),
        Op::PutJoinToken { sha256, issued_at } => Mutation::PutJoinToken {
            sha256: sha256.into(),
            issued_at,
        },
        Op::RemoveNode {
            id,
            name,
            removed_at,
        } => Mutation::RemoveNode {
            id: id.into(),
            name: name.into(),
            removed_at,
        },
    }
}

fn read_back(path: &Path, seq: u64) -> Vec<Mutation> {
    read_segment(path, seq)
        .unwrap()
        .ops(0)
        .unwrap()
        .into_iter()
        .map(owned)
        .collect()
}

#[test]
fn records_read_back_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = SegmentWriter::create(dir.path(), 3, None).unwrap();
    assert!(w.is_empty());
    let path = segment_path(dir.path(), 3);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        SEGMENT_BYTES,
        "made full-size"
    );
    let all = every_kind();
    w.append(&all[..2]).unwrap();
    w.append(&all[2..]).unwrap();
    assert_eq!(read_back(&path, 3), all);
    let seg = read_segment(&path, 3).unwrap();
    assert_eq!(seg.records(), 2);
    assert!(
        seg.torn_tail.is_none(),
        "zeros after the records are the unused part"
    );
    assert_eq!(list_segments(dir.path()).unwrap()[0].0, 3);
    assert!(SegmentWriter::create(dir.path(), 3, None).is_err());
}

#[test]
fn a_segment_is_made_from_the_spare_when_one_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let spare = spare_path(dir.path(), 4);
    prepare(&spare, true).unwrap();
    let mut w = SegmentWriter::create(dir.path(), 1, Some(&spare)).unwrap();
    assert!(!spare.exists());
    w.append(&every_kind()).unwrap();
    assert_eq!(read_back(&segment_path(dir.path(), 1), 1), every_kind());
    prepare(&spare_path(dir.path(), 5), false).unwrap();
    assert_eq!(
        list_segments(dir.path()).unwrap().len(),
        1,
        "a spare is not a segment"
    );
    remove_spares(dir.path()).unwrap();
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// Puts `bytes` in place of the file at `path` and reads it as segment `seq`.
fn reread(path: &Path, seq: u64, bytes: &[u8]) -> Result<Segment, String> {
    fs::write(path, bytes).unwrap();
    read_segment(path, seq)
}

/// A segment with two records; the second's payload range.
fn two_records() -> (tempfile::TempDir, PathBuf, Range<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let mut w = SegmentWriter::create(dir.path(), 1, None).unwrap();
    w.append(&every_kind()).unwrap();
    w.append(&every_kind()).unwrap();
    let path = segment_path(dir.path(), 1);
    let second = read_segment(&path, 1).unwrap().records[1].clone();
    (dir, path, second)
}

#[test]
fn an_unfinished_last_record_is_a_torn_tail() {
    let (_dir, path, second) = two_records();
    let full = fs::read(&path).unwrap();
    let header = second.start - RECORD_HEADER;
    // Zeroed ranges: payload cut short, the header's own CRC cut short.
    for zeroed in [second.end - 5..second.end, header + 12..second.end] {
        let mut bytes = full.clone();
        bytes[zeroed].fill(0);
        let seg = reread(&path, 1, &bytes).unwrap();
        assert_eq!(seg.records(), 1);
        assert!(seg.torn_tail.unwrap().contains(&format!("byte {header}")));
    }
    // Without a header naming this segment nothing says a record was begun
    // there (what follows the last record may be an earlier use's): the
    // end, quietly. It was never acknowledged either way.
    let mut bytes = full.clone();
    bytes[header..header + RECORD_HEADER].fill(0);
    let seg = reread(&path, 1, &bytes).unwrap();
    assert_eq!(seg.records(), 1);
    assert!(seg.torn_tail.is_none());
}

#[test]
fn damage_before_an_intact_record_is_an_error_naming_the_file() {
    let (_dir, path, _) = two_records();
    let full = fs::read(&path).unwrap();
    // A payload byte, then the segment number in the header.
    for at in [MAGIC.len() + RECORD_HEADER + 4, MAGIC.len() + 8] {
        let mut bytes = full.clone();
        bytes[at] ^= 0xff;
        let e = reread(&path, 1, &bytes).unwrap_err();
        assert!(e.contains("00000000000000000001.log"), "{e}");
        assert!(e.contains("an intact one follows"), "{e}");
    }
    fs::write(&path, b"something else entirely").unwrap();
    assert!(read_segment(&path, 1)
        .unwrap_err()
        .contains("not a journal segment"));
}

#[test]
fn a_recycled_file_reads_as_its_new_segment_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = SegmentWriter::create(dir.path(), 1, None).unwrap();
    for _ in 0..50 {
        w.append(&every_kind()).unwrap();
    }
    drop(w);
    // Applied: kept as a spare, then made segment 3 (2 took a new file).
    let spare = spare_path(dir.path(), 1);
    fs::rename(segment_path(dir.path(), 1), &spare).unwrap();
    let mut w = SegmentWriter::create(dir.path(), 3, Some(&spare)).unwrap();
    let path = segment_path(dir.path(), 3);
    let seg = read_segment(&path, 3).unwrap();
    assert_eq!(seg.records(), 0, "segment 1's records are not 3's");
    assert!(seg.torn_tail.is_none());

    let first = &every_kind()[..3];
    w.append(first).unwrap();
    w.append(&every_kind()[5..6]).unwrap();
    let seg = read_segment(&path, 3).unwrap();
    assert_eq!(seg.records(), 2);
    assert!(
        seg.torn_tail.is_none(),
        "segment 1's records after the last one are the unused part"
    );
    let mut want = first.to_vec();
    want.extend_from_slice(&every_kind()[5..6]);
    assert_eq!(read_back(&path, 3), want);

    // Damage is still found among segment 1's leftovers.
    let mut bytes = fs::read(&path).unwrap();
    bytes[MAGIC.len() + RECORD_HEADER] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    assert!(read_segment(&path, 3)
        .unwrap_err()
        .contains("an intact one follows"));
}

/// A segment as the previous format wrote it: 12-byte headers.
fn v2_segment(path: &Path, batches: &[&[Mutation]]) {
    let mut bytes = MAGIC_V2.to_vec();
    for batch in batches {
        let mut payload = Vec::new();
        encode_payload(batch, &mut payload);
        let len = u32::try_from(payload.len()).unwrap().to_le_bytes();
        let mut header = [len, crc32fast::hash(&payload).to_le_bytes()].concat();
        header.extend_from_slice(&crc32fast::hash(&header).to_le_bytes());
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&payload);
    }
    bytes.resize(64 * 1024, 0);
    fs::write(path, &bytes).unwrap();
}

#[test]
fn segments_of_the_previous_format_are_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = segment_path(dir.path(), 7);
    let all = every_kind();
    v2_segment(&path, &[&all[..2], &all[2..]]);
    assert_eq!(read_back(&path, 7), all);
    assert!(read_segment(&path, 7).unwrap().torn_tail.is_none());

    // Its rules too: what is not zeros after the records was begun.
    let mut bytes = fs::read(&path).unwrap();
    *bytes.last_mut().unwrap() = 1;
    let seg = reread(&path, 7, &bytes).unwrap();
    assert_eq!(seg.records(), 2);
    assert!(seg.torn_tail.is_some());
}

#[test]
fn a_failed_write_leaves_the_segment_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = SegmentWriter::create(dir.path(), 1, None).unwrap();
    w.append(&every_kind()).unwrap();
    let before = w.len();
    // A read-only handle stands in for a disk that refuses writes.
    w.file = File::open(segment_path(dir.path(), 1)).unwrap();
    let e = w.append(&every_kind()).unwrap_err();
    // Nor can the attempt be wiped through that handle: nothing more may go in.
    assert!(e.fatal);
    assert_eq!(w.len(), before);
    assert_eq!(read_back(&segment_path(dir.path(), 1), 1), every_kind());
}

#[test]
fn a_wipe_zeroes_inside_the_segment_and_cuts_beyond_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = SegmentWriter::create(dir.path(), 1, None).unwrap();
    // A failed append left 8 bytes across the preallocated end.
    w.len = SEGMENT_BYTES - 4;
    w.file.write_all_at(&[0xff; 8], w.len).unwrap();
    assert!(w.wipe_from_end(8));
    let bytes = fs::read(segment_path(dir.path(), 1)).unwrap();
    assert_eq!(bytes.len() as u64, SEGMENT_BYTES);
    assert!(bytes[bytes.len() - 4..].iter().all(|&b| b == 0));
}

#[test]
fn unknown_kinds_of_change_are_refused_by_name() {
    let mut payload = Vec::new();
    let mut entry = Vec::new();
    put_bytes(42, b"x", &mut entry);
    put_bytes(1, &entry, &mut payload);
    let e = decode_payload(&payload).unwrap_err();
    assert!(e.contains("newer version"), "{e}");
}
