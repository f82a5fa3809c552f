//! A KVM vCPU backend: one hardware-virtualised vCPU running a guest in guest RAM.
//!
//! It knows nothing of the vGPU. A [`KvmMachine`] is a KVM VM with an in-kernel irqchip
//! (the LAPIC at `0xfee0_0000` is emulated by the kernel), every region of a
//! [`GuestMem`] registered as a memory slot with dirty logging (the
//! guest and the VMM share the very same host pages), and one vCPU (id 0) with the host's
//! supported CPUID. Guest-physical addresses outside guest RAM are backed by no slot, so the
//! guest's accesses there exit as MMIO and reach an [`ExitHandler`], as do port I/O exits.
//!
//! Typical use:
//!
//! ```no_run
//! # use vmm::kvm::*;
//! # fn f(mem: &vmm::memory::GuestMem, log: slog::Logger, h: Box<dyn ExitHandler>) -> Result<()> {
//! available()?; // why not, when /dev/kvm is not usable here
//! let mut m = KvmMachine::new(mem, log)?;
//! m.setup_long_mode(&BootSpec { tables_gpa: 0x1000, entry: 0x10_0000, stack_top: 0x8_0000 })?;
//! let vcpu = m.spawn(h)?; // KVM_RUN loop on its own thread
//! m.signal_msi(0xfee0_0000, 0x41)?; // from any thread
//! vcpu.pause(std::time::Duration::from_secs(5))?; // kick and wait until parked
//! let dirty = m.harvest_dirty()?; // pages the guest wrote, and clear
//! let state = vcpu.save_state()?.to_bytes();
//! vcpu.resume()?;
//! vcpu.stop()?;
//! # Ok(()) }
//! ```
//!
//! * [`boot`]: GDT and identity page tables, long-mode registers;
//! * [`vcpu`]: the vCPU thread, exits, pause by kick, resume, stop;
//! * [`state`]: vCPU state save, restore and its byte record;
//! * [`dirty`]: harvesting KVM's dirty log;
//! * [`irq`]: MSIs (`KVM_SIGNAL_MSI`), MSI routes and irqfds.

pub mod boot;
pub mod dirty;
pub mod error;
pub mod irq;
pub mod state;
pub mod vcpu;

#[cfg(test)]
mod asm;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_state;

use std::collections::BTreeMap;
use std::sync::Mutex;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use slog::{debug, Logger};
use snafu::{OptionExt, ResultExt};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::GuestMem;

pub use boot::{BootSpec, BOOT_TABLES_LEN};
pub use error::{KvmError, Result};
pub use state::KvmVcpuState;
pub use vcpu::{ExitAction, ExitHandler, VcpuHandle};

use error::{CreateVmSnafu, HostAddressSnafu, IoctlSnafu, MemorySlotSnafu, OpenSnafu};

/// Where KVM puts the three pages of its real-mode TSS (Intel without unrestricted guest):
/// just below the BIOS area at the top of 4 GiB, in the MMIO hole, never guest RAM.
const TSS_ADDRESS: usize = 0xfffb_d000;

/// Whether KVM is usable here: `/dev/kvm` opens and a VM can be created. The error says why
/// not (no device, no permission, no virtualisation support).
pub fn available() -> Result<()> {
    let kvm = Kvm::new().context(OpenSnafu)?;
    kvm.create_vm().context(CreateVmSnafu)?;
    Ok(())
}

/// One guest RAM region registered with KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// KVM memory slot number.
    pub slot: u32,
    /// First guest-physical byte.
    pub gpa: u64,
    /// Length in bytes.
    pub size: u64,
}

/// A KVM VM with an in-kernel irqchip, guest RAM as dirty-logged slots and one vCPU.
pub struct KvmMachine {
    vm: VmFd,
    /// The vCPU until [`spawn`](Self::spawn) hands it to its thread.
    vcpu: Option<VcpuFd>,
    /// A clone of the mapping (the same host pages): keeps them mapped while KVM uses them.
    mem: GuestMem,
    slots: Vec<Slot>,
    /// The MSRs saved with the vCPU state: the documented list that the host supports.
    msrs: Vec<u32>,
    /// Whether the 4 KiB `KVM_GET_XSAVE` holds the whole XSAVE state (else FPU only).
    xsave: bool,
    /// MSI routes by GSI (`KVM_SET_GSI_ROUTING` replaces the whole table).
    routes: Mutex<BTreeMap<u32, (u64, u32)>>,
    log: Logger,
}

impl std::fmt::Debug for KvmMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmMachine")
            .field("slots", &self.slots)
            .field("vcpu_spawned", &self.vcpu.is_none())
            .field("msrs", &self.msrs.len())
            .finish()
    }
}

impl KvmMachine {
    /// Create the VM: in-kernel irqchip, every region of `mem` as a memory slot with
    /// `KVM_MEM_LOG_DIRTY_PAGES` (slot `i` for the `i`-th region, same host pages), and
    /// vCPU 0 with the host's supported CPUID. The vCPU is in its reset state until
    /// [`setup_long_mode`](Self::setup_long_mode) or [`restore_state`](Self::restore_state).
    pub fn new(mem: &GuestMem, log: Logger) -> Result<Self> {
        let kvm = Kvm::new().context(OpenSnafu)?;
        let vm = kvm.create_vm().context(CreateVmSnafu)?;
        vm.set_tss_address(TSS_ADDRESS).context(IoctlSnafu {
            what: "KVM_SET_TSS_ADDR",
        })?;
        vm.create_irq_chip().context(IoctlSnafu {
            what: "KVM_CREATE_IRQCHIP",
        })?;
        let mut slots = Vec::new();
        for (i, region) in mem.iter().enumerate() {
            let gpa = region.start_addr().0;
            let size = region.len();
            let host = mem
                .get_host_address(region.start_addr())
                .ok()
                .context(HostAddressSnafu { gpa })?;
            let slot = i as u32;
            let r = kvm_userspace_memory_region {
                slot,
                flags: KVM_MEM_LOG_DIRTY_PAGES,
                guest_phys_addr: gpa,
                memory_size: size,
                userspace_addr: host as u64,
            };
            // SAFETY: `host..host+size` is one region of the vm-memory mapping, which this
            // machine keeps alive (it holds a clone of `mem`, and the vCPU thread another),
            // so the pages stay mapped for as long as the VM can touch them. Slots do not
            // overlap: vm-memory regions never do.
            unsafe { vm.set_user_memory_region(r) }.context(MemorySlotSnafu { slot, gpa, size })?;
            slots.push(Slot { slot, gpa, size });
        }
        let vcpu = vm.create_vcpu(0).context(IoctlSnafu {
            what: "KVM_CREATE_VCPU",
        })?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .context(IoctlSnafu {
                what: "KVM_GET_SUPPORTED_CPUID",
            })?;
        vcpu.set_cpuid2(&cpuid).context(IoctlSnafu {
            what: "KVM_SET_CPUID2",
        })?;
        let msrs = state::supported_msrs(&kvm)?;
        debug!(log, "KVM machine created"; "slots" => slots.len(), "msrs" => msrs.len());
        let xsave = state::xsave_fits(&vm);
        Ok(Self {
            vm,
            vcpu: Some(vcpu),
            mem: mem.clone(),
            slots,
            msrs,
            xsave,
            routes: Mutex::new(BTreeMap::new()),
            log,
        })
    }

    /// The memory slots, one per guest RAM region.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The MSRs that [`KvmVcpuState`] saves on this host (see [`state::MSRS`]).
    pub fn saved_msrs(&self) -> &[u32] {
        &self.msrs
    }

    /// The vCPU while no thread runs it.
    fn idle_vcpu(&self) -> Result<&VcpuFd> {
        self.vcpu.as_ref().context(error::AlreadySpawnedSnafu)
    }
}
