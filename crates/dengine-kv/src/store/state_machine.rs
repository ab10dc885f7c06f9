//! The store as the node's [`StateMachine`]: applying entries, flushing
//! and checkpointing, snapshots.

use std::io;
use std::time::Instant;

use dengine_core::{ConfChange, ConfState};
use dengine_runtime::{EntryId, LogIndex, StateMachine};

use super::{KvStateMachine, WRITE_RECORDS};
use crate::types::*;

impl StateMachine for KvStateMachine {
    type Response = Result<KvResponse, KvError>;

    fn apply(&mut self, _at: EntryId, command: &[u8]) -> Self::Response {
        if let Some(f) = &self.failed {
            return Err(KvError::Storage(f.clone()));
        }
        self.applied_since_flush = true;
        // A put (the common command) is read in place, without a copy of
        // its key and value; with auth on, a put comes wrapped with its
        // user, or is refused by `execute`.
        if !self.auth.enabled()
            && let Some(put) = decode_put(command)
        {
            return self.execute_put(put);
        }
        let cmd = KvCommand::decode(command)?;
        self.execute(&cmd)
    }

    fn apply_membership(&mut self, _at: EntryId, change: &ConfChange, members: &ConfState) {
        self.applied_since_flush = true;
        self.change_members(change, members);
    }

    fn flush(&mut self, applied: LogIndex) -> io::Result<()> {
        if let Some(f) = &self.failed {
            return Err(io::Error::other(f.clone()));
        }
        // Once per applied batch, not per command.
        crate::telemetry::record(self);
        self.flush_target = Some(applied);
        self.applied_since_flush = false;
        if self.backend.durable() {
            // Writes wait in memory (reads see them there) until enough
            // gather: a durable backend pays a lot per batch (sled about a
            // millisecond), and the log, not the backend, is what makes an
            // applied write durable. The stored applied index stays where
            // the last write left it, so a restart replays the rest.
            let since = *self.unwritten_since.get_or_insert_with(Instant::now);
            if self.pending.len() + self.removed.len() < WRITE_RECORDS
                && since.elapsed() < self.write_after
            {
                return Ok(());
            }
        }
        self.write_all_pending(applied)
    }

    fn applied_index(&self) -> Option<LogIndex> {
        self.applied.filter(|_| self.backend.durable())
    }

    /// A durable backend is the store's snapshot, as etcd's database is:
    /// the writes waiting in memory are written, the backend synced, and
    /// the log may be compacted behind the index it now reflects.
    fn checkpoint(&mut self) -> io::Result<Option<LogIndex>> {
        if !self.backend.durable() {
            return Ok(None);
        }
        if let Some(f) = &self.failed {
            return Err(io::Error::other(f.clone()));
        }
        if let (Some(target), Some(_)) = (self.flush_target, self.unwritten_since) {
            self.write_all_pending(target)?;
        }
        if let Err(e) = self.backend.sync() {
            // What the failed sync left on disk is unknown: nothing more
            // is written.
            self.failed = Some(e.to_string());
            return Err(e);
        }
        Ok(Some(self.applied.unwrap_or(LogIndex::ZERO)))
    }

    fn snapshot(&mut self, out: &mut dyn io::Write) -> io::Result<()> {
        crate::snapshot::write(self, out)
    }

    fn snapshot_view(&mut self) -> Option<dengine_runtime::SnapshotView> {
        crate::snapshot::detached(self)
    }

    fn restore(&mut self, input: &mut dyn io::Read) -> io::Result<()> {
        // The state is ahead of the last flush until the next one.
        self.applied_since_flush = true;
        crate::snapshot::restore(self, input)
    }
}
