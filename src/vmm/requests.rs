//! What a front end on another thread (the control socket) asks of a running VM, served on
//! the event loop's thread: pause, resume, snapshot. That thread is the one that may kick
//! vCPUs and write a snapshot under its filter; the asking thread only queues the request,
//! wakes the loop and waits, bounded, for the answer.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::mpsc::{self, Sender};
use std::time::Duration;

use super::VmHandle;
use crate::snapshot::SnapshotFiles;
use crate::sync::lock;

/// A request to the running VM.
pub enum VmRequest {
    /// Take every vCPU out of the guest and hold it.
    Pause,
    /// Let the vCPUs run again.
    Resume,
    /// Write the (paused) VM into these files; it stays paused.
    Snapshot(SnapshotFiles),
}

/// What became of a request: done, or why not (a message for the front end's user).
pub type VmReply = Result<(), RequestError>;

/// Why a request was not done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The request does not fit the VM's state (a snapshot of a running VM): the caller's
    /// mistake.
    #[error("{0}")]
    BadState(String),
    /// It could not be done.
    #[error("{0}")]
    Failed(String),
}

/// The queue between the asking threads and the event loop.
#[derive(Default)]
pub(super) struct Requests {
    queue: Mutex<VecDeque<(VmRequest, Sender<VmReply>)>>,
}

impl Requests {
    /// The requests waiting, oldest first.
    pub(super) fn take(&self) -> Vec<(VmRequest, Sender<VmReply>)> {
        lock(&self.queue).drain(..).collect()
    }
}

impl VmHandle {
    /// Asks the event loop to do `request` and waits up to `limit` for its answer. A VM that
    /// has stopped, or does not answer in time, fails the request.
    pub fn ask(&self, request: VmRequest, limit: Duration) -> VmReply {
        if self.exit.is_stopping() {
            return Err(RequestError::BadState("the VM is stopping".into()));
        }
        let (tx, rx) = mpsc::channel();
        lock(&self.requests.queue).push_back((request, tx));
        // Wakes the loop; a failure means the counter is already set, which wakes it too.
        let _ = self.exit.eventfd().write(1);
        match rx.recv_timeout(limit) {
            Ok(reply) => reply,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(RequestError::Failed(format!(
                "the VM did not answer within {limit:?}"
            ))),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(RequestError::BadState("the VM stopped".into()))
            }
        }
    }
}
