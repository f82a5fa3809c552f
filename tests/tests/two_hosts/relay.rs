//! A network path with delay, loss and a rate, where the kernel has no `sch_netem` (the
//! machines here run a kernel without it): each namespace gets a TUN interface, and this
//! relay moves the IP packets between the two TUN descriptors, each one after the
//! path's delay, dropping some (a seeded generator, so a run is repeatable) and pacing
//! them at the rate. TCP runs end to end between the two namespaces' own stacks, so each
//! side's kernel measures the real round trip, as over a wire with that delay.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the path does to each packet, in each direction.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// One-way delay.
    pub delay: Duration,
    /// Packets dropped per million.
    pub loss_ppm: u32,
    /// Bits per second (`None`: as fast as the relay goes).
    pub rate_bps: Option<u64>,
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (a short), padded to
/// the union's 24 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A new TUN interface (IP packets, no packet-info header) named `name`, non-blocking; it
/// lives as long as the descriptor.
pub fn tun(name: &str) -> Result<OwnedFd, String> {
    if name.len() >= 16 {
        return Err(format!("interface name {name} is over 15 bytes"));
    }
    // SAFETY: open takes a NUL-terminated path and flags; it returns a new fd or -1.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!(
            "open /dev/net/tun: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads a struct ifreq (40 bytes, which IfReq is) and may write the
    // chosen name back into it; the fd is the open tun device.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(format!(
            "TUNSETIFF {name}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

/// Moves packets both ways between two TUN descriptors until dropped.
pub struct Relay {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Relay between `a` and `b` with `shape` in each direction.
    pub fn start(a: OwnedFd, b: OwnedFd, shape: Shape) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (a, b) = (Arc::new(a), Arc::new(b));
        let threads = [(a.clone(), b.clone(), 1u64), (b, a, 2u64)]
            .into_iter()
            .map(|(from, to, seed)| {
                let stop = stop.clone();
                std::thread::spawn(move || forward(&from, &to, shape, seed, &stop))
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// xorshift64*: a repeatable loss pattern.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn forward(from: &OwnedFd, to: &OwnedFd, shape: Shape, seed: u64, stop: &AtomicBool) {
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    let mut link_free = Instant::now();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        // Send everything due.
        while queue.front().is_some_and(|(due, _)| *due <= now) {
            let (_, pkt) = queue.pop_front().expect("a packet");
            // SAFETY: write reads `pkt.len()` bytes of `pkt`; the fd is an open tun.
            let _ = unsafe { libc::write(to.as_raw_fd(), pkt.as_ptr().cast(), pkt.len()) };
        }
        let wait = queue
            .front()
            .map_or(Duration::from_millis(20), |(due, _)| {
                due.saturating_duration_since(now)
            })
            .min(Duration::from_millis(20));
        let mut pfd = libc::pollfd {
            fd: from.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_micros().div_ceil(1000) as libc::c_int;
        // SAFETY: poll reads and writes one pollfd, which `pfd` is.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 || pfd.revents & libc::POLLIN == 0 {
            if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                return;
            }
            continue;
        }
        loop {
            // SAFETY: read writes at most `buf.len()` bytes into `buf`; the fd is an open
            // non-blocking tun.
            let got = unsafe { libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if got <= 0 {
                break;
            }
            let pkt = buf[..got as usize].to_vec();
            if (next_random(&mut rng) % 1_000_000) < u64::from(shape.loss_ppm) {
                continue;
            }
            let arrived = Instant::now();
            // At a rate, a packet leaves once the link finished the one before it.
            let sent = match shape.rate_bps {
                Some(bps) => {
                    let start = link_free.max(arrived);
                    let on_wire = Duration::from_nanos(pkt.len() as u64 * 8 * 1_000_000_000 / bps);
                    link_free = start + on_wire;
                    link_free
                }
                None => arrived,
            };
            queue.push_back((sent + shape.delay, pkt));
        }
    }
}
