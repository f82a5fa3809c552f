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
        return Ok(Arc::new(serial_sim::compose::SerialFactory::default()));
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
pub fn run(
    socket: &Path,
    device_type: &str,
    tracking: &str,
    features: &str,
    deadline_ms: u64,
    max_data_xfer_size: u32,
    log: &Logger,
) -> Result<()> {
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
    let server = Server::new(
        vgpu_platform::device_factory(factory, device_type),
        cfg,
        log.clone(),
    );
    server
        .serve(listener, Arc::new(AtomicBool::new(false)))
        .map_err(|source| CliError::File {
            what: "cannot accept on",
            path: socket.to_path_buf(),
            source,
        })
}

/// The factory for `--device`: `inner` itself for `in-process`, or a VM whose device is
/// the one served at `vfio-user:PATH` (with `inner`'s guest and layout).
pub fn attach(device: &str, inner: Arc<dyn VmFactory>) -> Result<Arc<dyn VmFactory>> {
    match device.split_once(':') {
        _ if device == "in-process" => Ok(inner),
        Some(("vfio-user", path)) if !path.is_empty() => Ok(Arc::new(
            vgpu_platform::RemoteFactory::new(inner, path.into()),
        )),
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
