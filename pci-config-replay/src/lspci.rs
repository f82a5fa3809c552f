//! Human views of the configuration space: the hex dumps of `lspci -xxx` / `lspci -xxxx`
//! and a decoded view in the style of `lspci -vv`.

use std::fmt::Write;

use crate::caps::{ext, msi, msix, pcie, pm, LTR_BASE, MSIX_BASE, MSI_BASE, PCIE_BASE, PM_BASE};
use crate::config::ConfigSpace;
use crate::regs::*;

/// `+` or `-` as lspci prints a flag.
fn flag(on: bool) -> char {
    if on {
        '+'
    } else {
        '-'
    }
}

/// A size as lspci prints it: the largest exact unit among K, M, G, T.
fn size(bytes: u64) -> String {
    let units = [(40, 'T'), (30, 'G'), (20, 'M'), (10, 'K')];
    units
        .iter()
        .find(|(shift, _)| bytes >= 1 << shift && bytes % (1 << shift) == 0)
        .map_or_else(
            || bytes.to_string(),
            |(shift, u)| format!("{}{u}", bytes >> shift),
        )
}

fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3 + bytes.len() / 16 * 5);
    for (line, chunk) in bytes.chunks(16).enumerate() {
        let _ = write!(out, "{:02x}:", line * 16);
        for b in chunk {
            let _ = write!(out, " {b:02x}");
        }
        out.push('\n');
    }
    out
}

impl ConfigSpace {
    /// The first 256 bytes exactly as `lspci -xxx` dumps them: `00: 86 80 ...`, 16
    /// lowercase hex bytes per line, each line ending in a newline.
    pub fn lspci_hex(&self) -> String {
        hex_dump(&self.bytes()[..CONFIG_SPACE_STD_SIZE])
    }

    /// All 4096 bytes exactly as `lspci -xxxx` dumps them (offsets past 0xff print with
    /// three digits: `100: ...`).
    pub fn lspci_hex_extended(&self) -> String {
        hex_dump(&self.bytes()[..])
    }

    /// A decoded view in the style of `lspci -vv`: header, BARs, each capability and the
    /// extended capabilities, plus the MSI-X table entries.
    pub fn decoded(&self) -> String {
        let mut o = String::new();
        self.decode_header(&mut o);
        for (id, off) in self.capabilities() {
            let _ = write!(o, "\tCapabilities: [{off:02x}] ");
            let base = usize::from(off);
            match (id, base) {
                (CAP_ID_PM, PM_BASE) => self.decode_pm(&mut o),
                (CAP_ID_MSI, MSI_BASE) => self.decode_msi(&mut o),
                (CAP_ID_MSIX, MSIX_BASE) => self.decode_msix(&mut o),
                (CAP_ID_PCIE, PCIE_BASE) => self.decode_pcie(&mut o),
                _ => {
                    let _ = writeln!(o, "#{id:02x} [unknown]");
                }
            }
        }
        for (id, version, off) in self.extended_capabilities() {
            let _ = write!(o, "\tCapabilities: [{off:03x} v{version}] ");
            let base = usize::from(off);
            match id {
                EXT_CAP_ID_VSEC => {
                    let h = self.block().u32(base + ext::VSEC_HEADER);
                    let _ = writeln!(
                        o,
                        "Vendor Specific Information: ID={:04x} Rev={} Len={:03x} <?>",
                        h & 0xffff,
                        (h >> 16) & 0xf,
                        h >> 20
                    );
                }
                EXT_CAP_ID_LTR if base == LTR_BASE => {
                    let _ = writeln!(o, "Latency Tolerance Reporting");
                    for (name, reg) in [
                        ("Max snoop latency", ext::LTR_MAX_SNOOP),
                        ("Max no snoop latency", ext::LTR_MAX_NO_SNOOP),
                    ] {
                        let v = self.block().u16(base + reg);
                        let scale = 1u64 << (5 * u32::from((v >> 10) & 0x7).min(5));
                        let _ = writeln!(o, "\t\t{name}: {}ns", u64::from(v & 0x3ff) * scale);
                    }
                }
                _ => {
                    let _ = writeln!(o, "#{id:04x} [unknown]");
                }
            }
        }
        o
    }

    fn decode_header(&self, o: &mut String) {
        let b = self.block();
        let class = b.read(CLASS_PROG_IF, 3);
        let _ = writeln!(
            o,
            "VGA compatible controller [{:04x}]: Device {:04x}:{:04x} (rev {:02x}) (prog-if {:02x})",
            class >> 8,
            b.u16(VENDOR_ID),
            b.u16(DEVICE_ID),
            b.u8(REVISION_ID),
            class & 0xff
        );
        let _ = writeln!(
            o,
            "\tSubsystem: Device {:04x}:{:04x}",
            b.u16(SUBSYSTEM_VENDOR_ID),
            b.u16(SUBSYSTEM_ID)
        );
        let c = self.command();
        let on = |bit: u16| flag(c & bit != 0);
        let _ = writeln!(
            o,
            "\tControl: I/O{} Mem{} BusMaster{} SpecCycle{} MemWINV{} VGASnoop{} ParErr{} \
             Stepping{} SERR{} FastB2B{} DisINTx{}",
            on(COMMAND_IO_SPACE),
            on(COMMAND_MEMORY_SPACE),
            on(COMMAND_BUS_MASTER),
            on(COMMAND_SPECIAL_CYCLES),
            on(COMMAND_MWI),
            on(COMMAND_VGA_PALETTE_SNOOP),
            on(COMMAND_PARITY_ERROR_RESPONSE),
            on(COMMAND_STEPPING),
            on(COMMAND_SERR),
            on(COMMAND_FAST_B2B),
            on(COMMAND_INTX_DISABLE)
        );
        let s = self.status();
        let st = |bit: u16| flag(s & bit != 0);
        let _ = writeln!(
            o,
            "\tStatus: Cap{} 66MHz{} UDF- FastB2B{} ParErr{} DEVSEL=fast >TAbort{} <TAbort{} \
             <MAbort{} >SERR{} <PERR{} INTx{}",
            st(STATUS_CAPABILITIES_LIST),
            st(STATUS_66MHZ),
            st(STATUS_FAST_B2B),
            st(STATUS_MASTER_DATA_PARITY_ERROR),
            st(STATUS_SIGNALED_TARGET_ABORT),
            st(STATUS_RECEIVED_TARGET_ABORT),
            st(STATUS_RECEIVED_MASTER_ABORT),
            st(STATUS_SIGNALED_SYSTEM_ERROR),
            st(STATUS_DETECTED_PARITY_ERROR),
            st(STATUS_INTERRUPT)
        );
        let _ = writeln!(
            o,
            "\tInterrupt: pin {} routed to IRQ {}",
            char::from(b'@' + b.u8(INTERRUPT_PIN).min(4)),
            b.u8(INTERRUPT_LINE)
        );
        for slot in self.bars() {
            let addr = slot.address(b);
            let at = if addr == 0 {
                "<unassigned>".to_string()
            } else {
                format!("{addr:x}")
            };
            let pf = if slot.prefetchable {
                "prefetchable"
            } else {
                "non-prefetchable"
            };
            let disabled = if self.memory_enabled() {
                ""
            } else {
                " [disabled]"
            };
            let _ = writeln!(
                o,
                "\tRegion {}: Memory at {at} (64-bit, {pf}){disabled} [size={}]",
                slot.index,
                size(slot.size)
            );
        }
    }

    fn decode_pm(&self, o: &mut String) {
        let b = self.block();
        let pmc = b.u16(PM_BASE + pm::PMC);
        let _ = writeln!(o, "Power Management version {}", pmc & 0x7);
        let _ = writeln!(
            o,
            "\t\tFlags: PMEClk- DSI- D1{} D2{} AuxCurrent=0mA PME(D0{},D1{},D2{},D3hot{},D3cold{})",
            flag(pmc & pm::PMC_D1_SUPPORT != 0),
            flag(pmc & pm::PMC_D2_SUPPORT != 0),
            flag(pmc & (1 << 11) != 0),
            flag(pmc & (1 << 12) != 0),
            flag(pmc & (1 << 13) != 0),
            flag(pmc & (1 << 14) != 0),
            flag(pmc & (1 << 15) != 0)
        );
        let t = b.u16(PM_BASE + pm::PMCSR);
        let _ = writeln!(
            o,
            "\t\tStatus: D{} NoSoftRst{} PME-Enable{} DSel={} DScale={} PME{}",
            t & pm::PMCSR_POWER_STATE_MASK,
            flag(t & pm::PMCSR_NO_SOFT_RESET != 0),
            flag(t & pm::PMCSR_PME_ENABLE != 0),
            (t >> 9) & 0xf,
            (t >> 13) & 0x3,
            flag(t & pm::PMCSR_PME_STATUS != 0)
        );
    }

    fn decode_msi(&self, o: &mut String) {
        let b = self.block();
        let ctl = b.u16(MSI_BASE + msi::CONTROL);
        let _ = writeln!(
            o,
            "MSI: Enable{} Count={}/{} Maskable{} 64bit{}",
            flag(ctl & msi::CTL_ENABLE != 0),
            1u32 << ((ctl & msi::CTL_MME_MASK) >> 4),
            1u32 << ((ctl & msi::CTL_MMC_MASK) >> 1),
            flag(ctl & msi::CTL_PER_VECTOR_MASK != 0),
            flag(ctl & msi::CTL_64BIT != 0)
        );
        let _ = writeln!(
            o,
            "\t\tAddress: {:08x}{:08x}  Data: {:04x}",
            b.u32(MSI_BASE + msi::ADDRESS_HI),
            b.u32(MSI_BASE + msi::ADDRESS_LO),
            b.u16(MSI_BASE + msi::DATA)
        );
        let _ = writeln!(
            o,
            "\t\tMasking: {:08x}  Pending: {:08x}",
            b.u32(MSI_BASE + msi::MASK_BITS),
            b.u32(MSI_BASE + msi::PENDING_BITS)
        );
    }

    fn decode_msix(&self, o: &mut String) {
        let b = self.block();
        let ctl = b.u16(MSIX_BASE + msix::CONTROL);
        let _ = writeln!(
            o,
            "MSI-X: Enable{} Count={} Masked{}",
            flag(ctl & msix::CTL_ENABLE != 0),
            (ctl & msix::CTL_TABLE_SIZE_MASK) + 1,
            flag(ctl & msix::CTL_FUNCTION_MASK != 0)
        );
        for (name, reg) in [
            ("Vector table", msix::TABLE_OFFSET),
            ("PBA", msix::PBA_OFFSET),
        ] {
            let v = b.u32(MSIX_BASE + reg);
            let _ = writeln!(
                o,
                "\t\t{name}: BAR={} offset={:08x}",
                v & msix::BIR_MASK,
                v & !msix::BIR_MASK
            );
        }
        for vector in 0..self.params().msix_table_size {
            if let Some(e) = self.msix_entry(vector) {
                let _ = writeln!(
                    o,
                    "\t\tEntry {vector}: Address: {:016x}  Data: {:08x}  Masked{} Pending{}",
                    e.address,
                    e.data,
                    flag(e.masked),
                    flag(self.msix_pending(vector))
                );
            }
        }
    }

    fn decode_pcie(&self, o: &mut String) {
        let b = self.block();
        let caps = b.u16(PCIE_BASE + pcie::CAPABILITIES);
        let kind = if caps & pcie::CAP_TYPE_MASK == pcie::CAP_TYPE_ENDPOINT {
            "Endpoint"
        } else {
            "Unknown type"
        };
        let _ = writeln!(o, "Express (v{}) {kind}, MSI {:02x}", caps & 0xf, caps >> 9);
        let devcap = b.u32(PCIE_BASE + pcie::DEVICE_CAPABILITIES);
        let _ = writeln!(
            o,
            "\t\tDevCap:\tMaxPayload {} bytes, PhantFunc 0\n\t\t\tExtTag{} RBE{} FLReset{}",
            128u32 << (devcap & 0x7),
            flag(devcap & pcie::DEVCAP_EXT_TAG != 0),
            flag(devcap & pcie::DEVCAP_RBER != 0),
            flag(devcap & pcie::DEVCAP_FLR != 0)
        );
        let ctl = b.u16(PCIE_BASE + pcie::DEVICE_CONTROL);
        let _ = writeln!(
            o,
            "\t\tDevCtl:\tCorrErr{} NonFatalErr{} FatalErr{} UnsupReq{}\n\t\t\tRlxdOrd{} ExtTag{} \
             NoSnoop{}\n\t\t\tMaxPayload {} bytes, MaxReadReq {} bytes",
            flag(ctl & pcie::DEVCTL_CORR_ERR != 0),
            flag(ctl & pcie::DEVCTL_NONFATAL_ERR != 0),
            flag(ctl & pcie::DEVCTL_FATAL_ERR != 0),
            flag(ctl & pcie::DEVCTL_UNSUP_REQ != 0),
            flag(ctl & pcie::DEVCTL_RELAXED_ORDERING != 0),
            flag(ctl & pcie::DEVCTL_EXT_TAG != 0),
            flag(ctl & pcie::DEVCTL_NO_SNOOP != 0),
            128u32 << ((ctl & pcie::DEVCTL_MPS_MASK) >> 5),
            128u32 << ((ctl & pcie::DEVCTL_MRRS_MASK) >> 12)
        );
        let sta = b.u16(PCIE_BASE + pcie::DEVICE_STATUS);
        let _ = writeln!(
            o,
            "\t\tDevSta:\tCorrErr{} NonFatalErr{} FatalErr{} UnsupReq{}",
            flag(sta & pcie::DEVSTA_CORR_ERR != 0),
            flag(sta & pcie::DEVSTA_NONFATAL_ERR != 0),
            flag(sta & pcie::DEVSTA_FATAL_ERR != 0),
            flag(sta & pcie::DEVSTA_UNSUP_REQ != 0)
        );
        let lnk = b.u16(PCIE_BASE + pcie::LINK_STATUS);
        let _ = writeln!(
            o,
            "\t\tLnkSta:\tSpeed {}GT/s, Width x{}",
            if lnk & 0xf == 1 { "2.5" } else { "?" },
            (lnk >> 4) & 0x3f
        );
        let ctl2 = b.u16(PCIE_BASE + pcie::DEVICE_CONTROL2);
        let _ = writeln!(
            o,
            "\t\tDevCtl2: Completion Timeout: {:x}, TimeoutDis{} LTR{}",
            ctl2 & pcie::DEVCTL2_COMPLETION_TIMEOUT_MASK,
            flag(ctl2 & pcie::DEVCTL2_COMPLETION_TIMEOUT_DISABLE != 0),
            flag(ctl2 & pcie::DEVCTL2_LTR_ENABLE != 0)
        );
    }
}

#[cfg(test)]
mod tests;
