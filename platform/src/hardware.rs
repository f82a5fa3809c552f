//! The vGPU's render engine as the simulated platform's hardware.

use std::any::Any;
use std::sync::{Arc, Mutex};

use mdev_core::VfioDevice;
use vfio_bindings::bindings::vfio::VFIO_PCI_BAR0_REGION_INDEX;
use vgpu_sim::device::shared::lock;
use vgpu_sim::regs::{
    ENGINE_IN_BATCH, REG_BB_OFFSET, REG_CMD_COUNT, REG_ENGINE_STATUS, REG_ERROR_STATUS, REG_IIR,
};
use vgpu_sim::Vgpu;
use vmm::{HardwarePosition, SimHardware};

/// The engine of a shared vGPU, advanced by the platform between vCPU steps.
#[derive(Debug)]
pub struct VgpuHardware {
    dev: Arc<Mutex<Vgpu>>,
}

impl VgpuHardware {
    /// The engine of `dev`.
    pub fn new(dev: Arc<Mutex<Vgpu>>) -> Self {
        Self { dev }
    }

    /// The device.
    pub fn handle(&self) -> Arc<Mutex<Vgpu>> {
        self.dev.clone()
    }

    fn reg(&self, reg: u32) -> u32 {
        let mut b = [0u8; 4];
        match lock(&self.dev).region_read(VFIO_PCI_BAR0_REGION_INDEX, u64::from(reg), &mut b) {
            Ok(()) => u32::from_le_bytes(b),
            Err(_) => u32::MAX,
        }
    }
}

impl SimHardware for VgpuHardware {
    fn advance(&mut self, budget: usize) -> usize {
        lock(&self.dev).run(budget)
    }

    fn work_done(&mut self) -> u64 {
        u64::from(self.reg(REG_CMD_COUNT))
    }

    fn set_throttle(&mut self, percent: u8) {
        lock(&self.dev).set_throttle(percent);
    }

    fn describe(&mut self) -> String {
        format!(
            "engine status {:#x}, error status {:#x}",
            self.reg(REG_ENGINE_STATUS),
            self.reg(REG_ERROR_STATUS)
        )
    }

    fn position(&mut self) -> HardwarePosition {
        HardwarePosition {
            mid_work: self.reg(REG_ENGINE_STATUS) & ENGINE_IN_BATCH != 0,
            offset: self.reg(REG_BB_OFFSET),
            irq_status: self.reg(REG_IIR),
        }
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}
