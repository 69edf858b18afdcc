//! virtio-fs: a host directory the guest mounts (`mount -t virtiofs TAG DIR`), served in
//! ember by fuse-backend-rs's FUSE server over its passthrough file system, under ember's own
//! rules ([`policy`]) on a tree prepared on the host side ([`share`]).
//!
//! Each device has one thread of its own, under its own seccomp filter, started (and
//! confined) while the VM is built: it waits on the device's two queues (high priority and
//! requests), runs each request through the server, and raises the device's interrupt. The
//! vCPU threads only touch the transport's registers, the event loop never waits on a file.
//! docs/host-work.md has the choices and their measures.

pub mod legacy;
pub mod policy;
pub mod share;
mod worker;

use std::sync::Arc;

use event_manager::EventOps;

use super::{Active, Served, VirtioDevice, read_config_bytes};
use crate::placement::Placement;
pub use share::{Share, ShareError};
use worker::Worker;

/// virtio_ids: file system device.
const DEVICE_TYPE: u32 = 26;
/// The high-priority queue (FORGET, INTERRUPT) and one request queue.
const QUEUE_SIZES: [u16; 2] = [128, 1024];
/// The tag's room in the configuration space.
pub const TAG_MAX: usize = 36;

/// Errors setting the device up.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag does not fit.
    #[error("the virtio-fs tag {0:?} is longer than {TAG_MAX} bytes")]
    Tag(String),
    /// The share could not be prepared.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// Its thread could not be started.
    #[error("cannot start the thread serving {tag}: {source}")]
    Thread {
        /// The share's tag.
        tag: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A virtio-fs device.
pub struct Fs {
    config: [u8; TAG_MAX + 4],
    worker: Worker,
}

impl Fs {
    /// Serves `share` under `tag`, on a thread started now (on the CPUs `placement` names),
    /// confined by its own seccomp filter unless `seccomp` is false.
    pub fn new(
        tag: &str,
        share: Share,
        placement: Option<&Placement>,
        seccomp: bool,
    ) -> Result<Self, FsError> {
        if tag.len() > TAG_MAX || tag.is_empty() {
            return Err(FsError::Tag(tag.to_string()));
        }
        let mut config = [0u8; TAG_MAX + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_MAX..].copy_from_slice(&1u32.to_le_bytes());
        let worker = Worker::start(tag, Arc::new(share), placement, seccomp).map_err(|source| {
            FsError::Thread {
                tag: tag.to_string(),
                source,
            }
        })?;
        Ok(Self { config, worker })
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, active: Active) {
        self.worker.serve(active);
    }

    fn reset(&mut self) {
        self.worker.idle();
    }

    fn serves_own_queues(&self) -> bool {
        true
    }

    fn queue_event(&mut self, _queue: usize, _ops: &mut EventOps) -> Served {
        // Never called: the worker waits on the queues itself.
        Ok(())
    }
}
