//! `vgpu-migrate serve`: one device as a vfio-user server (its own process).

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use slog::{info, Logger};
use vfio_user::server::{Server, ServerConfig};
use vmm::VmFactory;

use super::{parse_features, parse_tracking, CliError, Result};

/// The factory that builds a device of `device_type`: the serial device for its type, the
/// vGPU for the others.
pub fn factory_for(
    device_type: &str,
    tracking: &str,
    features: &str,
) -> Result<Arc<dyn VmFactory>> {
    if device_type == serial_sim::compose::DEVICE_TYPE {
        return Ok(Arc::new(serial_sim::compose::SerialFactory {
            migration_features: parse_features(features)?,
            ..Default::default()
        }));
    }
    vgpu_sim::VgpuType::by_name(device_type).map_err(|e| CliError::Usage {
        msg: format!("--type: {e}"),
    })?;
    Ok(vgpu_platform::factory_with(
        parse_tracking(tracking)?,
        parse_features(features)?,
    ))
}

/// Serve a device of `device_type` on `socket` until killed.
#[allow(clippy::too_many_arguments)]
pub fn run(
    socket: &Path,
    device_type: &str,
    tracking: &str,
    features: &str,
    deadline_ms: u64,
    max_data_xfer_size: u32,
    exit_at: Option<&str>,
    log: &Logger,
) -> Result<()> {
    let exit_at = exit_at.map(ExitAt::parse).transpose()?;
    if !(4096..=(16 << 20)).contains(&max_data_xfer_size) {
        return Err(CliError::Usage {
            msg: format!("--max-data-xfer-size {max_data_xfer_size} is outside 4096..=16777216"),
        });
    }
    let factory = factory_for(device_type, tracking, features)?;
    if socket.exists() {
        std::fs::remove_file(socket).map_err(|source| CliError::File {
            what: "cannot remove the stale socket",
            path: socket.to_path_buf(),
            source,
        })?;
    }
    let listener = UnixListener::bind(socket).map_err(|source| CliError::File {
        what: "cannot listen on",
        path: socket.to_path_buf(),
        source,
    })?;
    let mut cfg = ServerConfig {
        deadline: Duration::from_millis(deadline_ms.max(1)),
        ..ServerConfig::default()
    };
    cfg.caps.max_data_xfer_size = max_data_xfer_size;
    if let Some(m) = cfg.caps.migration.as_mut() {
        m.max_bitmap_size = u64::from(max_data_xfer_size);
    }
    info!(log, "serving"; "socket" => %socket.display(), "type" => device_type, "pid" => std::process::id());
    let mut devices = vgpu_platform::device_factory(factory, device_type);
    if let Some(at) = exit_at {
        devices = Arc::new(Exiting { inner: devices, at });
    }
    let server = Server::new(devices, cfg, log.clone());
    server
        .serve(listener, Arc::new(AtomicBool::new(false)))
        .map_err(|source| CliError::File {
            what: "cannot accept on",
            path: socket.to_path_buf(),
            source,
        })
}

/// The factory for `--device`: `inner` itself for `in-process`, or a VM whose device is
/// the one served at `vfio-user:PATH` (with `inner`'s guest and layout), reaching guest
/// RAM by message if `dma_by_message`.
pub fn attach(
    device: &str,
    dma_by_message: bool,
    inner: Arc<dyn VmFactory>,
) -> Result<Arc<dyn VmFactory>> {
    match device.split_once(':') {
        _ if device == "in-process" && !dma_by_message => Ok(inner),
        Some(("vfio-user", path)) if !path.is_empty() => {
            let mut f = vgpu_platform::RemoteFactory::new(inner, path.into());
            f.client.dma_by_message = dma_by_message;
            Ok(Arc::new(f))
        }
        _ if device == "in-process" => Err(CliError::Usage {
            msg: "--dma-by-message needs --device vfio-user:PATH".into(),
        }),
        _ => Err(CliError::Usage {
            msg: format!("--device '{device}' is not in-process or vfio-user:PATH"),
        }),
    }
}

/// A `serve` child of this program, killed when dropped.
#[derive(Debug)]
pub struct DeviceProcess {
    child: std::process::Child,
    socket: std::path::PathBuf,
}

impl DeviceProcess {
    /// Start `serve --type device_type --socket socket` with `extra` arguments and wait (a
    /// minute at most) until it listens.
    pub fn start(socket: &Path, device_type: &str, extra: &[&str]) -> Result<Self> {
        let exe = std::env::current_exe().map_err(|e| CliError::Check {
            msg: format!("cannot find this program to start a device process: {e}"),
        })?;
        let _ = std::fs::remove_file(socket);
        let child = std::process::Command::new(exe)
            .args(["serve", "--type", device_type, "--socket"])
            .arg(socket)
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| CliError::Check {
                msg: format!("cannot start a device process: {e}"),
            })?;
        let mut me = Self {
            child,
            socket: socket.to_path_buf(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !me.socket.exists() {
            if let Ok(Some(status)) = me.child.try_wait() {
                return Err(CliError::Check {
                    msg: format!("the device process exited before it listened ({status})"),
                });
            }
            if std::time::Instant::now() > deadline {
                return Err(CliError::Check {
                    msg: "the device process did not listen within a minute".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(me)
    }

    /// `--device` value that attaches this device.
    pub fn device_arg(&self) -> String {
        format!("vfio-user:{}", self.socket.display())
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for DeviceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Where a device process dies on purpose (testing the client's fault handling): the
/// process exits the moment its device is asked for that migration step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitAt {
    /// On a request to enter STOP_COPY (the source's switchover).
    StopCopy,
    /// On a request to leave RESUMING (the target's load, inside the downtime).
    ResumeEnd,
}

impl ExitAt {
    /// Parse `--exit-at`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "stop-copy" => Ok(Self::StopCopy),
            "resume-end" => Ok(Self::ResumeEnd),
            _ => Err(CliError::Usage {
                msg: format!("--exit-at '{s}' is not stop-copy or resume-end"),
            }),
        }
    }
}

/// A device factory whose devices make the process exit at `at`.
#[derive(Debug)]
struct Exiting {
    inner: Arc<dyn vfio_user::server::DeviceFactory>,
    at: ExitAt,
}

impl vfio_user::server::DeviceFactory for Exiting {
    fn create(
        &self,
        mem: &vmm::memory::GuestMem,
        log: &Logger,
    ) -> std::result::Result<vfio_user::server::ServedDevice, String> {
        let mut d = self.inner.create(mem, log)?;
        let (flags, state) = d
            .device
            .migration()
            .map_or((0, mdev_core::MigState::Running), |m| {
                (m.migration_flags(), m.mig_state())
            });
        d.device = Box::new(ExitingDevice {
            inner: d.device,
            at: self.at,
            flags,
            state,
        });
        Ok(d)
    }
}

/// A device that makes the process exit when asked for the migration step `at`.
#[derive(Debug)]
struct ExitingDevice {
    inner: Box<dyn mdev_core::VfioDevice>,
    at: ExitAt,
    /// The inner device's migration flags (read once: `migration_flags` takes `&self`).
    flags: u32,
    /// The inner device's state after the last call that can change it.
    state: mdev_core::MigState,
}

impl ExitingDevice {
    fn mig(
        &mut self,
    ) -> std::result::Result<&mut dyn mdev_core::MigrationDevice, mdev_core::MigrationError> {
        self.inner
            .migration()
            .ok_or(mdev_core::MigrationError::NoStream {
                what: "migration",
                state: mdev_core::MigState::Error,
            })
    }
}

impl mdev_core::VfioDevice for ExitingDevice {
    fn device_info(&self) -> vfio_bindings::bindings::vfio::vfio_device_info {
        self.inner.device_info()
    }
    fn region_info(&self, index: u32) -> mdev_core::device::Result<mdev_core::RegionInfo> {
        self.inner.region_info(index)
    }
    fn region_read(
        &mut self,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> mdev_core::device::Result<()> {
        self.inner.region_read(index, offset, data)
    }
    fn region_write(
        &mut self,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> mdev_core::device::Result<()> {
        self.inner.region_write(index, offset, data)
    }
    fn irq_info(
        &self,
        index: u32,
    ) -> mdev_core::device::Result<vfio_bindings::bindings::vfio::vfio_irq_info> {
        self.inner.irq_info(index)
    }
    fn set_irqs(
        &mut self,
        index: u32,
        start: u32,
        count: u32,
        sink: Option<Arc<dyn mdev_core::IrqSink>>,
    ) -> mdev_core::device::Result<()> {
        self.inner.set_irqs(index, start, count, sink)
    }
    fn reset(&mut self) -> mdev_core::device::Result<()> {
        let r = self.inner.reset();
        if let Some(m) = self.inner.migration() {
            self.state = m.mig_state();
        }
        r
    }
    fn migration(&mut self) -> Option<&mut dyn mdev_core::MigrationDevice> {
        if self.inner.migration().is_some() {
            Some(self)
        } else {
            None
        }
    }
    fn dma_dirty_log(&mut self) -> Option<&mut dyn mdev_core::DmaDirtyLog> {
        self.inner.dma_dirty_log()
    }
}

impl mdev_core::MigrationDevice for ExitingDevice {
    fn migration_flags(&self) -> u32 {
        self.flags
    }
    fn mig_state(&self) -> mdev_core::MigState {
        self.state
    }
    fn set_mig_state(
        &mut self,
        target: mdev_core::MigState,
    ) -> std::result::Result<mdev_core::MigTransition, mdev_core::MigrationError> {
        let at = self.at;
        let m = self.mig()?;
        let exit = match at {
            ExitAt::StopCopy => target == mdev_core::MigState::StopCopy,
            ExitAt::ResumeEnd => {
                m.mig_state() == mdev_core::MigState::Resuming && target != m.mig_state()
            }
        };
        if exit {
            eprintln!(
                "device process: exiting at {:?} as asked (--exit-at)",
                self.at
            );
            std::process::exit(3);
        }
        let r = m.set_mig_state(target);
        let now = m.mig_state();
        self.state = now;
        r
    }
    fn read_data(
        &mut self,
        stream: mdev_core::DataStream,
        buf: &mut [u8],
    ) -> std::result::Result<usize, mdev_core::MigrationError> {
        self.mig()?.read_data(stream, buf)
    }
    fn write_data(
        &mut self,
        stream: mdev_core::DataStream,
        buf: &[u8],
    ) -> std::result::Result<usize, mdev_core::MigrationError> {
        self.mig()?.write_data(stream, buf)
    }
    fn close_data(&mut self, stream: mdev_core::DataStream) {
        if let Ok(m) = self.mig() {
            m.close_data(stream);
        }
    }
    fn precopy_info(
        &mut self,
    ) -> std::result::Result<
        vfio_bindings::bindings::vfio::vfio_precopy_info,
        mdev_core::MigrationError,
    > {
        self.mig()?.precopy_info()
    }
    fn stop_copy_size(&mut self) -> std::result::Result<u64, mdev_core::MigrationError> {
        self.mig()?.stop_copy_size()
    }
}
