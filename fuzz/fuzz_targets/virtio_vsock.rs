//! A guest's vsock packets, whole: the fuzzer's bytes are guest memory holding both queues and
//! every packet header and payload. A host service listens on port 52 and a host client has
//! asked for guest port 52, so connection setup, data, credit and shutdown paths are all
//! reachable; nothing the guest sends may panic, hang or grow without bound.
#![no_main]

mod common;

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};

use ember::devices::virtio::vsock::Vsock;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir();
    let uds = dir.join(format!("ember-fuzz-vsock-{}", std::process::id()));
    let service = dir.join(format!("ember-fuzz-vsock-{}_52", std::process::id()));
    let _ = std::fs::remove_file(&uds);
    let _ = std::fs::remove_file(&service);
    let Ok(_service) = UnixListener::bind(&service) else {
        return;
    };
    let Ok(vsock) = Vsock::new(3, Some(&uds), None) else {
        return;
    };
    if let Ok(mut client) = UnixStream::connect(&uds) {
        let _ = client.write_all(b"CONNECT 52\nhello");
        // RX queue 0, TX queue 1, event queue 2; a few rounds for the host side to move.
        common::drive(vsock, 3, data, 4);
    }
    let _ = std::fs::remove_file(&service);
});
