//! Leadership transfer: the leader stops taking proposals, brings the
//! target up to date, then tells it to campaign at once (TimeoutNow).

use super::Raft;
use crate::error::{Error, Result};
use crate::message::MessageBody;
use crate::storage::LogStorage;
use crate::types::{NodeId, Role};

/// The leader's state of a transfer in progress.
#[derive(Debug, Default)]
pub(crate) struct Transfer {
    /// The node leadership is being handed to.
    pub(crate) target: Option<NodeId>,
    elapsed: u32,
    /// A TimeoutNow went out this term: the target may win an election
    /// without waiting for followers' leader timeouts, so the lease no
    /// longer protects reads for the rest of this term.
    pub(crate) lease_void: bool,
}

impl Transfer {
    /// Abandons the transfer (the lease stays void if TimeoutNow was sent).
    pub(crate) fn abort(&mut self) {
        self.target = None;
        self.elapsed = 0;
    }

    /// Clears everything for a new term or role.
    pub(crate) fn reset(&mut self) {
        *self = Transfer::default();
    }

    /// Advances the transfer timer; returns true if the transfer timed out.
    pub(crate) fn tick(&mut self, timeout: u32) -> bool {
        if self.target.is_none() {
            return false;
        }
        self.elapsed += 1;
        if self.elapsed >= timeout {
            self.abort();
            return true;
        }
        false
    }
}

impl<S: LogStorage> Raft<S> {
    /// Starts handing leadership to `to`.
    pub(crate) fn transfer_leader(&mut self, to: NodeId) -> Result<()> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: (!self.leader.is_none()).then_some(self.leader),
            });
        }
        if to == self.id || !self.tracker.is_voter(to) {
            return Err(Error::InvalidTransferTarget(to));
        }
        if self.transfer.target == Some(to) {
            return Ok(());
        }
        self.transfer.abort();
        self.transfer.target = Some(to);
        tracing::debug!(id = %self.id, %to, "leadership transfer started");
        self.maybe_finish_transfer(to)?;
        if self.transfer.target == Some(to) {
            self.maybe_send_append(to, true)?;
        }
        Ok(())
    }

    /// Sends TimeoutNow once the target has the whole log.
    pub(crate) fn maybe_finish_transfer(&mut self, from: NodeId) -> Result<()> {
        if self.transfer.target != Some(from) {
            return Ok(());
        }
        let last = self.log.last_index();
        if self.tracker.get(from).is_some_and(|p| p.matched == last) {
            self.transfer.lease_void = true;
            self.send(from, MessageBody::TimeoutNow);
            tracing::debug!(id = %self.id, to = %from, "target caught up: TimeoutNow sent");
        }
        Ok(())
    }
}
