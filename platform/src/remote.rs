//! A device served by another process (vfio-user), composed like an in-process one.
//!
//! [`RemoteFactory`] takes the layout and the guest program from another factory (the
//! vGPU's, the serial device's) and replaces its device with a [`vfio_user::client::Client`]
//! connected to the device process, and its hardware with [`RemoteHardware`], which
//! advances the device's engine through the server's clock region. Guest RAM is shared
//! memory, mapped into the device process with `DMA_MAP`, or, with
//! `ClientConfig::dma_by_message`, private memory the device reaches by `DMA_READ`/
//! `DMA_WRITE` messages. The VMM above the VFIO contract sees no difference.

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;

use slog::Logger;
use vfio_user::client::{Client, ClientConfig, RemoteClock};
use vmm::memory::GuestMem;
use vmm::{HardwarePosition, MachineParts, PlatformLayout, SimHardware, VmFactory};

/// Builds VMs whose device lives in a vfio-user device process.
#[derive(Debug, Clone)]
pub struct RemoteFactory {
    /// The factory whose layout and guest program the VM uses (its device is not used).
    pub inner: Arc<dyn VmFactory>,
    /// The device process's socket.
    pub socket: PathBuf,
    /// Deadlines and transfer size of the client.
    pub client: ClientConfig,
}

impl RemoteFactory {
    /// A factory for devices at `socket`, with `inner`'s layout and guest.
    pub fn new(inner: Arc<dyn VmFactory>, socket: PathBuf) -> Self {
        Self {
            inner,
            socket,
            client: ClientConfig::default(),
        }
    }
}

impl VmFactory for RemoteFactory {
    fn layout(&self) -> PlatformLayout {
        self.inner.layout()
    }

    fn parts(
        &self,
        device_type: &str,
        mem: &GuestMem,
        log: &Logger,
    ) -> Result<MachineParts, Box<dyn std::error::Error + Send + Sync>> {
        let local = self.inner.parts(device_type, mem, log)?;
        let mut client = Client::connect(&self.socket, mem, &self.client, log)?;
        // A device process keeps a device's state across clients (the spec's "retained");
        // a new VM starts from a reset device, as vfio-pci resets a device at VM start.
        mdev_core::VfioDevice::reset(&mut client)?;
        let hardware: Box<dyn SimHardware> = match client.clock() {
            Some(clock) => Box::new(RemoteHardware { clock }),
            None => Box::new(RemoteEvents {
                irqs: client.irq_poller(),
            }),
        };
        Ok(MachineParts {
            device: Box::new(client),
            hardware,
            guest: local.guest,
            image: local.image,
        })
    }

    /// Shared memory for the descriptors of `DMA_MAP`; private memory when the device
    /// reaches guest RAM by message (`ClientConfig::dma_by_message`).
    fn shared_memory(&self) -> bool {
        !self.client.dma_by_message
    }
}

/// A device in another process that runs on its own (no clock region, e.g. another
/// project's vfio-user server): nothing to advance, but the interrupts it raises between
/// requests are taken from their eventfds at every platform step.
#[derive(Debug)]
pub struct RemoteEvents {
    irqs: vfio_user::client::IrqPoller,
}

impl SimHardware for RemoteEvents {
    fn advance(&mut self, _budget: usize) -> usize {
        self.irqs.poll();
        0
    }
    fn work_done(&mut self) -> u64 {
        0
    }
    fn set_throttle(&mut self, _percent: u8) {}
    fn describe(&mut self) -> String {
        match self.irqs.alive() {
            Ok(()) => "a device in another process that runs on its own".into(),
            Err(e) => e.to_string(),
        }
    }
    fn position(&mut self) -> HardwarePosition {
        HardwarePosition::default()
    }
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// The engine of a device in another process, advanced through its clock region.
#[derive(Debug)]
pub struct RemoteHardware {
    clock: RemoteClock,
}

impl SimHardware for RemoteHardware {
    fn advance(&mut self, budget: usize) -> usize {
        self.clock.advance(budget)
    }
    fn work_done(&mut self) -> u64 {
        self.clock.work_done()
    }
    fn set_throttle(&mut self, percent: u8) {
        self.clock.set_throttle(percent);
    }
    fn describe(&mut self) -> String {
        self.clock.describe()
    }
    fn position(&mut self) -> HardwarePosition {
        let (mid_work, offset, irq_status) = self.clock.position();
        HardwarePosition {
            mid_work,
            offset,
            irq_status,
        }
    }
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// The device side: serve the device that `inner` builds for `device_type` (its engine
/// advanced through the clock region).
pub fn device_factory(
    inner: Arc<dyn VmFactory>,
    device_type: &str,
) -> Arc<dyn vfio_user::server::DeviceFactory> {
    Arc::new(ServedVm {
        inner,
        device_type: device_type.to_string(),
    })
}

/// A [`VmFactory`]'s device and hardware, served.
#[derive(Debug)]
struct ServedVm {
    inner: Arc<dyn VmFactory>,
    device_type: String,
}

impl vfio_user::server::DeviceFactory for ServedVm {
    fn create(
        &self,
        mem: &GuestMem,
        log: &Logger,
    ) -> Result<vfio_user::server::ServedDevice, String> {
        let parts = self
            .inner
            .parts(&self.device_type, mem, log)
            .map_err(|e| e.to_string())?;
        Ok(vfio_user::server::ServedDevice {
            device: parts.device,
            hardware: Some(Box::new(Engine(parts.hardware))),
        })
    }
}

/// A platform's hardware as the server's clock drives it.
#[derive(Debug)]
struct Engine(Box<dyn SimHardware>);

impl vfio_user::clock::Hardware for Engine {
    fn advance(&mut self, budget: usize) -> usize {
        self.0.advance(budget)
    }
    fn work_done(&mut self) -> u64 {
        self.0.work_done()
    }
    fn set_throttle(&mut self, percent: u8) {
        self.0.set_throttle(percent);
    }
    fn describe(&mut self) -> String {
        self.0.describe()
    }
    fn position(&mut self) -> (bool, u32, u32) {
        let p = self.0.position();
        (p.mid_work, p.offset, p.irq_status)
    }
}
