//! Repeated multi-vCPU boots: every one must greet with all its vCPUs online. A rare failure
//! (a triple fault, a hang in SMP bring-up) only shows over many boots.

use super::*;

#[test]
fn repeated_multi_vcpu_boots_all_greet() {
    let test = "repeated_multi_vcpu_boots_all_greet";
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
    for (vcpus, boots) in [(2u32, 20), (4, 5)] {
        for boot in 1..=boots {
            let n = vcpus.to_string();
            let o = run(
                &["run", "--kernel", &k, "--vcpus", &n, "--overcommit-vcpus"],
                HW_LIMIT,
            );
            eprintln!("{vcpus} vCPUs, boot {boot}/{boots}: exit {:?}", o.code);
            assert_greeting(&o, vcpus);
        }
    }
}
