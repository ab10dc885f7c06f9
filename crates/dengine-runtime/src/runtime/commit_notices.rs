//! When the leader's held-back commit notices go out.
//!
//! A message that carries only a new commit index costs each follower a
//! message in, a trip through its core and an answer. The core holds such
//! notices back (`Config::defer_commit_notices`) and drops each one an
//! append overtakes, since every append carries the commit index. This
//! timer sends the rest a short while after the first was held, so a
//! follower learns the last commit of a burst that much later at most.

use std::time::{Duration, Instant};

/// The timer of the commit notices the core holds back.
#[derive(Debug)]
pub(crate) struct CommitNoticeTimer {
    /// How long a notice may wait.
    hold: Duration,
    /// When the held notices go out, if any are held.
    at: Option<Instant>,
}

impl CommitNoticeTimer {
    /// A timer that lets notices wait `hold`.
    pub(crate) fn new(hold: Duration) -> CommitNoticeTimer {
        CommitNoticeTimer { hold, at: None }
    }

    /// The earlier of `other` and when the held notices go out.
    pub(crate) fn deadline(&self, other: Instant) -> Instant {
        self.at.map_or(other, |at| at.min(other))
    }

    /// Whether the held notices are to go out now (the timer then stops).
    /// The clock is read only while the timer runs: this is asked every
    /// turn of the core.
    pub(crate) fn fire(&mut self, now: impl FnOnce() -> Instant) -> bool {
        let due = self.at.is_some_and(|at| at <= now());
        if due {
            self.at = None;
        }
        due
    }

    /// After a turn of the core: started when notices are held (from the
    /// first, not restarted by later ones), stopped when none are. The
    /// clock is read only to start it.
    pub(crate) fn update(&mut self, held: bool, now: impl FnOnce() -> Instant) {
        if !held {
            self.at = None;
        } else if self.at.is_none() {
            self.at = Some(now() + self.hold);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_go_a_hold_after_the_first_was_held_unless_overtaken() {
        let hold = Duration::from_millis(1);
        let t0 = Instant::now();
        let tick = t0 + Duration::from_millis(10);
        let mut timer = CommitNoticeTimer::new(hold);
        assert_eq!(timer.deadline(tick), tick);
        assert!(!timer.fire(|| tick));

        // Held at t0: due at t0 + hold, not restarted by a later turn.
        timer.update(true, || t0);
        timer.update(true, || t0 + Duration::from_micros(600));
        assert_eq!(timer.deadline(tick), t0 + hold);
        assert!(!timer.fire(|| t0 + Duration::from_micros(999)));
        assert!(timer.fire(|| t0 + hold));
        assert_eq!(timer.deadline(tick), tick);
        assert!(!timer.fire(|| t0 + hold));

        // Overtaken (none held after a turn): the timer stops.
        timer.update(true, || t0);
        timer.update(false, || t0 + Duration::from_micros(100));
        assert!(!timer.fire(|| t0 + hold));
        assert_eq!(timer.deadline(tick), tick);

        // A tick before the hold ends comes first.
        timer.update(true, || tick - Duration::from_micros(10));
        assert_eq!(timer.deadline(tick), tick);
    }
}
