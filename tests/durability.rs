//! Acknowledged writes survive `kill -9`.

mod support;

use std::collections::BTreeSet;

use geokv_client::{proto, ScanOptions};
use proto::value::Kind;
use support::ServerProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), "");
    let c = server.client().await;

    // 1,000 acknowledged writes from 10 concurrent writers: 800 puts, 100 increments of one
    // counter, 100 set adds. Only acknowledged ones count.
    let mut tasks = Vec::new();
    for w in 0..10u32 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..100u32 {
                let n = w * 100 + i;
                match i % 10 {
                    0 => {
                        c.increment(b"counter", 1, None).await.unwrap();
                    }
                    1 => {
                        c.set_add(b"set", vec![format!("m{n}").into_bytes()], None).await.unwrap();
                    }
                    _ => {
                        let key = format!("k{n:04}");
                        c.put(key.as_bytes(), format!("v{n}").as_bytes(), None).await.unwrap();
                        acked.push(n);
                    }
                }
            }
            acked
        }));
    }
    let mut puts = Vec::new();
    for t in tasks {
        puts.extend(t.await.unwrap());
    }
    assert_eq!(puts.len(), 800);
    server.kill9(); // right after the last acknowledgement
    server.restart();

    let c = server.client().await;
    let entries =
        c.scan_all(&ScanOptions { prefix: b"k".to_vec(), limit: 1000, ..Default::default() }).await.unwrap();
    let found: BTreeSet<Vec<u8>> = entries
        .iter()
        .filter(|e| {
            let n: u32 = std::str::from_utf8(&e.key[1..]).unwrap().parse().unwrap();
            matches!(e.value.as_ref().and_then(|v| v.kind.as_ref()), Some(Kind::Register(b)) if *b == format!("v{n}").into_bytes())
        })
        .map(|e| e.key.clone())
        .collect();
    let expected: BTreeSet<Vec<u8>> = puts.iter().map(|n| format!("k{n:04}").into_bytes()).collect();
    assert_eq!(found, expected, "every acknowledged put is there with its value");
    assert_eq!(c.increment(b"counter", 0, None).await.unwrap().value, 100);
    assert_eq!(c.set_members(b"set").await.unwrap().members.len(), 100);
}
