//! The client's side of DMA by message: answering the server's `DMA_READ`/`DMA_WRITE`
//! requests from guest RAM, checked against the client's own maps.
//!
//! A request is served only if it lies wholly inside one range the client mapped and its
//! count is within the negotiated `max_data_xfer_size`; anything else (an address outside
//! guest RAM, a range that runs past a map's end or overflows, a payload of the wrong size,
//! a count above the limit) gets an error reply, so a hostile server cannot make the client
//! read or write outside guest RAM. Writes go straight to guest RAM's mapping, past
//! `vm-memory`'s dirty bitmap, as device DMA through a mapped descriptor would: the
//! device's own DMA log (shadow-pt, in the server) reports what it wrote.

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, VolatileSlice,
};

use crate::proto::{Command, Header, Reader, Writer, FLAGS_ERROR, FLAGS_TYPE_REPLY, HEADER_SIZE};
use crate::wire::Message;

/// Guest RAM as the client mapped it to the server.
#[derive(Debug, Clone)]
pub(crate) struct DmaServe {
    mem: GuestMemoryMmap<AtomicBitmap>,
    /// The mapped ranges (iova = gpa, size).
    ranges: Vec<(u64, u64)>,
}

/// A refusal: errno and why.
type Refusal = (i32, String);

impl DmaServe {
    /// Serve `ranges` of `mem`.
    pub(crate) fn new(mem: GuestMemoryMmap<AtomicBitmap>, ranges: Vec<(u64, u64)>) -> Self {
        Self { mem, ranges }
    }

    /// The reply (header and payload) to the server's request `m`, at most `max_xfer`
    /// data bytes.
    pub(crate) fn answer(&self, m: &Message, max_xfer: usize) -> (Header, Vec<u8>) {
        let cmd = Command::from_u16(m.header.command);
        let (flags, error, payload) = match self.serve(cmd, &m.payload, max_xfer) {
            Ok(p) => (FLAGS_TYPE_REPLY, 0, p),
            Err((errno, _)) => (FLAGS_TYPE_REPLY | FLAGS_ERROR, errno as u32, Vec::new()),
        };
        let h = Header {
            msg_id: m.header.msg_id,
            command: m.header.command,
            size: (HEADER_SIZE + payload.len()) as u32,
            flags,
            error,
        };
        (h, payload)
    }

    /// Carry out one request; the reply payload, or why not.
    pub(crate) fn serve(
        &self,
        cmd: Command,
        p: &[u8],
        max_xfer: usize,
    ) -> Result<Vec<u8>, Refusal> {
        let mut r = Reader::new(p, "DMA request");
        let bad = |e: crate::proto::ProtoError| (libc::EINVAL, e.to_string());
        let (addr, count) = (r.u64().map_err(bad)?, r.u64().map_err(bad)?);
        let len = usize::try_from(count)
            .ok()
            .filter(|&n| n <= max_xfer)
            .ok_or_else(|| (libc::EINVAL, format!("count {count} is above {max_xfer}")))?;
        let data = r.rest();
        let expect = if cmd == Command::DmaWrite { len } else { 0 };
        if data.len() != expect {
            return Err((
                libc::EINVAL,
                format!("{} data bytes for {cmd:?} of {count}", data.len()),
            ));
        }
        self.check(addr, count)?;
        let mut w = Writer::with_capacity(16 + expect.max(len));
        w.u64(addr).u64(count);
        match cmd {
            Command::DmaRead => {
                let mut buf = vec![0u8; len];
                self.mem
                    .read_slice(&mut buf, GuestAddress(addr))
                    .map_err(|e| (libc::EFAULT, e.to_string()))?;
                w.bytes(&buf);
            }
            Command::DmaWrite => self.write(addr, data)?,
            other => return Err((libc::ENOTSUP, format!("{other:?} is not a DMA request"))),
        }
        Ok(w.0)
    }

    /// `addr..addr+count` lies wholly inside one mapped range.
    fn check(&self, addr: u64, count: u64) -> Result<(), Refusal> {
        let inside = addr.checked_add(count).is_some_and(|end| {
            self.ranges
                .iter()
                .any(|&(start, size)| addr >= start && end <= start.saturating_add(size))
        });
        if inside {
            Ok(())
        } else {
            Err((
                libc::EFAULT,
                format!("{count} bytes at {addr:#x} are outside the DMA maps"),
            ))
        }
    }

    /// Write `data` at `addr` (checked to lie inside one map) without touching the dirty
    /// bitmap.
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), Refusal> {
        if data.is_empty() {
            return Ok(());
        }
        let fault = || {
            (
                libc::EFAULT,
                format!("{} bytes at {addr:#x} are not guest RAM", data.len()),
            )
        };
        let region = self.mem.find_region(GuestAddress(addr)).ok_or_else(fault)?;
        let last = addr + (data.len() as u64 - 1);
        if last > region.last_addr().0 {
            return Err(fault());
        }
        let raddr = region
            .to_region_addr(GuestAddress(addr))
            .ok_or_else(fault)?;
        let host = region.get_host_address(raddr).map_err(|_| fault())?;
        // SAFETY: `host..host + data.len()` lies inside one region of `self.mem` (its last
        // byte is at most the region's last address, checked above), whose mapping our
        // clone of the `GuestMemoryMmap` keeps alive. The vCPUs may access guest RAM
        // concurrently, hence the volatile copy; the slice has the unit bitmap, so
        // vm-memory's dirty bitmap is not touched (device DMA is not a CPU write).
        let dst = unsafe { VolatileSlice::new(host, data.len()) };
        dst.copy_from(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Deref;
    use vm_memory::MmapRegion;

    const MB: u64 = 1 << 20;

    fn serve() -> DmaServe {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), MB as usize),
            (GuestAddress(2 * MB), MB as usize),
        ])
        .unwrap();
        DmaServe::new(mem, vec![(0, MB), (2 * MB, MB)])
    }

    fn req(addr: u64, count: u64, data: &[u8]) -> Vec<u8> {
        let mut w = Writer::default();
        w.u64(addr).u64(count).bytes(data);
        w.0
    }

    #[test]
    fn serves_reads_and_writes_inside_the_maps_without_dirtying() {
        let s = serve();
        let reply = s
            .serve(Command::DmaWrite, &req(2 * MB + 10, 3, &[7, 8, 9]), 4096)
            .unwrap();
        assert_eq!(reply, req(2 * MB + 10, 3, &[]));
        let reply = s
            .serve(Command::DmaRead, &req(2 * MB + 9, 5, &[]), 4096)
            .unwrap();
        assert_eq!(reply, req(2 * MB + 9, 5, &[0, 7, 8, 9, 0]));
        // The last bytes of a map are in.
        s.serve(Command::DmaRead, &req(MB - 4, 4, &[]), 4096)
            .unwrap();
        let dirty: usize = s
            .mem
            .iter()
            .map(|r| {
                let mr: &MmapRegion<AtomicBitmap> = r.deref();
                mr.bitmap()
                    .get_and_reset()
                    .iter()
                    .map(|w| w.count_ones() as usize)
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(dirty, 0, "DMA writes bypass the CPU dirty bitmap");
    }

    #[test]
    fn a_hostile_server_gets_errors() {
        let s = serve();
        let refused = |cmd, p: Vec<u8>| s.serve(cmd, &p, 4096).unwrap_err().0;
        let (r, w) = (Command::DmaRead, Command::DmaWrite);
        // Outside guest RAM, across the hole, past the end, overflowing.
        assert_eq!(refused(r, req(MB, 4, &[])), libc::EFAULT);
        assert_eq!(refused(r, req(MB - 2, 4, &[])), libc::EFAULT);
        assert_eq!(refused(w, req(3 * MB - 1, 2, &[1, 2])), libc::EFAULT);
        assert_eq!(refused(r, req(u64::MAX - 1, 4, &[])), libc::EFAULT);
        assert_eq!(refused(w, req(u64::MAX, 1, &[1])), libc::EFAULT);
        // Above max_data_xfer_size; wrong data sizes; short payloads; not a DMA command.
        assert_eq!(refused(r, req(0, 4097, &[])), libc::EINVAL);
        assert_eq!(refused(r, req(0, u64::MAX, &[])), libc::EINVAL);
        assert_eq!(refused(w, req(0, 4, &[1, 2, 3])), libc::EINVAL);
        assert_eq!(refused(r, req(0, 4, &[1])), libc::EINVAL);
        assert_eq!(refused(r, vec![0; 12]), libc::EINVAL);
        assert_eq!(refused(Command::RegionRead, req(0, 4, &[])), libc::ENOTSUP);
        // The refusals come back as error replies to the request's id.
        let m = Message {
            header: Header {
                msg_id: 9,
                command: r as u16,
                size: 32,
                flags: 0,
                error: 0,
            },
            payload: req(MB, 4, &[]),
            fds: Vec::new(),
            fds_truncated: false,
        };
        let (h, p) = s.answer(&m, 4096);
        assert_eq!(
            (h.msg_id, h.flags & FLAGS_ERROR != 0, h.error),
            (9, true, 14)
        );
        assert!(h.is_reply() && p.is_empty());
        // Nothing was written anywhere.
        let mut all = vec![0u8; MB as usize];
        s.mem.read_slice(&mut all, GuestAddress(0)).unwrap();
        assert!(all.iter().all(|&b| b == 0));
    }

    #[test]
    fn a_waiting_client_answers_dma_requests_then_takes_its_reply() {
        use crate::client::conn::Conn;
        use crate::wire;
        use std::os::unix::net::UnixStream;
        use std::time::Duration;
        let d = Duration::from_secs(5);
        let (a, b) = UnixStream::pair().unwrap();
        wire::arm(&a, d).unwrap();
        wire::arm(&b, d).unwrap();
        let s = serve();
        let mem = s.mem.clone();
        let mut c = Conn::new(a, d, slog::Logger::root(slog::Discard, slog::o!()));
        c.set_dma(s);
        // The server: three DMA requests (a write, a read, one outside guest RAM), then
        // the reply to the client's request; it returns what the client answered.
        let server = std::thread::spawn(move || {
            let m = wire::recv(&b, false, d, 1 << 21, 4).unwrap().unwrap();
            let mut answers = Vec::new();
            let reqs = [
                (Command::DmaWrite, req(0x100, 2, &[4, 5])),
                (Command::DmaRead, req(0x100, 3, &[])),
                (Command::DmaWrite, req(MB + 8, 1, &[1])),
            ];
            for (i, (cmd, p)) in reqs.iter().enumerate() {
                let h = Header {
                    msg_id: 100 + i as u16,
                    command: *cmd as u16,
                    size: (HEADER_SIZE + p.len()) as u32,
                    flags: 0,
                    error: 0,
                };
                wire::send(&b, &h, &[p], &[], d).unwrap();
                let r = wire::recv(&b, false, d, 1 << 21, 4).unwrap().unwrap();
                answers.push((
                    r.header.msg_id,
                    r.header.flags & FLAGS_ERROR != 0,
                    r.payload,
                ));
            }
            let h = Header {
                msg_id: m.header.msg_id,
                command: m.header.command,
                size: (HEADER_SIZE + 2) as u32,
                flags: FLAGS_TYPE_REPLY,
                error: 0,
            };
            wire::send(&b, &h, &[&[7, 7]], &[], d).unwrap();
            answers
        });
        let reply = c.request(Command::RegionRead, &[&[0; 16]], &[]).unwrap();
        assert_eq!(reply, vec![7, 7]);
        assert_eq!(c.dma_served(), 3);
        let answers = server.join().unwrap();
        assert_eq!(answers[0], (100, false, req(0x100, 2, &[])));
        assert_eq!(answers[1], (101, false, req(0x100, 3, &[4, 5, 0])));
        assert_eq!((answers[2].0, answers[2].1), (102, true));
        let mut b2 = [0u8; 2];
        mem.read_slice(&mut b2, GuestAddress(0x100)).unwrap();
        assert_eq!(b2, [4, 5]);
    }
}
