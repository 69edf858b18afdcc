//! `ember bench --density N --density-linux`: idle Linux guests booted plain, booted with a
//! balloon, and restored from one snapshot all come up, and the restored ones cost the host
//! a fraction of a booted one (their memory is the snapshot's, shared copy-on-write). The
//! figures themselves are docs/density.md's; this proves the subjects are real.

use super::*;

#[test]
fn linux_density_subjects_come_up_and_restores_share_the_snapshot() {
    let test = "linux_density_subjects_come_up_and_restores_share_the_snapshot";
    let Some(k) = exec_ready(test, "tests/bench.rs measures the tiny guest's density") else {
        return;
    };
    let out = std::env::temp_dir().join(format!("ember-ld-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = run(
        &[
            "bench",
            "--density",
            "2",
            "--density-linux",
            "--baselines",
            "process",
            "--out",
            out.to_str().unwrap(),
            "--",
            "--kernel",
            &k,
        ],
        HW_LIMIT * 3,
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(
        o.stdout
            .contains("ember linux restored: every restore maps"),
        "{o:?}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("density.json")).unwrap()).unwrap();
    let each = |name: &str| {
        let r = json["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["subject"] == name)
            .unwrap_or_else(|| panic!("no {name}: {json}"))
            .clone();
        assert_eq!(r["up"], 2, "{name}: {r}");
        r["host_kib_each"].as_f64().unwrap()
    };
    let booted = each("ember linux");
    each("ember linux balloon");
    let restored = each("ember linux restored");
    assert!(
        restored < booted / 4.0,
        "restored {restored} KiB each, booted {booted}: {json}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
