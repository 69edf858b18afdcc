//! Repeated multi-vCPU boots: every one must greet with all its vCPUs online. A rare failure
//! (a triple fault, a hang in SMP bring-up) only shows over many boots: 20 boots with 2
//! vCPUs and 5 with 4, in tests of five boots each, so that the hardware tier, which boots a
//! new L1 when the emulator wedges the old one (docs/hosts.md), reruns five boots, not 25.

use super::*;

/// `boots` boots of the project kernel with `vcpus` vCPUs, each greeting with all of them.
fn repeated_boots_greet(test: &str, vcpus: u32, boots: u32) {
    let Some(k) = kernel_or_skip(test, "vmlinux") else {
        return;
    };
    if !hardware(test) {
        skip(
            test,
            "the greeting needs Linux userspace, which does not run on a PVM-based /dev/kvm",
        );
        return;
    }
    let n = vcpus.to_string();
    for boot in 1..=boots {
        let o = run(
            &["run", "--kernel", &k, "--vcpus", &n, "--overcommit-vcpus"],
            HW_LIMIT,
        );
        eprintln!("{vcpus} vCPUs, boot {boot}/{boots}: exit {:?}", o.code);
        assert_greeting(&o, vcpus);
    }
}

#[test]
fn two_vcpu_boots_greet_first_five() {
    repeated_boots_greet("two_vcpu_boots_greet_first_five", 2, 5);
}

#[test]
fn two_vcpu_boots_greet_second_five() {
    repeated_boots_greet("two_vcpu_boots_greet_second_five", 2, 5);
}

#[test]
fn two_vcpu_boots_greet_third_five() {
    repeated_boots_greet("two_vcpu_boots_greet_third_five", 2, 5);
}

#[test]
fn two_vcpu_boots_greet_fourth_five() {
    repeated_boots_greet("two_vcpu_boots_greet_fourth_five", 2, 5);
}

#[test]
fn four_vcpu_boots_greet() {
    repeated_boots_greet("four_vcpu_boots_greet", 4, 5);
}
