use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::memory::{self, GuestMem, PAGE_SIZE};
use crate::migration::clock::Liveness;
use crate::migration::transport::Counters;

fn log() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// Guest RAM of `mib` MiB whose page `i` holds `i % 251 + 1` in every byte but the pages named
/// zero (left zero).
fn ram(mib: u64, zero: &[u64]) -> GuestMem {
    let mem = memory::create(mib << 20, u64::MAX).expect("guest memory");
    for p in 0..(mib << 20) / PAGE_SIZE {
        if !zero.contains(&p) {
            let b = vec![(p % 251 + 1) as u8; PAGE_SIZE as usize];
            memory::write(&mem, p * PAGE_SIZE, &b).expect("write");
        }
    }
    mem
}

#[test]
fn units_and_hellos_round_trip_and_bad_ones_are_named() {
    let u = Unit {
        kind: UnitKind::Pages,
        pages: 7,
        gpa: 0x7000,
        seq: 0,
    };
    assert_eq!(Unit::decode(&u.encode()), Ok(u));
    let mut b = u.encode();
    b[0] = 9;
    assert_eq!(Unit::decode(&b), Err("unknown unit kind 9".into()));
    let big = Unit { pages: 129, ..u };
    assert!(Unit::decode(&big.encode())
        .unwrap_err()
        .contains("129 pages"));
    let none = Unit { pages: 0, ..u };
    assert!(Unit::decode(&none.encode())
        .unwrap_err()
        .contains("0 pages"));
    let mark = Unit {
        kind: UnitKind::Mark,
        pages: 3,
        gpa: 0,
        seq: 1,
    };
    assert!(Unit::decode(&mark.encode())
        .unwrap_err()
        .contains("Mark unit with 3 pages"));
    let h = ChannelHello {
        session: 42,
        index: 1,
        count: 2,
    };
    assert_eq!(ChannelHello::decode(&h.encode()), Some(h));
    let mut b = h.encode();
    b[0] = b'X';
    assert_eq!(ChannelHello::decode(&b), None);
    assert_ne!(new_session(), new_session());
}

/// Two channels over loopback, source RAM to target RAM: rounds with marks, zero pages
/// skipped in round 0 and zeroed later, and the digests checked at the end.
#[test]
fn two_channels_move_ram_and_end_with_matching_digests() {
    let src = ram(4, &[3, 4, 5, 200]);
    // The target's RAM starts zero, but for page 3, which round 1 must zero.
    let dst = memory::create(4 << 20, u64::MAX).unwrap();
    memory::write(&dst, 3 * PAGE_SIZE, &[0x44; PAGE_SIZE as usize]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp://{}", listener.local_addr().unwrap());
    let live = Liveness::new("source", Duration::from_secs(5));
    let tl = live.clone();
    let acceptor = std::thread::spawn(move || {
        accept_channels(&listener, 77, 2, &tl, &log()).map(|s| (s, listener))
    });
    let counters = Arc::new(Counters::default());
    let mut ch = RamChannels::connect(
        &url,
        77,
        2,
        &src,
        None,
        counters.clone(),
        Duration::from_secs(5),
        Duration::from_secs(5),
    )
    .unwrap();
    let (socks, _l) = acceptor.join().unwrap().unwrap();
    let rx = RamReceivers::spawn(socks, &dst, live).unwrap();
    // Round 0: every page, zero pages skipped (pages 3-5 stay as the target had them).
    for first in (0..1024u64).step_by(128) {
        ch.send(first * PAGE_SIZE, 128, false).unwrap();
    }
    ch.mark(0).unwrap();
    rx.wait_mark(0).unwrap();
    let (nonzero, zero) = ch.take_counts();
    assert_eq!((nonzero, zero), (1020, 4));
    let mut p = vec![0u8; PAGE_SIZE as usize];
    memory::read(&dst, 3 * PAGE_SIZE, &mut p).unwrap();
    assert_eq!(p[0], 0x44, "round 0 leaves a zero page to the target's RAM");
    // Round 1: a run with zero pages in it, zeros sent.
    ch.send(2 * PAGE_SIZE, 5, true).unwrap();
    let totals = ch.finish().unwrap();
    rx.finish().unwrap();
    assert_eq!(memory::digest(&src), memory::digest(&dst));
    assert_eq!(totals.ram, (1020 + 2) * PAGE_SIZE);
    assert!(counters.sent.load(std::sync::atomic::Ordering::Relaxed) >= totals.ram);
}

/// A target channel fed by hand: what it refuses, and that it never writes outside RAM.
fn feed(bytes: &[u8], mib: u64) -> std::result::Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    let (t, _) = listener.accept().unwrap();
    t.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    std::io::Write::write_all(&mut s, bytes).unwrap();
    drop(s);
    let mem = ram(mib, &[]);
    let rx = RamReceivers::spawn(
        vec![t],
        &mem,
        Liveness::new("source", Duration::from_secs(2)),
    )
    .unwrap();
    rx.finish().map(|_| ()).map_err(|e| e.to_string())
}

fn unit(kind: UnitKind, pages: u32, gpa: u64, seq: u64) -> Vec<u8> {
    Unit {
        kind,
        pages,
        gpa,
        seq,
    }
    .encode()
    .to_vec()
}

#[test]
fn a_target_channel_refuses_bad_units_and_a_bad_digest() {
    // A page outside 1 MiB of RAM: refused before any byte is written.
    let e = feed(&unit(UnitKind::Pages, 1, 1 << 20, 0), 1).unwrap_err();
    assert!(
        e.contains("RAM channel 0") && e.contains("outside guest RAM"),
        "{e}"
    );
    // Unaligned.
    let e = feed(&unit(UnitKind::Zero, 1, 5, 0), 1).unwrap_err();
    assert!(e.contains("unaligned"), "{e}");
    // Ends early.
    let mut b = unit(UnitKind::Pages, 1, 0, 0);
    b.extend_from_slice(&[1u8; 100]);
    let e = feed(&b, 1).unwrap_err();
    assert!(e.contains("closed the channel inside a unit"), "{e}");
    let e = feed(&[], 1).unwrap_err();
    assert!(e.contains("closed the channel before its end"), "{e}");
    // A good unit, then an end whose digest is off by one bit.
    let mut b = unit(UnitKind::Pages, 1, 0, 0);
    b.extend_from_slice(&[7u8; PAGE_SIZE as usize]);
    let end = unit(UnitKind::End, 0, 0, 0);
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&b);
    h.update(&end);
    let mut digest = h.digest128().to_le_bytes();
    let mut good = b.clone();
    good.extend_from_slice(&end);
    good.extend_from_slice(&digest);
    assert_eq!(feed(&good, 1), Ok(()));
    digest[3] ^= 1;
    b.extend_from_slice(&end);
    b.extend_from_slice(&digest);
    let e = feed(&b, 1).unwrap_err();
    assert!(e.contains("digest does not match"), "{e}");
}

#[test]
fn strangers_are_closed_and_missing_channels_time_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // A stranger (wrong session) and a silent connection, then nothing more.
    let mut s1 = TcpStream::connect(addr).unwrap();
    let wrong = ChannelHello {
        session: 1,
        index: 0,
        count: 1,
    };
    std::io::Write::write_all(&mut s1, &wrong.encode()).unwrap();
    let _s2 = TcpStream::connect(addr).unwrap();
    let live = Liveness::new("source", Duration::from_secs(1));
    let e = accept_channels(&listener, 2, 1, &live, &log()).unwrap_err();
    assert!(
        e.to_string()
            .contains("1 of the source's 1 RAM channels did not connect"),
        "{e}"
    );
    // Too many channels is a protocol error at once.
    let e = accept_channels(&listener, 2, 99, &live, &log()).unwrap_err();
    assert!(e.to_string().contains("99 RAM channels"), "{e}");
}
