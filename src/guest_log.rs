//! Messages a guest can cause, bounded.
//!
//! Whatever a guest can do once it can do a million times a second: a message logged each
//! time would flood the host's logs (a broken virtqueue notified in a loop once made ember
//! print 16 MB in 5 s) and stall ember behind a slow stderr. So every source a guest drives (a
//! device, a vCPU's exits) logs through its own [`LogLimit`]: its first [`PER_SOURCE`] messages
//! are logged, the rest only counted, and [`GuestLogs::suppressed`] gives the counts when the
//! VM stops (`ember run` reports them, also in `--timings`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// How many messages one source may log; the rest are counted.
pub const PER_SOURCE: u32 = 5;

/// The message budget of one guest-driven source.
#[derive(Debug)]
pub struct LogLimit {
    source: String,
    left: AtomicU32,
    suppressed: AtomicU64,
}

impl LogLimit {
    /// A budget of [`PER_SOURCE`] messages for `source` (how the messages name it).
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            left: AtomicU32::new(PER_SOURCE),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Takes one message from the budget: whether it may be logged (if not, it is counted).
    pub fn allow(&self) -> bool {
        let took = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if !took {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
        took
    }

    /// What the messages name as their source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Messages counted instead of logged.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

/// Every [`LogLimit`] of one VM, for the report when it stops.
#[derive(Debug, Clone, Default)]
pub struct GuestLogs(Arc<Mutex<Vec<Arc<LogLimit>>>>);

impl GuestLogs {
    /// A new budget for `source`, counted in this VM's report.
    pub fn limit(&self, source: impl Into<String>) -> Arc<LogLimit> {
        let l = Arc::new(LogLimit::new(source));
        lock(&self.0).push(l.clone());
        l
    }

    /// Each source that had messages counted instead of logged, with their count.
    pub fn suppressed(&self) -> Vec<(String, u64)> {
        lock(&self.0)
            .iter()
            .filter(|l| l.suppressed() > 0)
            .map(|l| (l.source().to_string(), l.suppressed()))
            .collect()
    }
}

/// Logs at `level` through `limit` (a [`LogLimit`]), prefixed with its source: a message
/// whose level is off costs nothing and is not counted.
#[macro_export]
macro_rules! guest_log {
    ($limit:expr, $level:expr, $($arg:tt)+) => {
        if log::log_enabled!($level) && $limit.allow() {
            log::log!($level, "{}: {}", $limit.source(), format_args!($($arg)+));
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_logs_its_budget_then_counts() {
        let logs = GuestLogs::default();
        let a = logs.limit("virtio-blk a");
        let b = logs.limit("virtio-blk b");
        let allowed = (0..1000).filter(|_| a.allow()).count();
        assert_eq!(allowed, PER_SOURCE as usize);
        assert!(b.allow(), "each source has its own budget");
        assert_eq!(logs.suppressed(), vec![("virtio-blk a".to_string(), 995)]);
    }
}
