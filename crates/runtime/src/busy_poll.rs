//! Adaptive busy polling. After handling events, the loop may keep polling without sleeping
//! for a short window before it blocks: the guest's next segment, or the server's reply to a
//! request just forwarded, usually comes within tens of microseconds, and catching it awake
//! saves a sleep and a wake-up (an inter-processor interrupt and a context switch, tens of
//! microseconds on a VM) on every round trip.
//!
//! Polling pays only while events come that soon, so the loop keeps a running hit rate: the
//! share of recent waits that ended within the window (whether or not it polled). It polls
//! while at least a quarter of them did, so a busy network polls and an idle or sparsely used
//! one stops after a few long waits and then never spins.
//!
//! Nor does it pay for bulk transfers: there the next data is already on its way, and a thread
//! that polls only takes CPU time from the sender (half the guest-to-host throughput at MTU
//! 65520 on a 2-CPU machine). A round that moved more than [`BULK_ROUND`] bytes resets the hit
//! rate, so the small rounds in between (window updates, ACKs) do not make a pattern.

use std::time::Duration;

/// The hit rate is kept in 1/256ths; each wait moves it an eighth of the way to 0 or 256.
const SCALE: u16 = 256;
/// Poll while the hit rate is at least a quarter.
const THRESHOLD: u16 = SCALE / 4;
/// A round of events that moved more frame bytes than this was part of a bulk transfer.
pub const BULK_ROUND: usize = 8 * 1024;

/// How long to poll before sleeping, learnt from how long the loop has been waiting.
#[derive(Debug, Clone)]
pub struct PollWindow {
    max: Duration,
    hit_rate: u16,
}

impl PollWindow {
    /// Polls for `max` at a time when it pays; a zero `max` turns busy polling off.
    pub fn new(max: Duration) -> Self {
        PollWindow { max, hit_rate: 0 }
    }

    /// How long to poll before sleeping now.
    pub fn current(&self) -> Duration {
        if self.hit_rate >= THRESHOLD {
            self.max
        } else {
            Duration::ZERO
        }
    }

    /// Learns from one wait: the time from the end of one round of events to the next event
    /// (polling and sleeping together).
    pub fn waited(&mut self, wait: Duration) {
        if self.max.is_zero() {
            return;
        }
        if wait <= self.max {
            self.hit_rate += (SCALE - self.hit_rate) / 8;
        } else {
            self.hit_rate -= self.hit_rate / 8;
        }
    }

    /// Records how many bytes of frames the round of events that just ended received and sent.
    pub fn round_moved(&mut self, bytes: usize) {
        if bytes > BULK_ROUND {
            self.hit_rate = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn off_when_max_is_zero() {
        let mut w = PollWindow::new(Duration::ZERO);
        for _ in 0..100 {
            w.waited(Duration::ZERO);
        }
        assert_eq!(w.current(), Duration::ZERO);
    }

    #[test]
    fn polls_once_events_come_within_the_window() {
        let mut w = PollWindow::new(us(50));
        assert_eq!(w.current(), Duration::ZERO, "starts without polling");
        w.waited(us(30));
        w.waited(us(30));
        assert_eq!(
            w.current(),
            Duration::ZERO,
            "two quick events are not yet a pattern"
        );
        w.waited(us(30));
        assert_eq!(w.current(), us(50));
    }

    #[test]
    fn keeps_polling_when_only_some_waits_are_short() {
        // Request/response: the guest's next request comes quickly, the server's reply
        // takes a little longer than the window.
        let mut w = PollWindow::new(us(50));
        for _ in 0..10 {
            w.waited(us(20));
            w.waited(us(80));
        }
        for _ in 0..1000 {
            w.waited(us(20));
            assert_eq!(w.current(), us(50));
            w.waited(us(80));
            assert_eq!(w.current(), us(50));
        }
    }

    #[test]
    fn not_during_bulk_transfers() {
        let mut w = PollWindow::new(us(50));
        for _ in 0..100 {
            w.round_moved(200);
            w.waited(us(10));
        }
        assert_eq!(w.current(), us(50));
        w.round_moved(BULK_ROUND + 1);
        assert_eq!(w.current(), Duration::ZERO, "not right after a bulk round");
        for _ in 0..20 {
            // A bulk transfer: big rounds with a small one or two in between.
            w.waited(us(10));
            w.round_moved(64 * 1024);
            w.waited(us(10));
            w.round_moved(66);
            assert_eq!(w.current(), Duration::ZERO);
            w.waited(us(10));
            w.round_moved(66);
            assert_eq!(w.current(), Duration::ZERO);
        }
    }

    #[test]
    fn stops_after_a_few_long_waits() {
        let mut w = PollWindow::new(us(50));
        for _ in 0..1000 {
            w.waited(us(10));
        }
        let mut long_waits = 0;
        while w.current() > Duration::ZERO {
            w.waited(Duration::from_millis(100));
            long_waits += 1;
        }
        assert!(
            (5..=20).contains(&long_waits),
            "stopped after {long_waits} long waits"
        );
        w.waited(Duration::from_secs(1));
        assert_eq!(w.current(), Duration::ZERO, "an idle network does not poll");
    }
}
