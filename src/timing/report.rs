//! The `--timings` report: a compact table for people, JSON (schema `ember-timings/1`) for
//! programs. docs/timings.md documents both.

use serde::Serialize;

use super::process_start::ProcessStart;
use super::{Phase, Timeline};

/// JSON schema identifier; bump the number on any incompatible change.
pub const SCHEMA: &str = "ember-timings/1";

/// One phase in the report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PhaseEntry {
    /// Phase name (see `Phase::name`).
    pub name: &'static str,
    /// Nanoseconds since process start.
    pub t_ns: u64,
    /// Nanoseconds since the previous phase in this list.
    pub delta_ns: u64,
    /// "vmm" or "guest": who caused it.
    pub side: &'static str,
}

/// Where the process start came from.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StartInfo {
    /// "taskstats", "proc-stat", or "unavailable" (then times count from the first phase).
    pub source: &'static str,
    /// Resolution of the process start stamp.
    pub resolution_ns: u64,
    /// CLOCK_MONOTONIC nanoseconds of `t_ns` 0: where another process's clock (a benchmark's
    /// spawn) meets this timeline.
    pub monotonic_ns: u64,
}

/// CPU time ember's process used, all threads (vCPU threads' time in KVM_RUN included).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Cpu {
    /// User time.
    pub user_ns: u64,
    /// System time.
    pub system_ns: u64,
}

/// Memory: what ember itself cost beyond the guest's own pages.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Memory {
    /// Peak resident set of the process.
    pub peak_rss_bytes: u64,
    /// Guest memory the guest touched (resident when it stopped).
    pub guest_touched_bytes: u64,
    /// Peak RSS minus guest-touched memory: ember's own overhead.
    pub overhead_bytes: u64,
}

/// Messages a guest caused that were counted instead of logged, for one source.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Suppressed {
    /// The device or vCPU.
    pub source: String,
    /// How many.
    pub count: u64,
}

/// What the host side could not take, counted instead of logged or queued.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Dropped {
    /// Guest console bytes stdout could not take.
    pub console_bytes: u64,
    /// Guest-caused messages past each source's budget (`guest_log`).
    pub guest_messages: Vec<Suppressed>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Schema id.
    pub schema: &'static str,
    /// The clock every stamp was read from.
    pub clock: &'static str,
    /// Process start provenance.
    pub process_start: StartInfo,
    /// Phases in time order.
    pub phases: Vec<PhaseEntry>,
    /// CPU time.
    pub cpu: Cpu,
    /// Memory.
    pub memory: Memory,
    /// `inline`, or `deferred`: KVM destroys the VM after the process exits, in the teardown
    /// keeper, so `vm_torn_down` is only ember's own share.
    pub teardown: &'static str,
    /// What was dropped or not logged.
    pub dropped: Dropped,
    /// Host time spent making the shared directories ready (a program run's virtio-fs
    /// shares: the detached mounts, the file servers and their threads), if there were any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shares_setup_ns: Option<u64>,
}

impl Report {
    /// Builds the report from the timeline and resource figures.
    pub fn new(
        timeline: &Timeline,
        start: Option<ProcessStart>,
        cpu: Cpu,
        peak_rss_bytes: u64,
        guest_touched_bytes: u64,
    ) -> Self {
        if let Some(s) = start {
            timeline.mark_at(Phase::ProcessStart, s.ns);
        }
        let recorded = timeline.recorded();
        let base = recorded.first().map(|&(_, ns)| ns).unwrap_or(0);
        let mut prev = base;
        let phases = recorded
            .iter()
            .map(|&(phase, ns)| {
                let e = PhaseEntry {
                    name: phase.name(),
                    t_ns: ns - base,
                    delta_ns: ns - prev,
                    side: if phase.is_guest_side() {
                        "guest"
                    } else {
                        "vmm"
                    },
                };
                prev = ns;
                e
            })
            .collect();
        Report {
            schema: SCHEMA,
            clock: "CLOCK_MONOTONIC",
            process_start: match start {
                Some(s) => StartInfo {
                    source: s.source.name(),
                    resolution_ns: s.resolution_ns,
                    monotonic_ns: base,
                },
                None => StartInfo {
                    source: "unavailable",
                    resolution_ns: 0,
                    monotonic_ns: base,
                },
            },
            phases,
            cpu,
            memory: Memory {
                peak_rss_bytes,
                guest_touched_bytes,
                overhead_bytes: peak_rss_bytes.saturating_sub(guest_touched_bytes),
            },
            teardown: "inline",
            dropped: Dropped::default(),
            shares_setup_ns: None,
        }
    }

    /// Adds the shares' set-up time (see [`Report::shares_setup_ns`]).
    pub fn with_shares_setup(mut self, ns: Option<u64>) -> Self {
        self.shares_setup_ns = ns;
        self
    }

    /// Adds what was dropped or not logged (see [`Report::dropped`]).
    pub fn with_dropped(mut self, console_bytes: u64, messages: &[(String, u64)]) -> Self {
        self.dropped = Dropped {
            console_bytes,
            guest_messages: messages
                .iter()
                .map(|(source, count)| Suppressed {
                    source: source.clone(),
                    count: *count,
                })
                .collect(),
        };
        self
    }

    /// Marks the teardown as deferred to the keeper (see [`Report::teardown`]).
    pub fn with_teardown_deferred(mut self, deferred: bool) -> Self {
        self.teardown = if deferred { "deferred" } else { "inline" };
        self
    }

    /// The table for people; lines end in "\n".
    pub fn table(&self) -> String {
        let ms = |ns: u64| ns as f64 / 1e6;
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let mut out = format!(
            "ember: startup timeline, ms since process start (process start from {}, {} us resolution)\n",
            self.process_start.source,
            self.process_start.resolution_ns / 1000
        );
        out.push_str(&format!(
            "  {:<20} {:>10} {:>10}  {}\n",
            "phase", "at", "delta", "side"
        ));
        for p in &self.phases {
            out.push_str(&format!(
                "  {:<20} {:>10.3} {:>+10.3}  {}\n",
                p.name,
                ms(p.t_ns),
                ms(p.delta_ns),
                p.side
            ));
        }
        out.push_str(&format!(
            "  cpu {:.3} ms user, {:.3} ms system; memory: peak RSS {:.1} MiB, guest touched {:.1} MiB, ember overhead {:.1} MiB\n",
            ms(self.cpu.user_ns),
            ms(self.cpu.system_ns),
            mib(self.memory.peak_rss_bytes),
            mib(self.memory.guest_touched_bytes),
            mib(self.memory.overhead_bytes)
        ));
        if self.teardown == "deferred" {
            out.push_str("  teardown deferred: vm_torn_down is ember's share; KVM destroys the VM after ember exits\n");
        }
        if let Some(ns) = self.shares_setup_ns {
            out.push_str(&format!(
                "  shares: {:.3} ms of ember's time to make them ready\n",
                ms(ns)
            ));
        }
        if self.dropped.console_bytes > 0 {
            out.push_str(&format!(
                "  dropped: {} bytes of console output stdout could not take\n",
                self.dropped.console_bytes
            ));
        }
        for s in &self.dropped.guest_messages {
            out.push_str(&format!(
                "  not logged: {} messages the guest caused ({})\n",
                s.count, s.source
            ));
        }
        out
    }

    /// The JSON document.
    pub fn json(&self) -> String {
        // Serialising plain structs of strings and integers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// This process's CPU time and peak RSS (bytes), from getrusage.
pub fn own_usage() -> (Cpu, u64) {
    // SAFETY: rusage is plain data, filled by getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a live rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    (
        Cpu {
            user_ns: tv(ru.ru_utime),
            system_ns: tv(ru.ru_stime),
        },
        ru.ru_maxrss as u64 * 1024,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timing::process_start::Source;

    fn sample() -> Report {
        let t = Timeline::new();
        t.mark_at(Phase::ConfigParsed, 1_500_000);
        t.mark_at(Phase::KvmReady, 2_000_000);
        t.mark_at(Phase::FirstConsoleByte, 9_000_000);
        let start = ProcessStart {
            ns: 1_000_000,
            source: Source::Taskstats,
            resolution_ns: 1000,
        };
        Report::new(
            &t,
            Some(start),
            Cpu {
                user_ns: 1,
                system_ns: 2,
            },
            10 << 20,
            4 << 20,
        )
    }

    #[test]
    fn times_count_from_process_start() {
        let r = sample();
        let got: Vec<(&str, u64, u64, &str)> = r
            .phases
            .iter()
            .map(|p| (p.name, p.t_ns, p.delta_ns, p.side))
            .collect();
        assert_eq!(
            got,
            [
                ("process_start", 0, 0, "vmm"),
                ("config_parsed", 500_000, 500_000, "vmm"),
                ("kvm_ready", 1_000_000, 500_000, "vmm"),
                ("first_console_byte", 8_000_000, 7_000_000, "guest"),
            ]
        );
        assert_eq!(r.memory.overhead_bytes, 6 << 20);
    }

    #[test]
    fn json_schema_fields() {
        let v: serde_json::Value = serde_json::from_str(&sample().json()).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["clock"], "CLOCK_MONOTONIC");
        assert_eq!(v["process_start"]["source"], "taskstats");
        // Where t_ns 0 is on the clock: the process start.
        assert_eq!(v["process_start"]["monotonic_ns"], 1_000_000);
        assert_eq!(v["phases"][1]["name"], "config_parsed");
        assert_eq!(v["phases"][1]["t_ns"], 500_000);
        assert_eq!(v["phases"][3]["side"], "guest");
        assert_eq!(v["cpu"]["system_ns"], 2);
        assert_eq!(v["memory"]["peak_rss_bytes"], 10 << 20);
    }

    #[test]
    fn table_has_a_row_per_phase() {
        let t = sample().table();
        assert_eq!(t.lines().count(), 2 + 4 + 1);
        assert!(t.contains("first_console_byte"));
        assert!(t.contains("ember overhead 6.0 MiB"));
    }

    #[test]
    fn no_process_start_counts_from_first_phase() {
        let t = Timeline::new();
        t.mark_at(Phase::ConfigParsed, 5);
        let r = Report::new(
            &t,
            None,
            Cpu {
                user_ns: 0,
                system_ns: 0,
            },
            0,
            0,
        );
        assert_eq!(r.process_start.source, "unavailable");
        assert_eq!(r.phases[0].t_ns, 0);
    }
}
