//! When the kernel created this process, in CLOCK_MONOTONIC terms, from the kernel's own
//! records: taskstats (microseconds; needs CAP_NET_ADMIN) or, failing that, the start time in
//! /proc/self/stat (clock ticks, usually 10 ms).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::monotonic_ns;

/// Where the process start time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// taskstats `ac_etime`, microsecond resolution.
    Taskstats,
    /// /proc/self/stat `starttime`, clock-tick resolution.
    ProcStat,
}

impl Source {
    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Source::Taskstats => "taskstats",
            Source::ProcStat => "proc-stat",
        }
    }
}

/// The process start: CLOCK_MONOTONIC ns, source and resolution in ns.
#[derive(Debug, Clone, Copy)]
pub struct ProcessStart {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ns: u64,
    /// Where it came from.
    pub source: Source,
    /// Its resolution.
    pub resolution_ns: u64,
}

/// Looks the process start up, preferring the precise source.
pub fn lookup() -> Option<ProcessStart> {
    from_taskstats().or_else(from_proc_stat)
}

/// /proc/self/stat field 22 is the start time in clock ticks since boot (CLOCK_BOOTTIME);
/// moved onto CLOCK_MONOTONIC by the two clocks' current difference.
fn from_proc_stat() -> Option<ProcessStart> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; count fields after its closing ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()?
        .max(1);
    let start_boottime = ticks.checked_mul(1_000_000_000 / hz)?;
    let mono = monotonic_ns();
    let boot = clock_ns(libc::CLOCK_BOOTTIME);
    let ns = mono.checked_sub(boot.checked_sub(start_boottime)?)?;
    Some(ProcessStart {
        ns,
        source: Source::ProcStat,
        resolution_ns: 1_000_000_000 / hz,
    })
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the live timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

// Generic netlink and taskstats constants (linux/genetlink.h, linux/taskstats.h).
const NETLINK_GENERIC: i32 = 16;
const GENL_ID_CTRL: u16 = 16;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const TASKSTATS_CMD_GET: u8 = 1;
const TASKSTATS_CMD_ATTR_PID: u16 = 1;
const TASKSTATS_TYPE_AGGR_PID: u16 = 4;
const TASKSTATS_TYPE_STATS: u16 = 3;
/// Offset of `ac_etime` (elapsed µs since the task started) in `struct taskstats`; stable
/// since version 1 of the struct.
const AC_ETIME_OFFSET: usize = 144;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;

/// Asks taskstats how long ago this process started.
fn from_taskstats() -> Option<ProcessStart> {
    // SAFETY: plain socket creation; the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_GENERIC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a fresh socket nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let family = {
        let mut name = b"TASKSTATS\0".to_vec();
        name.resize(12, 0);
        let reply = request(
            &sock,
            GENL_ID_CTRL,
            CTRL_CMD_GETFAMILY,
            CTRL_ATTR_FAMILY_NAME,
            &name[..10],
        )?;
        let id = find_attr(&reply, CTRL_ATTR_FAMILY_ID)?;
        u16::from_le_bytes(id.get(..2)?.try_into().ok()?)
    };
    let pid = std::process::id().to_le_bytes();
    let reply = request(
        &sock,
        family,
        TASKSTATS_CMD_GET,
        TASKSTATS_CMD_ATTR_PID,
        &pid,
    )?;
    let now = monotonic_ns();
    let aggr = find_attr(&reply, TASKSTATS_TYPE_AGGR_PID)?;
    let stats = find_attr(aggr, TASKSTATS_TYPE_STATS)?;
    let etime_us = u64::from_le_bytes(
        stats
            .get(AC_ETIME_OFFSET..AC_ETIME_OFFSET + 8)?
            .try_into()
            .ok()?,
    );
    Some(ProcessStart {
        ns: now.checked_sub(etime_us.checked_mul(1000)?)?,
        source: Source::Taskstats,
        resolution_ns: 1000,
    })
}

/// Sends one generic-netlink request with one attribute; returns the reply's attributes.
fn request(sock: &OwnedFd, family: u16, cmd: u8, attr: u16, value: &[u8]) -> Option<Vec<u8>> {
    let attr_len = 4 + value.len();
    let total = 16 + 4 + attr_len.div_ceil(4) * 4;
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_le_bytes());
    msg.extend_from_slice(&family.to_le_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_le_bytes());
    msg.extend_from_slice(&1u32.to_le_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_le_bytes()); // port: the kernel
    msg.extend_from_slice(&[cmd, 1, 0, 0]); // genl header: command, version
    msg.extend_from_slice(&(attr_len as u16).to_le_bytes());
    msg.extend_from_slice(&attr.to_le_bytes());
    msg.extend_from_slice(value);
    msg.resize(total, 0);
    // SAFETY: sending a live buffer of `msg.len()` bytes on our socket.
    let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent != msg.len() as isize {
        return None;
    }
    let mut buf = vec![0u8; 4096];
    // SAFETY: receiving into a live buffer of `buf.len()` bytes.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    let n = usize::try_from(n).ok()?;
    let reply = buf.get(..n)?;
    let len = u32::from_le_bytes(reply.get(0..4)?.try_into().ok()?) as usize;
    let kind = u16::from_le_bytes(reply.get(4..6)?.try_into().ok()?);
    if kind == NLMSG_ERROR || len > n || len < 20 {
        return None;
    }
    Some(reply.get(20..len)?.to_vec())
}

/// Finds attribute `kind` in a run of netlink attributes.
fn find_attr(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_le_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_le_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == kind {
            return Some(&attrs[4..len]);
        }
        attrs = attrs.get(len.div_ceil(4) * 4..).unwrap_or(&[]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_started_before_now() {
        let start = lookup().expect("a process start from /proc at least");
        let now = monotonic_ns();
        assert!(start.ns <= now);
        // A test process is younger than an hour.
        assert!(now - start.ns < 3_600_000_000_000);
        let stat = from_proc_stat().unwrap();
        // Both sources agree within the coarse one's resolution (plus scheduling slack).
        assert!(start.ns.abs_diff(stat.ns) <= stat.resolution_ns * 2 + 5_000_000);
    }

    #[test]
    fn attributes_are_bounds_checked() {
        assert_eq!(find_attr(&[], 1), None);
        assert_eq!(
            find_attr(&[8, 0, 1, 0, 1, 2, 3, 4], 1),
            Some(&[1u8, 2, 3, 4][..])
        );
        assert_eq!(find_attr(&[200, 0, 1, 0, 1, 2, 3, 4], 1), None);
        assert_eq!(find_attr(&[2, 0, 1, 0], 1), None);
        assert_eq!(
            find_attr(&[5, 0, 2, 0, 9, 0, 0, 0, 5, 0, 1, 0, 7], 1),
            Some(&[7u8][..])
        );
    }
}
