//! Rate limits on log lines a client can cause at will (one per request the scanner refuses),
//! so a flood of such requests cannot fill the disk with the log.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most `per_second` lines in each second; the rest are counted, and the next line
/// written says how many were left out.
pub struct LogThrottle {
    per_second: u32,
    window: Mutex<Window>,
}

struct Window {
    started: Instant,
    lines: u32,
    suppressed: u64,
}

impl LogThrottle {
    pub fn new(per_second: u32) -> LogThrottle {
        LogThrottle {
            per_second,
            window: Mutex::new(Window {
                started: Instant::now(),
                lines: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(left out since the last line written)` when a line may be written now, `None`
    /// when it is to be left out.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.window.lock().unwrap();
        if now.saturating_duration_since(w.started) >= Duration::from_secs(1) {
            w.started = now;
            w.lines = 0;
        }
        if w.lines < self.per_second {
            w.lines += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_rate_are_counted_and_reported_by_the_next_one() {
        let t = LogThrottle::new(3);
        let start = Instant::now();
        let first: Vec<_> = (0..10).map(|_| t.admit_at(start)).collect();
        assert_eq!(first[..3], [Some(0), Some(0), Some(0)]);
        assert!(first[3..].iter().all(Option::is_none));
        let later = start + Duration::from_millis(1500);
        assert_eq!(t.admit_at(later), Some(7));
        assert_eq!(t.admit_at(later), Some(0));
    }
}
