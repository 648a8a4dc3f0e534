//! The merge contract every replicated value in geokv satisfies.

/// A state-based CRDT (a join-semilattice).
///
/// `merge` must be:
/// - **commutative**: `a ⊔ b == b ⊔ a`,
/// - **associative**: `(a ⊔ b) ⊔ c == a ⊔ (b ⊔ c)`,
/// - **idempotent**: `a ⊔ a == a`.
///
/// Together these make replicas converge whatever the order, duplication or loss of the states
/// they exchange, as long as every state is eventually merged everywhere. Nothing in geokv
/// relies on causal delivery: a replica may see a later state before an earlier one, and a
/// full-state merge after a gap repairs it. The property tests in this crate check the three
/// laws for every value type, deletes and TTLs included.
pub trait Crdt {
    /// Joins `other` into `self`.
    fn merge(&mut self, other: &Self);
}
