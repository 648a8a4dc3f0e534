//! Client requests served by another region: a key whose residency rule says `forward` is
//! read and written through a node of the nearest region allowed to hold it, over that
//! node's client API, so the answer is exactly what a client there would get.
//!
//! A forwarded request carries the [`FORWARDED_FROM`] metadata; the receiving region serves
//! it or refuses it, and never forwards it again (no loops while regions hold different
//! policy versions).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use geokv_proto::v1 as pb;
use pb::kv_client::KvClient;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

pub use crate::residency::FORWARDED_FROM;

/// Whether a request was forwarded here by another region.
pub fn is_forwarded<T>(req: &Request<T>) -> bool {
    req.metadata().contains_key(FORWARDED_FROM)
}

pub struct Forwarder {
    /// This region's name, as the value of [`FORWARDED_FROM`].
    from: tonic::metadata::AsciiMetadataValue,
    timeout: Duration,
    channels: Mutex<HashMap<String, Channel>>,
    /// TLS with this node's certificate; `None`: plaintext.
    tls: Option<Arc<crate::security::NodeTls>>,
}

impl Forwarder {
    pub fn new(region: &str, timeout: Duration, tls: Option<Arc<crate::security::NodeTls>>) -> Self {
        let from = region.parse().unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static("other"));
        Forwarder { from, timeout, channels: Mutex::new(HashMap::new()), tls }
    }

    fn client(&self, addr: &str) -> Result<KvClient<Channel>, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = channels.get(addr) {
            return Ok(KvClient::new(c.clone()).max_decoding_message_size(usize::MAX));
        }
        let channel = crate::security::lazy_channel(addr, self.timeout, self.tls.as_ref(), None)
            .map_err(Status::internal)?;
        channels.insert(addr.to_owned(), channel.clone());
        Ok(KvClient::new(channel).max_decoding_message_size(usize::MAX))
    }

    /// Sends `req` with `call` to the first of `addrs` that answers. A call that never left
    /// (no connection) moves on to the next address. A call whose connection broke may have
    /// been served (its answer lost): it moves on only if the request is `repeatable` (a read,
    /// a put, a delete, a set change), the rule of `geokv_protocol::Forwarder` inside a region;
    /// an increment, append or compare-and-swap answers that it may or may not have been
    /// applied. Any answer, and a timeout, is final.
    pub async fn call<Req, Resp, F, Fut>(
        &self,
        addrs: &[String],
        req: Req,
        repeatable: bool,
        mut call: F,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Clone,
        F: FnMut(KvClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        use geokv_protocol::{Failure, Kind, PeerError};
        let mut last = None;
        let mut maybe_applied = false;
        for addr in addrs {
            let client = self.client(addr)?;
            let mut r = Request::new(req.clone());
            r.metadata_mut().insert(FORWARDED_FROM, self.from.clone());
            // The client this node acts for: the other region authorises it too.
            if let Some(principal) = crate::security::gate::on_behalf().and_then(|p| p.parse().ok()) {
                r.metadata_mut().insert(crate::security::gate::ON_BEHALF_HEADER, principal);
            }
            r.set_timeout(self.timeout);
            crate::trace::tag(&mut r);
            let status = match tokio::time::timeout(self.timeout, call(client, r)).await {
                Ok(Ok(resp)) => return Ok(Response::new(resp.into_inner())),
                Ok(Err(s)) => s,
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "the forwarded request to {addr} got no answer within {:?}; a write may or may not have been applied",
                        self.timeout
                    )))
                }
            };
            match crate::api::status::peer_error(status.clone()) {
                PeerError::NeverSent(m) => last = Some(format!("{addr}: {m}")),
                PeerError::Transport(m) if status.code() == tonic::Code::Unavailable => {
                    if !repeatable {
                        return Err(crate::api::status::failure_status(Failure {
                            kind: Kind::Unavailable,
                            maybe_applied: true,
                            message: format!("the request forwarded to {addr} lost its connection ({m}); it may have been applied there, and it is not sent elsewhere because running it twice would apply it twice; the write may or may not have been applied"),
                            reason: Some("FORWARD_INTERRUPTED".into()),
                        }));
                    }
                    maybe_applied = true;
                    last = Some(format!("{addr}: {m}"));
                }
                _ => return Err(status),
            }
        }
        Err(crate::api::status::failure_status(Failure {
            kind: Kind::Unavailable,
            maybe_applied,
            message: format!(
                "no node of the regions allowed to hold the key could be reached to forward the request ({})",
                last.unwrap_or_else(|| "no nodes".into())
            ),
            reason: Some("ALLOWED_REGION_UNREACHABLE".into()),
        }))
    }
}

/// The key a batch write item is about (None for an empty item).
pub fn op_key(op: &pb::WriteOp) -> Option<&[u8]> {
    use pb::write_op::Op as W;
    Some(match op.op.as_ref()? {
        W::Put(p) => &p.key,
        W::Delete(d) => &d.key,
        W::Increment(i) => &i.key,
        W::Append(a) => &a.key,
        W::SetAdd(s) => &s.key,
        W::SetRemove(s) => &s.key,
        W::Expire(e) => &e.key,
    })
}

/// Whether a batch write item may run twice with the same result (see
/// `geokv_protocol::repeatable`): a put, delete or set change, or an increment or append with
/// a request id; not a plain increment or append.
pub fn repeatable_op(op: &pb::WriteOp) -> bool {
    use pb::write_op::Op as W;
    match &op.op {
        Some(W::Put(_) | W::Delete(_) | W::SetAdd(_) | W::SetRemove(_) | W::Expire(_)) => true,
        // With a request id its attempts apply once.
        Some(W::Increment(i)) => !i.request_id.is_empty(),
        Some(W::Append(a)) => !a.request_id.is_empty(),
        _ => false,
    }
}

/// One source of a scan's entries: its entries in key order, and the key its page stopped at
/// (None: it has nothing more).
pub type SourcePage = (Vec<pb::Entry>, Option<Vec<u8>>);

/// Merges the pages of sources holding disjoint keys into one page of at most `limit`
/// entries: every entry up to the smallest key a source stopped at (beyond it, that source may
/// have keys not seen yet). Returns the entries and where the next page resumes.
pub fn merge_pages(pages: Vec<SourcePage>, limit: usize) -> (Vec<pb::Entry>, Option<Vec<u8>>) {
    let bound = pages.iter().filter_map(|(_, stop)| stop.clone()).min();
    let mut entries: Vec<pb::Entry> = pages
        .into_iter()
        .flat_map(|(entries, _)| entries)
        .filter(|e| bound.as_ref().is_none_or(|b| &e.key <= b))
        .collect();
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    if entries.len() > limit {
        entries.truncate(limit);
        let last = entries.last().map(|e| e.key.clone());
        return (entries, last);
    }
    (entries, bound)
}

/// The key a page token resumes after (None for an empty token: the scan is complete).
pub fn token_key(token: &[u8]) -> Option<Vec<u8>> {
    token.split_first().map(|(_, key)| key.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(k: &str) -> pb::Entry {
        pb::Entry { key: k.as_bytes().to_vec(), ..Default::default() }
    }

    fn keys(v: &[pb::Entry]) -> Vec<String> {
        v.iter().map(|e| String::from_utf8_lossy(&e.key).into_owned()).collect()
    }

    /// A scripted forward: the first address's connection broke after the request left (the
    /// status a reset connection gives), the second would answer.
    async fn forward_after_a_broken_call(
        repeatable: bool,
    ) -> (Result<Response<pb::GetResponse>, Status>, usize) {
        let f = Forwarder::new("eu-west", Duration::from_secs(5), None);
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let addrs = ["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()];
        let answer = f
            .call(&addrs, pb::GetRequest::default(), repeatable, |_, _| {
                let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    match n {
                        0 => {
                            Err(Status::unavailable("error reading a body from connection: connection reset"))
                        }
                        _ => Ok(Response::new(pb::GetResponse::default())),
                    }
                }
            })
            .await;
        (answer, calls.into_inner())
    }

    #[tokio::test]
    async fn a_broken_forward_moves_on_only_when_running_it_twice_is_harmless() {
        let (answer, calls) = forward_after_a_broken_call(true).await;
        assert!(answer.is_ok(), "{answer:?}");
        assert_eq!(calls, 2, "a repeatable request is sent to the next address");
        let (answer, calls) = forward_after_a_broken_call(false).await;
        assert_eq!(calls, 1, "an increment is not sent twice");
        let s = answer.expect_err("the broken call is the answer");
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(s.message().contains("may or may not have been applied"), "{s:?}");
        assert_eq!(
            s.metadata().get(crate::api::status::FAILURE_METADATA).map(|v| v.as_bytes()),
            Some(&b"maybe-applied"[..])
        );
    }

    #[tokio::test]
    async fn a_forward_that_never_left_moves_on_whatever_the_request() {
        let f = Forwarder::new("eu-west", Duration::from_secs(5), None);
        // Nothing listens on port 1 of loopback: the connection is refused, nothing was sent.
        let addrs = ["127.0.0.1:1".to_string(), "127.0.0.1:1".to_string()];
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let answer = f
            .call(&addrs, pb::GetRequest::default(), false, |mut c, r| {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move { c.get(r).await }
            })
            .await;
        assert_eq!(calls.into_inner(), 2, "refused connections move on");
        let s = answer.expect_err("nothing answers");
        assert!(s.message().starts_with("no node of the regions"), "{s:?}");
        assert_eq!(
            s.metadata().get(crate::api::status::FAILURE_METADATA).map(|v| v.as_bytes()),
            Some(&b"not-applied"[..])
        );
    }

    #[test]
    fn merged_pages_stop_where_the_shortest_source_stopped() {
        let local = (vec![e("a"), e("c"), e("e")], None);
        let remote = (vec![e("b"), e("d")], Some(b"d".to_vec()));
        let (entries, next) = merge_pages(vec![local, remote], 10);
        assert_eq!(keys(&entries), ["a", "b", "c", "d"]);
        assert_eq!(next, Some(b"d".to_vec()), "e may have remote keys before it: next page");
    }

    #[test]
    fn merged_pages_hold_at_most_the_limit() {
        let (entries, next) = merge_pages(vec![(vec![e("a"), e("c")], None), (vec![e("b")], None)], 2);
        assert_eq!(keys(&entries), ["a", "b"]);
        assert_eq!(next, Some(b"b".to_vec()));
        let (entries, next) = merge_pages(vec![(vec![e("a")], None), (vec![], None)], 2);
        assert_eq!((keys(&entries), next), (vec!["a".to_string()], None));
    }
}
