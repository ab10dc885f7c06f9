//! Quorum arithmetic: pure functions deciding what a majority (or, during a
//! joint configuration, a majority of *each* half) agrees on.
//!
//! Two questions are answered, each for a simple majority and for a joint
//! configuration:
//!
//! * **values** ([`majority_value`], [`quorum_value`]): the largest `v` such
//!   that a quorum reports a value `>= v`. The leader uses it for the commit
//!   index (over matched indexes), read-index rounds and lease ticks.
//! * **votes** ([`majority_vote`], [`vote_result`]): whether a quorum granted,
//!   can no longer grant, or may still grant. Used for elections and for
//!   check-quorum (recent activity reported as `Some(true)`, silence as
//!   `None`).
//!
//! An empty majority is treated as agreeing on everything (value
//! `u64::MAX`, vote [`VoteResult::Won`]) so that a non-joint configuration,
//! whose outgoing half is empty, behaves exactly as its incoming half.

mod joint;
mod majority;

#[cfg(test)]
mod tests;

pub use joint::{quorum_value, vote_result};
pub use majority::{majority_value, majority_vote};

/// The outcome of a vote (or of any yes/no question put to a quorum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// Neither outcome is decided yet: missing answers could still go
    /// either way.
    Pending,
    /// A quorum answered yes.
    Won,
    /// Enough voters answered no (or cannot answer yes) that a quorum can no
    /// longer be reached.
    Lost,
}
