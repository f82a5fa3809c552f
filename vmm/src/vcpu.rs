//! The simulated vCPU: runs a [`GuestProgram`] one step at a time and takes interrupts.
//!
//! Its architectural state is small: the interrupt request register (pending vectors, as a
//! local APIC's IRR). Everything else the program needs is in guest RAM.

use snafu::Snafu;

use crate::platform::{GuestBus, GuestProgram, GuestStep};

/// Errors restoring vCPU state.
#[derive(Debug, Snafu, Clone, PartialEq, Eq)]
pub enum VcpuError {
    /// The state bytes are not a vCPU state of this version.
    #[snafu(display("vCPU state is {len} bytes with tag {tag:#x}; expected {expected} bytes with tag {expected_tag:#x}"))]
    BadState {
        /// Length found.
        len: usize,
        /// Tag found.
        tag: u32,
        /// Length expected.
        expected: usize,
        /// Tag expected.
        expected_tag: u32,
    },
}

const STATE_TAG: u32 = 0x5643_5055; // 'VCPU'
const STATE_LEN: usize = 4 + 32;

/// The vCPU's saved state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VcpuState {
    /// Pending interrupt vectors, one bit each (bit `v % 64` of word `v / 64`).
    pub irr: [u64; 4],
}

impl VcpuState {
    /// Encode (tag, then the IRR words, little-endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(STATE_LEN);
        v.extend_from_slice(&STATE_TAG.to_le_bytes());
        for w in self.irr {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v
    }

    /// Decode, checking the length and tag.
    pub fn from_bytes(b: &[u8]) -> Result<Self, VcpuError> {
        let tag = b
            .get(0..4)
            .map(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]))
            .unwrap_or(0);
        if b.len() != STATE_LEN || tag != STATE_TAG {
            return Err(VcpuError::BadState {
                len: b.len(),
                tag,
                expected: STATE_LEN,
                expected_tag: STATE_TAG,
            });
        }
        let mut irr = [0u64; 4];
        for (i, w) in irr.iter_mut().enumerate() {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[4 + 8 * i..12 + 8 * i]);
            *w = u64::from_le_bytes(a);
        }
        Ok(Self { irr })
    }
}

/// The vCPU record of a stream: the simulated vCPU's state or a KVM vCPU's, told apart by
/// their magic numbers.
#[derive(Debug, Clone)]
pub enum SavedVcpu {
    /// The simulated vCPU (pending interrupt vectors).
    Sim(VcpuState),
    /// A KVM vCPU (registers, FPU, LAPIC, MSRs, events, MP state).
    Kvm(Box<crate::kvm::KvmVcpuState>),
}

/// Errors decoding a vCPU record.
#[derive(Debug, Snafu)]
pub enum SavedVcpuError {
    /// A simulated vCPU's record is bad.
    #[snafu(display("simulated vCPU state: {source}"))]
    Sim {
        /// The cause.
        source: VcpuError,
    },
    /// A KVM vCPU's record is bad.
    #[snafu(display("KVM vCPU state: {source}"))]
    Kvm {
        /// The cause.
        source: crate::kvm::KvmError,
    },
}

impl SavedVcpu {
    /// Encode.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::Sim(s) => s.to_bytes(),
            Self::Kvm(s) => s.to_bytes(),
        }
    }

    /// Decode: a KVM record by its magic, else a simulated vCPU's.
    pub fn from_bytes(b: &[u8]) -> Result<Self, SavedVcpuError> {
        if b.starts_with(&crate::kvm::state::MAGIC) {
            crate::kvm::KvmVcpuState::from_bytes(b)
                .map(|s| Self::Kvm(Box::new(s)))
                .map_err(|source| SavedVcpuError::Kvm { source })
        } else {
            VcpuState::from_bytes(b)
                .map(Self::Sim)
                .map_err(|source| SavedVcpuError::Sim { source })
        }
    }

    /// Interrupt vectors requested and not yet taken: the simulated vCPU's IRR, or the
    /// KVM vCPU's local APIC IRR (eight 32-bit registers from APIC offset 0x200, 16 bytes
    /// apart; Intel SDM vol. 3, 11.8.4).
    pub fn pending_vectors(&self) -> Vec<u32> {
        match self {
            Self::Sim(s) => (0..256u32)
                .filter(|v| s.irr[(v / 64) as usize] & (1 << (v % 64)) != 0)
                .collect(),
            Self::Kvm(k) => {
                let regs = &k.lapic.regs;
                (0..256u32)
                    .filter(|v| {
                        let off = 0x200 + 16 * (v / 32) as usize;
                        let word = u32::from_le_bytes([
                            regs[off] as u8,
                            regs[off + 1] as u8,
                            regs[off + 2] as u8,
                            regs[off + 3] as u8,
                        ]);
                        word & (1 << (v % 32)) != 0
                    })
                    .collect()
            }
        }
    }

    /// The instruction pointer, for a KVM vCPU.
    pub fn rip(&self) -> Option<u64> {
        match self {
            Self::Sim(_) => None,
            Self::Kvm(k) => Some(k.regs.rip),
        }
    }

    /// Which vCPU the record is for: "sim" or "kvm".
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sim(_) => "sim",
            Self::Kvm(_) => "kvm",
        }
    }
}

/// A simulated vCPU.
#[derive(Debug, Default, Clone)]
pub struct Vcpu {
    state: VcpuState,
}

impl Vcpu {
    /// A vCPU with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restore from saved state.
    pub fn from_state(state: &VcpuState) -> Self {
        Self { state: *state }
    }

    /// The state to save.
    pub fn state(&self) -> VcpuState {
        self.state
    }

    /// Raise interrupt `vector` (an MSI arriving at the local APIC).
    pub fn inject(&mut self, vector: u8) {
        self.state.irr[usize::from(vector / 64)] |= 1 << (vector % 64);
    }

    /// Whether an interrupt is pending.
    pub fn has_pending(&self) -> bool {
        self.state.irr.iter().any(|w| *w != 0)
    }

    /// Execute one step of `guest`: the lowest pending interrupt's handler if any, else one
    /// program step.
    pub fn step(&mut self, bus: &mut dyn GuestBus, guest: &mut dyn GuestProgram) -> GuestStep {
        for (i, w) in self.state.irr.iter_mut().enumerate() {
            if *w != 0 {
                let bit = w.trailing_zeros();
                *w &= !(1 << bit);
                guest.interrupt(bus, (i as u32) * 64 + bit);
                return GuestStep::Progress;
            }
        }
        guest.step(bus)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_rejects_garbage() {
        let mut v = Vcpu::new();
        let empty = v.state();
        v.inject(0x41);
        v.inject(200);
        let s = v.state();
        assert_ne!(s, empty, "a pending interrupt changes the state");
        assert_eq!(VcpuState::from_bytes(&s.to_bytes()), Ok(s));
        assert!(Vcpu::from_state(&s).has_pending());
        let b = s.to_bytes();
        assert!(VcpuState::from_bytes(&b[..b.len() - 1]).is_err());
        let mut bad = b.clone();
        bad[0] ^= 1;
        assert!(VcpuState::from_bytes(&bad).is_err());
    }
}
