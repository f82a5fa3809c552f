//! The server's DMA-by-message port against a hand-driven client on a socket pair: message
//! splitting, malformed and late replies, commands that arrive meanwhile, a client that
//! leaves or does not answer.

use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use slog::{o, Discard};

use super::*;
use crate::proto::{FLAGS_TYPE_REPLY, HEADER_SIZE};

const CAP: usize = HEADER_SIZE + (1 << 20) + 4096;

/// A request as the client saw it: command, address, count.
type Seen = (u16, u64, u64);

/// A port whose client end is driven by `client`, which gets each request (header,
/// payload) and returns the raw messages to answer with (none: stop answering).
fn port(
    max_xfer: usize,
    deadline: Duration,
    mut client: impl FnMut(&Header, &[u8]) -> Option<Vec<Vec<u8>>> + Send + 'static,
) -> (SocketPort, JoinHandle<Vec<Seen>>) {
    let (a, b) = UnixStream::pair().unwrap();
    wire::arm(&a, deadline).unwrap();
    wire::arm(&b, Duration::from_secs(5)).unwrap();
    let p = SocketPort::new(
        Peer {
            sock: a,
            deadline,
            cap: CAP,
            max_fds: 4,
        },
        max_xfer,
        Logger::root(Discard, o!()),
    );
    let h = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while let Ok(Some(m)) = wire::recv(&b, true, Duration::from_secs(5), CAP, 4) {
            let mut r = Reader::new(&m.payload, "t");
            let (addr, count) = (r.u64().unwrap(), r.u64().unwrap());
            seen.push((m.header.command, addr, count));
            let Some(out) = client(&m.header, &m.payload) else {
                break;
            };
            for raw in out {
                use std::io::Write;
                (&b).write_all(&raw).unwrap();
            }
        }
        seen
    });
    (p, h)
}

/// A raw message.
fn msg(id: u16, cmd: u16, flags: u32, error: u32, payload: &[u8]) -> Vec<u8> {
    let h = Header {
        msg_id: id,
        command: cmd,
        size: (HEADER_SIZE + payload.len()) as u32,
        flags,
        error,
    };
    [&h.to_bytes()[..], payload].concat()
}

/// The correct reply to a request, reading from a memory where byte `a` is `a as u8`.
fn good(h: &Header, p: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.bytes(&p[..16]);
    if h.command == Command::DmaRead as u16 {
        let mut r = Reader::new(p, "t");
        let (addr, count) = (r.u64().unwrap(), r.u64().unwrap());
        w.bytes(&(addr..addr + count).map(|a| a as u8).collect::<Vec<_>>());
    }
    msg(h.msg_id, h.command, FLAGS_TYPE_REPLY, 0, &w.0)
}

const D: Duration = Duration::from_secs(5);

#[test]
fn large_dma_is_split_by_max_data_xfer_size() {
    let (p, h) = port(4096, D, |h, pl| Some(vec![good(h, pl)]));
    let mut buf = vec![0u8; 10000];
    p.read(0x10_0000 + 7, &mut buf).unwrap();
    assert!(buf
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (0x10_0000 + 7 + i) as u8));
    p.write(0x20_0000, &[1u8; 4097]).unwrap();
    drop(p);
    let r = Command::DmaRead as u16;
    let w = Command::DmaWrite as u16;
    assert_eq!(
        h.join().unwrap(),
        vec![
            (r, 0x10_0007, 4096),
            (r, 0x10_1007, 4096),
            (r, 0x10_2007, 1808),
            (w, 0x20_0000, 4096),
            (w, 0x20_1000, 1)
        ]
    );
}

#[test]
fn malformed_replies_fault_the_access_and_the_port_goes_on() {
    let mut n = 0;
    let (p, h) = port(1 << 20, D, move |h, pl| {
        n += 1;
        let id = h.msg_id;
        let mut good_hdr = pl[..16].to_vec();
        Some(vec![match n {
            // An error reply.
            1 => msg(id, h.command, FLAGS_TYPE_REPLY | FLAGS_ERROR, 14, &[]),
            // Three bytes of garbage.
            2 => msg(id, h.command, FLAGS_TYPE_REPLY, 0, &[1, 2, 3]),
            // A short read: the header is right, one data byte is missing.
            3 => {
                good_hdr.extend_from_slice(&[0; 7]);
                msg(id, h.command, FLAGS_TYPE_REPLY, 0, &good_hdr)
            }
            // The reply names another address.
            4 => {
                good_hdr[0] ^= 0x40;
                good_hdr.extend_from_slice(&[0; 8]);
                msg(id, h.command, FLAGS_TYPE_REPLY, 0, &good_hdr)
            }
            // The reply is for another command.
            5 => msg(id, Command::DmaWrite as u16, FLAGS_TYPE_REPLY, 0, &good_hdr),
            // A stale reply first (skipped), then the right one.
            6 => [
                msg(id.wrapping_sub(3), h.command, FLAGS_TYPE_REPLY, 0, &[9; 24]),
                good(h, pl),
            ]
            .concat(),
            _ => good(h, pl),
        }])
    });
    let mut b = [0u8; 8];
    for case in 1..=5 {
        let e = p.read(0x1000, &mut b).unwrap_err();
        assert_eq!(e.gpa, 0x1000, "case {case}: {e}");
    }
    p.read(0x1000, &mut b).unwrap();
    assert_eq!(b, [0, 1, 2, 3, 4, 5, 6, 7]);
    // The port still serves writes.
    p.write(0x2000, &[5; 3]).unwrap();
    drop(p);
    assert_eq!(h.join().unwrap().len(), 7);
}

#[test]
fn commands_that_arrive_meanwhile_are_deferred_in_order() {
    let (p, h) = port(1 << 20, D, |h, pl| {
        Some(vec![
            msg(40, Command::RegionRead as u16, 0, 0, &[1; 16]),
            msg(41, Command::DeviceGetInfo as u16, 0, 0, &[2; 4]),
            good(h, pl),
        ])
    });
    p.write(0x3000, &[7; 16]).unwrap();
    let first = p.take_deferred().unwrap();
    assert_eq!((first.header.msg_id, first.payload.len()), (40, 16));
    assert_eq!(p.take_deferred().unwrap().header.msg_id, 41);
    assert!(p.take_deferred().is_none());
    drop(p);
    h.join().unwrap();
}

#[test]
fn a_silent_or_departed_client_kills_the_port() {
    // No answer at all: the deadline passes, and later accesses fault without a message.
    let (p, h) = port(1 << 20, Duration::from_millis(200), |_, _| Some(vec![]));
    let mut b = [0u8; 4];
    let e = p.read(0x1000, &mut b).unwrap_err();
    assert!(e.why.contains("no answer"), "{e}");
    let e = p.write(0x1000, &b).unwrap_err();
    assert!(e.why.contains("unreachable"), "{e}");
    drop(p);
    assert_eq!(
        h.join().unwrap().len(),
        1,
        "the dead port sent nothing more"
    );
    // The client leaves mid-wait.
    let (p, h) = port(1 << 20, D, |_, _| None);
    assert!(p.read(0x1000, &mut b).is_err());
    assert!(p
        .read(0x1000, &mut b)
        .unwrap_err()
        .why
        .contains("unreachable"));
    h.join().unwrap();
    // A session without a socket serves the ranges by faulting.
    let log = Logger::root(Discard, o!());
    let (m, none) = remote_memory(vec![(0, 4096)], None, 4096, &log).unwrap();
    assert!(none.is_none());
    assert!(m.unwrap().port().read(0, &mut b).is_err());
    assert!(remote_memory(Vec::new(), None, 4096, &log)
        .unwrap()
        .0
        .is_none());
}
