//! `ember run`'s logger: one line per message on stderr (through [`super::stderr`], which
//! never blocks). ember's own guest-driven messages are bounded where they arise
//! (`ember::guest_log`); the libraries ember uses (virtqueues, the file server) log with
//! their own macros, so each of them gets a budget here too: a guest must not be able to
//! make a library flood stderr either.

use std::sync::Mutex;

/// Messages each library (log target outside ember) may log; the rest are counted.
const PER_LIBRARY: u64 = 10;

/// The logger.
pub struct StderrLogger {
    /// Messages seen per library target.
    libraries: Mutex<Vec<(String, u64)>>,
}

/// The one logger.
pub static LOGGER: StderrLogger = StderrLogger {
    libraries: Mutex::new(Vec::new()),
};

impl StderrLogger {
    /// Whether a message from `target` may be logged (ember's own always may).
    fn allow(&self, target: &str) -> bool {
        if target == "ember" || target.starts_with("ember::") {
            return true;
        }
        let mut seen = self.libraries.lock().unwrap_or_else(|p| p.into_inner());
        let i = match seen.iter().position(|(t, _)| t == target) {
            Some(i) => i,
            None => {
                seen.push((target.to_string(), 0));
                seen.len() - 1
            }
        };
        seen[i].1 += 1;
        seen[i].1 <= PER_LIBRARY
    }

    /// Libraries that had messages counted instead of logged, with their counts.
    pub fn suppressed(&self) -> Vec<(String, u64)> {
        let seen = self.libraries.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter()
            .filter(|(_, n)| *n > PER_LIBRARY)
            .map(|(t, n)| (t.clone(), n - PER_LIBRARY))
            .collect()
    }
}

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) && self.allow(r.target()) {
            let level = r.level().as_str().to_ascii_lowercase();
            // In raw mode a bare \n does not return the carriage.
            super::stderr::write(format!("ember: {level}: {}\r\n", r.args()).as_bytes());
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libraries_get_a_budget_ember_does_not() {
        let l = StderrLogger {
            libraries: Mutex::new(Vec::new()),
        };
        assert!((0..100).all(|_| l.allow("ember::devices")));
        let logged = (0..100).filter(|_| l.allow("virtio_queue::queue")).count();
        assert_eq!(logged as u64, PER_LIBRARY);
        assert_eq!(
            l.suppressed(),
            vec![("virtio_queue::queue".to_string(), 100 - PER_LIBRARY)]
        );
    }
}
