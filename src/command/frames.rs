//! The channel between ember and its init in the guest, for a `process`: one vsock stream
//! (the guest connects to the host, CID 2, port [`super::VSOCK_PORT`]) carrying frames, each a
//! type byte, a little-endian u32 length and that many bytes. One stream keeps everything in
//! order: the exit status comes after the last byte of output. guest/init writes and reads
//! the same frames (its `run` module); docs/host-work.md lists them.

/// Guest to host: bytes the program wrote to stdout (or to its terminal).
pub const STDOUT: u8 = 1;
/// Guest to host: bytes the program wrote to stderr.
pub const STDERR: u8 = 2;
/// Guest to host: the program is running (its exec succeeded).
pub const STARTED: u8 = 3;
/// Guest to host: the program ended: `[0, code]` for an exit, `[1, signal]` for a signal.
pub const EXIT: u8 = 4;
/// Guest to host: the init could not get the program going: `[kind]` then a message.
pub const FAILED: u8 = 5;
/// Host to guest: bytes for the program's stdin.
pub const STDIN: u8 = 16;
/// Host to guest: the program's stdin is at its end.
pub const STDIN_EOF: u8 = 17;
/// Host to guest: the terminal's size, `[rows u16 LE, cols u16 LE]`.
pub const WINSIZE: u8 = 18;

/// FAILED kinds: a driver the kernel lacks (the message names the option).
pub const FAILED_DRIVER: u8 = 1;
/// FAILED kinds: a mount failed.
pub const FAILED_MOUNT: u8 = 2;
/// FAILED kinds: the program could not be started (exec failed).
pub const FAILED_START: u8 = 3;
/// FAILED kinds: anything else the init needs.
pub const FAILED_SETUP: u8 = 4;

/// The longest payload one frame carries.
pub const MAX_PAYLOAD: usize = 64 << 10;
/// A frame's header.
pub const HEADER: usize = 5;

/// A frame: its type and payload.
pub fn encode(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// A frame read: its type, its payload, and its whole length in the buffer.
pub type Frame<'a> = (u8, &'a [u8], usize);

/// The first whole frame in `buf`, if there is one; `Err` with the length for a length no
/// frame may have (the guest broke the protocol).
pub fn decode(buf: &[u8]) -> Result<Option<Frame<'_>>, usize> {
    let Some(head) = buf.get(..HEADER) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(len);
    }
    Ok(buf
        .get(HEADER..HEADER + len)
        .map(|payload| (head[0], payload, HEADER + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_lengths_are_bounded() {
        let mut b = Vec::new();
        encode(STDOUT, b"hello", &mut b);
        encode(EXIT, &[0, 42], &mut b);
        let (k, p, n) = decode(&b).unwrap().unwrap();
        assert_eq!((k, p, n), (STDOUT, &b"hello"[..], 10));
        let (k, p, _) = decode(&b[n..]).unwrap().unwrap();
        assert_eq!((k, p), (EXIT, &[0u8, 42][..]));
        assert_eq!(decode(&b[..7]).unwrap(), None, "a partial frame waits");
        let mut huge = vec![STDOUT];
        huge.extend_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        assert!(decode(&huge).is_err());
    }
}
