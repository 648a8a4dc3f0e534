//! How a batch of writes runs in a region ([`by_key`]): each item is its own write, with its
//! own coordinator and its own answer; the items of one key run one after another, in the
//! order the client gave them (so two appends to a key land in that order, and a put after a
//! delete wins), while different keys run concurrently.

use std::collections::BTreeMap;

/// One key of a batch and its items, each with its index in the request.
pub type KeyItems<T> = (Vec<u8>, Vec<(usize, T)>);

/// The items of a batch grouped by key, in key order; each key's items keep the request's
/// order and their index in it.
pub fn by_key<T>(items: impl IntoIterator<Item = (Vec<u8>, T)>) -> Vec<KeyItems<T>> {
    let mut keys: BTreeMap<Vec<u8>, Vec<(usize, T)>> = BTreeMap::new();
    for (i, (key, item)) in items.into_iter().enumerate() {
        keys.entry(key).or_default().push((i, item));
    }
    keys.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_items_keep_their_order_and_index() {
        let items =
            vec![(b"b".to_vec(), "b1"), (b"a".to_vec(), "a1"), (b"b".to_vec(), "b2"), (b"a".to_vec(), "a2")];
        assert_eq!(
            by_key(items),
            vec![(b"a".to_vec(), vec![(1, "a1"), (3, "a2")]), (b"b".to_vec(), vec![(0, "b1"), (2, "b2")])]
        );
        assert!(by_key(Vec::<(Vec<u8>, ())>::new()).is_empty());
    }
}
