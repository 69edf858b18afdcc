//! `--timings` for a Linux guest: the whole timeline, guest side included.

use super::*;
use ember::config::DEFAULT_CMDLINE;

#[test]
fn linux_startup_timeline() {
    let test = "linux_startup_timeline";
    let Some(k) = kernel_or_skip(test, "vmlinux") else {
        return;
    };
    let file =
        std::env::temp_dir().join(format!("ember-linux-timings-{}.json", std::process::id()));
    let arg = format!("--timings={}", file.display());
    let hardware = hardware(test);
    let o = if hardware {
        run(&["run", "--kernel", &k, &arg], HW_LIMIT)
    } else {
        // The early stop (a few seconds): the kernel is alive on the console, then stops.
        run(
            &["run", "--kernel", &k, "--cmdline", DEFAULT_CMDLINE, &arg],
            PVM_LIMIT,
        )
    };
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let names: Vec<&str> = v["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let mut want = vec!["first_kvm_run", "first_console_byte"];
    if hardware {
        assert_eq!(o.code, Some(0), "{o:?}");
        want.extend(["userspace_reached", "workload_end"]);
    } else {
        assert_eq!(o.code, Some(INTERNAL_ERROR), "{o:?}");
        assert!(!names.contains(&"userspace_reached"), "{names:?}");
    }
    want.extend(["shutdown_requested", "vm_torn_down", "process_exit"]);
    let positions: Vec<usize> = want
        .iter()
        .map(|w| {
            names
                .iter()
                .position(|n| n == w)
                .unwrap_or_else(|| panic!("{w} missing: {names:?}"))
        })
        .collect();
    assert!(positions.windows(2).all(|p| p[0] < p[1]), "{names:?}");
}
