//! The client API end to end: the real `geokv` binary on a loopback port, driven through the
//! client library.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use geokv_client::Code;
use geokv_client::{op, proto, Client, ScanOptions};
use proto::value::Kind;
use support::{wait_until, ServerProcess};

fn register(e: &Option<proto::Entry>) -> Option<Vec<u8>> {
    match e.as_ref()?.value.as_ref()?.kind.as_ref()? {
        Kind::Register(b) => Some(b.clone()),
        _ => None,
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, geokv_client::ClientError>) -> (Code, String) {
    match r {
        Err(geokv_client::ClientError::Status(s)) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC error, got {other:?}"),
    }
}

/// The request field a refusal names (`google.rpc.BadRequest`), if any.
fn field<T: std::fmt::Debug>(r: Result<T, geokv_client::ClientError>) -> Option<String> {
    let e = r.expect_err("a refusal");
    e.status().and_then(|s| s.field_violations().first().map(|v| v.field.clone()))
}

async fn server() -> (tempfile::TempDir, ServerProcess, Client) {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), "[sweeper]\ninterval_ms = 50\n[limits]\nmax_key_bytes = 64\nmax_value_bytes = 1024\nmax_batch_items = 100\nmax_request_bytes = 1048576\n");
    let c = s.client().await;
    (dir, s, c)
}

#[tokio::test]
async fn register_put_get_append_delete_round_trip() {
    let (_d, _s, c) = server().await;
    assert_eq!(c.get(b"k").await.unwrap(), None);
    let put = c.put(b"k", b"v1", None).await.unwrap();
    let got = c.get(b"k").await.unwrap();
    assert_eq!(register(&got), Some(b"v1".to_vec()));
    assert_eq!(got.as_ref().unwrap().version, put.version, "get returns the version put acknowledged");
    let app = c.append(b"k", b"+more", None).await.unwrap();
    assert_eq!(app.length, 7);
    assert!(app.version.unwrap().hlc > put.version.unwrap().hlc);
    assert_eq!(register(&c.get(b"k").await.unwrap()), Some(b"v1+more".to_vec()));
    let del = c.delete(b"k").await.unwrap();
    assert!(del.existed);
    assert_eq!(c.get(b"k").await.unwrap(), None);
    assert!(!c.delete(b"k").await.unwrap().existed);
    // A deleted key may be reused with another type.
    assert_eq!(c.increment(b"k", 2, None).await.unwrap().value, 2);
}

#[tokio::test]
async fn counters_and_sets() {
    let (_d, _s, c) = server().await;
    assert_eq!(c.increment(b"n", 10, None).await.unwrap().value, 10);
    assert_eq!(c.increment(b"n", -15, None).await.unwrap().value, -5);
    let over = c.increment(b"n", i64::MIN, None).await;
    assert_eq!(code(over).0, Code::OutOfRange);
    assert_eq!(c.increment(b"n", 0, None).await.unwrap().value, -5, "a refused increment changed nothing");

    let add = c.set_add(b"s", vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()], None).await.unwrap();
    assert_eq!((add.changed, add.size), (3, 3));
    let again = c.set_add(b"s", vec![b"a".to_vec(), b"d".to_vec()], None).await.unwrap();
    assert_eq!((again.changed, again.size), (1, 4));
    let rem = c.set_remove(b"s", vec![b"b".to_vec(), b"zz".to_vec()]).await.unwrap();
    assert_eq!((rem.changed, rem.size), (1, 3));
    let m = c.set_members(b"s").await.unwrap();
    assert!(m.found);
    assert_eq!(m.members, vec![b"a".to_vec(), b"c".to_vec(), b"d".to_vec()]);
    assert!(!c.set_members(b"nope").await.unwrap().found);
    // Removing every member makes the set absent.
    c.set_remove(b"s", m.members.clone()).await.unwrap();
    assert_eq!(c.get(b"s").await.unwrap(), None);
}

#[tokio::test]
async fn wrong_type_operations_fail_precondition_naming_both_types() {
    let (_d, _s, c) = server().await;
    c.put(b"reg", b"x", None).await.unwrap();
    c.increment(b"cnt", 1, None).await.unwrap();
    c.set_add(b"set", vec![b"m".to_vec()], None).await.unwrap();
    let cases: Vec<(Code, String)> = vec![
        code(c.increment(b"reg", 1, None).await),
        code(c.set_add(b"reg", vec![b"m".to_vec()], None).await),
        code(c.put(b"cnt", b"x", None).await),
        code(c.append(b"set", b"x", None).await),
        code(c.set_members(b"cnt").await),
        code(c.compare_and_swap(b"cnt", None, b"x", None).await),
    ];
    for (code, msg) in cases {
        assert_eq!(code, Code::FailedPrecondition, "{msg}");
        assert!(msg.contains("needs a"), "{msg}");
    }
    // Nothing was harmed.
    assert_eq!(register(&c.get(b"reg").await.unwrap()), Some(b"x".to_vec()));
    assert_eq!(c.increment(b"cnt", 0, None).await.unwrap().value, 1);
}

#[tokio::test]
async fn compare_and_swap_succeeds_on_the_version_read_and_conflicts_otherwise() {
    let (_d, _s, c) = server().await;
    let first = c.compare_and_swap(b"lock", None, b"owner-a", None).await.unwrap();
    assert!(first.succeeded, "put-if-absent on an absent key");
    let second = c.compare_and_swap(b"lock", None, b"owner-b", None).await.unwrap();
    assert!(!second.succeeded, "put-if-absent on a present key");
    assert_eq!(register(&second.current), Some(b"owner-a".to_vec()));
    let v = first.current.unwrap().version;
    let swap = c.compare_and_swap(b"lock", v, b"owner-c", None).await.unwrap();
    assert!(swap.succeeded);
    let stale = c.compare_and_swap(b"lock", v, b"owner-d", None).await.unwrap();
    assert!(!stale.succeeded, "the version moved on");
    assert_eq!(register(&stale.current), Some(b"owner-c".to_vec()));
    assert_eq!(register(&c.get(b"lock").await.unwrap()), Some(b"owner-c".to_vec()));
    // A version on an absent key conflicts and reports the key absent.
    let absent = c.compare_and_swap(b"free", v, b"x", None).await.unwrap();
    assert!(!absent.succeeded && absent.current.is_none());
    // No condition at all is a client error.
    let mut raw = geokv_client::grpc::kv(&c);
    let req =
        proto::CompareAndSwapRequest { key: b"lock".to_vec(), value: b"x".to_vec(), ..Default::default() };
    assert_eq!(raw.compare_and_swap(req).await.unwrap_err().code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn ttl_expires_keys_and_reports_time_left() {
    let (_d, s, c) = server().await;
    let put = c.put(b"t", b"v", Some(Duration::from_millis(800))).await.unwrap();
    let left = put.ttl_remaining_ms.unwrap();
    assert!(left > 0 && left <= 800, "{left}");
    let got = c.get(b"t").await.unwrap().expect("present before expiry");
    assert!(got.ttl_remaining_ms.unwrap() <= 800);
    c.increment(b"tc", 5, Some(Duration::from_millis(800))).await.unwrap();
    c.set_add(b"ts", vec![b"m".to_vec()], Some(Duration::from_millis(800))).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || async {
            c.get(b"t").await.unwrap().is_none()
                && c.get(b"tc").await.unwrap().is_none()
                && c.get(b"ts").await.unwrap().is_none()
        })
        .await,
        "keys expire"
    );
    // An increment after expiry starts from zero.
    assert_eq!(c.increment(b"tc", 1, None).await.unwrap().value, 1);
    // A put without TTL clears one.
    c.put(b"p", b"v", Some(Duration::from_secs(100))).await.unwrap();
    c.put(b"p", b"w", None).await.unwrap();
    assert_eq!(c.get(b"p").await.unwrap().unwrap().ttl_remaining_ms, None);
    // Expired keys stay absent after a restart.
    let mut s = s;
    s.restart();
    let c = s.client().await;
    assert_eq!(c.get(b"t").await.unwrap(), None);
    assert_eq!(c.increment(b"tc", 0, None).await.unwrap().value, 1);
}

/// `Expire` gives a key of any type a TTL or takes it away (PERSIST), keeping its value; an
/// absent key stays absent.
#[tokio::test]
async fn expire_and_persist_change_only_a_keys_ttl() {
    let (_d, s, c) = server().await;
    let minute = Some(Duration::from_secs(60));
    assert!(!c.expire(b"e", minute).await.unwrap().existed);
    assert_eq!(c.get(b"e").await.unwrap(), None, "an absent key stays absent");
    c.set_add(b"e", vec![b"m".to_vec()], None).await.unwrap();
    let r = c.expire(b"e", minute).await.unwrap();
    assert!(r.existed && r.ttl_remaining_ms.is_some_and(|t| t <= 60_000), "{r:?}");
    let got = c.get(b"e").await.unwrap().unwrap();
    assert!(got.ttl_remaining_ms.is_some_and(|t| t > 50_000), "{got:?}");
    assert_eq!(c.set_members(b"e").await.unwrap().members, vec![b"m".to_vec()]);
    let r = c.expire(b"e", None).await.unwrap();
    assert!(r.existed && r.ttl_remaining_ms.is_none(), "{r:?}");
    // A put with a TTL, made to expire sooner, goes; the persisted set stays.
    c.put(b"short", b"v", Some(Duration::from_secs(3600))).await.unwrap();
    c.expire(b"short", Some(Duration::from_millis(300))).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || async { c.get(b"short").await.unwrap().is_none() }).await,
        "the key expires at its new deadline"
    );
    assert!(!c.expire(b"short", None).await.unwrap().existed, "an expired key is not brought back");
    // In a batch too; a zero TTL is refused.
    let r = c.batch_write(vec![op::put(b"b", b"v", None), op::expire(b"b", minute)]).await.unwrap();
    assert!(matches!(&r[1].outcome, Some(proto::write_result::Outcome::Expire(e)) if e.existed), "{r:?}");
    let (code, msg) = code(c.expire(b"e", Some(Duration::ZERO)).await);
    assert_eq!(code, Code::InvalidArgument, "{msg}");
    // What changed survives a restart.
    let mut s = s;
    s.restart();
    let c = s.client().await;
    assert_eq!(c.get(b"e").await.unwrap().unwrap().ttl_remaining_ms, None);
    assert_eq!(c.get(b"short").await.unwrap(), None);
    assert!(c.get(b"b").await.unwrap().unwrap().ttl_remaining_ms.is_some());
}

#[tokio::test]
async fn batches_give_each_item_its_own_result() {
    let (_d, _s, c) = server().await;
    c.put(b"reg", b"x", None).await.unwrap();
    let ops = vec![
        op::put(b"a", b"1", None),
        op::increment(b"reg", 1, None), // wrong type
        op::increment(b"n", 4, None),
        op::put(b"", b"empty key", None), // invalid
        op::set_add(b"s", vec![b"m".to_vec()], None),
        op::append(b"a", b"2", None),
        op::delete(b"reg"),
        proto::WriteOp { op: None }, // malformed
    ];
    let results = c.batch_write(ops).await.unwrap();
    assert_eq!(results.len(), 8);
    use proto::write_result::Outcome;
    let err_code = |r: &proto::WriteResult| match &r.outcome {
        Some(Outcome::Error(e)) => Some(Code::from_i32(e.code)),
        _ => None,
    };
    assert_eq!(err_code(&results[0]), None);
    assert_eq!(err_code(&results[1]), Some(Code::FailedPrecondition));
    assert!(matches!(&results[2].outcome, Some(Outcome::Increment(r)) if r.value == 4));
    assert_eq!(err_code(&results[3]), Some(Code::InvalidArgument));
    assert!(matches!(&results[4].outcome, Some(Outcome::SetChange(r)) if r.size == 1));
    assert!(matches!(&results[5].outcome, Some(Outcome::Append(r)) if r.length == 2));
    assert!(matches!(&results[6].outcome, Some(Outcome::Delete(r)) if r.existed));
    assert_eq!(err_code(&results[7]), Some(Code::InvalidArgument));
    assert!(results[0].version.is_some());

    let got =
        c.batch_get(vec![b"a".to_vec(), b"missing".to_vec(), b"n".to_vec(), b"reg".to_vec()]).await.unwrap();
    assert_eq!(register(&got[0]), Some(b"12".to_vec()));
    assert!(got[1].is_none() && got[3].is_none());
    assert!(matches!(got[2].as_ref().unwrap().value.as_ref().unwrap().kind, Some(Kind::Counter(4))));
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_harms_nothing() {
    let (_d, _s, c) = server().await;
    c.put(b"keep", b"safe", None).await.unwrap();
    let expect = |(code, msg): (Code, String), want: Code, words: &[&str]| {
        assert_eq!(code, want, "{msg}");
        for w in words {
            assert!(msg.contains(w), "message {msg:?} lacks {w:?}");
        }
    };
    expect(code(c.put(b"", b"v", None).await), Code::InvalidArgument, &["empty"]);
    expect(code(c.get(b"").await), Code::InvalidArgument, &["empty"]);
    expect(
        code(c.put(&[b'k'; 65], b"v", None).await),
        Code::InvalidArgument,
        &["65 bytes", "64", "max_key_bytes"],
    );
    expect(
        code(c.put(b"keep", &[0; 1025], None).await),
        Code::InvalidArgument,
        &["1025", "1024", "max_value_bytes"],
    );
    expect(code(c.append(b"keep", &[0; 1021], None).await), Code::InvalidArgument, &["1025", "1024"]);
    expect(code(c.put(b"keep", b"v", Some(Duration::ZERO)).await), Code::InvalidArgument, &["ttl_ms"]);
    expect(code(c.set_add(b"s", vec![], None).await), Code::InvalidArgument, &["members"]);
    // Refusals for a size or count name the field (google.rpc.BadRequest).
    assert_eq!(field(c.put(&[b'k'; 65], b"v", None).await).as_deref(), Some("key"));
    assert_eq!(field(c.put(b"keep", &[0; 1025], None).await).as_deref(), Some("value"));
    assert_eq!(field(c.append(b"keep", &[0; 1021], None).await).as_deref(), Some("value"));
    let many: Vec<Vec<u8>> = (0..101).map(|i: u32| i.to_be_bytes().to_vec()).collect();
    assert_eq!(field(c.batch_get(many).await).as_deref(), Some("keys"));
    let keys: Vec<Vec<u8>> = (0..101).map(|i: u32| i.to_be_bytes().to_vec()).collect();
    expect(code(c.batch_get(keys).await), Code::InvalidArgument, &["101", "100", "max_batch_items"]);
    let ops = (0..101).map(|_| op::put(b"x", b"y", None)).collect();
    expect(code(c.batch_write(ops).await), Code::InvalidArgument, &["101"]);
    expect(code(c.batch_get(vec![b"ok".to_vec(), vec![]]).await), Code::InvalidArgument, &["keys[1]"]);
    let big = ScanOptions { limit: 1_000_000, ..Default::default() };
    expect(code(c.scan_page(&big, vec![]).await), Code::InvalidArgument, &["max_scan_limit"]);
    expect(
        code(c.scan_page(&ScanOptions::default(), vec![9, 1]).await),
        Code::InvalidArgument,
        &["page_token"],
    );
    let other_prefix = ScanOptions { prefix: b"b".to_vec(), ..Default::default() };
    expect(code(c.scan_page(&other_prefix, vec![1, b'a']).await), Code::InvalidArgument, &["prefix"]);

    // Unknown enum values and oversized messages, sent raw.
    let mut raw = geokv_client::grpc::kv(&c);
    let req = proto::GetRequest { key: b"keep".to_vec(), consistency: 42 };
    let st = raw.get(req).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::InvalidArgument);
    assert!(st.message().contains("consistency 42"), "{}", st.message());
    let huge =
        proto::PutRequest { key: b"keep".to_vec(), value: vec![0; 2 * 1024 * 1024], ..Default::default() };
    let st = raw.put(huge).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::OutOfRange, "{st:?}");
    // The gRPC library's own refusal carries an ErrorInfo too (its code's name).
    assert_eq!(geokv_client::grpc::status_of(&st).reason(), Some("OUT_OF_RANGE"), "{st:?}");

    assert_eq!(register(&c.get(b"keep").await.unwrap()), Some(b"safe".to_vec()), "stored data unharmed");
}

#[tokio::test]
async fn scan_pages_through_10000_keys_without_missing_or_repeating_one() {
    let (_d, _s, c) = server().await;
    let keys: Vec<Vec<u8>> = (0..10_000u32).map(|i| format!("user:{i:05}").into_bytes()).collect();
    for chunk in keys.chunks(100) {
        let ops = chunk.iter().map(|k| op::put(k, k, None)).collect();
        let results = c.batch_write(ops).await.unwrap();
        assert!(results.iter().all(|r| r.version.is_some()));
    }
    // Keys outside the prefix, and deleted keys inside it, must not show up.
    c.put(b"other:1", b"x", None).await.unwrap();
    c.put(b"user:deleted", b"x", None).await.unwrap();
    c.delete(b"user:deleted").await.unwrap();

    let opts = ScanOptions { prefix: b"user:".to_vec(), limit: 333, ..Default::default() };
    let mut seen = Vec::new();
    let mut token = Vec::new();
    let mut pages = 0;
    loop {
        let page = c.scan_page(&opts, token).await.unwrap();
        pages += 1;
        assert!(page.entries.len() <= 333);
        for e in &page.entries {
            assert_eq!(register(&Some(e.clone())).as_deref(), Some(&e.key[..]));
        }
        seen.extend(page.entries.into_iter().map(|e| e.key));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 31);
    assert_eq!(seen, keys, "every key exactly once, in order");

    let keys_only = ScanOptions { prefix: b"user:0000".to_vec(), keys_only: true, ..Default::default() };
    let page = c.scan_page(&keys_only, vec![]).await.unwrap();
    assert_eq!(page.entries.len(), 10);
    assert!(page.entries.iter().all(|e| e.value.is_none() && e.version.is_some()));

    let from = ScanOptions { start_key: b"user:09998".to_vec(), ..Default::default() };
    let rest: BTreeSet<Vec<u8>> = c.scan_all(&from).await.unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(rest, BTreeSet::from([b"user:09998".to_vec(), b"user:09999".to_vec()]));
}

#[tokio::test]
async fn consistency_levels_are_accepted_on_every_request() {
    let (_d, _s, c) = server().await;
    for level in [proto::Consistency::One, proto::Consistency::Quorum, proto::Consistency::All] {
        let cl = c.clone().with_consistency(level);
        cl.put(b"k", b"v", None).await.unwrap();
        assert!(cl.get(b"k").await.unwrap().is_some());
        cl.increment(b"n", 1, None).await.unwrap();
        cl.scan_page(&ScanOptions::default(), vec![]).await.unwrap();
    }
}

#[tokio::test]
async fn errors_carry_a_stable_reason_in_the_domain_geokv_io() {
    let (_d, _s, c) = server().await;
    c.put(b"reg", b"x", None).await.unwrap();
    c.increment(b"n", i64::MAX, None).await.unwrap();
    fn reason<T: std::fmt::Debug>(r: Result<T, geokv_client::ClientError>) -> Option<String> {
        r.unwrap_err().reason().map(String::from)
    }
    assert_eq!(reason(c.increment(b"reg", 1, None).await).as_deref(), Some("WRONG_TYPE"));
    assert_eq!(reason(c.increment(b"n", 1, None).await).as_deref(), Some("COUNTER_OVERFLOW"));
    assert_eq!(reason(c.put(&[b'k'; 65], b"v", None).await).as_deref(), Some("TOO_LARGE"));
    assert_eq!(reason(c.put(b"", b"v", None).await).as_deref(), Some("INVALID_ARGUMENT"));
    let many: Vec<Vec<u8>> = (0..101u32).map(|i| i.to_be_bytes().to_vec()).collect();
    assert_eq!(reason(c.batch_get(many).await).as_deref(), Some("TOO_MANY"));
    // A refusal suggests no retry.
    let e = c.increment(b"reg", 1, None).await.unwrap_err();
    assert_eq!(e.retry_after(), None);
}
