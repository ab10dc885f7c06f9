//! The protocol's clock: ticks derived from elapsed monotonic time, not
//! from counting timer wake-ups.
//!
//! A timer that fires late (a busy loop, a stalled worker, a paused
//! process) must not slow the protocol's clock down: a leader's lease is
//! counted in its own ticks, and followers elect a new leader on theirs.
//! If the leader's ticks fell behind real time, its lease would outlast
//! the moment another leader can exist. So the core task asks the clock,
//! before it serves anything, how many tick periods have passed, and ticks
//! the core once for each.

use std::time::{Duration, Instant};

/// Most ticks made up at once. Past an election timeout more ticks change
/// nothing for the protocol (the lease is gone, an election is due), so a
/// very long stall (a suspended process) is cut short here.
const MAX_CATCH_UP: u64 = 10_000;

/// Ticks from elapsed time.
#[derive(Debug)]
pub(crate) struct TickClock {
    period: Duration,
    /// When the next tick is due.
    next: Instant,
    /// Ticks since start.
    ticks: u64,
}

impl TickClock {
    pub(crate) fn new(period: Duration, now: Instant) -> TickClock {
        TickClock {
            period,
            next: now + period,
            ticks: 0,
        }
    }

    /// When the next tick is due (the core task sleeps until then at most).
    pub(crate) fn deadline(&self) -> Instant {
        self.next
    }

    /// Ticks since start.
    pub(crate) fn ticks(&self) -> u64 {
        self.ticks
    }

    /// How many ticks are due at `now` (one per whole period elapsed),
    /// counted as made.
    pub(crate) fn due(&mut self, now: Instant) -> u64 {
        if now < self.next {
            return 0;
        }
        let behind = now.duration_since(self.next).as_nanos() / self.period.as_nanos().max(1);
        let due = u64::try_from(behind).unwrap_or(u64::MAX).saturating_add(1);
        if due > MAX_CATCH_UP {
            self.next = now + self.period;
            self.ticks = self.ticks.saturating_add(MAX_CATCH_UP);
            return MAX_CATCH_UP;
        }
        // Whole periods only: the fraction carries into the next tick.
        let step = u32::try_from(due).unwrap_or(u32::MAX);
        self.next += self.period * step;
        self.ticks += due;
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_clock_makes_up_every_whole_period() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = TickClock::new(ms(10), t0);
        assert_eq!(c.due(t0 + ms(9)), 0);
        assert_eq!(c.due(t0 + ms(10)), 1);
        // A stall of 95 ms: the ticks of 20..=100 are due at once.
        assert_eq!(c.due(t0 + ms(105)), 9);
        assert_eq!(c.ticks(), 10);
        // The fraction is not lost: the next tick is at 110 ms.
        assert_eq!(c.deadline(), t0 + ms(110));
        assert_eq!(c.due(t0 + ms(109)), 0);
        assert_eq!(c.due(t0 + ms(110)), 1);
    }

    #[test]
    fn a_very_long_stall_is_capped() {
        let t0 = Instant::now();
        let mut c = TickClock::new(Duration::from_millis(1), t0);
        assert_eq!(c.due(t0 + Duration::from_secs(3600)), MAX_CATCH_UP);
        assert_eq!(
            c.deadline(),
            t0 + Duration::from_secs(3600) + Duration::from_millis(1)
        );
    }
}
