//! What a coordinator asks its driver to do. Each command names one piece of I/O; the driver
//! carries it out and reports the result back as an event (`on_fetched`, `on_applied`,
//! `on_sent`, `on_called`, `on_timeout`).

use geokv_core::{NodeId, Record};
use geokv_topology::Target;

use crate::Failure;

#[derive(Clone, Debug, PartialEq)]
pub enum Command<T> {
    /// Read `node`'s state of the key (this node's own store when `node` is this node); report
    /// with `on_fetched`. `writer`: this node's HLC time when the read comes before a write it
    /// coordinates (a replica refuses it when this node's clock runs too far ahead of its own).
    Fetch { node: NodeId, writer: Option<u64> },
    /// Bring `node` (possibly this node) up to `state` (read repair); not reported.
    Repair { node: NodeId, state: Record },
    /// Merge `state` into this node's store before [`Command::Apply`].
    MergeLocal { state: Record },
    /// Apply the client's action to this node's state, stamped by this node's clock; report
    /// with `on_applied`.
    Apply,
    /// Send `state` to a target (a home replica, a stand-in or an incoming node); report with
    /// `on_sent`. `ship`: the state carries a client write of this region.
    Send { target: Target, state: Record, ship: bool },
    /// Keep `state` durably as a hint for `home`, to hand off when it answers again.
    KeepHint { home: NodeId, state: Record },
    /// Ask home replica `node` to coordinate the write; report with `on_called`.
    Call { node: NodeId },
    /// Answer the client. Commands may follow (sends still under way go on).
    Respond(Result<T, Failure>),
}

impl<T> Command<T> {
    /// The same command for a coordinator that answers with another type.
    pub fn map_answer<U>(self, f: impl FnOnce(T) -> U) -> Command<U> {
        match self {
            Command::Fetch { node, writer } => Command::Fetch { node, writer },
            Command::Repair { node, state } => Command::Repair { node, state },
            Command::MergeLocal { state } => Command::MergeLocal { state },
            Command::Apply => Command::Apply,
            Command::Send { target, state, ship } => Command::Send { target, state, ship },
            Command::KeepHint { home, state } => Command::KeepHint { home, state },
            Command::Call { node } => Command::Call { node },
            Command::Respond(r) => Command::Respond(r.map(f)),
        }
    }
}
