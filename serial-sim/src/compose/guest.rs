//! The guest program: a driver for the serial device that keeps all its state in guest
//! RAM. It finds the device through ECAM, enables memory decode, bus mastering and MSI-X
//! (entry 0: the x86 local APIC at 0xfee00000, the vector from its parameters), then
//! writes a seeded byte stream to TX; its interrupt handler drains RX into a log in guest
//! RAM, keeps a running FNV-1a checksum there, and mirrors the checksum into BAR2's
//! scratch word 0, which every step checks (device memory must survive a migration too).
//!
//! The handler is the only reader of RX: an interrupt lost across a migration leaves the
//! guest waiting for ever (the VMM reports a stall).
//!
//! ```text
//!  0x1000 params: magic u32 "SERP", vector u32, seed u64, limit u64
//!  0x2000 state:  phase u32, checksum u32, sent u64, received u64, BAR0 u64, BAR2 u64
//!  0x10000 log:   received bytes, up to LOG_CAP
//! ```

use vmm::{GuestBus, GuestProgram, GuestStep};

use crate::regs::*;

/// Guest-physical address of the parameters.
pub const PARAMS_GPA: u64 = 0x1000;
/// Guest-physical address of the driver's state.
pub const STATE_GPA: u64 = 0x2000;
/// Guest-physical address of the receive log.
pub const LOG_GPA: u64 = 0x1_0000;
/// Largest receive log (and so the largest `limit`).
pub const LOG_CAP: u64 = 1 << 20;
/// Parameter block magic.
pub const PARAMS_MAGIC: u32 = u32::from_le_bytes(*b"SERP");
/// FNV-1a offset basis: the checksum of nothing.
pub const FNV_BASIS: u32 = 0x811c_9dc5;
/// Bytes written to TX per step at most.
const BURST: u64 = 8;

/// Driver phase: not yet initialised.
pub const PHASE_INIT: u32 = 0;
/// Driver phase: sending and receiving.
pub const PHASE_RUNNING: u32 = 1;
/// Driver phase: every byte up to the limit received.
pub const PHASE_DONE: u32 = 2;
/// Driver phase: gave up (wrong device, no BAR, scratch mismatch).
pub const PHASE_FAILED: u32 = 3;

const ST_PHASE: u64 = STATE_GPA;
const ST_CHECKSUM: u64 = STATE_GPA + 4;
const ST_SENT: u64 = STATE_GPA + 8;
const ST_RECEIVED: u64 = STATE_GPA + 16;
const ST_BAR0: u64 = STATE_GPA + 24;
const ST_BAR2: u64 = STATE_GPA + 32;

/// PCI: capability ID of MSI-X.
const CAP_ID_MSIX: u8 = 0x11;
/// PCI: COMMAND memory space and bus master enables.
const COMMAND_MEM_MASTER: u16 = (1 << 1) | (1 << 2);
/// MSI-X message control: enable, function mask.
const MSIX_ENABLE: u16 = 1 << 15;
const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// The x86 local APIC's MSI address.
const APIC_MSI_ADDRESS: u32 = 0xfee0_0000;

/// The `i`-th byte of the stream for `seed` (splitmix64 of `seed + i`, low byte).
pub fn stream_byte(seed: u64, i: u64) -> u8 {
    let mut z = seed.wrapping_add(i).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as u8
}

/// The key the driver programs for `seed`.
pub fn key_for(seed: u64) -> u8 {
    (seed as u8) ^ 0x5a
}

/// One FNV-1a step.
pub fn fnv(sum: u32, byte: u8) -> u32 {
    (sum ^ u32::from(byte)).wrapping_mul(0x0100_0193)
}

fn rd<const N: usize>(bus: &mut dyn GuestBus, gpa: u64) -> [u8; N] {
    let mut b = [0u8; N];
    bus.read(gpa, &mut b);
    b
}
fn r8(bus: &mut dyn GuestBus, gpa: u64) -> u8 {
    rd::<1>(bus, gpa)[0]
}
fn r16(bus: &mut dyn GuestBus, gpa: u64) -> u16 {
    u16::from_le_bytes(rd(bus, gpa))
}
fn r32(bus: &mut dyn GuestBus, gpa: u64) -> u32 {
    u32::from_le_bytes(rd(bus, gpa))
}
fn r64(bus: &mut dyn GuestBus, gpa: u64) -> u64 {
    u64::from_le_bytes(rd(bus, gpa))
}
fn w16(bus: &mut dyn GuestBus, gpa: u64, v: u16) {
    bus.write(gpa, &v.to_le_bytes());
}
fn w32(bus: &mut dyn GuestBus, gpa: u64, v: u32) {
    bus.write(gpa, &v.to_le_bytes());
}
fn w64(bus: &mut dyn GuestBus, gpa: u64, v: u64) {
    bus.write(gpa, &v.to_le_bytes());
}

/// The serial driver, stateless: everything it keeps is in guest RAM.
#[derive(Debug, Clone, Copy)]
pub struct SerialGuest {
    /// Guest-physical address of the device's ECAM window.
    pub ecam_gpa: u64,
}

impl SerialGuest {
    fn fail(bus: &mut dyn GuestBus) -> GuestStep {
        w32(bus, ST_PHASE, PHASE_FAILED);
        GuestStep::Failed
    }

    /// A 64-bit memory BAR's address from ECAM.
    fn bar(&self, bus: &mut dyn GuestBus, bar: u64) -> u64 {
        let lo = r32(bus, self.ecam_gpa + 0x10 + 4 * bar);
        let hi = r32(bus, self.ecam_gpa + 0x14 + 4 * bar);
        (u64::from(hi) << 32) | u64::from(lo & !0xf)
    }

    fn init(&self, bus: &mut dyn GuestBus) -> GuestStep {
        let ecam = self.ecam_gpa;
        if r32(bus, PARAMS_GPA) != PARAMS_MAGIC
            || r16(bus, ecam) != VENDOR_ID
            || r16(bus, ecam + 2) != DEVICE_ID
        {
            return Self::fail(bus);
        }
        let (bar0, bar2) = (self.bar(bus, 0), self.bar(bus, 2));
        if bar0 == 0 || bar2 == 0 {
            return Self::fail(bus);
        }
        let cmd = r16(bus, ecam + 4);
        w16(bus, ecam + 4, cmd | COMMAND_MEM_MASTER);
        if r32(bus, bar0 + REG_ID) != ID_VALUE {
            return Self::fail(bus);
        }
        // The capability list, bounded (a malformed list must not hang the guest).
        let mut ptr = r8(bus, ecam + 0x34) & !3;
        let mut cap = None;
        for _ in 0..48 {
            if ptr < 0x40 {
                break;
            }
            if r8(bus, ecam + u64::from(ptr)) == CAP_ID_MSIX {
                cap = Some(ecam + u64::from(ptr));
                break;
            }
            ptr = r8(bus, ecam + u64::from(ptr) + 1) & !3;
        }
        let Some(cap) = cap else {
            return Self::fail(bus);
        };
        let table = r32(bus, cap + 4);
        if table & 7 != 0 {
            return Self::fail(bus);
        }
        let entry = bar0 + u64::from(table);
        let vector = r32(bus, PARAMS_GPA + 4);
        w32(bus, entry, APIC_MSI_ADDRESS);
        w32(bus, entry + 4, 0);
        w32(bus, entry + 8, vector);
        w32(bus, entry + 12, 0);
        let ctl = r16(bus, cap + 2);
        w16(bus, cap + 2, (ctl | MSIX_ENABLE) & !MSIX_FUNCTION_MASK);
        let seed = r64(bus, PARAMS_GPA + 8);
        w32(bus, bar0 + REG_KEY, u32::from(key_for(seed)));
        w32(bus, bar0 + REG_IER, INT_RX);
        w32(bus, bar2, FNV_BASIS);
        w32(bus, ST_CHECKSUM, FNV_BASIS);
        w64(bus, ST_BAR0, bar0);
        w64(bus, ST_BAR2, bar2);
        w32(bus, ST_PHASE, PHASE_RUNNING);
        GuestStep::Progress
    }

    fn run(&self, bus: &mut dyn GuestBus) -> GuestStep {
        let (bar0, bar2) = (r64(bus, ST_BAR0), r64(bus, ST_BAR2));
        if r32(bus, bar2) != r32(bus, ST_CHECKSUM) {
            return Self::fail(bus);
        }
        let seed = r64(bus, PARAMS_GPA + 8);
        let limit = r64(bus, PARAMS_GPA + 16).min(LOG_CAP);
        let mut sent = r64(bus, ST_SENT);
        let start = sent;
        while sent < limit && sent - start < BURST && r32(bus, bar0 + REG_LSR) & LSR_THRE != 0 {
            w32(bus, bar0 + REG_TX, u32::from(stream_byte(seed, sent)));
            sent += 1;
        }
        w64(bus, ST_SENT, sent);
        if r64(bus, ST_RECEIVED) >= limit {
            w32(bus, ST_PHASE, PHASE_DONE);
            return GuestStep::Done;
        }
        if sent > start {
            GuestStep::Progress
        } else {
            GuestStep::Waiting
        }
    }
}

impl GuestProgram for SerialGuest {
    fn step(&mut self, bus: &mut dyn GuestBus) -> GuestStep {
        match r32(bus, ST_PHASE) {
            PHASE_INIT => self.init(bus),
            PHASE_RUNNING => self.run(bus),
            PHASE_DONE => {
                // The host may raise the limit: go on sending.
                if r64(bus, ST_RECEIVED) < r64(bus, PARAMS_GPA + 16).min(LOG_CAP) {
                    w32(bus, ST_PHASE, PHASE_RUNNING);
                    return GuestStep::Progress;
                }
                GuestStep::Done
            }
            _ => GuestStep::Failed,
        }
    }

    fn interrupt(&mut self, bus: &mut dyn GuestBus, vector: u32) {
        if r32(bus, ST_PHASE) != PHASE_RUNNING || vector != r32(bus, PARAMS_GPA + 4) {
            return;
        }
        let (bar0, bar2) = (r64(bus, ST_BAR0), r64(bus, ST_BAR2));
        let isr = r32(bus, bar0 + REG_ISR);
        let mut sum = r32(bus, ST_CHECKSUM);
        let mut received = r64(bus, ST_RECEIVED);
        for _ in 0..=RX_DEPTH {
            if r32(bus, bar0 + REG_LSR) & LSR_DR == 0 {
                break;
            }
            let b = r32(bus, bar0 + REG_RX) as u8;
            if received < LOG_CAP {
                bus.write(LOG_GPA + received, &[b]);
                sum = fnv(sum, b);
                received += 1;
            }
        }
        w64(bus, ST_RECEIVED, received);
        w32(bus, ST_CHECKSUM, sum);
        w32(bus, bar2, sum);
        w32(bus, bar0 + REG_ISR, isr);
    }

    fn progress(&mut self, bus: &mut dyn GuestBus) -> u64 {
        r64(bus, ST_RECEIVED)
    }
}
