//! Authorisation with real `geokv` processes: roles granting read, write and admin on key
//! prefixes, principals proved by client certificates or bearer tokens, requests forwarded to
//! another region authorised at both ends, and the Admin service behind the admin grant.

mod support;

use std::process::Command;

use geokv_client::{Client, Security};
use geokv_proto::v1 as pb;
use geokv_tls::issue::Validity;
use geokv_tls::layout;
use support::tls::{cluster_ca, files, register, rejections};
use support::{TestCluster, BIN};
use tonic::Code;

const TWO_REGIONS: [(&str, [f64; 2]); 2] = [("eu-west", [-6.26, 53.35]), ("us-east", [-77.49, 39.04])];
const READER_TOKEN: &str = "reader-token-0123456789abcdef";
const WRITER_TOKEN: &str = "writer-token-0123456789abcdef";

/// `[auth]` for the test: the harness client may do everything; a token-holding reader may read
/// `app/`; a token-holding writer may read and write `app/` and `eu:`; `stranger` has a
/// certificate but no roles.
fn auth_section() -> String {
    let hash = geokv_server::security::auth::token_hash;
    format!(
        "[[auth.roles]]\nname = \"all\"\nread = [\"\"]\nwrite = [\"\"]\nadmin = true\n\
         [[auth.roles]]\nname = \"read-app\"\nread = [\"app/\"]\n\
         [[auth.roles]]\nname = \"write-app\"\nread = [\"app/\", \"eu:\"]\nwrite = [\"app/\", \"eu:\"]\n\
         [[auth.principals]]\nname = \"{}\"\nroles = [\"all\"]\n\
         [[auth.principals]]\nname = \"reader\"\nroles = [\"read-app\"]\ntoken_sha256 = [\"{}\"]\n\
         [[auth.principals]]\nname = \"writer\"\nroles = [\"write-app\"]\ntoken_sha256 = [\"{}\"]\n\
         [[auth.principals]]\nname = \"stranger\"\n",
        support::TEST_CLIENT,
        hash(READER_TOKEN),
        hash(WRITER_TOKEN)
    )
}

const FORWARD_EU: &str = "[[rules]]\nname = \"default\"\nprefix = \"\"\neverywhere = true\n\n\
[[rules]]\nname = \"eu-only\"\nprefix = \"eu:\"\nregions = [\"eu-west\"]\non_foreign = \"forward\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_grant_what_they_say_at_both_ends_of_a_forward_and_nothing_else() {
    let cluster = TestCluster::start_regions_tls(&TWO_REGIONS, 1, 1, &auth_section(), Some(FORWARD_EU));
    let (eu, us) = (0, 1);
    let admin = cluster.client(us).await;
    admin.put(b"app/x", b"v0", None).await.unwrap();
    admin.put(b"other/x", b"v0", None).await.unwrap();
    let ca = layout::ca_cert_path(&cluster.certs_dir());
    let endpoint = cluster.nodes[us].endpoint();
    let with_token = |t: &str| Security::tls(ca.clone(), None).with_token(t);
    let reader = Client::connect_with(&endpoint, &with_token(READER_TOKEN)).await.unwrap();
    let writer = Client::connect_with(&endpoint, &with_token(WRITER_TOKEN)).await.unwrap();

    // What the roles grant goes through.
    assert_eq!(register(&reader, b"app/x").await.as_deref(), Some(&b"v0"[..]));
    writer.put(b"app/x", b"v1", None).await.expect("the writer may write app/");
    let scanned =
        reader.scan_all(&geokv_client::ScanOptions { prefix: b"app/".to_vec(), ..Default::default() }).await;
    assert_eq!(scanned.expect("the reader may scan app/").len(), 1);

    // What they do not grant is refused and changes nothing.
    let denied = |what: &str, r: Result<(), geokv_client::ClientError>, says: &str| {
        let err = r.expect_err(what);
        assert_eq!(err.code(), Some(geokv_client::Code::PermissionDenied), "{what}: {err}");
        assert!(err.to_string().contains(says), "{what}: the message says {says:?}: {err}");
        let reason = err.reason().unwrap_or_else(|| panic!("{what}: no ErrorInfo reason: {err:?}"));
        assert!(["NOT_GRANTED", "NOT_ADMIN", "UNKNOWN_PRINCIPAL"].contains(&reason), "{what}: {reason}");
    };
    denied(
        "a read-only token writing",
        reader.put(b"app/x", b"evil", None).await.map(drop),
        "may not write key \"app/x\"",
    );
    denied(
        "a token for another prefix",
        writer.put(b"other/x", b"evil", None).await.map(drop),
        "may not write key \"other/x\"",
    );
    denied("a token reading another prefix", writer.get(b"other/x").await.map(drop), "may not read");
    denied(
        "a scan beyond the grant",
        reader.scan_all(&geokv_client::ScanOptions::default()).await.map(drop),
        "may not scan",
    );
    let batch =
        vec![geokv_client::op::put(b"app/y", b"ok", None), geokv_client::op::put(b"other/y", b"evil", None)];
    denied("a batch with one key beyond the grant", writer.batch_write(batch).await.map(drop), "other/y");
    let tmp = tempfile::tempdir().unwrap();
    let stranger = files(
        &cluster,
        tmp.path(),
        "stranger",
        &cluster_ca(&cluster).client("stranger", Validity::days(1)).unwrap(),
    );
    let stranger = Client::connect_with(&endpoint, &stranger).await.unwrap();
    denied("a certificate with no roles", stranger.get(b"app/x").await.map(drop), "grants read");
    // A client naming another principal in the header nodes forward with gains nothing: only
    // a node certificate's request is taken as on behalf of someone.
    let mut raw_reader = geokv_client::grpc::kv(&reader);
    let mut as_admin = tonic::Request::new(pb::PutRequest {
        key: b"other/x".to_vec(),
        value: b"evil".to_vec(),
        ..Default::default()
    });
    as_admin.metadata_mut().insert("x-geokv-on-behalf-of", support::TEST_CLIENT.parse().unwrap());
    let err = raw_reader.put(as_admin).await.expect_err("a client cannot act on behalf of another");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Tokens read the metrics port too; a bad one does not.
    let metrics = |token: &str| {
        let addr = cluster.nodes[us].metrics_addr.unwrap();
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca)
            .args(["-H", &format!("Authorization: Bearer {token}"), &format!("https://{addr}/status.json")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(metrics(READER_TOKEN), "200");
    assert_eq!(metrics("not-a-token"), "401");
    let unknown = Client::connect_with(&endpoint, &with_token("not-a-token")).await.unwrap();
    let err = unknown.get(b"app/x").await.expect_err("an unknown token");
    assert_eq!(err.code(), Some(geokv_client::Code::Unauthenticated), "{err}");
    assert!(err.to_string().contains("token is not valid"), "{err}");
    assert_eq!(err.reason(), Some("BAD_TOKEN"), "{err:?}");
    assert!(rejections(&cluster, us, "not_granted") >= 6);
    assert!(rejections(&cluster, us, "bad_token") >= 1);
    assert_eq!(register(&admin, b"app/x").await.as_deref(), Some(&b"v1"[..]));
    assert_eq!(register(&admin, b"other/x").await.as_deref(), Some(&b"v0"[..]));
    assert_eq!(register(&admin, b"app/y").await, None, "a refused batch stores none of its items");

    // A key of eu-west written in us-east is forwarded, as the writer: eu-west authorises it
    // again, on behalf of the writer named by the forwarding node.
    writer.put(b"eu:alice", b"hi", None).await.expect("forwarded and granted at both ends");
    let eu_admin = cluster.client(eu).await;
    assert_eq!(register(&eu_admin, b"eu:alice").await.as_deref(), Some(&b"hi"[..]));
    denied(
        "a forwarded write beyond the grant",
        reader.put(b"eu:bob", b"evil", None).await.map(drop),
        "may not write",
    );
    // eu-west's end on its own: a node certificate acting for a principal gets that principal's
    // grants, and acting for no one gets nothing.
    let as_node = cluster.peer_security(2);
    let channel = geokv_client::grpc::channel(&cluster.nodes[eu].endpoint(), &as_node).await.unwrap();
    let mut raw = pb::kv_client::KvClient::new(channel);
    let put = |principal: Option<&str>| {
        let mut req = tonic::Request::new(pb::PutRequest {
            key: b"eu:bob".to_vec(),
            value: b"evil".to_vec(),
            ..Default::default()
        });
        req.metadata_mut().insert("geokv-forwarded-from", "us-east".parse().unwrap());
        if let Some(p) = principal {
            req.metadata_mut().insert("x-geokv-on-behalf-of", p.parse().unwrap());
        }
        req
    };
    let err = raw.put(put(Some("reader"))).await.expect_err("the reader may not write eu:");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = raw.put(put(None)).await.expect_err("a node acting for no one");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("without naming the client"), "{}", err.message());
    assert_eq!(register(&eu_admin, b"eu:bob").await, None, "nothing stored");

    // Operating the deployment from the client port takes the admin grant.
    let cut = |cut: bool| pb::SetLinkRequest {
        destination: "eu-west".into(),
        link: Some(pb::LinkSettings { delay_ms: 0, jitter_ms: 0, loss: 0.0, cut }),
    };
    let mut as_reader = geokv_client::grpc::admin(&endpoint, &with_token(READER_TOKEN)).await.unwrap();
    let err = as_reader.set_link(cut(true)).await.expect_err("the reader may not change links");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("admin = true"), "{}", err.message());
    let err = as_reader
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .expect_err("nor read the deployment status");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let mut as_admin = geokv_client::grpc::admin(&endpoint, &cluster.client_security()).await.unwrap();
    let link = |s: pb::ReplicationStatusResponse| {
        s.destinations.iter().find(|d| d.destination == "eu-west").and_then(|d| d.link).map(|l| l.cut)
    };
    let before = as_admin.replication_status(pb::ReplicationStatusRequest {}).await.unwrap().into_inner();
    assert_eq!(link(before), Some(false), "the refused change changed nothing");
    as_admin.set_link(cut(true)).await.expect("an admin may change links");
    let after = as_admin.replication_status(pb::ReplicationStatusRequest {}).await.unwrap().into_inner();
    assert_eq!(link(after), Some(true));
    as_admin.set_link(cut(false)).await.unwrap();
    // The CLI reaches the Admin service the same way, with the client's certificate (on the
    // first of its endpoints that takes the connection: nothing listens on port 1).
    let out = Command::new(BIN)
        .args(["--json", "--endpoints", &format!("https://127.0.0.1:1,{endpoint}"), "admin", "repl-status"])
        .args(["--ca", &ca.display().to_string()])
        .args(["--cert", &cluster.client_security().cert.unwrap().display().to_string()])
        .args(["--key", &cluster.client_security().key.unwrap().display().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(BIN)
        .args(["--endpoint", &endpoint, "admin", "repl-status"])
        .args(["--ca", &ca.display().to_string()])
        .env("GEOKV_TOKEN", READER_TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
