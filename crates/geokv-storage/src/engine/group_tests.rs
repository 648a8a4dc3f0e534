use std::sync::{Arc, Mutex};
use std::time::Duration;

use geokv_core::{apply, Limits, Op, Stamp, View};

use super::*;
use crate::StorageConfig;

const NOW: u64 = 1_700_000_000_000;

fn engine(dir: &std::path::Path) -> Arc<Engine> {
    Arc::new(Engine::open(dir, 7, StorageConfig::default()).unwrap())
}

/// A client write the way the server stamps it: after the stored version.
fn op_write(op: Op) -> impl FnOnce(Option<&Record>) -> Result<Update<Record>, CoreError> + Send + 'static {
    move |cur| {
        let t = cur.map(|r| r.version().time).unwrap_or(0).max(Stamp::ntp_from_millis(NOW)) + 1;
        let a = apply(cur, &op, Stamp::new(t, 7), NOW, &Limits::default())?;
        Ok(Update { record: Some(a.record.clone()), out: a.record })
    }
}

fn incr(by: i64) -> Op {
    Op::Increment { delta: by, ttl_ms: None }
}

/// The number of commits `e` makes from now on.
fn count_commits(e: &Engine) -> Arc<Mutex<usize>> {
    let commits = Arc::new(Mutex::new(0usize));
    let seen = commits.clone();
    e.set_commit_observer(Arc::new(move |_| *lock(&seen) += 1));
    commits
}

fn counter(e: &Engine, key: &[u8]) -> Option<View> {
    e.get(key).unwrap().and_then(|r| r.view(NOW))
}

/// Commits are counted by the engine's commit observer; with a slow disk, changes queued
/// while one commit runs go together in the next.
#[test]
fn changes_queued_during_a_commit_go_together_in_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let commits = count_commits(&e);
    e.set_commit_delay(Duration::from_millis(30));
    let group = GroupCommit::start(e.clone()).unwrap();
    let pending: Vec<_> =
        (0..200).map(|i| group.submit(format!("k{}", i % 10).into_bytes(), op_write(incr(1)))).collect();
    for p in pending {
        p.wait().unwrap();
    }
    for i in 0..10 {
        assert_eq!(
            counter(&e, format!("k{i}").as_bytes()),
            Some(View::Counter(20)),
            "every increment counted"
        );
    }
    let commits = *lock(&commits);
    assert!(commits <= 5, "200 changes queued at once took {commits} commits");
    // One log entry per key and commit, not per change.
    assert!(e.log_since(0, 1000).unwrap().len() <= commits * 10);
}

#[test]
fn a_later_change_of_a_key_in_the_same_group_sees_the_earlier_one() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let commits = count_commits(&e);
    e.set_commit_delay(Duration::from_millis(100));
    let group = GroupCommit::start(e.clone()).unwrap();
    let first = group.submit(b"warm".to_vec(), op_write(incr(1)));
    let put = group.submit(b"k".to_vec(), op_write(Op::Put { value: b"a".to_vec(), ttl_ms: None }));
    let append = group.submit(b"k".to_vec(), op_write(Op::Append { value: b"b".to_vec(), ttl_ms: None }));
    first.wait().unwrap();
    let (put, append) = (put.wait().unwrap(), append.wait().unwrap());
    assert!(append.version() > put.version());
    assert_eq!(counter(&e, b"k"), Some(View::Register(b"ab".to_vec())));
    // One change-log entry for the key: the put and the append were committed together.
    let k_entries = e.log_since(0, 10).unwrap().iter().filter(|l| l.key == b"k").count();
    assert_eq!(k_entries, 1, "the put and the append went in one group");
    assert!(*lock(&commits) <= 2);
}

#[test]
fn an_answer_waits_for_its_commit_and_a_failed_group_does_not_stop_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    e.set_commit_delay(Duration::from_millis(400));
    let group = GroupCommit::start(e.clone()).unwrap();
    let mut pending = group.submit(b"k".to_vec(), op_write(incr(1)));
    std::thread::sleep(Duration::from_millis(150));
    let early = futures::executor::block_on(futures::future::poll_immediate(&mut pending));
    assert!(early.is_none(), "answered before its commit finished");
    pending.wait().unwrap();
    e.set_commit_delay(Duration::ZERO);
    // A bug outside the decision (here the admission check panics) fails the group's callers.
    e.set_admission(Arc::new(
        |k: &[u8]| if k.starts_with(b"boom") { panic!("admission bug") } else { Ok(()) },
    ));
    let failed = group.submit(b"boom".to_vec(), op_write(incr(1))).wait().unwrap_err().to_string();
    assert!(failed.contains("not answered"), "{failed}");
    group.submit(b"k".to_vec(), op_write(incr(1))).wait().unwrap();
    assert_eq!(counter(&e, b"k"), Some(View::Counter(2)), "the writer goes on");
}

#[test]
fn a_refused_or_panicking_change_fails_alone_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    e.set_admission(Arc::new(|k: &[u8]| if k.starts_with(b"no:") { Err("not here".into()) } else { Ok(()) }));
    e.set_commit_delay(Duration::from_millis(30));
    let group = GroupCommit::start(e.clone()).unwrap();
    let warm = group.submit(b"warm".to_vec(), op_write(incr(1)));
    let ok = group.submit(b"k".to_vec(), op_write(incr(2)));
    let wrong_type = group.submit(b"k".to_vec(), op_write(Op::Append { value: b"x".to_vec(), ttl_ms: None }));
    let refused = group.submit(b"no:k".to_vec(), op_write(incr(1)));
    let panics = group.submit(b"k".to_vec(), |_: Option<&Record>| -> Result<Update<()>, CoreError> {
        panic!("a bug in deciding")
    });
    let after = group.submit(b"k".to_vec(), op_write(incr(3)));
    warm.wait().unwrap();
    ok.wait().unwrap();
    assert!(matches!(wrong_type.wait(), Err(StorageError::Core(CoreError::WrongType { .. }))));
    assert!(matches!(refused.wait(), Err(StorageError::NotAdmitted { .. })));
    let panicked = panics.wait().unwrap_err().to_string();
    assert!(panicked.contains("panicked"), "{panicked}");
    after.wait().unwrap();
    assert_eq!(counter(&e, b"k"), Some(View::Counter(5)));
    assert_eq!(e.get(b"no:k").unwrap(), None);
    // The writer still works after all of that.
    group.submit(b"k".to_vec(), op_write(incr(1))).wait().unwrap();
    assert_eq!(counter(&e, b"k"), Some(View::Counter(6)));
}

#[test]
fn merges_through_the_writer_report_change_replace_corrupt_states_and_are_not_shipped() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let group = GroupCommit::start(e.clone()).unwrap();
    let written = group.submit(b"a".to_vec(), op_write(incr(4))).wait().unwrap();
    assert!(group.merge(b"r".to_vec(), written.clone(), false).wait().unwrap(), "new here");
    assert!(!group.merge(b"r".to_vec(), written.clone(), false).wait().unwrap(), "already held");
    let mut bad = e.get_raw_for_test(b"r").unwrap().unwrap();
    bad[3] ^= 0x40;
    e.put_raw_for_test(b"r", &bad).unwrap();
    assert!(matches!(
        group.submit(b"r".to_vec(), op_write(incr(1))).wait(),
        Err(StorageError::Corrupt { .. })
    ));
    assert!(group.merge(b"r".to_vec(), written.clone(), true).wait().unwrap(), "replaces the corrupt state");
    assert_eq!(e.get(b"r").unwrap(), Some(written));
    assert_eq!(e.stats().corrupt_replaced, 1);
    let ships: Vec<_> = e.log_since(0, 10).unwrap().iter().map(|l| (l.key.clone(), l.ship)).collect();
    assert_eq!(ships, [(b"a".to_vec(), true), (b"r".to_vec(), false), (b"r".to_vec(), true)]);
}

#[test]
fn a_change_is_durable_when_answered_and_a_stopped_writer_answers_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = engine(dir.path());
        let group = GroupCommit::start(e.clone()).unwrap();
        let pending: Vec<_> =
            (0..50).map(|i| group.submit(format!("d{i}").into_bytes(), op_write(incr(i)))).collect();
        pending.into_iter().for_each(|p| {
            p.wait().unwrap();
        });
    }
    let e = engine(dir.path());
    for i in 0..50 {
        assert_eq!(counter(&e, format!("d{i}").as_bytes()), Some(View::Counter(i)));
    }
    let mut group = GroupCommit::start(e).unwrap();
    drop(group.tx.take());
    let err = group.submit(b"late".to_vec(), op_write(incr(1))).wait().unwrap_err().to_string();
    assert!(err.contains("shutting down"), "{err}");
}

/// A batch's changes reach the writer together: one group, however fast the writer is.
#[test]
fn a_batch_is_committed_in_one_group_in_its_order() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let commits = count_commits(&e);
    let group = GroupCommit::start(e.clone()).unwrap();
    for round in 1..=5 {
        let mut batch = group.batch();
        let pending: Vec<_> =
            (0..100).map(|i| batch.submit(format!("k{}", i % 20).into_bytes(), op_write(incr(1)))).collect();
        batch.commit();
        for p in pending {
            p.wait().unwrap();
        }
        assert_eq!(*lock(&commits), round, "a batch of 100 changes took more than one commit");
    }
    assert_eq!(counter(&e, b"k3"), Some(View::Counter(25)), "every change of the batch counted, in order");
    // A batch dropped before its commit answers its callers rather than leave them waiting.
    let mut dropped = group.batch();
    let never = dropped.submit(b"k1".to_vec(), op_write(incr(1)));
    drop(dropped);
    assert!(never.wait().is_err());
    assert_eq!(counter(&e, b"k1"), Some(View::Counter(25)));
}
