//! vCPU state: save, restore, and a versioned byte record.
//!
//! The record ([`KvmVcpuState::to_bytes`]): magic `b"KVMVCPU\0"`, version `u32`, total
//! length `u64` (the whole record), then nine parts in this order, each a `u32` length and
//! that many bytes: regs, sregs, fpu, xsave (empty when the host has no usable 4 KiB
//! `KVM_GET_XSAVE`), xcrs (empty likewise), lapic, msrs (16-byte `kvm_msr_entry` each, at
//! most [`MAX_MSRS`]), vcpu events, mp state. Every fixed part must be exactly its
//! kvm-bindings structure's size; all integers little-endian (the structures are native,
//! and this backend is x86-64 only).
//!
//! Save order follows Firecracker (`mp_state` first: `KVM_GET_MP_STATE` may accept pending
//! LAPIC events; vcpu events last). Restore order: sregs (restores APIC base and EFER), regs,
//! fpu, xsave, xcrs, lapic (after sregs, which sets the APIC base MSR; before MSRs, as the
//! TSC deadline MSR needs a configured LAPIC), msrs, vcpu events (after regs, which clears
//! pending exceptions), mp state last.

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events,
    kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use snafu::{ensure, ResultExt};

use super::error::{
    IoctlSnafu, KvmError, Result, StateLengthSnafu, StateMagicSnafu, StatePartSnafu,
    StateTooManyMsrsSnafu, StateTrailingSnafu, StateTruncatedSnafu, StateVersionSnafu,
};
use super::KvmMachine;

/// Magic at the start of a vCPU state record.
pub const MAGIC: [u8; 8] = *b"KVMVCPU\0";
/// Record version this build writes and reads.
pub const VERSION: u32 = 1;
/// Most MSRs a record may hold.
pub const MAX_MSRS: usize = 64;

/// The MSRs saved with a vCPU, when the host lists them in `KVM_GET_MSR_INDEX_LIST`:
/// TSC, TSC_ADJUST, APIC_BASE, SYSENTER_CS/ESP/EIP, MISC_ENABLE, PAT, TSC_DEADLINE, STAR,
/// LSTAR, CSTAR, SFMASK, KERNEL_GS_BASE, TSC_AUX.
pub const MSRS: [u32; 15] = [
    0x10,        // IA32_TSC
    0x3b,        // IA32_TSC_ADJUST
    0x1b,        // IA32_APIC_BASE
    0x174,       // IA32_SYSENTER_CS
    0x175,       // IA32_SYSENTER_ESP
    0x176,       // IA32_SYSENTER_EIP
    0x1a0,       // IA32_MISC_ENABLE
    0x277,       // IA32_PAT
    0x6e0,       // IA32_TSC_DEADLINE
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0103, // TSC_AUX
];

/// The documented [`MSRS`] that this host's KVM supports (APIC_BASE is always kept: KVM
/// handles it even when it does not list it).
pub(crate) fn supported_msrs(kvm: &Kvm) -> Result<Vec<u32>> {
    let list = kvm.get_msr_index_list().context(IoctlSnafu {
        what: "KVM_GET_MSR_INDEX_LIST",
    })?;
    let host = list.as_slice();
    Ok(MSRS
        .iter()
        .copied()
        .filter(|m| *m == 0x1b || host.contains(m))
        .collect())
}

/// Whether the legacy 4 KiB `KVM_GET_XSAVE`/`KVM_SET_XSAVE` hold the whole XSAVE state.
pub(crate) fn xsave_fits(vm: &VmFd) -> bool {
    vm.check_extension(Cap::Xsave)
        && usize::try_from(vm.check_extension_int(Cap::Xsave2))
            .is_ok_and(|n| n <= std::mem::size_of::<kvm_xsave>())
}

/// The state of one x86 vCPU, as KVM holds it.
pub struct KvmVcpuState {
    /// General-purpose registers, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segments, descriptor tables, control registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// x87 and SSE state (legacy; superseded by `xsave` when present).
    pub fpu: kvm_fpu,
    /// The XSAVE area, when the host supports it in 4 KiB.
    pub xsave: Option<kvm_xsave>,
    /// Extended control registers (XCR0), with `xsave`.
    pub xcrs: Option<kvm_xcrs>,
    /// The in-kernel LAPIC's registers.
    pub lapic: kvm_lapic_state,
    /// The saved MSRs (index and value).
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMI, interrupt shadow, SMM.
    pub events: kvm_vcpu_events,
    /// Runnable, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
}

impl Clone for KvmVcpuState {
    fn clone(&self) -> Self {
        Self {
            xsave: self.xsave.as_ref().map(|x| kvm_xsave {
                region: x.region,
                ..Default::default()
            }),
            msrs: self.msrs.clone(),
            ..*self
        }
    }
}

impl std::fmt::Debug for KvmVcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmVcpuState")
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("xsave", &self.xsave.is_some())
            .field("msrs", &self.msrs.len())
            .field("mp_state", &self.mp_state.mp_state)
            .finish()
    }
}

/// Save the state of `fd` (not running), with the MSRs `msrs`.
pub(crate) fn save(fd: &VcpuFd, msrs: &[u32], xsave: bool) -> Result<KvmVcpuState> {
    let io = |what| IoctlSnafu { what };
    let mp_state = fd.get_mp_state().context(io("KVM_GET_MP_STATE"))?;
    let regs = fd.get_regs().context(io("KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().context(io("KVM_GET_SREGS"))?;
    let fpu = fd.get_fpu().context(io("KVM_GET_FPU"))?;
    let (xsave, xcrs) = if xsave {
        (
            Some(fd.get_xsave().context(io("KVM_GET_XSAVE"))?),
            Some(fd.get_xcrs().context(io("KVM_GET_XCRS"))?),
        )
    } else {
        (None, None)
    };
    let lapic = fd.get_lapic().context(io("KVM_GET_LAPIC"))?;
    let entries: Vec<kvm_msr_entry> = msrs
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut wrapper = Msrs::from_entries(&entries).map_err(|_| KvmError::StateTooManyMsrs {
        count: entries.len(),
        cap: MAX_MSRS,
    })?;
    let n = fd.get_msrs(&mut wrapper).context(io("KVM_GET_MSRS"))?;
    let msrs = wrapper.as_slice()[..n.min(entries.len())].to_vec();
    let events = fd.get_vcpu_events().context(io("KVM_GET_VCPU_EVENTS"))?;
    Ok(KvmVcpuState {
        regs,
        sregs,
        fpu,
        xsave,
        xcrs,
        lapic,
        msrs,
        events,
        mp_state,
    })
}

/// Load `s` into `fd` (not running), in the documented order.
pub(crate) fn restore(fd: &VcpuFd, s: &KvmVcpuState, xsave: bool) -> Result<()> {
    let io = |what| IoctlSnafu { what };
    fd.set_sregs(&s.sregs).context(io("KVM_SET_SREGS"))?;
    fd.set_regs(&s.regs).context(io("KVM_SET_REGS"))?;
    fd.set_fpu(&s.fpu).context(io("KVM_SET_FPU"))?;
    if let (true, Some(x)) = (xsave, &s.xsave) {
        // SAFETY: `xsave` is true only when KVM_CAP_XSAVE2 reports at most 4096 bytes (see
        // `xsave_fits`), so KVM_SET_XSAVE reads no more than the 4096-byte `kvm_xsave`.
        unsafe { fd.set_xsave(x) }.context(io("KVM_SET_XSAVE"))?;
    }
    if let (true, Some(x)) = (xsave, &s.xcrs) {
        fd.set_xcrs(x).context(io("KVM_SET_XCRS"))?;
    }
    fd.set_lapic(&s.lapic).context(io("KVM_SET_LAPIC"))?;
    if !s.msrs.is_empty() {
        let wrapper = Msrs::from_entries(&s.msrs).map_err(|_| KvmError::StateTooManyMsrs {
            count: s.msrs.len(),
            cap: MAX_MSRS,
        })?;
        fd.set_msrs(&wrapper).context(io("KVM_SET_MSRS"))?;
    }
    fd.set_vcpu_events(&s.events)
        .context(io("KVM_SET_VCPU_EVENTS"))?;
    fd.set_mp_state(s.mp_state)
        .context(io("KVM_SET_MP_STATE"))?;
    Ok(())
}

impl KvmMachine {
    /// Save the vCPU state before it has been [`spawn`](Self::spawn)ed (see
    /// [`VcpuHandle::save_state`](super::VcpuHandle::save_state) for a running one).
    pub fn save_state(&self) -> Result<KvmVcpuState> {
        save(self.idle_vcpu()?, &self.msrs, self.xsave)
    }

    /// Load `state` into the vCPU before it first runs (a fresh machine on the target).
    pub fn restore_state(&mut self, state: &KvmVcpuState) -> Result<()> {
        restore(self.idle_vcpu()?, state, self.xsave)
    }
}

/// Plain-data kvm-bindings structures: byte copies in and out.
///
/// # Safety
///
/// Implementors have no padding and accept every bit pattern (kvm-bindings derives
/// zerocopy's `IntoBytes` and `FromBytes` for each of them under its `serde` feature, which
/// checks exactly this).
unsafe trait Pod: Sized {
    const NAME: &'static str;
}

macro_rules! pod {
    ($($t:ty),*) => {$(
        // SAFETY: see the trait; `$t` is a kvm-bindings structure of integers and arrays.
        unsafe impl Pod for $t {
            const NAME: &'static str = stringify!($t);
        }
    )*};
}
pod!(
    kvm_regs,
    kvm_sregs,
    kvm_fpu,
    kvm_xsave,
    kvm_xcrs,
    kvm_lapic_state,
    kvm_msr_entry,
    kvm_vcpu_events,
    kvm_mp_state
);

fn bytes_of<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: `T: Pod` has no padding, so all its bytes are initialised; the slice borrows
    // `v` for its whole size.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

fn from_bytes<T: Pod>(b: &[u8]) -> Result<T> {
    ensure!(
        b.len() == std::mem::size_of::<T>(),
        StatePartSnafu {
            part: T::NAME,
            found: b.len(),
            expected: std::mem::size_of::<T>(),
        }
    );
    // SAFETY: `b` holds exactly `size_of::<T>()` bytes and every bit pattern is a valid `T`
    // (`T: Pod`); the read is unaligned-safe.
    Ok(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

fn put_part(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    b: &'a [u8],
    off: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, what: &'static str, need: usize) -> Result<&'a [u8]> {
        let have = self.b.len() - self.off;
        ensure!(
            need <= have,
            StateTruncatedSnafu {
                what,
                offset: self.off,
                need,
                have,
            }
        );
        let s = &self.b[self.off..self.off + need];
        self.off += need;
        Ok(s)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32> {
        let b = self.take(what, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn part(&mut self, what: &'static str) -> Result<&'a [u8]> {
        let len = self.u32(what)? as usize;
        self.take(what, len)
    }

    fn optional<T: Pod>(&mut self, what: &'static str) -> Result<Option<T>> {
        let b = self.part(what)?;
        if b.is_empty() {
            Ok(None)
        } else {
            from_bytes(b).map(Some)
        }
    }
}

impl KvmVcpuState {
    /// The versioned record (see the [module](self) docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // total length, patched below
        put_part(&mut out, bytes_of(&self.regs));
        put_part(&mut out, bytes_of(&self.sregs));
        put_part(&mut out, bytes_of(&self.fpu));
        put_part(&mut out, self.xsave.as_ref().map_or(&[], bytes_of));
        put_part(&mut out, self.xcrs.as_ref().map_or(&[], bytes_of));
        put_part(&mut out, bytes_of(&self.lapic));
        let msrs: Vec<u8> = self
            .msrs
            .iter()
            .flat_map(|m| bytes_of(m).to_vec())
            .collect();
        put_part(&mut out, &msrs);
        put_part(&mut out, bytes_of(&self.events));
        put_part(&mut out, bytes_of(&self.mp_state));
        let total = out.len() as u64;
        out[12..20].copy_from_slice(&total.to_le_bytes());
        out
    }

    /// Parse a record, refusing wrong magic or version, truncation, a wrong total length,
    /// parts whose length does not match their structure, more than [`MAX_MSRS`] MSRs, and
    /// trailing bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let mut r = Reader { b, off: 0 };
        let magic = r.take("magic", MAGIC.len())?;
        ensure!(
            magic == MAGIC,
            StateMagicSnafu {
                found: magic.to_vec()
            }
        );
        let version = r.u32("version")?;
        ensure!(
            version == VERSION,
            StateVersionSnafu {
                found: version,
                expected: VERSION,
            }
        );
        let t = r.take("total length", 8)?;
        let declared = u64::from_le_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]]);
        ensure!(
            declared == b.len() as u64,
            StateLengthSnafu {
                declared,
                actual: b.len() as u64,
            }
        );
        let regs = from_bytes(r.part("regs")?)?;
        let sregs = from_bytes(r.part("sregs")?)?;
        let fpu = from_bytes(r.part("fpu")?)?;
        let xsave = r.optional("xsave")?;
        let xcrs = r.optional("xcrs")?;
        let lapic = from_bytes(r.part("lapic")?)?;
        let m = r.part("msrs")?;
        let entry = std::mem::size_of::<kvm_msr_entry>();
        ensure!(
            m.len() % entry == 0,
            StatePartSnafu {
                part: "msrs",
                found: m.len(),
                expected: entry,
            }
        );
        ensure!(
            m.len() / entry <= MAX_MSRS,
            StateTooManyMsrsSnafu {
                count: m.len() / entry,
                cap: MAX_MSRS,
            }
        );
        let msrs = m
            .chunks_exact(entry)
            .map(from_bytes::<kvm_msr_entry>)
            .collect::<Result<Vec<_>>>()?;
        let events = from_bytes(r.part("vcpu events")?)?;
        let mp_state = from_bytes(r.part("mp state")?)?;
        ensure!(
            r.off == b.len(),
            StateTrailingSnafu {
                extra: b.len() - r.off
            }
        );
        Ok(Self {
            regs,
            sregs,
            fpu,
            xsave,
            xcrs,
            lapic,
            msrs,
            events,
            mp_state,
        })
    }
}
