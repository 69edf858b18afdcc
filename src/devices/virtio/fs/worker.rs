//! The thread that serves one virtio-fs device: started and confined while the VM is built,
//! idle until the driver sets the device going, then waiting on its queues, running each
//! request through the FUSE server, until the driver resets the device or the VM ends.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::legacy::{self, Memory, Queue};
use super::share::{Share, SharedFs};
use crate::devices::virtio::Active;
use crate::placement::Placement;
use crate::seccomp::{self, Role};
use crate::sync::lock;

/// How long a reset waits for the thread to finish the request in hand.
const IDLE_LIMIT: Duration = Duration::from_secs(2);

/// What the thread is asked to do.
enum Order {
    /// Nothing: wait.
    Idle,
    /// Serve the queues the driver set up.
    Serve(Box<Active>),
    /// Leave: the VM ends.
    Exit,
}

struct Shared {
    /// The order not yet taken, if any.
    order: Mutex<Option<Order>>,
    /// Whether the thread serves queues right now.
    serving: Mutex<bool>,
    changed: Condvar,
    /// Written with every order, so a thread waiting on its queues sees it.
    wake: EventFd,
}

/// One device's serving thread.
pub(super) struct Worker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the thread for `share` (on `placement`'s CPUs), which installs its filter
    /// first unless `filtered` is false.
    pub(super) fn start(
        tag: &str,
        share: Arc<Share>,
        placement: Option<&Placement>,
        filtered: bool,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            order: Mutex::new(None),
            serving: Mutex::new(false),
            changed: Condvar::new(),
            wake: EventFd::new(EFD_NONBLOCK)?,
        });
        let theirs = shared.clone();
        let builder = std::thread::Builder::new().name(format!("ember-fs-{tag}"));
        // Started with the stop signals blocked, as every ember thread is: a SIGINT must
        // reach the VMM thread's signalfd, not end the process here.
        let _blocked = crate::signals::SignalsBlocked::block(&crate::signals::STOP_SIGNALS).ok();
        let thread = crate::placement::spawn(placement, builder, move || {
            // std's hash maps take their keys from getrandom on a thread's first map, which
            // the file system makes while it serves: take them before the filter.
            let _keys = std::collections::HashMap::<u8, u8>::new();
            // A file-system context of its own: the file system sets the umask to 0 at the
            // guest's FUSE_INIT, which must not change the umask of ember's other threads.
            // SAFETY: unshare(CLONE_FS) only detaches this thread's cwd, root and umask.
            if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                log::debug!(
                    "virtio-fs: unshare(CLONE_FS): {}",
                    std::io::Error::last_os_error()
                );
            }
            if filtered {
                let installed =
                    seccomp::filter(Role::Fs).and_then(|f| seccomp::apply(&f, Role::Fs));
                if let Err(e) = installed {
                    // Never serves unconfined: the device stays idle, the guest sees no file.
                    log::error!("virtio-fs: {e}; the share is not served");
                    return;
                }
            }
            seccomp::self_test(Role::Fs, filtered);
            run(&theirs, &share);
        })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    fn order(&self, order: Order) {
        *lock(&self.shared.order) = Some(order);
        let _ = self.shared.wake.write(1);
    }

    /// Serves `active`'s queues.
    pub(super) fn serve(&self, active: Active) {
        self.order(Order::Serve(Box::new(active)));
    }

    /// Stops serving (a reset) and waits, bounded, until the request in hand is done.
    pub(super) fn idle(&self) {
        self.order(Order::Idle);
        let serving = lock(&self.shared.serving);
        let _ = self
            .shared
            .changed
            .wait_timeout_while(serving, IDLE_LIMIT, |s| *s);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.order(Order::Exit);
        if let Some(t) = self.thread.take() {
            drop(t.join());
        }
    }
}

/// Waits until `fds` has one readable (or the wait is interrupted); returns which.
fn wait(fds: &[i32]) -> Vec<bool> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `pfds` is a live array of as many pollfds as passed.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
    if n <= 0 {
        return vec![false; fds.len()];
    }
    pfds.iter().map(|p| p.revents != 0).collect()
}

fn run(shared: &Shared, share: &Share) {
    let server = Server::new(share.fs.clone());
    loop {
        let order = lock(&shared.order).take();
        match order {
            Some(Order::Exit) => return,
            None | Some(Order::Idle) => {
                let _ = wait(&[shared.wake.as_raw_fd()]);
                let _ = shared.wake.read();
            }
            Some(Order::Serve(active)) => {
                *lock(&shared.serving) = true;
                serve(shared, &server, *active);
                *lock(&shared.serving) = false;
                shared.changed.notify_all();
            }
        }
    }
}

/// A device's queues being served.
struct Serving {
    mem: Memory,
    queues: Vec<Queue>,
    active: Active,
}

fn serve(shared: &Shared, server: &Server<Arc<SharedFs>>, active: Active) {
    let setup = legacy::memory(&active.mem).and_then(|mem| {
        let queues = active
            .queues
            .iter()
            .map(legacy::queue)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((mem, queues))
    });
    let (mem, queues) = match setup {
        Ok(x) => x,
        Err(e) => {
            crate::guest_log!(active.log, log::Level::Warn, "{e}");
            active.interrupt.set_needs_reset();
            return;
        }
    };
    let mut s = Serving {
        mem,
        queues,
        active,
    };
    let mut fds = vec![shared.wake.as_raw_fd()];
    fds.extend(s.active.queue_evts.iter().map(|e| e.as_raw_fd()));
    loop {
        let ready = wait(&fds);
        if ready.first() == Some(&true) {
            let _ = shared.wake.read();
            // A new order (idle, serve again, exit) ends this service; `run` takes it. (A
            // wake-up for the order that started it finds none.)
            if lock(&shared.order).is_some() {
                return;
            }
            continue;
        }
        for q in 0..s.queues.len() {
            if ready.get(q + 1) != Some(&true) {
                continue;
            }
            if let Some(e) = s.active.queue_evts.get(q) {
                let _ = e.read();
            }
            if !process(server, &mut s, q) {
                s.active.interrupt.set_needs_reset();
                return;
            }
        }
    }
}

/// Serves every request the driver has made available on queue `q`; false if the driver
/// broke the queue.
fn process(server: &Server<Arc<SharedFs>>, s: &mut Serving, q: usize) -> bool {
    use virtio_queue_fs::{QueueOwnedT, QueueT};
    let log = s.active.log.clone();
    let mut served = false;
    loop {
        let Some(queue) = s.queues.get_mut(q) else {
            return true;
        };
        let chain = match queue.iter(&s.mem) {
            Ok(mut chains) => chains.next(),
            Err(e) => {
                crate::guest_log!(
                    log,
                    log::Level::Warn,
                    "the driver broke queue {q} ({e}): the device serves nothing until the driver resets it"
                );
                return false;
            }
        };
        let Some(chain) = chain else { break };
        let head = chain.head_index();
        let replied = Reader::from_descriptor_chain(&s.mem, chain.clone())
            .map_err(|e| e.to_string())
            .and_then(|r| {
                let w = VirtioFsWriter::new(&s.mem, chain).map_err(|e| e.to_string())?;
                server
                    .handle_message(r, w.into(), None, None)
                    .map_err(|e| e.to_string())
            });
        let used = match replied {
            Ok(n) => n as u32,
            Err(e) => {
                crate::guest_log!(log, log::Level::Debug, "a request on queue {q}: {e}");
                0
            }
        };
        if let Err(e) = queue.add_used(&s.mem, head, used) {
            crate::guest_log!(log, log::Level::Debug, "cannot return a request: {e}");
            return false;
        }
        served = true;
    }
    if served {
        let notify = s
            .queues
            .get_mut(q)
            .map(|queue| queue.needs_notification(&s.mem).unwrap_or(true))
            .unwrap_or(false);
        if notify {
            s.active.interrupt.signal_used();
        }
    }
    true
}
