//! `ember bench` end to end: a short run against the process baseline and crun, and its bad
//! input.

mod common;

use std::time::Duration;

use common::*;

fn out_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ember-bench-test-{}-{name}", std::process::id()))
}

#[test]
fn short_bench_writes_parseable_results() {
    let out = out_dir("short");
    let crun = std::process::Command::new("crun")
        .arg("--version")
        .output()
        .is_ok();
    let baselines = if crun {
        "process,kvm-floor,crun"
    } else {
        "process,kvm-floor"
    };
    if !crun {
        skip(
            "short_bench_writes_parseable_results (crun part)",
            "crun is not installed: run bench/setup-baselines.sh",
        );
    }
    let o = run(
        &[
            "bench",
            "--runs",
            "3",
            "--baselines",
            baselines,
            "--out",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(300),
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("ember"), "{o:?}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(v["schema"], "ember-bench/1");
    assert!(v["host"]["flavour"].is_string());
    let subjects = v["subjects"].as_array().unwrap();
    let by_name = |n: &str| {
        subjects
            .iter()
            .find(|s| s["name"] == n)
            .unwrap_or_else(|| panic!("{n} missing: {v}"))
    };
    let ember = by_name("ember");
    assert!(ember["skipped"].is_null(), "{ember}");
    assert_eq!(ember["total"]["n"], 3);
    assert!(
        ember["to_workload"]["median_ns"].as_f64().unwrap() > 0.0,
        "{ember}"
    );
    assert!((ember["ratio_total_to_ember"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    assert!(!ember["phase_medians_ns"].as_array().unwrap().is_empty());
    // A VM costs the host CPU time: the report must show some, next to the wall clock.
    assert!(ember["cpu"]["median_ns"].as_f64().unwrap() > 0.0, "{ember}");
    // ember's teardown keeper outlives it, and the bench reaps it: every ember run ends on the
    // second clock after its exit; a plain process leaves nothing behind.
    for x in ember["samples"].as_array().unwrap() {
        assert!(x["gone_ns"].as_u64() > x["total_ns"].as_u64(), "{x}");
    }
    for x in by_name("process")["samples"].as_array().unwrap() {
        assert_eq!(x["gone_ns"], x["total_ns"], "{x}");
    }
    for name in baselines.split(',') {
        let s = by_name(name);
        assert!(s["skipped"].is_null(), "{name} was skipped: {s}");
        assert_eq!(s["samples"].as_array().unwrap().len(), 3, "{s}");
        assert!(s["ratio_total_to_ember"].as_f64().unwrap() > 0.0);
    }
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(csv.starts_with(
        "subject,run,to_workload_ns,total_ns,gone_ns,cpu_ns,first_output_ns,first_kvm_run_ns\n"
    ));
    // The goal's measure: ember's first KVM_RUN and first guest output against the KVM
    // floor's, each stamped by the subject itself on the bench's clock.
    let floor = by_name("kvm-floor");
    assert!(o.stdout.contains("exec to the first KVM_RUN"), "{o:?}");
    // ember's first KVM_RUN comes before its guest's first output reaches the bench.
    for x in ember["samples"].as_array().unwrap() {
        let at = |k: &str| x[k].as_u64().unwrap_or_else(|| panic!("{k}: {x}"));
        assert!(at("first_kvm_run_ns") < at("first_output_ns"), "{x}");
    }
    let measures = ["first_kvm_run", "first_output"];
    for what in measures {
        let (e, f) = (
            ember[what]["median_ns"].as_f64().unwrap(),
            floor[what]["median_ns"].as_f64().unwrap(),
        );
        assert!(e > 0.0 && f > 0.0, "{what}: {v}");
    }
    assert!(
        o.stdout.contains("exec to the guest's first output"),
        "{o:?}"
    );
    assert_eq!(csv.lines().filter(|l| l.starts_with("ember,")).count(), 3);
    let svg = std::fs::read_to_string(out.join("plot.svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("ember"),
        "plot.svg is not a plot"
    );
}

/// `--restore`: the guest snapshotted once at ready, and a restore subject timed beside the
/// cold boot, to its first instruction and to its workload.
#[test]
fn a_restore_subject_is_timed_beside_the_cold_boot() {
    let out = out_dir("restore");
    let o = run(
        &[
            "bench",
            "--runs",
            "3",
            "--baselines",
            "process",
            "--restore",
            "--out",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(300),
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(
        o.stdout
            .contains("exec to the first KVM_RUN (median, ms): restore"),
        "{o:?}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let restore = v["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "ember restore")
        .unwrap_or_else(|| panic!("no restore subject: {v}"))
        .clone();
    assert!(restore["skipped"].is_null(), "{restore}");
    assert_eq!(restore["total"]["n"], 3, "{restore}");
    assert!(
        restore["first_kvm_run"]["median_ns"].as_f64().unwrap() > 0.0,
        "{restore}"
    );
    assert!(
        restore["to_workload"]["median_ns"].as_f64().unwrap() > 0.0,
        "{restore}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// `--density`: a few idle VMs at once, each up, measured, and stopped: nothing left running.
#[test]
fn a_density_run_measures_idle_vms_and_stops_them() {
    let out = out_dir("density");
    let o = run(
        &[
            "bench",
            "--density",
            "2,4",
            "--baselines",
            "process",
            "--out",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(300),
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("density.json")).unwrap()).unwrap();
    assert_eq!(v["schema"], "ember-density/1");
    let rows = v["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    for (row, n) in rows.iter().zip([2, 4]) {
        assert_eq!(row["subject"], "ember", "{v}");
        assert_eq!(
            (row["n"].as_u64(), row["up"].as_u64()),
            (Some(n), Some(n)),
            "{v}"
        );
        assert!(row["pss_kib_each"].as_f64().unwrap() > 0.0, "{v}");
        // Host CPU per start (0 is possible: /proc/stat counts in 10 ms ticks).
        assert!(row["cpu_ms_each"].as_f64().unwrap() >= 0.0, "{v}");
    }
    assert!(
        std::fs::read_to_string(out.join("density.svg"))
            .unwrap()
            .contains("<svg")
    );
    assert!(
        std::fs::read_to_string(out.join("density.csv"))
            .unwrap()
            .lines()
            .count()
            == 3
    );
    let o = run(
        &["bench", "--density", "0", "--out", out.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(o.code, Some(2), "{o:?}");
    assert!(o.stderr.contains("--density"), "{o:?}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn missing_runtime_is_skipped_not_fatal() {
    let out = out_dir("skip");
    let o = ember()
        .args([
            "bench",
            "--runs",
            "1",
            "--baselines",
            "process,podman",
            "--out",
            out.to_str().unwrap(),
        ])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("podman       skipped: podman is not installed"),
        "{stdout}"
    );
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let out = out_dir("bad");
    let o_str = out.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["bench", "--baselines", "lxc", "--out", o_str],
            "unknown baseline \"lxc\"",
        ),
        (vec!["bench", "--runs", "0", "--out", o_str], "--runs 0"),
        (
            vec!["bench", "--out", "/proc/ember-bench"],
            "--out /proc/ember-bench",
        ),
        (
            vec![
                "bench",
                "--peer",
                "fc=firecracker --config x",
                "--out",
                o_str,
            ],
            "no {kernel}",
        ),
        (
            vec!["bench", "--peer", "firecracker", "--out", o_str],
            "NAME=",
        ),
    ] {
        let o = run(&args, Duration::from_secs(30));
        assert_eq!(o.code, Some(2), "{args:?}: {o:?}");
        assert_eq!(o.stderr.lines().count(), 1, "{args:?}: {o:?}");
        assert!(o.stderr.contains(needle), "{args:?}: {o:?}");
    }
}
