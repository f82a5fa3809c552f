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
    log: &Logger,
) -> Result<()> {
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
    let cfg = ServerConfig {
        deadline: Duration::from_millis(deadline_ms.max(1)),
        ..ServerConfig::default()
    };
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
