//! Client requests served by another region: a key whose residency rule says `forward` is
//! read and written through a node of the nearest region allowed to hold it, over that
//! node's client API, so the answer is exactly what a client there would get.
//!
//! A forwarded request carries the [`FORWARDED_FROM`] metadata; the receiving region serves
//! it or refuses it, and never forwards it again (no loops while regions hold different
//! policy versions).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use geokv_proto::v1 as pb;
use pb::kv_client::KvClient;
use tonic::transport::{Channel, Endpoint};
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
}

impl Forwarder {
    pub fn new(region: &str, timeout: Duration) -> Self {
        let from = region.parse().unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static("other"));
        Forwarder { from, timeout, channels: Mutex::new(HashMap::new()) }
    }

    fn client(&self, addr: &str) -> Result<KvClient<Channel>, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = channels.get(addr) {
            return Ok(KvClient::new(c.clone()).max_decoding_message_size(usize::MAX));
        }
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::internal(format!("unusable address {addr}: {e}")))?
            .connect_timeout(self.timeout)
            .tcp_nodelay(true);
        let channel = ep.connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(KvClient::new(channel).max_decoding_message_size(usize::MAX))
    }

    /// Sends `req` with `call` to the first of `addrs` that can be reached. Only connection
    /// failures move on to the next address: any answer (including a timeout, after which a
    /// write may or may not have been applied) is final.
    pub async fn call<Req, Resp, F, Fut>(
        &self,
        addrs: &[String],
        req: Req,
        mut call: F,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Clone,
        F: FnMut(KvClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let mut last = None;
        for addr in addrs {
            let client = self.client(addr)?;
            let mut r = Request::new(req.clone());
            r.metadata_mut().insert(FORWARDED_FROM, self.from.clone());
            r.set_timeout(self.timeout);
            crate::trace::tag(&mut r);
            match tokio::time::timeout(self.timeout, call(client, r)).await {
                Ok(Ok(resp)) => return Ok(Response::new(resp.into_inner())),
                Ok(Err(s)) if unreachable(&s) => last = Some(format!("{addr}: {}", s.message())),
                Ok(Err(s)) => return Err(s),
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "the forwarded request to {addr} got no answer within {:?}; a write may or may not have been applied",
                        self.timeout
                    )))
                }
            }
        }
        Err(Status::unavailable(format!(
            "no node of the regions allowed to hold the key could be reached to forward the request ({})",
            last.unwrap_or_else(|| "no nodes".into())
        )))
    }
}

/// A connection failure (`UNAVAILABLE` that is not a coordinator's answer), as opposed to an
/// answer.
fn unreachable(s: &Status) -> bool {
    use geokv_protocol::PeerError;
    match crate::api::status::peer_error(s.clone()) {
        PeerError::NeverSent(_) => true,
        PeerError::Transport(_) => s.code() == tonic::Code::Unavailable,
        PeerError::TimedOut(_) | PeerError::Answered(_) => false,
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
    })
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
