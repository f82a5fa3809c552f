//! The composition with the VMM: the only part of this crate that uses `vmm`, and only
//! its platform traits and public VM API. [`SerialFactory`] builds VMs of type
//! [`DEVICE_TYPE`] on [`layout`]; [`boot`], [`set_limit`], [`status`] and [`receive_log`]
//! are the host's workload operations, done through guest-physical accesses.

mod guest;

use std::any::Any;
use std::sync::{Arc, Mutex};

use slog::Logger;
use vmm::memory::GuestMem;
use vmm::{HardwarePosition, MachineParts, PlatformLayout, SimHardware, Vm, VmFactory};

use crate::device::shared::lock;
use crate::device::{Serial, SerialConfig, SharedSerial};

pub use guest::{
    fnv, key_for, stream_byte, SerialGuest, FNV_BASIS, LOG_CAP, LOG_GPA, PARAMS_GPA, PARAMS_MAGIC,
    PHASE_DONE, PHASE_FAILED, PHASE_INIT, PHASE_RUNNING, STATE_GPA,
};

/// The one device type this factory builds.
pub const DEVICE_TYPE: &str = "serial-16";
/// Guest RAM must end at or below this address.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// Smallest guest RAM the driver runs in (params, state and a full log).
pub const MIN_RAM: u64 = 2 << 20;
/// The device's ECAM window.
pub const ECAM_GPA: u64 = 0xe000_0000;
/// Where the firmware places BAR0.
pub const BAR0_GPA: u64 = 0xd000_0000;
/// Where the firmware places BAR2.
pub const BAR2_GPA: u64 = 0xd001_0000;

/// The layout the serial driver runs on.
pub fn layout() -> PlatformLayout {
    PlatformLayout {
        mmio_hole_start: MMIO_HOLE_START,
        min_ram: MIN_RAM,
        ecam_gpa: ECAM_GPA,
        bar_gpas: vec![(0, BAR0_GPA), (2, BAR2_GPA)],
    }
}

/// Builds serial VMs.
#[derive(Debug, Clone, Copy)]
pub struct SerialFactory {
    /// Expose the v1 migration region (see [`SerialConfig::v1_region`]).
    pub v1_region: bool,
    /// Offer an (always clean) DMA dirty log (see [`SerialConfig::dma_log`]).
    pub dma_log: bool,
    /// The v2 migration features the device offers (see
    /// [`SerialConfig::migration_features`]).
    pub migration_features: u32,
}

impl Default for SerialFactory {
    /// v1 region on, no DMA log.
    fn default() -> Self {
        Self {
            v1_region: true,
            dma_log: false,
            migration_features: crate::device::MIGRATION_FEATURES,
        }
    }
}

/// An unknown device type was asked for.
#[derive(Debug, snafu::Snafu)]
#[snafu(display("unknown device type '{name}' (this factory builds '{DEVICE_TYPE}')"))]
pub struct UnknownType {
    /// The name asked for.
    pub name: String,
}

impl VmFactory for SerialFactory {
    fn layout(&self) -> PlatformLayout {
        layout()
    }

    fn parts(
        &self,
        device_type: &str,
        _mem: &GuestMem,
        log: &Logger,
    ) -> Result<MachineParts, Box<dyn std::error::Error + Send + Sync>> {
        if device_type != DEVICE_TYPE {
            return Err(Box::new(UnknownType {
                name: device_type.into(),
            }));
        }
        let cfg = SerialConfig {
            v1_region: self.v1_region,
            dma_log: self.dma_log,
            migration_features: self.migration_features,
            log: log.clone(),
        };
        let dev = SharedSerial::new(Serial::new(&cfg)?);
        Ok(MachineParts {
            hardware: Box::new(SerialLine { dev: dev.handle() }),
            device: Box::new(dev),
            guest: Box::new(SerialGuest { ecam_gpa: ECAM_GPA }),
            image: None,
        })
    }
}

/// The device's line as the simulated platform's hardware: one byte per unit of work.
#[derive(Debug)]
pub struct SerialLine {
    dev: Arc<Mutex<Serial>>,
}

impl SerialLine {
    /// The device (test hooks).
    pub fn handle(&self) -> Arc<Mutex<Serial>> {
        self.dev.clone()
    }
}

impl SimHardware for SerialLine {
    fn advance(&mut self, budget: usize) -> usize {
        lock(&self.dev).advance(budget)
    }
    fn work_done(&mut self) -> u64 {
        lock(&self.dev).rx_count()
    }
    fn set_throttle(&mut self, _percent: u8) {}
    fn describe(&mut self) -> String {
        let d = lock(&self.dev);
        format!(
            "RX level {}, ISR {:#x}, {} bytes moved",
            d.rx_level(),
            d.isr(),
            d.rx_count()
        )
    }
    fn position(&mut self) -> HardwarePosition {
        let d = lock(&self.dev);
        HardwarePosition {
            mid_work: d.rx_level() > 0,
            offset: d.rx_level() as u32,
            irq_status: d.isr(),
        }
    }
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// The device behind a serial VM (test hooks; never used by the VMM). `None` for a VM
/// another factory built.
pub fn serial_of(vm: &mut Vm) -> Option<Arc<Mutex<Serial>>> {
    vm.hardware()
        .as_any()
        .downcast_mut::<SerialLine>()
        .map(|l| l.handle())
}

/// Host errors of the workload operations.
#[derive(Debug, snafu::Snafu)]
pub enum HostError {
    /// The VMM failed.
    #[snafu(display("{source}"))]
    Vmm {
        /// The cause.
        source: vmm::VmmError,
    },
    /// Guest RAM access failed.
    #[snafu(display("guest RAM: {source}"))]
    Memory {
        /// The cause.
        source: vmm::memory::MemoryError,
    },
    /// A limit over the log's capacity.
    #[snafu(display("limit {limit} is over the log capacity {LOG_CAP}"))]
    Limit {
        /// The limit asked for.
        limit: u64,
    },
}

fn write_ram(vm: &Vm, gpa: u64, data: &[u8]) -> Result<(), HostError> {
    vmm::memory::write(vm.memory(), gpa, data).map_err(|source| HostError::Memory { source })
}

fn read_ram(vm: &Vm, gpa: u64, buf: &mut [u8]) -> Result<(), HostError> {
    vmm::memory::read(vm.memory(), gpa, buf).map_err(|source| HostError::Memory { source })
}

/// Firmware (BARs placed) and the driver's parameters: send `limit` bytes of `seed`'s
/// stream, take interrupts on `vector`.
pub fn boot(vm: &mut Vm, seed: u64, limit: u64, vector: u8) -> Result<(), HostError> {
    snafu::ensure!(limit <= LOG_CAP, LimitSnafu { limit });
    vm.firmware().map_err(|source| HostError::Vmm { source })?;
    let mut p = Vec::with_capacity(24);
    p.extend_from_slice(&PARAMS_MAGIC.to_le_bytes());
    p.extend_from_slice(&u32::from(vector).to_le_bytes());
    p.extend_from_slice(&seed.to_le_bytes());
    p.extend_from_slice(&limit.to_le_bytes());
    write_ram(vm, PARAMS_GPA, &p)
}

/// Change how many bytes the driver sends in all (the host's knob).
pub fn set_limit(vm: &mut Vm, limit: u64) -> Result<(), HostError> {
    snafu::ensure!(limit <= LOG_CAP, LimitSnafu { limit });
    write_ram(vm, PARAMS_GPA + 16, &limit.to_le_bytes())
}

/// The driver's state, read from guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestStatus {
    /// Phase (`PHASE_*`).
    pub phase: u32,
    /// Running FNV-1a checksum of the received bytes.
    pub checksum: u32,
    /// Bytes written to TX.
    pub sent: u64,
    /// Bytes received into the log.
    pub received: u64,
}

/// Read the driver's state.
pub fn status(vm: &Vm) -> Result<GuestStatus, HostError> {
    let mut b = [0u8; 24];
    read_ram(vm, STATE_GPA, &mut b)?;
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    Ok(GuestStatus {
        phase: u32_at(0),
        checksum: u32_at(4),
        sent: u64_at(8),
        received: u64_at(16),
    })
}

/// The received bytes the driver logged.
pub fn receive_log(vm: &Vm) -> Result<Vec<u8>, HostError> {
    let n = status(vm)?.received.min(LOG_CAP) as usize;
    let mut log = vec![0u8; n];
    read_ram(vm, LOG_GPA, &mut log)?;
    Ok(log)
}
