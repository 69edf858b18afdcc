//! A short run of bench/soak.sh: sequential and concurrent boots all end well, nothing is
//! left running, the host gets its memory back. (Its own test binary: it counts processes.)

mod common;

use common::*;

#[test]
fn soak_smoke() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/soak.sh");
    let o = std::process::Command::new("bash")
        .args([script, "20", "10"])
        .env("EMBER", env!("CARGO_BIN_EXE_ember"))
        .env("GUEST", guest("hello64"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("sequential: 20/20 ok"), "{stdout}");
    assert!(stdout.contains("parallel: 10/10 ok"), "{stdout}");
    assert!(stdout.contains("ember processes left: 0"), "{stdout}");
}
