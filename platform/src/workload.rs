//! Host-side workload operations on a vGPU VM, through guest-physical accesses and region
//! reads only.

use sha2::{Digest, Sha256};
use slog::info;
use vfio_bindings::bindings::vfio::{VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR2_REGION_INDEX};
use vgpu_sim::regs;
use vgpu_sim::workload::{self, Params};
use vmm::{Vm, VmmError};

/// The driver's bus over a VM's guest-physical space (host-side loader and readers).
struct HostBus<'a>(&'a mut Vm);

impl workload::GuestBus for HostBus<'_> {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) {
        self.0.guest_read(gpa, buf);
    }
    fn write(&mut self, gpa: u64, buf: &[u8]) {
        self.0.guest_write(gpa, buf);
    }
}

/// The vGPU workload's host-side operations on a VM.
pub trait VgpuVm {
    /// Firmware (BARs placed), then the loader writes the workload parameters into guest
    /// RAM.
    fn boot(&mut self, params: &Params) -> vmm::Result<()>;
    /// Change the driver's frame limit (the host's knob in the parameter block).
    fn set_frame_limit(&mut self, frames: u64) -> vmm::Result<()>;
    /// The workload parameters in guest RAM.
    fn params(&mut self) -> Option<Params>;
    /// The first `frames` entries of the checksum log.
    fn checksums(&mut self, frames: u64) -> Vec<u64>;
    /// A device register, read through BAR0's region (host side).
    fn reg(&mut self, reg: u32) -> u32;
    /// Graphics memory size (BAR2's region).
    fn gmem_size(&mut self) -> u64;
    /// SHA-256 of graphics memory, read through the aperture region.
    fn gmem_digest(&mut self) -> [u8; 32];
    /// The displayed frame as RGBA rows: (width, height, pixels).
    fn display_frame(&mut self) -> Option<(u32, u32, Vec<u8>)>;
}

fn bad_params(e: workload::DriverError) -> VmmError {
    VmmError::Workload {
        source: Box::new(e),
    }
}

impl VgpuVm for Vm {
    fn boot(&mut self, params: &Params) -> vmm::Result<()> {
        let gmem = self.gmem_size();
        params.validate(gmem).map_err(bad_params)?;
        self.firmware()?;
        params.store(&mut HostBus(self));
        info!(self.log(), "workload loaded"; "seed" => params.seed, "frames" => params.frame_limit);
        Ok(())
    }

    fn set_frame_limit(&mut self, frames: u64) -> vmm::Result<()> {
        let mut bus = HostBus(self);
        let mut p = Params::load(&mut bus).ok_or_else(|| VmmError::DriverFailed {
            why: "no workload parameters in guest RAM".into(),
        })?;
        p.frame_limit = frames;
        p.validate(u64::MAX).map_err(bad_params)?;
        p.store(&mut bus);
        Ok(())
    }

    fn params(&mut self) -> Option<Params> {
        Params::load(&mut HostBus(self))
    }

    fn checksums(&mut self, frames: u64) -> Vec<u64> {
        workload::checksum_log(&mut HostBus(self), frames)
    }

    fn reg(&mut self, reg: u32) -> u32 {
        let mut b = [0u8; 4];
        match self
            .device()
            .region_read(VFIO_PCI_BAR0_REGION_INDEX, u64::from(reg), &mut b)
        {
            Ok(()) => u32::from_le_bytes(b),
            Err(_) => u32::MAX,
        }
    }

    fn gmem_size(&mut self) -> u64 {
        self.device_ref()
            .region_info(VFIO_PCI_BAR2_REGION_INDEX)
            .map(|i| i.size())
            .unwrap_or(0)
    }

    fn gmem_digest(&mut self) -> [u8; 32] {
        let size = self.gmem_size();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < size {
            let n = (size - off).min(buf.len() as u64) as usize;
            if self
                .device()
                .region_read(VFIO_PCI_BAR2_REGION_INDEX, off, &mut buf[..n])
                .is_err()
            {
                break;
            }
            h.update(&buf[..n]);
            off += n as u64;
        }
        h.finalize().into()
    }

    fn display_frame(&mut self) -> Option<(u32, u32, Vec<u8>)> {
        if self.reg(regs::REG_DSP_CTL) & regs::DSP_CTL_ENABLE == 0 {
            return None;
        }
        let surf = u64::from(self.reg(regs::REG_DSP_SURF));
        let stride = u64::from(self.reg(regs::REG_DSP_STRIDE));
        let size = self.reg(regs::REG_DSP_SIZE);
        let (w, h) = (size & 0xffff, size >> 16);
        if w == 0 || h == 0 || stride < u64::from(w) * 4 {
            return None;
        }
        let mut out = Vec::with_capacity((w * h * 4) as usize);
        let mut row = vec![0u8; w as usize * 4];
        for y in 0..u64::from(h) {
            self.device()
                .region_read(VFIO_PCI_BAR2_REGION_INDEX, surf + y * stride, &mut row)
                .ok()?;
            for px in row.chunks_exact(4) {
                // ARGB little-endian in memory: B, G, R, A.
                out.extend_from_slice(&[px[2], px[1], px[0], 0xff]);
            }
        }
        Some((w, h, out))
    }
}
