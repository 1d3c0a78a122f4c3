//! Collapses repeated error lines on their way to daemon.log. A store that
//! stopped after a failed write (a full disk) or a locked store fails every
//! request with the same cause; without this, each one wrote a line, on
//! the very disk that is full.
//!
//! Owns: the last line written and how often it repeated since.
//! Invariants: a line that differs from the previous one is always written;
//! a repeat is written again once `QUIET` has passed since the line was
//! last written; the number of repeats held back is written before the next
//! line that gets through.

use crate::poison::Recover;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an identical line is only counted.
const QUIET: Duration = Duration::from_secs(10);

struct Last {
    line: String,
    written_at: Instant,
    held_back: u64,
}

#[derive(Default)]
pub(super) struct RepeatFilter {
    last: Option<Last>,
}

impl RepeatFilter {
    /// The lines to write for `line` arriving at `now`: none for a repeat
    /// inside `QUIET`, else a count of the repeats held back (if any) and
    /// the line itself.
    pub(super) fn admit(&mut self, line: &str, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(last) = self.last.as_mut() {
            if last.line == line && now.duration_since(last.written_at) < QUIET {
                last.held_back += 1;
                return out;
            }
            if last.held_back > 0 {
                out.push(format!(
                    "datastore: the previous message repeated {} more times",
                    last.held_back
                ));
            }
        }
        out.push(line.to_string());
        self.last = Some(Last {
            line: line.to_string(),
            written_at: now,
            held_back: 0,
        });
        out
    }
}

static FILTER: Mutex<Option<RepeatFilter>> = Mutex::new(None);

/// Writes `line` to the daemon's log unless it only repeats the last one.
pub(super) fn log_collapsed(line: String) {
    let mut filter = FILTER.locked();
    for l in filter
        .get_or_insert_with(RepeatFilter::default)
        .admit(&line, Instant::now())
    {
        crate::log_line!("{l}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_counted_and_reported_with_the_next_line() {
        let mut f = RepeatFilter::default();
        let t0 = Instant::now();
        assert_eq!(f.admit("a", t0), vec!["a"]);
        for i in 1..=5 {
            assert!(f.admit("a", t0 + Duration::from_millis(i)).is_empty());
        }
        assert_eq!(
            f.admit("b", t0 + Duration::from_secs(1)),
            vec![
                "datastore: the previous message repeated 5 more times".to_string(),
                "b".to_string()
            ]
        );
        // A different line right after is written at once, with no count.
        assert_eq!(f.admit("a", t0 + Duration::from_secs(2)), vec!["a"]);
    }

    #[test]
    fn a_repeat_is_written_again_after_the_quiet_period() {
        let mut f = RepeatFilter::default();
        let t0 = Instant::now();
        assert_eq!(f.admit("a", t0), vec!["a"]);
        assert!(f.admit("a", t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(
            f.admit("a", t0 + QUIET),
            vec![
                "datastore: the previous message repeated 1 more times".to_string(),
                "a".to_string()
            ]
        );
    }
}
