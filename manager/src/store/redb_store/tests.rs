#![allow(clippy::unwrap_used)]
use super::*;

fn task(id: &str, sequence: u64) -> Mutation {
    Mutation::PutTask(Box::new(StoredTask {
        task: Some(pb::Task {
            id: id.into(),
            ..Default::default()
        }),
        last_sequence: sequence,
        ..Default::default()
    }))
}

fn event(task_id: &str, index: u32, reason: &str) -> Mutation {
    Mutation::PutEvent {
        task_id: task_id.into(),
        index,
        event: Box::new(pb::TaskEvent {
            task_id: task_id.into(),
            reason: reason.into(),
            ..Default::default()
        }),
    }
}

fn tasks(s: &RedbStore) -> Vec<(String, u64, usize)> {
    let mut out = Vec::new();
    s.load_tasks(&mut |t, evs| {
        out.push((t.task.unwrap().id, t.last_sequence, evs.len()));
    })
    .unwrap();
    out
}

fn reasons(s: &RedbStore, id: &str) -> Vec<String> {
    s.task_events(id)
        .unwrap()
        .into_iter()
        .map(|e| e.reason)
        .collect()
}

fn journal_files(dir: &Path) -> Vec<u64> {
    journal::list_segments(&dir.join(journal::DIR))
        .unwrap()
        .into_iter()
        .map(|(seq, _)| seq)
        .collect()
}

/// Copies the data dir as a crash would leave it: whatever is on disk now.
fn crash_copy(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    std::fs::copy(from.join("state.redb"), to.path().join("state.redb")).unwrap();
    std::fs::create_dir(to.path().join(journal::DIR)).unwrap();
    for (seq, path) in journal::list_segments(&from.join(journal::DIR)).unwrap() {
        std::fs::copy(
            path,
            journal::segment_path(&to.path().join(journal::DIR), seq),
        )
        .unwrap();
    }
    to
}

#[test]
fn acknowledged_commits_survive_a_crash_and_the_journal_is_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = RedbStore::open(dir.path()).unwrap();
    s.commit(&[task("t1", 1), event("t1", 0, "accepted")])
        .unwrap();
    s.commit(&[task("t1", 2), event("t1", 1, "assigned"), task("t2", 1)])
        .unwrap();
    s.commit(&[Mutation::DeleteTask("t2".into())]).unwrap();
    // Nothing reached the tree yet: it is all in the journal.
    assert_eq!(s.inner.tree.checkpointed_segment().unwrap(), 0);
    let copy = crash_copy(dir.path());
    drop(s);

    let s = RedbStore::open(copy.path()).unwrap();
    assert_eq!(tasks(&s), [("t1".to_string(), 2, 2)]);
    assert_eq!(reasons(&s, "t1"), ["accepted", "assigned"]);
    drop(s);
    assert_eq!(
        std::fs::read_dir(copy.path().join(journal::DIR))
            .unwrap()
            .count(),
        0,
        "a clean stop leaves only the tree"
    );
    let s = RedbStore::open(copy.path()).unwrap();
    assert_eq!(tasks(&s), [("t1".to_string(), 2, 2)]);
}

#[test]
fn events_read_the_same_before_and_after_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let s = RedbStore::open(dir.path()).unwrap();
    s.commit(&[task("t1", 1), event("t1", 0, "accepted")])
        .unwrap();
    s.inner.checkpoint_all(true).unwrap();
    s.commit(&[
        event("t1", 1, "running"),
        task("gone", 1),
        event("gone", 0, "x"),
    ])
    .unwrap();
    // Half in the tree, half only in the journal.
    assert_eq!(reasons(&s, "t1"), ["accepted", "running"]);
    assert_eq!(reasons(&s, "gone"), ["x"]);
    s.commit(&[Mutation::DeleteTask("gone".into())]).unwrap();
    assert!(reasons(&s, "gone").is_empty());
    // Several events of one task in one segment, one of them put twice.
    s.commit(&[event("t1", 2, "exited"), event("t1", 3, "x")])
        .unwrap();
    s.commit(&[event("t1", 2, "exit 0")]).unwrap();
    assert_eq!(reasons(&s, "t1"), ["accepted", "running", "exit 0", "x"]);
    s.inner.checkpoint_all(true).unwrap();
    assert_eq!(reasons(&s, "t1"), ["accepted", "running", "exit 0", "x"]);
    assert!(reasons(&s, "gone").is_empty());
    assert!(
        lock(&s.inner.shared).pending.is_empty(),
        "applied events are let go"
    );
    assert!(reasons(&s, "unknown").is_empty());
}

#[test]
fn events_spread_over_segments_read_whole_while_the_checkpointer_runs() {
    let dir = tempfile::tempdir().unwrap();
    let s = RedbStore::open(dir.path()).unwrap();
    let seal = |s: &RedbStore| {
        let mut w = lock(&s.inner.writer);
        s.inner.seal(&mut w, true);
    };
    s.commit(&[task("t1", 1), event("t1", 0, "accepted")])
        .unwrap();
    s.commit(&[task("gone", 1), event("gone", 0, "x")]).unwrap();
    seal(&s);
    // The checkpointer may apply the sealed segment at any point from here:
    // every read below must be the same either way.
    s.commit(&[event("t1", 1, "scheduled")]).unwrap();
    assert_eq!(reasons(&s, "t1"), ["accepted", "scheduled"]);
    seal(&s);
    s.commit(&[event("t1", 2, "running")]).unwrap();
    s.commit(&[Mutation::DeleteTask("gone".into())]).unwrap();
    assert_eq!(reasons(&s, "t1"), ["accepted", "scheduled", "running"]);
    assert!(reasons(&s, "gone").is_empty());
    s.inner.checkpoint_all(true).unwrap();
    assert_eq!(reasons(&s, "t1"), ["accepted", "scheduled", "running"]);
    assert!(reasons(&s, "gone").is_empty());
    assert!(
        lock(&s.inner.shared).pending.is_empty(),
        "applied events are let go"
    );
}

#[test]
fn full_segments_are_applied_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let s = RedbStore::open(dir.path()).unwrap();
    // Records of ~64 KiB: a few segments' worth.
    let big = "x".repeat(64 * 1024);
    let total = 3 * SEGMENT_BYTES / (64 * 1024);
    for i in 0..total {
        let mut m = task(&format!("t{i:05}"), i);
        if let Mutation::PutTask(t) = &mut m {
            t.task.as_mut().unwrap().trace_id.clone_from(&big);
        }
        s.commit(&[m, event(&format!("t{i:05}"), 0, "accepted")])
            .unwrap();
    }
    // The checkpointer keeps up to MAX_SEALED behind the current segment.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lock(&s.inner.shared).sealed.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(s.inner.tree.checkpointed_segment().unwrap() >= 3);
    assert_eq!(
        journal_files(dir.path()).len(),
        1,
        "only the current segment is left"
    );
    assert_eq!(reasons(&s, "t00000"), ["accepted"]);
    let copy = crash_copy(dir.path());
    drop(s);
    let s = RedbStore::open(copy.path()).unwrap();
    assert_eq!(tasks(&s).len(), usize::try_from(total).unwrap());
}

#[test]
fn a_torn_last_record_is_ignored_and_damage_elsewhere_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let s = RedbStore::open(dir.path()).unwrap();
    s.commit(&[task("t1", 1)]).unwrap();
    s.commit(&[task("t2", 1)]).unwrap();
    let end = usize::try_from(lock(&s.inner.writer).segment.as_ref().unwrap().len()).unwrap();
    let copy = crash_copy(dir.path());
    drop(s);
    let (seq, path) = journal::list_segments(&copy.path().join(journal::DIR))
        .unwrap()
        .pop()
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();

    // A crash while writing the second record: its last bytes never landed.
    bytes[end - 3..end].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let torn = crash_copy(copy.path());
    let s = RedbStore::open(torn.path()).unwrap();
    assert_eq!(tasks(&s), [("t1".to_string(), 1, 0)]);
    drop(s);

    // The same file with a newer segment after it: not a torn tail.
    let jdir = copy.path().join(journal::DIR);
    SegmentWriter::create(&jdir, seq + 1, None).unwrap();
    let Err(e) = RedbStore::open(copy.path()) else {
        panic!("a damaged older segment must stop the start");
    };
    let message = e.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("move it and every later one"), "{message}");
}

#[test]
fn a_segment_the_tree_already_holds_is_not_applied_again() {
    let dir = tempfile::tempdir().unwrap();
    {
        let tree = BTree::open(dir.path()).unwrap();
        let mut payload = Vec::new();
        journal::encode_payload(&[task("t1", 2)], &mut payload);
        tree.apply(&journal::decode_payload(&payload).unwrap(), Some(5))
            .unwrap();
    }
    // Segment 5 outlived its checkpoint (the removal was lost in a crash).
    let jdir = dir.path().join(journal::DIR);
    std::fs::create_dir(&jdir).unwrap();
    SegmentWriter::create(&jdir, 5, None)
        .unwrap()
        .append(&[task("t1", 1)])
        .unwrap();
    let s = RedbStore::open(dir.path()).unwrap();
    assert_eq!(tasks(&s), [("t1".to_string(), 2, 0)]);
    assert_eq!(
        journal_files(dir.path()),
        [6],
        "numbering continues after it"
    );
}

#[test]
fn a_second_store_on_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _s = RedbStore::open(dir.path()).unwrap();
    assert!(RedbStore::open(dir.path()).is_err());
}

#[test]
fn applied_segments_are_reused_and_read_back_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let s = RedbStore::open(dir.path()).unwrap();
    let spares = |s: &RedbStore| lock(&s.inner.shared).spares.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while spares(&s).len() < SPARES && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(spares(&s).len(), SPARES, "new files made at start");

    // Segment 1 applied: its file is kept as the next spare.
    s.commit(&[task("t1", 1), event("t1", 0, "accepted")])
        .unwrap();
    s.inner.checkpoint_all(true).unwrap();
    let kept = spares(&s);
    assert_eq!(kept.len(), SPARES, "one taken by the seal, one given back");
    let reused = kept.last().unwrap().clone();
    let bytes = std::fs::read(&reused).unwrap();
    assert!(
        bytes[16..].iter().any(|&b| b != 0),
        "the spare is segment 1's file, records and all"
    );

    // The next seal makes segment 3 of it; a crash leaves it to be read.
    s.commit(&[task("t2", 1)]).unwrap();
    s.inner.checkpoint_all(true).unwrap();
    assert!(!reused.exists());
    assert_eq!(journal_files(dir.path()), [3]);
    s.commit(&[task("t3", 1), event("t3", 0, "accepted")])
        .unwrap();
    let copy = crash_copy(dir.path());
    drop(s);
    let s = RedbStore::open(copy.path()).unwrap();
    assert_eq!(
        tasks(&s),
        [
            ("t1".to_string(), 1, 1),
            ("t2".to_string(), 1, 0),
            ("t3".to_string(), 1, 1)
        ]
    );
}
