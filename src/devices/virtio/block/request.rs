//! A virtio-blk request read from a descriptor chain (virtio 1.2, 5.2.6): a device-readable
//! header, data segments, a device-writable status byte. Everything in it comes from the
//! guest, so every length and address is checked before use; a chain that does not have the
//! shape of a request is refused as a whole.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Request types ember serves.
pub const T_IN: u32 = 0;
/// Write.
pub const T_OUT: u32 = 1;
/// Flush.
pub const T_FLUSH: u32 = 4;
/// The device's serial number.
pub const T_GET_ID: u32 = 8;
/// The size of the request header: type, reserved, sector.
const HEADER_LEN: u32 = 16;
/// The most data segments a request may have; with the header and the status, a chain may not
/// be longer than this plus two. ember advertises it as SEG_MAX.
pub const MAX_SEGMENTS: usize = 126;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Read sectors into the guest.
    In,
    /// Write sectors from the guest.
    Out,
    /// Make written data durable.
    Flush,
    /// Write the device id into the guest.
    GetId,
    /// Anything else: answered with UNSUPP.
    Unsupported(u32),
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What it asks for.
    pub kind: Kind,
    /// The first sector (512 bytes each).
    pub sector: u64,
    /// The data segments: guest address and length, in order.
    pub data: Vec<(GuestAddress, u32)>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Why a chain is not a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Fewer than two descriptors, or a chain cut short (a loop, a bad index).
    #[error("descriptor chain too short or cut off")]
    Shape,
    /// More data segments than [`MAX_SEGMENTS`].
    #[error("more than {MAX_SEGMENTS} data segments")]
    TooManySegments,
    /// The header is not readable, or too short.
    #[error("bad request header")]
    Header,
    /// The status descriptor is not writable, or empty.
    #[error("bad status descriptor")]
    Status,
    /// A data segment has the wrong direction for the request, or is empty.
    #[error("data segment with the wrong direction")]
    Direction,
    /// A segment lies outside guest memory.
    #[error("segment outside guest memory")]
    OutOfMemory,
}

/// Parses the descriptors of one chain (at most [`MAX_SEGMENTS`] + 2 are looked at).
pub fn parse(
    descs: impl Iterator<Item = Descriptor>,
    mem: &GuestMemoryMmap,
) -> Result<Request, RequestError> {
    let descs: Vec<Descriptor> = descs.take(MAX_SEGMENTS + 3).collect();
    if descs.len() > MAX_SEGMENTS + 2 {
        return Err(RequestError::TooManySegments);
    }
    let (Some(head), Some(status)) = (descs.first(), descs.last()) else {
        return Err(RequestError::Shape);
    };
    // A chain whose last descriptor still points on was cut off (a loop, or past the table).
    if descs.len() < 2 || status.has_next() {
        return Err(RequestError::Shape);
    }
    if head.is_write_only() || head.len() < HEADER_LEN {
        return Err(RequestError::Header);
    }
    let kind_raw: u32 = mem
        .read_obj(head.addr())
        .map_err(|_| RequestError::Header)?;
    let sector: u64 = head
        .addr()
        .checked_add(8)
        .and_then(|a| mem.read_obj(a).ok())
        .ok_or(RequestError::Header)?;
    if !status.is_write_only() || status.len() < 1 {
        return Err(RequestError::Status);
    }
    if !mem.address_in_range(status.addr()) {
        return Err(RequestError::OutOfMemory);
    }
    let kind = match kind_raw {
        T_IN => Kind::In,
        T_OUT => Kind::Out,
        T_FLUSH => Kind::Flush,
        T_GET_ID => Kind::GetId,
        other => Kind::Unsupported(other),
    };
    let mut data = Vec::with_capacity(descs.len() - 2);
    for d in &descs[1..descs.len() - 1] {
        let want_writable = match kind {
            Kind::In | Kind::GetId => true,
            Kind::Out => false,
            // Flush and unknown requests carry no data ember looks at.
            Kind::Flush | Kind::Unsupported(_) => continue,
        };
        if d.is_write_only() != want_writable || d.len() == 0 {
            return Err(RequestError::Direction);
        }
        let last = d
            .addr()
            .checked_add(u64::from(d.len()) - 1)
            .ok_or(RequestError::OutOfMemory)?;
        if !mem.address_in_range(d.addr()) || !mem.address_in_range(last) {
            return Err(RequestError::OutOfMemory);
        }
        data.push((d.addr(), d.len()));
    }
    Ok(Request {
        kind,
        sector,
        data,
        status: status.addr(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16) -> Descriptor {
        Descriptor::new(addr, len, flags, 0)
    }

    fn header(m: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
        m.write_obj(kind, GuestAddress(at)).unwrap();
        m.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }

    #[test]
    fn a_read() {
        let m = mem();
        header(&m, 0x1000, T_IN, 7);
        let chain = [
            desc(0x1000, 16, F_NEXT),
            desc(0x2000, 512, F_NEXT | F_WRITE),
            desc(0x3000, 1, F_WRITE),
        ];
        let r = parse(chain.into_iter(), &m).unwrap();
        assert_eq!(r.kind, Kind::In);
        assert_eq!(r.sector, 7);
        assert_eq!(r.data, vec![(GuestAddress(0x2000), 512)]);
        assert_eq!(r.status, GuestAddress(0x3000));
    }

    #[test]
    fn malformed_chains_are_refused() {
        let m = mem();
        header(&m, 0x1000, T_OUT, 0);
        let hdr = desc(0x1000, 16, F_NEXT);
        let status = desc(0x3000, 1, F_WRITE);
        let cases: Vec<(Vec<Descriptor>, RequestError)> = vec![
            (vec![], RequestError::Shape),
            (vec![desc(0x3000, 1, F_WRITE)], RequestError::Shape),
            // Cut off: the last descriptor still has NEXT (a loop the iterator ended).
            (
                vec![hdr, desc(0x3000, 1, F_WRITE | F_NEXT)],
                RequestError::Shape,
            ),
            (vec![desc(0x1000, 8, F_NEXT), status], RequestError::Header),
            (
                vec![desc(0x1000, 16, F_NEXT | F_WRITE), status],
                RequestError::Header,
            ),
            (vec![hdr, desc(0x3000, 1, 0)], RequestError::Status),
            // A write whose data the device would have to write: wrong direction.
            (
                vec![hdr, desc(0x2000, 512, F_NEXT | F_WRITE), status],
                RequestError::Direction,
            ),
            (
                vec![hdr, desc(0xf_ff00, 512, F_NEXT), status],
                RequestError::OutOfMemory,
            ),
            (
                vec![hdr, desc(u64::MAX - 10, 512, F_NEXT), status],
                RequestError::OutOfMemory,
            ),
            (
                vec![hdr, desc(0x2000, 512, F_NEXT), desc(1 << 30, 1, F_WRITE)],
                RequestError::OutOfMemory,
            ),
        ];
        for (chain, want) in cases {
            assert_eq!(parse(chain.clone().into_iter(), &m), Err(want), "{chain:?}");
        }
        let long: Vec<Descriptor> = std::iter::once(hdr)
            .chain((0..MAX_SEGMENTS + 1).map(|_| desc(0x2000, 512, F_NEXT)))
            .chain(std::iter::once(status))
            .collect();
        assert_eq!(
            parse(long.into_iter(), &m),
            Err(RequestError::TooManySegments)
        );
    }

    #[test]
    fn unknown_types_parse_for_an_unsupp_answer() {
        let m = mem();
        header(&m, 0x1000, 0x77, 0);
        let chain = [desc(0x1000, 16, F_NEXT), desc(0x3000, 1, F_WRITE)];
        assert_eq!(
            parse(chain.into_iter(), &m).unwrap().kind,
            Kind::Unsupported(0x77)
        );
    }
}
