//! An interactive shell over the serial console: Debian's busybox-static through `--exec`, on
//! a real pseudo-terminal, as a user would type into it.

use std::io::Write;
use std::process::Stdio;

use super::*;

#[test]
fn interactive_busybox_shell() {
    let test = "interactive_busybox_shell";
    let Some(k) = kernel_or_skip(test, "vmlinux") else {
        return;
    };
    if !hardware(test) {
        skip(test, "Linux userspace does not run on a PVM-based /dev/kvm");
        return;
    }
    if !std::path::Path::new("/bin/busybox").exists() {
        skip(
            test,
            "needs busybox-static (apt-get install busybox-static)",
        );
        return;
    }
    let (mut master, slave) = pty();
    let cooked = lflag(&slave);
    let mut child = ember()
        .args(["run", "--kernel", &k, "--exec", "/bin/busybox", "--", "sh"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    // busybox's prompt for root.
    read_until(&mut master, &mut seen, "# ", &mut child);
    master
        .write_all(b"echo $((6 * 7))-from-the-guest\r")
        .unwrap();
    read_until(&mut master, &mut seen, "42-from-the-guest", &mut child);
    master.write_all(b"exit 3\r").unwrap();
    let o = wait(child, HW_LIMIT);
    assert_eq!(o.code, Some(3), "{o:?}: {}", String::from_utf8_lossy(&seen));
    assert_eq!(lflag(&slave), cooked, "terminal left in raw mode");
}
