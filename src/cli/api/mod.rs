//! The control socket, `ember run --api-sock PATH`: Firecracker's API shapes over HTTP/1.1 on
//! a Unix socket, for the part of it ember serves, so Firecracker's clients and scripts work:
//!
//! - `GET /`: `{"id", "state": "Running" | "Paused", "vmm_version", "app_name"}`;
//! - `PATCH /vm` with `{"state": "Paused"}` or `{"state": "Resumed"}`: 204;
//! - `PUT /snapshot/create` with `{"snapshot_type": "Full", "snapshot_path", "mem_file_path"}`
//!   (the VM paused): the state file and the memory file, 204; `ember run --restore
//!   SNAPSHOT_PATH` continues it;
//! - with `--balloon`: `GET /balloon` (`{"amount_mib", "deflate_on_oom", ...}`), `PATCH
//!   /balloon` with `{"amount_mib": N}` (the guest is told at once; 204), and `GET
//!   /balloon/statistics` (`target_mib`, `actual_mib` and their pages, and what went back to
//!   the host through the balloon and through free page reports).
//!
//! Anything else gets 400 and `{"fault_message": ...}`, as from Firecracker. One client at a
//! time, on a thread of its own under its own seccomp filter (it creates the snapshot's files;
//! the event loop's thread writes them): it reaches the VM only through
//! [`ember::vmm::VmHandle::ask`], and the balloon through its control (a target and an
//! interrupt).

pub mod http;

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ember::devices::virtio::balloon::BalloonControl;
use ember::seccomp::{self, Role, Seccomp};
use ember::signals::{STOP_SIGNALS, SignalsBlocked};
use ember::snapshot::SnapshotFiles;
use ember::vmm::{RequestError, VmHandle, VmRequest};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Failure, exit_code};

/// How long a request to the VM may take (a snapshot writes all of guest memory).
const REQUEST_LIMIT: Duration = Duration::from_secs(60);
/// How long a client may leave a request half-sent before its connection is closed: a
/// silent client cannot hold the socket from the others.
const CLIENT_LIMIT: Duration = Duration::from_secs(10);

/// The socket, bound; its file goes when this (or what [`ApiSocket::serve`] returns) drops.
pub struct ApiSocket {
    listener: UnixListener,
    cleanup: Cleanup,
}

impl ApiSocket {
    /// Binds `path`, which must not exist yet (as Firecracker's `--api-sock`).
    pub fn bind(path: &Path) -> Result<Self, Failure> {
        let bad = |why: String| Failure {
            code: exit_code::BAD_INPUT,
            message: format!("--api-sock {}: {why}", path.display()),
        };
        if path.exists() || path.is_symlink() {
            return Err(bad(
                "something is there already: remove it, or pick another path".into(),
            ));
        }
        let listener = UnixListener::bind(path).map_err(|e| {
            bad(format!(
                "cannot listen there ({e}): pick a path in a writable folder"
            ))
        })?;
        Ok(Self {
            listener,
            cleanup: Cleanup(path.to_path_buf()),
        })
    }

    /// Serves `vm` on a thread of its own until the process ends; under its filter unless
    /// `seccomp` is off.
    pub fn serve(self, vm: VmHandle, seccomp: Seccomp) -> Result<Cleanup, Failure> {
        let filter = match seccomp {
            Seccomp::Off => None,
            _ => Some(seccomp::filter(Role::Api).map_err(|e| Failure {
                code: exit_code::HOST_ERROR,
                message: format!("--api-sock: {e}"),
            })?),
        };
        let ApiSocket { listener, cleanup } = self;
        // Started with the stop signals blocked (it inherits the mask): they are the VMM
        // thread's, whose signalfd reads them; here their default action would end ember.
        let _blocked = SignalsBlocked::block(&STOP_SIGNALS).ok();
        std::thread::Builder::new()
            .name("ember-api".into())
            .spawn(move || {
                if let Some(f) = &filter
                    && let Err(e) = seccomp::apply(f, Role::Api)
                {
                    log::error!("--api-sock: {e}; the control socket serves nothing");
                    return;
                }
                let mut server = Server { vm, paused: false };
                for conn in listener.incoming() {
                    match conn {
                        Ok(c) => server.connection(c),
                        Err(e) => log::debug!("--api-sock: accept: {e}"),
                    }
                }
            })
            .map_err(|e| Failure {
                code: exit_code::HOST_ERROR,
                message: format!("--api-sock: cannot start its thread: {e}"),
            })?;
        Ok(cleanup)
    }
}

/// Removes the socket file when dropped (the VMM thread's filter allows `unlink`).
pub struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Server {
    vm: VmHandle,
    /// What the clients made of the VM: Firecracker's `state`.
    paused: bool,
}

/// An answer: its status and body.
type Answer = (u16, Option<Value>);

fn fault(status: u16, message: impl std::fmt::Display) -> Answer {
    (
        status,
        Some(json!({ "fault_message": message.to_string() })),
    )
}

fn from_request_error(e: RequestError) -> Answer {
    match e {
        RequestError::BadState(m) => fault(400, m),
        RequestError::Failed(m) => fault(500, m),
    }
}

/// `PATCH /balloon`'s body (Firecracker's `BalloonUpdate`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalloonUpdate {
    amount_mib: u64,
}

/// `PATCH /balloon`: a new target, told to the guest at once.
fn balloon_target(b: &BalloonControl, body: &[u8]) -> Answer {
    match serde_json::from_slice::<BalloonUpdate>(body) {
        Ok(u) => match b.set_target_mib(u.amount_mib) {
            Ok(()) => (204, None),
            Err(e) => fault(400, format!("PATCH /balloon: amount_mib: {e}")),
        },
        Err(e) => fault(
            400,
            format!("PATCH /balloon: {e}: send {{\"amount_mib\": N}}"),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmState {
    state: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotCreate {
    #[serde(default)]
    snapshot_type: Option<String>,
    snapshot_path: PathBuf,
    mem_file_path: PathBuf,
    /// Firecracker's (deprecated) target version: accepted, unused.
    #[serde(default)]
    version: Option<String>,
}

impl Server {
    fn connection(&mut self, mut conn: UnixStream) {
        // setsockopt: in the filter for this.
        let _ = conn.set_read_timeout(Some(CLIENT_LIMIT));
        let mut carry = Vec::new();
        loop {
            let (answer, close) = match http::read_request(&mut conn, &mut carry) {
                Ok(req) => (self.answer(&req), req.close),
                Err(http::ReadError::Closed) => return,
                Err(http::ReadError::Bad(why)) => (fault(400, why), true),
            };
            if http::write_response(&mut conn, answer.0, answer.1.as_ref()).is_err() || close {
                return;
            }
        }
    }

    fn answer(&mut self, req: &http::Request) -> Answer {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/") => (
                200,
                Some(json!({
                    "id": "ember",
                    "state": if self.paused { "Paused" } else { "Running" },
                    "vmm_version": env!("CARGO_PKG_VERSION"),
                    "app_name": "ember",
                })),
            ),
            ("PATCH", "/vm") => self.vm_state(&req.body),
            ("PUT", "/snapshot/create") => self.snapshot(&req.body),
            ("GET", "/balloon") => self.balloon(|b| {
                let s = b.status();
                (
                    200,
                    Some(json!({
                        "amount_mib": s.target_mib,
                        "deflate_on_oom": s.deflate_on_oom,
                        "free_page_reporting": s.free_page_reporting,
                        "stats_polling_interval_s": 0,
                    })),
                )
            }),
            ("GET", "/balloon/statistics") => {
                self.balloon(|b| (200, serde_json::to_value(b.status()).ok()))
            }
            ("PATCH", "/balloon") => {
                let body = &req.body;
                self.balloon(|b| balloon_target(b, body))
            }
            ("PUT", "/balloon") => fault(
                400,
                "PUT /balloon: ember adds the balloon when the VM starts (--balloon, or the config file's balloon section); PATCH /balloon changes its amount",
            ),
            (m, p) => fault(
                400,
                format!(
                    "Invalid request method and/or path: {m} {p} (ember serves GET /, PATCH /vm, PUT /snapshot/create, GET and PATCH /balloon, GET /balloon/statistics)"
                ),
            ),
        }
    }

    /// `f` on the VM's balloon, or the fault of a VM without one.
    fn balloon(&self, f: impl FnOnce(&BalloonControl) -> Answer) -> Answer {
        match self.vm.balloon() {
            Some(b) => f(b),
            None => fault(400, "the VM has no balloon device: start it with --balloon"),
        }
    }

    fn vm_state(&mut self, body: &[u8]) -> Answer {
        let want: VmState = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return fault(
                    400,
                    format!(
                        "PATCH /vm: {e}: send {{\"state\": \"Paused\"}} or {{\"state\": \"Resumed\"}}"
                    ),
                );
            }
        };
        let (request, paused) = match want.state.as_str() {
            "Paused" => (VmRequest::Pause, true),
            "Resumed" => (VmRequest::Resume, false),
            other => {
                return fault(
                    400,
                    format!("PATCH /vm: unknown state {other:?}: use \"Paused\" or \"Resumed\""),
                );
            }
        };
        match self.vm.ask(request, REQUEST_LIMIT) {
            Ok(()) => {
                self.paused = paused;
                (204, None)
            }
            Err(e) => from_request_error(e),
        }
    }

    fn snapshot(&mut self, body: &[u8]) -> Answer {
        let want: SnapshotCreate = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return fault(
                    400,
                    format!(
                        "PUT /snapshot/create: {e}: send {{\"snapshot_path\": ..., \"mem_file_path\": ...}}"
                    ),
                );
            }
        };
        let _ = want.version;
        if let Some(t) = want.snapshot_type.as_deref()
            && t != "Full"
        {
            return fault(
                400,
                format!(
                    "PUT /snapshot/create: snapshot_type {t:?}: ember takes \"Full\" snapshots only"
                ),
            );
        }
        if !self.paused {
            return fault(
                400,
                "PUT /snapshot/create: the VM is running: pause it first (PATCH /vm {\"state\": \"Paused\"})",
            );
        }
        if want.snapshot_path == want.mem_file_path {
            return fault(
                400,
                "PUT /snapshot/create: snapshot_path and mem_file_path are the same file",
            );
        }
        let files = match SnapshotFiles::create_at(&want.snapshot_path, &want.mem_file_path) {
            Ok(f) => f,
            Err(e) => return fault(400, format!("PUT /snapshot/create: {e}")),
        };
        match self.vm.ask(VmRequest::Snapshot(files), REQUEST_LIMIT) {
            Ok(()) => (204, None),
            Err(e) => {
                // Nothing half-written is left to be restored.
                let _ = std::fs::remove_file(&want.snapshot_path);
                let _ = std::fs::remove_file(&want.mem_file_path);
                from_request_error(e)
            }
        }
    }
}
