//! ember: a lean KVM micro-VM monitor that boots Linux guests in milliseconds.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library: [`config::VmConfig`] says what
//! to boot, [`vmm::Vmm`] builds and runs it. docs/DESIGN.md walks the boot steps.

pub mod arch;
pub mod config;
pub mod devices;
pub mod exit;
pub mod initramfs;
pub mod kvm;
pub mod memory;
pub mod terminal;
pub mod timing;
pub mod vcpu;
pub mod vmm;

/// The guest init, a static Rust program from guest/init, built by build.rs.
pub const GUEST_INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ember-init"));
