//! When the apply worker leaves the runtime: once slow jobs are the
//! state machine's way, not the machine's passing stall.
//!
//! The worker first moved to a thread of its own after one job took longer
//! than [`SLOW_JOB`]. On this development VM that happened in nearly every
//! run of 256 clients putting to a 3-member cluster, to one member or two,
//! at random: a job of 9 to 256 entries, which takes well under a
//! millisecond, now and then took 3-12 ms, often on every member in the
//! same millisecond (the host stalled them all). A member whose worker had
//! moved then spent 0.5 µs more per put of CPU on a follower (4.1 against
//! 3.5 µs), and the cluster put about 5% slower: each hand-off to the
//! thread is a system call and a wake-up. A state machine that is slow
//! itself is slow again and again, so the worker now moves at the third
//! slow job within [`WINDOW`]; or at once after a job longer than
//! [`STALL`], which holds up the protocol long enough to matter whatever
//! its cause (a state machine whose every apply takes that long would
//! otherwise cost the cluster an election or three).

use std::time::{Duration, Instant};

/// A job that takes longer than this on a runtime worker counts as slow:
/// about one default tick, well under a heartbeat interval.
pub(crate) const SLOW_JOB: Duration = Duration::from_millis(10);

/// A job that takes longer than this makes the worker move at once: five
/// default ticks (10 ms), two and a half heartbeat intervals, a quarter of
/// the default election timeout; the stalls seen on the development VM
/// were 15 ms at most.
pub(crate) const STALL: Duration = Duration::from_millis(50);

/// Slow jobs this close together make the worker move.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);

/// How many slow jobs within [`WINDOW`] make the worker move.
pub(crate) const SLOW_JOBS_TO_MOVE: usize = 3;

/// The recent slow jobs (see the module's docs).
#[derive(Debug, Default)]
pub(crate) struct SlowJobs {
    /// When the last slow jobs ended, oldest first: at most
    /// `SLOW_JOBS_TO_MOVE - 1`.
    recent: Vec<Instant>,
}

impl SlowJobs {
    /// Records a job that ended at `now` after `took`; returns whether
    /// the worker should move to a thread of its own.
    pub(crate) fn record(&mut self, now: Instant, took: Duration) -> bool {
        if took <= SLOW_JOB {
            return false;
        }
        if took > STALL {
            return true;
        }
        self.recent
            .retain(|&at| now.saturating_duration_since(at) <= WINDOW);
        if self.recent.len() + 1 >= SLOW_JOBS_TO_MOVE {
            return true;
        }
        self.recent.push(now);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOW: Duration = Duration::from_millis(12);
    const FAST: Duration = Duration::from_millis(1);

    #[test]
    fn the_third_slow_job_within_the_window_moves_the_worker() {
        let start = Instant::now();
        let mut slow = SlowJobs::default();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert!(!slow.record(at(0), SLOW));
        // Fast jobs between slow ones change nothing.
        assert!(!slow.record(at(5), FAST));
        assert!(!slow.record(at(100), SLOW));
        assert!(slow.record(at(900), SLOW));
    }

    #[test]
    fn one_job_that_stalls_the_protocol_moves_the_worker_at_once() {
        let mut slow = SlowJobs::default();
        assert!(slow.record(Instant::now(), STALL + Duration::from_millis(1)));
        let mut slow = SlowJobs::default();
        assert!(!slow.record(Instant::now(), STALL));
    }

    #[test]
    fn slow_jobs_further_apart_than_the_window_do_not() {
        let start = Instant::now();
        let mut slow = SlowJobs::default();
        // A stall every 600 ms: no three within a second.
        for n in 0..20u64 {
            assert!(
                !slow.record(start + Duration::from_millis(600 * n), SLOW),
                "stall {n}"
            );
        }
        // A job that took exactly the limit is not slow.
        for n in 0..10u64 {
            assert!(!slow.record(
                start + Duration::from_secs(20) + Duration::from_millis(n),
                SLOW_JOB
            ));
        }
    }
}
