use super::*;
use crate::keys::DueEntry;
use geokv_core::{apply, Limits, Op, View};

const NOW: u64 = 1_700_000_000_000;

fn open(dir: &Path, cfg: StorageConfig) -> Engine {
    Engine::open(dir, 7, cfg).unwrap()
}

/// Applies `op` the way the server does: stamp after the stored version.
fn run(e: &Engine, key: &[u8], op: Op, now: u64) -> Result<(), StorageError> {
    e.update(key, |cur| {
        let t = cur.map(|r| r.version().time).unwrap_or(0).max(Stamp::ntp_from_millis(now)) + 1;
        let a = apply(cur, &op, Stamp::new(t, 7), now, &Limits::default())?;
        Ok(Update { record: Some(a.record), out: () })
    })
}

fn put(v: &str, ttl_ms: Option<u64>) -> Op {
    Op::Put { value: v.as_bytes().to_vec(), ttl_ms }
}

#[test]
fn writes_survive_reopen_with_their_change_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = open(dir.path(), StorageConfig::default());
        run(&e, b"a", put("1", None), NOW).unwrap();
        run(&e, b"b", put("2", None), NOW).unwrap();
        run(&e, b"a", put("3", None), NOW).unwrap();
    }
    let e = open(dir.path(), StorageConfig::default());
    assert_eq!(e.get(b"a").unwrap().unwrap().view(NOW), Some(View::Register(b"3".to_vec())));
    let log = e.log_since(0, 100).unwrap();
    assert_eq!(
        log.iter().map(|l| (l.seq, l.key.clone())).collect::<Vec<_>>(),
        vec![(1, b"a".to_vec()), (2, b"b".to_vec()), (3, b"a".to_vec())]
    );
    assert_eq!(e.log_since(2, 100).unwrap().len(), 1);
    run(&e, b"c", put("4", None), NOW).unwrap();
    assert_eq!(e.log_since(3, 100).unwrap()[0].seq, 4, "sequence continues after reopen");
}

#[test]
fn a_data_dir_of_another_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), StorageConfig::default()));
    let err = Engine::open(dir.path(), 8, StorageConfig::default()).err().unwrap().to_string();
    assert!(err.contains("belongs to node 7"), "{err}");
}

#[test]
fn ttl_index_tracks_expiry_and_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StorageConfig { tombstone_grace_secs: 10, ..StorageConfig::default() };
    let e = open(dir.path(), cfg);
    run(&e, b"t", put("x", Some(500)), NOW).unwrap();
    // An expiring key may be purged a grace period after it expires.
    assert!(e.due_ttl(NOW + 10_499, 10).unwrap().is_empty());
    let due = e.due_ttl(NOW + 10_500, 10).unwrap();
    assert_eq!(due, vec![DueEntry { deadline_ms: NOW + 10_500, tag: TtlTag::Purge, key: b"t".to_vec() }]);
    // Overwriting without a TTL removes the index entry.
    run(&e, b"t", put("y", None), NOW).unwrap();
    assert!(e.due_ttl(u64::MAX, 10).unwrap().is_empty());
    // A delete schedules a purge after the grace period.
    run(&e, b"t", Op::Delete, NOW).unwrap();
    let due = e.due_ttl(u64::MAX, 10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].tag, TtlTag::Purge);
    assert!(due[0].deadline_ms >= NOW + 10_000);
    assert!(!e.purge_if_due(b"t", NOW + 1_000).unwrap(), "grace period not over");
    assert!(e.purge_if_due(b"t", NOW + 20_000).unwrap());
    assert!(e.get(b"t").unwrap().is_none());
    assert!(e.due_ttl(u64::MAX, 10).unwrap().is_empty());
}

#[test]
fn corrupt_values_are_reported_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), StorageConfig::default());
    run(&e, b"k", put("value", None), NOW).unwrap();
    let raw = e.db.get_cf(e.cf(CF_DATA), b"k").unwrap().unwrap();
    let mut bad = raw.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    e.put_raw_for_test(b"k", &bad).unwrap();
    assert!(matches!(e.get(b"k"), Err(StorageError::Corrupt { .. })));
    assert!(matches!(run(&e, b"k", put("other", None), NOW), Err(StorageError::Corrupt { .. })));
    assert_eq!(e.stats().corrupt_reads, 2);
}

#[test]
fn a_replicas_state_replaces_a_corrupt_one() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), StorageConfig::default());
    run(&e, b"k", put("value", None), NOW).unwrap();
    let good = e.get(b"k").unwrap().unwrap();
    let mut bad = e.get_raw_for_test(b"k").unwrap().unwrap();
    bad[3] ^= 0x40;
    e.put_raw_for_test(b"k", &bad).unwrap();
    assert!(matches!(e.get(b"k"), Err(StorageError::Corrupt { .. })), "never served");
    assert!(e.merge(b"k", &good).unwrap(), "the replica's state is written over the corrupt one");
    assert_eq!(e.get(b"k").unwrap(), Some(good));
    assert_eq!((e.stats().corrupt_reads, e.stats().corrupt_replaced), (2, 1));
}

#[test]
fn oversized_records_are_refused_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StorageConfig { max_record_bytes: 200, ..Default::default() };
    let e = open(dir.path(), cfg);
    run(&e, b"k", put("small", None), NOW).unwrap();
    // Zeros compress to almost nothing: the limit applies to the uncompressed state.
    let err = run(&e, b"k", Op::Put { value: vec![0; 3000], ttl_ms: None }, NOW).unwrap_err();
    assert!(matches!(err, StorageError::RecordTooLarge { limit: 200, .. }), "{err}");
    assert_eq!(e.get(b"k").unwrap().unwrap().view(NOW), Some(View::Register(b"small".to_vec())));
}

#[test]
fn scan_pages_by_prefix_and_skips_what_keep_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), StorageConfig::default());
    for k in ["a1", "b1", "b2", "b3", "b4", "c1"] {
        run(&e, k.as_bytes(), put(k, None), NOW).unwrap();
    }
    run(&e, b"b2", Op::Delete, NOW).unwrap();
    let live = |k: &[u8], r: &Record| r.is_visible(NOW).then_some(k.len());
    let page = e.scan(b"", b"b", 2, usize::MAX, live).unwrap();
    let keys: Vec<_> = page.items.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, vec![b"b1".to_vec(), b"b3".to_vec()]);
    assert_eq!(page.resume_after, Some(b"b3".to_vec()));
    let page = e.scan(b"b4", b"b", 2, usize::MAX, live).unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.resume_after, None);
    let page = e.scan(b"", b"", 100, 1, live).unwrap();
    assert_eq!(page.items.len(), 1, "a byte budget smaller than one entry still returns one");
    assert_eq!(page.resume_after, Some(b"a1".to_vec()));
}

#[test]
fn trim_keeps_the_newest_log_entries() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), StorageConfig { changelog_retention_entries: 3, ..Default::default() });
    for i in 0..10u8 {
        run(&e, &[i], put("v", None), NOW).unwrap();
    }
    assert_eq!(e.trim_log().unwrap(), 7);
    let seqs: Vec<u64> = e.log_since(0, 100).unwrap().iter().map(|l| l.seq).collect();
    assert_eq!(seqs, vec![8, 9, 10]);
}

#[test]
fn trim_never_passes_a_tailers_cursor_and_entries_say_what_to_ship() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), StorageConfig { changelog_retention_entries: 3, ..Default::default() });
    for i in 0..10u8 {
        run(&e, &[i], put("v", None), NOW).unwrap();
    }
    e.set_cursor("replication/us-east", 4).unwrap();
    e.set_cursor("replication/ap-southeast", 6).unwrap();
    assert_eq!(e.cursor("replication/us-east").unwrap(), 4);
    assert_eq!(e.cursor("never-set").unwrap(), 0);
    assert_eq!(e.trim_log().unwrap(), 4, "the slowest tailer holds the log back");
    assert_eq!(e.log_since(0, 100).unwrap().first().map(|l| l.seq), Some(5));
    // A client write ships; a repair merge does not; a merge of a replicated write does.
    let rec = e.get(&[1]).unwrap().unwrap();
    e.merge(b"repaired", &rec).unwrap();
    e.merge_as(b"replicated", &rec, true).unwrap();
    let tail = e.log_since(10, 100).unwrap();
    let ships: Vec<(Vec<u8>, bool)> = tail.iter().map(|l| (l.key.clone(), l.ship)).collect();
    assert_eq!(ships, vec![(b"repaired".to_vec(), false), (b"replicated".to_vec(), true)]);
    assert!(e.log_since(0, 100).unwrap().iter().take(5).all(|l| l.ship), "client writes ship");
}

#[test]
fn a_tombstone_is_not_purged_before_every_tailer_has_consumed_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StorageConfig { tombstone_grace_secs: 10, ..StorageConfig::default() };
    let e = open(dir.path(), cfg);
    run(&e, b"t", put("x", None), NOW).unwrap();
    e.set_cursor("replication/far", 0).unwrap();
    run(&e, b"t", Op::Delete, NOW).unwrap();
    let late = NOW + 3_600_000;
    assert!(!e.purge_if_due(b"t", late).unwrap(), "the delete has not been shipped");
    assert!(e.get(b"t").unwrap().is_some());
    let retry = e.due_ttl(u64::MAX, 10).unwrap();
    assert!(retry.iter().any(|d| d.deadline_ms == late + 60_000), "retried later: {retry:?}");
    e.set_cursor("replication/far", e.committed_seq()).unwrap();
    assert!(e.purge_if_due(b"t", late).unwrap(), "shipped: purged");
}

#[test]
fn merge_applies_a_replica_state_and_reports_change() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), StorageConfig::default());
    let other =
        apply(None, &Op::Increment { delta: 3, ttl_ms: None }, Stamp::new(10, 2), NOW, &Limits::default())
            .unwrap()
            .record;
    assert!(e.merge(b"c", &other).unwrap());
    assert!(!e.merge(b"c", &other).unwrap(), "merging the same state again changes nothing");
    run(&e, b"c", Op::Increment { delta: 1, ttl_ms: None }, NOW).unwrap();
    assert_eq!(e.get(b"c").unwrap().unwrap().view(NOW), Some(View::Counter(4)));
    assert_eq!(e.log_since(0, 10).unwrap().len(), 2);
}

#[test]
fn hints_are_durable_merged_and_removed_only_when_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let a = apply(None, &put("a", None), Stamp::new(10, 1), NOW, &Limits::default()).unwrap().record;
    let b = apply(Some(&a), &put("b", None), Stamp::new(11, 1), NOW, &Limits::default()).unwrap().record;
    {
        let e = open(dir.path(), StorageConfig::default());
        e.put_hint(3, b"k", &a).unwrap();
        e.put_hint(5, b"k", &a).unwrap();
        e.put_hint(3, b"j", &a).unwrap();
    }
    let e = open(dir.path(), StorageConfig::default());
    assert_eq!(e.hint_targets().unwrap(), vec![3, 5]);
    assert_eq!(e.hint_count(), 3);
    let hints = e.hints_for(3, None, 10).unwrap();
    assert_eq!(hints.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), vec![b"j".to_vec(), b"k".to_vec()]);
    e.put_hint(3, b"k", &b).unwrap();
    assert!(!e.remove_hint(3, b"k", &a).unwrap(), "the hint changed since it was read");
    let current = e.hints_for(3, None, 10).unwrap().into_iter().find(|(k, _)| k == b"k").unwrap().1;
    assert_eq!(current.view(NOW), Some(View::Register(b"b".to_vec())));
    assert!(e.remove_hint(3, b"k", &current).unwrap());
    assert_eq!(e.hint_count(), 2);
    assert_eq!(e.hints_for(3, Some(b"a"), 10).unwrap().len(), 1, "paging after a key");
    assert!(e.hints_for(3, Some(b"j"), 10).unwrap().is_empty());
}

#[test]
fn a_raised_grace_period_reschedules_instead_of_leaking_the_tombstone() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = open(dir.path(), StorageConfig { tombstone_grace_secs: 10, ..Default::default() });
        run(&e, b"t", put("x", None), NOW).unwrap();
        run(&e, b"t", Op::Delete, NOW).unwrap();
    }
    let e = open(dir.path(), StorageConfig { tombstone_grace_secs: 100, ..Default::default() });
    let due = e.due_ttl(NOW + 20_000, 10).unwrap();
    assert_eq!(due.len(), 1, "the entry made under the old grace period is due");
    assert!(!e.purge_if_due(b"t", NOW + 20_000).unwrap());
    e.drop_ttl_entry(&due[0]).unwrap();
    let later = e.due_ttl(u64::MAX, 10).unwrap();
    assert_eq!(later.len(), 1, "rescheduled");
    assert!(later[0].deadline_ms >= NOW + 100_000);
    assert!(e.purge_if_due(b"t", later[0].deadline_ms).unwrap());
}

#[test]
fn a_page_over_many_dead_keys_returns_early_with_a_resume_point() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), StorageConfig::default());
    for i in 0..(MAX_SKIPPED_PER_PAGE as u32 + 5) {
        let k = format!("d{i:06}");
        run(&e, k.as_bytes(), put("x", None), NOW).unwrap();
        run(&e, k.as_bytes(), Op::Delete, NOW).unwrap();
    }
    run(&e, b"z", put("x", None), NOW).unwrap();
    let live = |k: &[u8], r: &Record| r.is_visible(NOW).then_some(k.len());
    let page = e.scan(b"", b"", 10, usize::MAX, live).unwrap();
    assert!(page.items.is_empty());
    let resume = page.resume_after.expect("more to come");
    let mut next = resume.clone();
    next.push(0);
    let page = e.scan(&next, b"", 10, usize::MAX, live).unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].0, b"z".to_vec());
}

#[test]
fn update_many_commits_a_batch_at_once_with_per_item_results() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), StorageConfig { max_record_bytes: 300, ..Default::default() });
    let keys: Vec<Vec<u8>> = vec![b"a".to_vec(), b"b".to_vec(), b"a".to_vec(), b"big".to_vec()];
    let ops = [
        Op::Increment { delta: 1, ttl_ms: None },
        put("x", None),
        Op::Increment { delta: 2, ttl_ms: None },
        Op::Put { value: vec![7; 1000], ttl_ms: None },
    ];
    let mut t = 100;
    let results = e
        .update_many(&keys, |i, cur| {
            t += 1;
            let a = apply(cur, &ops[i], Stamp::new(t, 7), NOW, &Limits::default())?;
            Ok(Update { record: Some(a.record), out: a.outcome })
        })
        .unwrap();
    assert!(results[0].is_ok() && results[1].is_ok());
    assert_eq!(
        results[2].as_ref().unwrap(),
        &geokv_core::OpOutcome::Counter { value: 3 },
        "sees the earlier item"
    );
    assert!(matches!(results[3], Err(StorageError::RecordTooLarge { .. })));
    assert_eq!(e.get(b"a").unwrap().unwrap().view(NOW), Some(View::Counter(3)));
    assert!(e.get(b"big").unwrap().is_none(), "a refused item stores nothing");
    assert_eq!(e.log_since(0, 10).unwrap().len(), 2, "one log entry per changed key");
}

/// Every file under `dir` (recursively) that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            hits.extend(files_containing(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

#[test]
fn erase_removes_every_trace_of_a_key_from_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), StorageConfig::default());
    // Unique, unpredictable-looking tails so a key's bytes cannot be shared with a neighbour
    // (SST blocks store only the part of a key that differs from the previous one).
    let key = |i: u64, kind: &str| {
        let i = if kind == "kept" { i + 1_000_000 } else { i };
        format!("{kind}:{:016x}", (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)).into_bytes()
    };
    for i in 0..200 {
        run(&e, &key(i, "doomed"), put("secret", Some(60_000)), NOW).unwrap();
        run(&e, &key(i, "kept"), put("fine", None), NOW).unwrap();
    }
    let doomed_state = e.get(&key(0, "doomed")).unwrap().unwrap();
    e.put_hint(3, &key(0, "doomed"), &doomed_state).unwrap();
    e.flush().unwrap();
    let needle = |i: u64| key(i, "doomed")[7..].to_vec();
    assert!(!files_containing(dir.path(), &needle(0)).is_empty(), "the search finds stored keys");

    let report = e.erase_where(|k| k.starts_with(b"doomed:")).unwrap();
    assert_eq!(report, EraseReport { keys: 200, ttl_entries: 200, log_entries: 200, hints: 1 });
    e.compact_all().unwrap();
    assert_eq!(e.get(&key(0, "doomed")).unwrap(), None);
    assert!(e.log_since(0, 10_000).unwrap().iter().all(|l| l.key.starts_with(b"kept:")));
    assert_eq!(e.hint_count(), 0);
    for i in 0..200 {
        let hits = files_containing(dir.path(), &needle(i));
        // The MANIFEST may still name a deleted file's first or last key until it is rewritten
        // (at the next open); everything else must be clean.
        assert!(hits.iter().all(|f| f.contains("MANIFEST")), "key {i} still in {hits:?}");
        assert!(e.get(&key(i, "kept")).unwrap().is_some());
    }
}

#[test]
fn admission_refuses_keys_before_anything_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), StorageConfig::default());
    e.set_admission(std::sync::Arc::new(|k: &[u8]| {
        if k.starts_with(b"no:") {
            Err("not in this region".to_string())
        } else {
            Ok(())
        }
    }));
    let err = run(&e, b"no:1", put("x", None), NOW).unwrap_err();
    assert!(matches!(err, StorageError::NotAdmitted { .. }), "{err}");
    run(&e, b"yes:1", put("x", None), NOW).unwrap();
    let rec = e.get(b"yes:1").unwrap().unwrap();
    assert!(e.merge(b"no:2", &rec).is_err());
    assert!(e.put_hint(2, b"no:3", &rec).is_err());
    assert_eq!(e.get(b"no:1").unwrap(), None);
    assert_eq!(e.get(b"no:2").unwrap(), None);
    assert_eq!(e.hint_count(), 0);
    assert_eq!(e.log_since(0, 100).unwrap().len(), 1);
}

#[test]
fn reship_logs_the_current_state_again_for_shipping() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), StorageConfig::default());
    run(&e, b"a", put("1", None), NOW).unwrap();
    let rec = e.get(b"a").unwrap().unwrap();
    e.merge(b"r", &rec).unwrap();
    assert!(e.reship(b"r").unwrap());
    assert!(!e.reship(b"missing").unwrap());
    let log = e.log_since(0, 10).unwrap();
    assert_eq!(
        log.iter().map(|l| (l.key.clone(), l.ship)).collect::<Vec<_>>(),
        [(b"a".to_vec(), true), (b"r".to_vec(), false), (b"r".to_vec(), true)]
    );
    assert_eq!(e.get(b"r").unwrap(), Some(rec));
}

#[test]
fn an_injected_commit_delay_slows_every_commit_and_is_timed_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), StorageConfig { sync: false, ..StorageConfig::default() });
    let observed = std::sync::Arc::new(Mutex::new(Vec::new()));
    let seen = observed.clone();
    e.set_commit_observer(std::sync::Arc::new(move |took| lock(&seen).push(took)));
    let delay = std::time::Duration::from_millis(60);
    e.set_commit_delay(delay);
    assert_eq!(e.commit_delay(), delay);
    let started = std::time::Instant::now();
    run(&e, b"k", put("1", None), NOW).unwrap();
    e.put_hint(9, b"k", &e.get(b"k").unwrap().unwrap()).unwrap();
    assert!(started.elapsed() >= 2 * delay, "a write and a hint each wait: {:?}", started.elapsed());
    assert!(lock(&observed).iter().all(|took| *took >= delay), "commit times include the delay");
    e.set_commit_delay(std::time::Duration::ZERO);
    assert_eq!(e.commit_delay(), std::time::Duration::ZERO);
    run(&e, b"k", put("2", None), NOW).unwrap();
}

/// Scenario 7 of the data-loss issue: erasing the newest change-log entries (residency
/// enforcement) and restarting must not hand out their sequence numbers again: a destination
/// that acknowledged them would never be sent the new entries.
#[test]
fn change_log_sequence_numbers_never_go_back_after_an_erase_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = open(dir.path(), StorageConfig::default());
        run(&e, b"kept", put("1", None), NOW).unwrap();
        for i in 0..5 {
            run(&e, format!("doomed:{i}").as_bytes(), put("x", None), NOW).unwrap();
        }
        assert_eq!(e.committed_seq(), 6);
        e.erase_where(|k| k.starts_with(b"doomed:")).unwrap();
    }
    let e = open(dir.path(), StorageConfig::default());
    run(&e, b"after", put("2", None), NOW).unwrap();
    let log = e.log_since(6, 10).unwrap();
    assert_eq!(log.iter().map(|l| (l.seq, l.key.clone())).collect::<Vec<_>>(), vec![(7, b"after".to_vec())]);
}

/// The same after trimming a log down to nothing.
#[test]
fn change_log_sequence_numbers_never_go_back_after_a_full_trim_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StorageConfig { changelog_retention_entries: 0, ..StorageConfig::default() };
    {
        let e = open(dir.path(), cfg.clone());
        for i in 0..4 {
            run(&e, format!("k{i}").as_bytes(), put("x", None), NOW).unwrap();
        }
        assert_eq!(e.trim_log().unwrap(), 4);
        assert!(e.log_since(0, 10).unwrap().is_empty());
    }
    let e = open(dir.path(), cfg);
    run(&e, b"after", put("2", None), NOW).unwrap();
    assert_eq!(e.log_since(0, 10).unwrap().iter().map(|l| l.seq).collect::<Vec<_>>(), vec![5]);
}

#[test]
fn the_rocksdb_engine_passes_the_conformance_suite() {
    let dirs = std::cell::RefCell::new(Vec::new());
    crate::store::conformance::run_all(|| {
        let dir = tempfile::tempdir().unwrap();
        let e = open(dir.path(), StorageConfig { max_record_bytes: 4096, ..StorageConfig::default() });
        dirs.borrow_mut().push(dir);
        e
    });
}
