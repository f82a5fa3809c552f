//! Messages on a UNIX stream socket: one `sendmsg` per message with its file descriptors
//! as `SCM_RIGHTS`, and a bounded receive with deadlines.
//!
//! Receiving checks the header's size against a cap before it allocates the payload,
//! takes ownership of every descriptor that arrived (so each is closed if the message is
//! refused), reports descriptors the kernel dropped because they did not fit the control
//! buffer (`MSG_CTRUNC`), and waits with a deadline once a message has started, so a peer
//! that stops mid-message cannot hang the receiver.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use snafu::{ResultExt, Snafu};

use crate::proto::{self, Header, HEADER_SIZE};

/// Errors on the socket.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub))]
pub enum WireError {
    /// The peer closed the connection (before or inside a message).
    #[snafu(display("the peer closed the connection{}", if *mid_message { " in the middle of a message" } else { "" }))]
    Closed {
        /// Whether part of a message had arrived.
        mid_message: bool,
    },
    /// The peer did not send (or take) a message within the deadline.
    #[snafu(display("no answer from the peer within {} ms", deadline.as_millis()))]
    Timeout {
        /// The deadline that passed.
        deadline: Duration,
    },
    /// The socket failed.
    #[snafu(display("socket error while {doing}: {source}"))]
    Io {
        /// What was being done.
        doing: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The header is malformed.
    #[snafu(display("{source}"))]
    BadHeader {
        /// The decode error.
        source: proto::ProtoError,
    },
}

/// `Result` with a [`WireError`].
pub type Result<T, E = WireError> = std::result::Result<T, E>;

/// One received message.
#[derive(Debug)]
pub struct Message {
    /// The header.
    pub header: Header,
    /// The payload (message size minus the header).
    pub payload: Vec<u8>,
    /// The descriptors that came with it (closed when dropped).
    pub fds: Vec<OwnedFd>,
    /// The sender attached more descriptors than the receive buffer had room for; the
    /// kernel closed the rest.
    pub fds_truncated: bool,
}

fn map_io(doing: &'static str, deadline: Duration, e: io::Error) -> WireError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => WireError::Timeout { deadline },
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe => WireError::Closed { mid_message: true },
        _ => WireError::Io { doing, source: e },
    }
}

/// Arm `sock`'s deadlines once (`SO_RCVTIMEO`, `SO_SNDTIMEO`): every later send and
/// receive on it waits at most `deadline` for each part (one setsockopt per connection,
/// not two per message).
pub fn arm(sock: &UnixStream, deadline: Duration) -> Result<()> {
    sock.set_read_timeout(Some(deadline)).context(IoSnafu {
        doing: "arming the receive deadline",
    })?;
    sock.set_write_timeout(Some(deadline)).context(IoSnafu {
        doing: "arming the send deadline",
    })
}

/// Send one message: `header` then the `parts` of its payload, with `fds` attached.
/// The header's size must already cover the parts. The socket must be [`arm`]ed with
/// `deadline`.
pub fn send(
    sock: &UnixStream,
    header: &Header,
    parts: &[&[u8]],
    fds: &[RawFd],
    deadline: Duration,
) -> Result<()> {
    let hdr = header.to_bytes();
    let mut bufs: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
    bufs.push(&hdr);
    bufs.extend(parts.iter().copied().filter(|p| !p.is_empty()));
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut sent = 0usize;
    let mut first = true;
    while sent < total {
        // Build the iovecs of what is left.
        let mut skip = sent;
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(bufs.len());
        for b in &bufs {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            let rest = &b[skip..];
            skip = 0;
            iov.push(libc::iovec {
                iov_base: rest.as_ptr() as *mut libc::c_void,
                iov_len: rest.len(),
            });
        }
        let n = send_iov(sock.as_raw_fd(), &iov, if first { fds } else { &[] })
            .map_err(|e| map_io("sending", deadline, e))?;
        first = false;
        sent += n;
    }
    Ok(())
}

fn send_iov(fd: RawFd, iov: &[libc::iovec], fds: &[RawFd]) -> io::Result<usize> {
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = if fds.is_empty() {
        0
    } else {
        // SAFETY: CMSG_SPACE only computes a size.
        (unsafe { libc::CMSG_SPACE(fd_bytes as u32) }) as usize
    };
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: an all-zero msghdr is a valid value; the fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len();
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `space` bytes we own, enough for one header and
        // `fds.len()` descriptors (CMSG_SPACE above), so the first header and its data lie
        // inside the buffer.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    loop {
        // SAFETY: msg points at live iovecs and control buffer for the duration of the call.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receive up to `buf.len()` bytes with any descriptors (at most `max_fds`).
fn recv_iov(fd: RawFd, buf: &mut [u8], max_fds: usize) -> io::Result<(usize, Vec<OwnedFd>, bool)> {
    let fd_bytes = max_fds.max(1) * std::mem::size_of::<RawFd>();
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid value; the fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    let n = loop {
        // SAFETY: msg points at a live buffer and control buffer for the call.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of well-formed
    // control messages; CMSG_FIRSTHDR/NXTHDR stay inside it. Each SCM_RIGHTS descriptor is
    // new in this process and owned by nobody else, so OwnedFd may take it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let len = (*c).cmsg_len as usize - (data as usize - c as usize);
                let count = len / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let raw = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let truncated = msg.msg_flags & libc::MSG_CTRUNC != 0;
    Ok((n, fds, truncated))
}

/// Receive one message on a socket [`arm`]ed with `deadline`. With `idle_forever` the wait
/// for its first byte has no end (a server waiting for its client's next command);
/// otherwise it has the deadline too. Each later part waits at most `deadline`. `cap` is
/// the largest whole message accepted (checked before the payload is allocated);
/// `max_fds` the most descriptors accepted. `Ok(None)` is a clean close before the first
/// byte.
pub fn recv(
    sock: &UnixStream,
    idle_forever: bool,
    deadline: Duration,
    cap: usize,
    max_fds: usize,
) -> Result<Option<Message>> {
    let mut hdr = [0u8; HEADER_SIZE];
    if idle_forever {
        wait_readable(sock).context(IoSnafu {
            doing: "waiting for a message",
        })?;
    }
    let (n, fds, fds_truncated) = recv_iov(sock.as_raw_fd(), &mut hdr, max_fds).map_err(|e| {
        match map_io("receiving", deadline, e) {
            WireError::Closed { .. } => WireError::Closed { mid_message: false },
            other => other,
        }
    })?;
    if n == 0 {
        return Ok(None);
    }
    let mut s = sock;
    if n < HEADER_SIZE {
        read_all(&mut s, &mut hdr[n..], deadline)?;
    }
    let header = Header::parse(&hdr, cap).context(BadHeaderSnafu)?;
    let mut payload = vec![0u8; header.payload_len()];
    read_all(&mut s, &mut payload, deadline)?;
    Ok(Some(Message {
        header,
        payload,
        fds,
        fds_truncated,
    }))
}

/// Block until `sock` is readable (data, a close, or an error to collect).
fn wait_readable(sock: &UnixStream) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: polls one live pollfd owned by this frame.
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn read_all(s: &mut &UnixStream, buf: &mut [u8], deadline: Duration) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(WireError::Closed { mid_message: true }),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(map_io("receiving", deadline, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Command;
    use std::io::Write;

    fn hdr(size: usize) -> Header {
        Header {
            msg_id: 1,
            command: Command::RegionWrite as u16,
            size: size as u32,
            flags: 0,
            error: 0,
        }
    }

    #[test]
    fn message_with_fds_roundtrips() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        let d = Duration::from_secs(2);
        arm(&a, d).unwrap();
        arm(&b, d).unwrap();
        send(&a, &hdr(16 + 5), &[b"he", b"llo"], &[f.as_raw_fd()], d).unwrap();
        let m = recv(&b, false, d, 4096, 4).unwrap().unwrap();
        assert_eq!(m.payload, b"hello");
        assert_eq!(m.fds.len(), 1);
        assert!(!m.fds_truncated);
    }

    #[test]
    fn oversize_short_and_extra_fds_are_reported() {
        let d = Duration::from_millis(300);
        let pair = || {
            let (a, b) = UnixStream::pair().unwrap();
            arm(&a, d).unwrap();
            arm(&b, d).unwrap();
            (a, b)
        };
        let (a, b) = pair();
        send(&a, &hdr(1 << 20), &[], &[], d).unwrap();
        assert!(matches!(
            recv(&b, true, d, 4096, 4),
            Err(WireError::BadHeader { .. })
        ));
        let (a, b) = pair();
        // Half a message, then silence: the deadline fires, even for a receiver that
        // waits forever for the first byte.
        (&a).write_all(&hdr(40).to_bytes()).unwrap();
        assert!(matches!(
            recv(&b, true, d, 4096, 4),
            Err(WireError::Timeout { .. })
        ));
        drop(a);
        let (a, b) = pair();
        // Nothing at all: a receiver with a deadline gives up.
        assert!(matches!(
            recv(&b, false, d, 4096, 4),
            Err(WireError::Timeout { .. })
        ));
        let f = std::fs::File::open("/dev/null").unwrap();
        let fds = [f.as_raw_fd(); 6];
        send(&a, &hdr(16), &[], &fds, d).unwrap();
        let m = recv(&b, true, d, 4096, 2).unwrap().unwrap();
        assert!(m.fds_truncated);
        assert!(m.fds.len() <= 2);
        drop(a);
        assert!(recv(&b, true, d, 4096, 2).unwrap().is_none());
    }
}
