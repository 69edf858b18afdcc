//! ember: a lean KVM micro-VM monitor that boots Linux guests in milliseconds.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library: [`config::VmConfig`] says what
//! to boot, [`resolve::resolve`] works out what that means on this host, [`vmm::Vmm`] builds and
//! runs it. docs/DESIGN.md walks the boot steps.

pub mod arch;
pub mod bench;
pub mod command;
pub mod config;
pub mod devices;
pub mod exit;
pub mod guest_log;
pub mod initramfs;
pub mod kvm;
pub mod memory;
pub mod placement;
pub mod resolve;
pub mod seccomp;
pub mod signals;
pub mod snapshot;
pub mod sync;
pub mod terminal;
pub mod timing;
pub mod vcpu;
pub mod vmm;

/// The guest init, a static Rust program from guest/init, built by build.rs. `ember bench`
/// also runs it (`/init --workload`) as the container baselines' workload.
pub const GUEST_INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ember-init"));

/// The tiny PVH guest `ember bench` boots on hosts where Linux cannot reach userspace (one
/// console line, the boot timer, a reset): tests/guests/hello_pvh.S.
pub const BENCH_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guests/hello_pvh"));

/// The idle tiny guest `ember bench --density` starts many of: one console line, then halted
/// with interrupts off for good (tests/guests/halt.S).
pub const IDLE_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guests/halt"));
