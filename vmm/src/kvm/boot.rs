//! Long-mode boot: a flat GDT, identity page tables over the low 4 GiB, and the registers of
//! a 64-bit CPU at the guest's entry point.
//!
//! Layout of the tables at [`BootSpec::tables_gpa`] (7 pages, [`BOOT_TABLES_LEN`] bytes; the
//! caller keeps an 8th page free if it wants room to grow):
//!
//! | page | contents |
//! |---|---|
//! | 0 | GDT: null, `0x08` 64-bit code (DPL 0), `0x10` flat data; the rest of the page zero |
//! | 1 | PML4: entry 0 points to the PDPT |
//! | 2 | PDPT: entries 0..4 point to the four PDs |
//! | 3..7 | four PDs of 512 2 MiB pages each: identity over `0..4 GiB` |
//!
//! Every mapping is present, writable, supervisor, write-back; the MMIO hole and the LAPIC
//! page are mapped like RAM (an access there that no slot backs exits as MMIO or reaches
//! the in-kernel LAPIC).

use kvm_bindings::kvm_segment;
use snafu::{ensure, ResultExt};

use super::error::{BootTablesSnafu, GuestWriteSnafu, IoctlSnafu, Result};
use super::KvmMachine;
use crate::memory::{self, PAGE_SIZE};

/// Bytes of guest RAM the boot tables use from [`BootSpec::tables_gpa`]: 7 pages.
pub const BOOT_TABLES_LEN: u64 = 7 * PAGE_SIZE;

/// Selector of the 64-bit code segment.
pub const CODE_SELECTOR: u16 = 0x08;
/// Selector of the flat data segment.
pub const DATA_SELECTOR: u16 = 0x10;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// GDT descriptors: null, 64-bit code (access 0x9b, L and G), data (access 0x93, DB and G).
const GDT: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];

/// Where the boot tables go and where the guest starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootSpec {
    /// First byte of the [`BOOT_TABLES_LEN`] bytes of tables; 4 KiB aligned, in guest RAM.
    pub tables_gpa: u64,
    /// RIP at the first instruction.
    pub entry: u64,
    /// RSP at the first instruction.
    pub stack_top: u64,
}

impl BootSpec {
    /// Guest-physical address of the GDT.
    pub fn gdt(&self) -> u64 {
        self.tables_gpa
    }

    /// Guest-physical address of the PML4 (CR3).
    pub fn pml4(&self) -> u64 {
        self.tables_gpa + PAGE_SIZE
    }

    fn pdpt(&self) -> u64 {
        self.tables_gpa + 2 * PAGE_SIZE
    }

    fn pd(&self, i: u64) -> u64 {
        self.tables_gpa + (3 + i) * PAGE_SIZE
    }
}

/// The page tables and GDT of `spec` as bytes, [`BOOT_TABLES_LEN`] long.
fn tables(spec: &BootSpec) -> Vec<u8> {
    let mut t = vec![0u8; BOOT_TABLES_LEN as usize];
    let mut put = |gpa: u64, v: u64| {
        let off = (gpa - spec.tables_gpa) as usize;
        t[off..off + 8].copy_from_slice(&v.to_le_bytes());
    };
    for (i, d) in GDT.iter().enumerate() {
        put(spec.gdt() + 8 * i as u64, *d);
    }
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    put(spec.pml4(), spec.pdpt() | PRESENT_RW);
    for i in 0..4 {
        put(spec.pdpt() + 8 * i, spec.pd(i) | PRESENT_RW);
        for e in 0..512 {
            let page = (i * 512 + e) << 21;
            put(spec.pd(i) + 8 * e, page | PRESENT_RW | HUGE);
        }
    }
    t
}

fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

impl KvmMachine {
    /// Write the GDT and page tables at `spec.tables_gpa` (see the [module](self) docs for
    /// the pages used) and put the vCPU in 64-bit mode at `spec.entry` with `spec.stack_top`:
    /// CR0 = PE|MP|ET|NE|PG, CR4 = PAE|OSFXSR|OSXMMEXCPT, EFER = LME|LMA, CS = 0x08, the
    /// other segments 0x10, RFLAGS = 0x2 (interrupts off), FPU with FCW 0x37f and MXCSR
    /// 0x1f80. Only before [`spawn`](Self::spawn).
    pub fn setup_long_mode(&mut self, spec: &BootSpec) -> Result<()> {
        let ram = memory::size(&self.mem);
        ensure!(
            spec.tables_gpa % PAGE_SIZE == 0
                && spec
                    .tables_gpa
                    .checked_add(BOOT_TABLES_LEN)
                    .is_some_and(|end| end <= ram),
            BootTablesSnafu {
                gpa: spec.tables_gpa,
                len: BOOT_TABLES_LEN,
                ram,
            }
        );
        let vcpu = self.idle_vcpu()?;
        memory::write(&self.mem, spec.tables_gpa, &tables(spec)).context(GuestWriteSnafu {
            what: "boot tables",
        })?;

        let mut sregs = vcpu.get_sregs().context(IoctlSnafu {
            what: "KVM_GET_SREGS",
        })?;
        let code = segment(CODE_SELECTOR, true);
        let data = segment(DATA_SELECTOR, false);
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.gdt.base = spec.gdt();
        sregs.gdt.limit = (8 * GDT.len() - 1) as u16;
        sregs.cr3 = spec.pml4();
        sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
        sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG;
        sregs.efer = EFER_LME | EFER_LMA;
        vcpu.set_sregs(&sregs).context(IoctlSnafu {
            what: "KVM_SET_SREGS",
        })?;

        let mut regs = vcpu.get_regs().context(IoctlSnafu {
            what: "KVM_GET_REGS",
        })?;
        regs.rip = spec.entry;
        regs.rsp = spec.stack_top;
        regs.rflags = 0x2;
        vcpu.set_regs(&regs).context(IoctlSnafu {
            what: "KVM_SET_REGS",
        })?;

        let mut fpu = vcpu.get_fpu().context(IoctlSnafu {
            what: "KVM_GET_FPU",
        })?;
        fpu.fcw = 0x37f;
        fpu.mxcsr = 0x1f80;
        vcpu.set_fpu(&fpu).context(IoctlSnafu {
            what: "KVM_SET_FPU",
        })?;
        Ok(())
    }
}
