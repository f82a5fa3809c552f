//! What the migration stream is measured against, on as many bytes and in the same run:
//! raw loopback TCP, and the stream's own integrity checks alone on one core.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::{CliError, Result};

/// Raw loopback TCP throughput for `bytes` bytes, bytes/s, and the CPU seconds both ends
/// spent (this process: the sender and the receiver thread).
pub(super) fn raw_tcp(bytes: u64) -> Result<(f64, f64)> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| CliError::Check { msg: e.to_string() })?;
    let addr = l
        .local_addr()
        .map_err(|e| CliError::Check { msg: e.to_string() })?;
    let rx = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = s.read(&mut buf)?;
            if k == 0 {
                return Ok(n);
            }
            n += k as u64;
        }
    });
    let mut s = TcpStream::connect(addr).map_err(|e| CliError::Check { msg: e.to_string() })?;
    let buf = vec![0x5au8; 1 << 20];
    let cpu0 = super::cpu::own_seconds();
    let t = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..k])
            .map_err(|e| CliError::Check { msg: e.to_string() })?;
        left -= k as u64;
    }
    drop(s);
    let got = rx
        .join()
        .map_err(|_| CliError::Check {
            msg: "receiver panicked".into(),
        })?
        .map_err(|e| CliError::Check { msg: e.to_string() })?;
    let secs = t.elapsed().as_secs_f64();
    Ok((got as f64 / secs, super::cpu::own_seconds() - cpu0))
}

/// Throughput of the stream's own integrity checks on a stream of `ram` bytes of guest
/// pages (XXH3-128) and `other` bytes under SHA-256 (device sections and metadata), on one
/// core, bytes/s.
pub(super) fn check_rate(ram: u64, other: u64) -> f64 {
    let buf: Vec<u8> = (0..(16u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let t = Instant::now();
    let mut x = vmm::stream::RamHash::new();
    let mut left = ram;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        x.update(&buf[..k]);
        left -= k as u64;
    }
    std::hint::black_box(x.digest());
    let xxh = t.elapsed().as_secs_f64();
    let sha = other as f64 / sha_rate(other.max(1));
    (ram + other) as f64 / (xxh + sha)
}

/// SHA-256 throughput over `bytes` bytes on one core, bytes/s.
fn sha_rate(bytes: u64) -> f64 {
    let buf: Vec<u8> = (0..(16u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let t = Instant::now();
    let mut h = Sha256::new();
    let mut left = bytes;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        h.update(&buf[..k]);
        left -= k as u64;
    }
    std::hint::black_box(h.finalize());
    bytes as f64 / t.elapsed().as_secs_f64()
}
