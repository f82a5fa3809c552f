//! The remote device's v2 migration, DMA dirty log and simulation clock.
//!
//! vfio-user has no data_fd: `MIG_DATA_READ/WRITE` go to the server's open session. The
//! client keeps the handle lifecycle of the uAPI itself: a walk that ends in a state with a
//! data session of another kind than the one it started from opens a new session (a new
//! [`DataStream`]); a walk out of the session states, an ERROR, a reset or a close ends it,
//! and a stale handle is refused here with [`MigrationError::StaleStream`] without a round
//! trip.

use mdev_core::{
    DataStream, DirtyBitmap, DirtyError, DmaDirtyLog, DmaRange, MigState, MigTransition,
    MigrationDevice, MigrationError,
};
use slog::warn;
use vfio_bindings::bindings::vfio::{
    vfio_precopy_info, VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 as FEATURE_PRECOPY_INFO,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_MIGRATION,
    VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
    VFIO_DEVICE_FEATURE_PROBE, VFIO_DEVICE_FEATURE_SET,
};

use super::conn::{self, ClientError, Result, SharedConn};
use crate::clock;
use crate::proto::{Command, Reader, Writer};

/// `DEVICE_FEATURE` with `flags` and `data`, room for `reply_data` bytes of reply data;
/// the reply's data part.
fn feature(c: &SharedConn, flags: u32, data: &[u8], reply_data: usize) -> Result<Vec<u8>> {
    let mut w = Writer::default();
    w.u32((8 + data.len().max(reply_data)) as u32)
        .u32(flags)
        .bytes(data);
    let mut p = conn::lock(c).request(Command::DeviceFeature, &[&w.0], &[])?;
    if p.len() < 8 {
        return Err(ClientError::BadReply {
            command: Command::DeviceFeature,
            what: format!("{} bytes", p.len()),
        });
    }
    Ok(p.split_off(8))
}

fn bad(e: crate::proto::ProtoError) -> ClientError {
    ClientError::BadReply {
        command: Command::DeviceFeature,
        what: e.to_string(),
    }
}

use mdev_core::session_kind;

/// The v2 migration of a remote device.
#[derive(Debug)]
pub struct RemoteMigration {
    conn: SharedConn,
    flags: u32,
    state: MigState,
    open: Option<DataStream>,
    sessions: u64,
}

impl RemoteMigration {
    /// Ask the server for `VFIO_DEVICE_FEATURE_MIGRATION`; `None` if it has no migration.
    pub fn probe(conn: &SharedConn) -> Result<Option<Self>> {
        let flags = match feature(
            conn,
            VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION,
            &[],
            8,
        ) {
            Ok(d) => Reader::new(&d, "MIGRATION").u64().map_err(bad)? as u32,
            Err(e) if e.errno().is_some() => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut m = Self {
            conn: conn.clone(),
            flags,
            state: MigState::Running,
            open: None,
            sessions: 0,
        };
        m.state = m.get_state()?;
        Ok(Some(m))
    }

    fn get_state(&self) -> Result<MigState> {
        let d = feature(
            &self.conn,
            VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            &[],
            8,
        )?;
        let raw = Reader::new(&d, "MIG_DEVICE_STATE").u32().map_err(bad)?;
        MigState::try_from(raw).map_err(|e| ClientError::BadReply {
            command: Command::DeviceFeature,
            what: e.to_string(),
        })
    }

    /// After `DEVICE_RESET`: RUNNING, no session.
    pub(crate) fn after_reset(&mut self) {
        self.state = MigState::Running;
        self.open = None;
    }

    fn check(&self, stream: DataStream) -> Result<(), MigrationError> {
        if self.open == Some(stream) {
            Ok(())
        } else {
            Err(MigrationError::StaleStream {
                stream: stream.id(),
            })
        }
    }

    fn max_xfer(&self) -> usize {
        conn::lock(&self.conn).max_xfer()
    }
}

fn lost(from: MigState, to: MigState, e: &ClientError) -> MigrationError {
    MigrationError::ArcFailed {
        from,
        to,
        reason: e.to_string(),
    }
}

impl MigrationDevice for RemoteMigration {
    fn migration_flags(&self) -> u32 {
        self.flags
    }

    fn mig_state(&self) -> MigState {
        self.state
    }

    fn set_mig_state(&mut self, target: MigState) -> Result<MigTransition, MigrationError> {
        let from = self.state;
        let mut data = Writer::default();
        data.u32(target as u32).u32(u32::MAX);
        match feature(
            &self.conn,
            VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            &data.0,
            8,
        ) {
            Ok(d) => {
                let raw = Reader::new(&d, "MIG_DEVICE_STATE")
                    .u32()
                    .map_err(|e| lost(from, target, &bad(e)))?;
                let state = MigState::try_from(raw)?;
                self.state = state;
                let stream = match session_kind(state) {
                    None => {
                        self.open = None;
                        None
                    }
                    Some(k) if session_kind(from) == Some(k) && self.open.is_some() => None,
                    Some(_) => {
                        self.sessions += 1;
                        let s = DataStream::from_id(self.sessions);
                        self.open = Some(s);
                        Some(s)
                    }
                };
                Ok(MigTransition { state, stream })
            }
            Err(e) => {
                // Learn where the walk stopped: unchanged (refused) or ERROR (an arc failed).
                match self.get_state() {
                    Ok(now) => {
                        self.state = now;
                        if session_kind(now).is_none() {
                            self.open = None;
                        }
                        if now == from && e.errno() == Some(libc::EINVAL) {
                            return Err(MigrationError::InvalidTransition { from, to: target });
                        }
                        Err(lost(from, target, &e))
                    }
                    Err(_) => {
                        self.state = MigState::Error;
                        self.open = None;
                        Err(lost(from, target, &e))
                    }
                }
            }
        }
    }

    fn read_data(&mut self, stream: DataStream, buf: &mut [u8]) -> Result<usize, MigrationError> {
        self.check(stream)?;
        let n = buf.len().min(self.max_xfer());
        let mut w = Writer::default();
        w.u32((8 + n) as u32).u32(n as u32);
        let state = self.state;
        let p = conn::lock(&self.conn)
            .request(Command::MigDataRead, &[&w.0], &[])
            .map_err(|e| match e.errno() {
                Some(libc::ENOMSG) => MigrationError::NoDataNow { state },
                Some(libc::ENODEV) => MigrationError::StaleStream {
                    stream: stream.id(),
                },
                _ => MigrationError::NoStream {
                    what: "saving (device process)",
                    state,
                },
            })
            .inspect_err(|_| ())?;
        let mut r = Reader::new(&p, "MIG_DATA_READ reply");
        let got = r
            .u32()
            .and_then(|_| r.u32())
            .map_err(|e| MigrationError::BadData {
                reason: e.to_string(),
            })? as usize;
        let data = r.rest();
        if got > n || data.len() != got {
            return Err(MigrationError::BadData {
                reason: format!(
                    "device process sent {} bytes for a {got}-byte reply",
                    data.len()
                ),
            });
        }
        buf[..got].copy_from_slice(data);
        Ok(got)
    }

    fn write_data(&mut self, stream: DataStream, buf: &[u8]) -> Result<usize, MigrationError> {
        self.check(stream)?;
        let step = self.max_xfer();
        let mut done = 0;
        while done < buf.len() {
            let n = (buf.len() - done).min(step);
            let mut w = Writer::default();
            w.u32(8).u32(n as u32);
            conn::lock(&self.conn)
                .request(Command::MigDataWrite, &[&w.0, &buf[done..done + n]], &[])
                .map_err(|e| match e.errno() {
                    Some(libc::ENODEV) => MigrationError::StaleStream {
                        stream: stream.id(),
                    },
                    _ => MigrationError::BadData {
                        reason: e.to_string(),
                    },
                })?;
            done += n;
        }
        Ok(done)
    }

    fn close_data(&mut self, stream: DataStream) {
        if self.open == Some(stream) {
            self.open = None;
        }
    }

    fn precopy_info(&mut self) -> Result<vfio_precopy_info, MigrationError> {
        let state = self.state;
        let d = feature(
            &self.conn,
            VFIO_DEVICE_FEATURE_GET | FEATURE_PRECOPY_INFO,
            &[],
            24,
        )
        .map_err(|e| match e.errno() {
            Some(_) => MigrationError::NoStream {
                what: "saving",
                state,
            },
            None => lost(state, state, &e),
        })?;
        let mut r = Reader::new(&d, "PRECOPY_INFO");
        let f = |e: crate::proto::ProtoError| MigrationError::BadData {
            reason: e.to_string(),
        };
        Ok(vfio_precopy_info {
            argsz: r.u32().map_err(f)?,
            flags: r.u32().map_err(f)?,
            initial_bytes: r.u64().map_err(f)?,
            dirty_bytes: r.u64().map_err(f)?,
        })
    }

    fn stop_copy_size(&mut self) -> Result<u64, MigrationError> {
        let state = self.state;
        let d = feature(
            &self.conn,
            VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DATA_SIZE,
            &[],
            8,
        )
        .map_err(|e| lost(state, state, &e))?;
        Reader::new(&d, "MIG_DATA_SIZE")
            .u64()
            .map_err(|e| MigrationError::BadData {
                reason: e.to_string(),
            })
    }
}

/// The DMA dirty log of a remote device (`DMA_LOGGING_START/STOP/REPORT`).
#[derive(Debug)]
pub struct RemoteDirtyLog {
    conn: SharedConn,
    logging: bool,
}

impl RemoteDirtyLog {
    /// Probe `DMA_LOGGING_START` for SET; `None` if the device has no DMA log.
    pub fn probe(conn: &SharedConn) -> Result<Option<Self>> {
        let flags = VFIO_DEVICE_FEATURE_PROBE
            | VFIO_DEVICE_FEATURE_SET
            | VFIO_DEVICE_FEATURE_DMA_LOGGING_START;
        match feature(conn, flags, &[], 0) {
            Ok(_) => Ok(Some(Self {
                conn: conn.clone(),
                logging: false,
            })),
            Err(e) if e.errno().is_some() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn failed(&self, e: &ClientError) -> DirtyError {
        warn!(conn::lock(&self.conn).log, "DMA logging request failed"; "error" => %e);
        match e.errno() {
            Some(libc::EINVAL) if self.logging => DirtyError::AlreadyStarted,
            _ => DirtyError::NotStarted,
        }
    }
}

impl DmaDirtyLog for RemoteDirtyLog {
    fn start(&mut self, ranges: &[DmaRange], page_size: u64) -> Result<u64, DirtyError> {
        let mut w = Writer::default();
        w.u64(page_size).u32(ranges.len() as u32).u32(0);
        for r in ranges {
            w.u64(r.iova).u64(r.length);
        }
        let reply = feature(
            &self.conn,
            VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
            &w.0,
            0,
        )
        .map_err(|e| self.failed(&e))?;
        self.logging = true;
        // vfio.h: page_size is a hint; the device returns what it tracks in the same field.
        Ok(reply
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map_or(page_size, u64::from_le_bytes))
    }

    fn report(
        &mut self,
        iova: u64,
        length: u64,
        page_size: u64,
    ) -> Result<DirtyBitmap, DirtyError> {
        let mut out = DirtyBitmap::new(iova, length, page_size)?;
        // One request per part whose bitmap fits in a data transfer.
        let max_bytes = (conn::lock(&self.conn).max_xfer() as u64)
            .saturating_sub(64)
            .max(8);
        let part_len = (max_bytes / 8 * 64).saturating_mul(page_size);
        let mut at = 0u64;
        while at < length {
            let len = (length - at).min(part_len);
            let mut w = Writer::default();
            w.u64(iova + at).u64(len).u64(page_size);
            let words = len.div_ceil(page_size).div_ceil(64) as usize;
            let d = feature(
                &self.conn,
                VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
                &w.0,
                24 + 8 * words,
            )
            .map_err(|e| self.failed(&e))?;
            let mut r = Reader::new(d.get(24..).unwrap_or(&[]), "DMA_LOGGING_REPORT bitmap");
            for wi in 0..words as u64 {
                let mut word = r.u64().map_err(|_| DirtyError::NotStarted)?;
                while word != 0 {
                    let b = u64::from(word.trailing_zeros());
                    word &= word - 1;
                    out.mark(iova + at + (wi * 64 + b) * page_size);
                }
            }
            at += len;
        }
        Ok(out)
    }

    fn stop(&mut self) -> Result<(), DirtyError> {
        feature(
            &self.conn,
            VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
            &[],
            0,
        )
        .map_err(|e| self.failed(&e))?;
        self.logging = false;
        Ok(())
    }

    fn is_logging(&self) -> bool {
        self.logging
    }
}

/// The simulation clock of a remote device's engine (see [`crate::clock`]).
#[derive(Debug, Clone)]
pub struct RemoteClock {
    conn: SharedConn,
    index: u32,
}

impl RemoteClock {
    pub(crate) fn new(conn: SharedConn, index: u32) -> Self {
        Self { conn, index }
    }

    fn read(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        let mut w = Writer::default();
        w.u64(offset).u32(self.index).u32(len as u32);
        let p = conn::lock(&self.conn)
            .request(Command::RegionRead, &[&w.0], &[])
            .ok()?;
        p.get(16..16 + len).map(<[u8]>::to_vec)
    }

    fn read_u64(&self, offset: u64) -> u64 {
        self.read(offset, 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_le_bytes)
    }

    /// Advance the engine by up to `budget` units; the units done (0 if the device
    /// process is gone). The write goes without waiting for its reply; the read of the
    /// result that follows is the one round trip.
    pub fn advance(&self, budget: usize) -> usize {
        let mut w = Writer::default();
        w.u64(clock::ADVANCE)
            .u32(self.index)
            .u32(8)
            .u64(budget as u64);
        if conn::lock(&self.conn)
            .post(Command::RegionWrite, &[&w.0])
            .is_err()
        {
            return 0;
        }
        self.read_u64(clock::RAN) as usize
    }

    /// Units done since reset.
    pub fn work_done(&self) -> u64 {
        self.read_u64(clock::WORK_DONE)
    }

    /// Throttle the engine.
    pub fn set_throttle(&self, percent: u8) {
        let mut w = Writer::default();
        w.u64(clock::THROTTLE)
            .u32(self.index)
            .u32(8)
            .u64(u64::from(percent));
        let _ = conn::lock(&self.conn).request(Command::RegionWrite, &[&w.0], &[]);
    }

    /// (mid-work, offset, latched interrupt causes).
    pub fn position(&self) -> (bool, u32, u32) {
        let p = self.read_u64(clock::POSITION);
        let irq = self.read_u64(clock::IRQ_STATUS);
        (p & clock::POSITION_MID_WORK != 0, p as u32, irq as u32)
    }

    /// The engine's one-line description (or why it cannot be had).
    pub fn describe(&self) -> String {
        match self.read(clock::DESCRIBE, clock::DESCRIBE_LEN) {
            Some(b) => {
                let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                format!(
                    "{} (in the device process)",
                    String::from_utf8_lossy(&b[..end])
                )
            }
            None => match conn::lock(&self.conn).alive() {
                Err(e) => e.to_string(),
                Ok(()) => "device process did not describe its engine".into(),
            },
        }
    }
}
