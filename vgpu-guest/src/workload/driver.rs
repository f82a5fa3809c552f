//! The guest driver's step and interrupt handler.
//!
//! State lives in guest RAM: [`Params`] at [`PARAMS_GPA`] (written by the host loader) and
//! the driver's own block at [`STATE_GPA`]. Every call loads what it needs from there and
//! stores what it changes back; the functions themselves are stateless.

use alloc::vec::Vec;
use core::fmt;

use crate::regs::*;

use super::layout::*;
use super::mesh::MeshRange;
use super::profile::Profile;
use super::scene::{self, SceneMeshes};
use super::{frame, GuestBus};

const PARAMS_MAGIC: u32 = 0x5041_524d; // 'PARM'
const STATE_MAGIC: u32 = 0x4452_5631; // 'DRV1'

const PHASE_BOOT: u32 = 0;
const PHASE_FRAMES: u32 = 1;
const PHASE_FAILED: u32 = 2;

// PCI config offsets the driver uses (its own "headers", as a guest driver has).
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;
const PCI_BAR0: u64 = 0x10;
const PCI_BAR2: u64 = 0x18;
const PCI_CAP_PTR: u64 = 0x34;
const PCI_CAP_ID_MSIX: u8 = 0x11;
const MSIX_CTL_ENABLE: u16 = 1 << 15;

/// Errors in the host's view of the workload parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverError {
    /// A parameter is out of the range the workload supports.
    BadParam {
        /// Which parameter.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The allowed range.
        range: &'static str,
    },
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadParam { what, value, range } => {
                write!(
                    f,
                    "workload parameter {what} = {value} is out of range ({range})"
                )
            }
        }
    }
}

impl core::error::Error for DriverError {}

/// What the host loader tells the driver (in guest RAM at [`PARAMS_GPA`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Seed of the scene.
    pub seed: u64,
    /// Render width in pixels.
    pub width: u32,
    /// Render height in pixels.
    pub height: u32,
    /// Triangles per frame.
    pub triangles: u32,
    /// Frames to render before the driver goes idle.
    pub frame_limit: u64,
    /// The workload profile: objects, uploads, render-to-texture passes.
    pub profile: Profile,
}

impl Default for Params {
    /// The `medium` profile at its own size, seed 1, 60 frames.
    fn default() -> Self {
        Self::for_profile(Profile::Medium)
    }
}

/// Most triangles per pass.
pub const MAX_TRIANGLES: u32 = 200_000;
/// Fewest triangles per pass.
pub const MIN_TRIANGLES: u32 = 100;

impl Params {
    /// `profile` at its own size and triangle count, seed 1, 60 frames.
    pub fn for_profile(profile: Profile) -> Self {
        let spec = profile.spec();
        Self {
            seed: 1,
            width: spec.width,
            height: spec.height,
            triangles: spec.triangles,
            frame_limit: 60,
            profile,
        }
    }

    /// The graphics-memory plan of these parameters.
    pub fn plan(&self) -> GmemPlan {
        GmemPlan::new(self.width, self.height, &self.profile.spec())
    }

    /// Bytes of graphics memory each frame rewrites (page granular; the first frame also
    /// fills every texture slot).
    pub fn gmem_dirty_per_frame(&self) -> u64 {
        self.plan().dirty_per_frame(&self.profile.spec())
    }

    /// Triangles each frame submits (every pass).
    pub fn triangles_per_frame(&self) -> u64 {
        let spec = self.profile.spec();
        let (_, meshes) = scene::build_meshes(self.triangles, spec.objects);
        let objs = scene::objects(self.seed, spec.objects, spec.slots);
        scene::triangles_per_frame(&meshes, &objs, spec.passes)
    }

    /// Check the parameters against what the layout can hold and `gmem_size`.
    pub fn validate(&self, gmem_size: u64) -> Result<(), DriverError> {
        let bad = |what, value: u64, range| Err(DriverError::BadParam { what, value, range });
        if !(16..=4096).contains(&self.width) {
            return bad("width", self.width.into(), "16..=4096");
        }
        if !(16..=4096).contains(&self.height) {
            return bad("height", self.height.into(), "16..=4096");
        }
        if !(MIN_TRIANGLES..=MAX_TRIANGLES).contains(&self.triangles) {
            return bad("triangles", self.triangles.into(), "100..=200000");
        }
        if self.frame_limit > MAX_FRAMES {
            return bad("frames", self.frame_limit, "0..=262144");
        }
        let plan = self.plan();
        if plan.end > gmem_size {
            return bad(
                "width x height",
                u64::from(self.width) * u64::from(self.height),
                "the profile's framebuffers, depth buffers, render targets and textures must fit graphics memory (a bigger --type, or a smaller size)",
            );
        }
        Ok(())
    }

    /// Store into guest RAM (the host loader's job at boot, and the host's knob to raise
    /// the frame limit later).
    pub fn store(&self, bus: &mut dyn GuestBus) {
        bus.write_u32(PARAMS_GPA, PARAMS_MAGIC);
        bus.write_u64(PARAMS_GPA + 8, self.seed);
        bus.write_u32(PARAMS_GPA + 16, self.width);
        bus.write_u32(PARAMS_GPA + 20, self.height);
        bus.write_u32(PARAMS_GPA + 24, self.triangles);
        bus.write_u64(PARAMS_GPA + 32, self.frame_limit);
        bus.write_u32(PARAMS_GPA + 40, self.profile.id());
    }

    /// Load from guest RAM; `None` if the loader never wrote them (or wrote an unknown
    /// profile).
    pub fn load(bus: &mut dyn GuestBus) -> Option<Self> {
        if bus.read_u32(PARAMS_GPA) != PARAMS_MAGIC {
            return None;
        }
        Some(Self {
            seed: bus.read_u64(PARAMS_GPA + 8),
            width: bus.read_u32(PARAMS_GPA + 16),
            height: bus.read_u32(PARAMS_GPA + 20),
            triangles: bus.read_u32(PARAMS_GPA + 24),
            frame_limit: bus.read_u64(PARAMS_GPA + 32),
            profile: Profile::from_id(bus.read_u32(PARAMS_GPA + 40))?,
        })
    }
}

/// The driver's own state block in guest RAM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct State {
    phase: u32,
    ring_tail: u32,
    frame: u64,
    bar0: u64,
    bar2: u64,
    irq_seen: u32,
    errors_seen: u32,
}

/// Where the driver keeps the mesh ranges it built at boot (16 bytes each).
const MESHES_GPA: u64 = STATE_GPA + 0x100;

/// Store the scene's mesh ranges.
fn store_meshes(bus: &mut dyn GuestBus, m: &SceneMeshes) {
    for (i, r) in m.all.iter().enumerate() {
        let at = MESHES_GPA + 16 * i as u64;
        bus.write_u32(at, r.base_vertex);
        bus.write_u32(at + 4, r.vertices);
        bus.write_u32(at + 8, r.first_index);
        bus.write_u32(at + 12, r.indices);
    }
}

/// Load the scene's mesh ranges.
pub(super) fn load_meshes(bus: &mut dyn GuestBus) -> SceneMeshes {
    let mut all = [MeshRange::default(); 5];
    for (i, r) in all.iter_mut().enumerate() {
        let at = MESHES_GPA + 16 * i as u64;
        *r = MeshRange {
            base_vertex: bus.read_u32(at),
            vertices: bus.read_u32(at + 4),
            first_index: bus.read_u32(at + 8),
            indices: bus.read_u32(at + 12),
        };
    }
    SceneMeshes { all }
}

impl State {
    fn load(bus: &mut dyn GuestBus) -> Self {
        if bus.read_u32(STATE_GPA) != STATE_MAGIC {
            return Self::default();
        }
        Self {
            phase: bus.read_u32(STATE_GPA + 4),
            ring_tail: bus.read_u32(STATE_GPA + 8),
            frame: bus.read_u64(STATE_GPA + 16),
            bar0: bus.read_u64(STATE_GPA + 24),
            bar2: bus.read_u64(STATE_GPA + 32),
            irq_seen: bus.read_u32(IRQ_SEEN_GPA),
            errors_seen: bus.read_u32(STATE_GPA + 44),
        }
    }

    fn store(&self, bus: &mut dyn GuestBus) {
        bus.write_u32(STATE_GPA, STATE_MAGIC);
        bus.write_u32(STATE_GPA + 4, self.phase);
        bus.write_u32(STATE_GPA + 8, self.ring_tail);
        bus.write_u64(STATE_GPA + 16, self.frame);
        bus.write_u64(STATE_GPA + 24, self.bar0);
        bus.write_u64(STATE_GPA + 32, self.bar2);
        bus.write_u32(IRQ_SEEN_GPA, self.irq_seen);
        bus.write_u32(STATE_GPA + 44, self.errors_seen);
    }
}

/// What one driver step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// The driver did work (booted the device or submitted a frame).
    Progress,
    /// The driver waits for the device (a frame slot, or the last frames to finish).
    Waiting,
    /// Every frame up to the limit is rendered and acknowledged.
    Done,
    /// The driver gave up: no parameters, or the device is not what it expects.
    Failed,
}

/// Run one step of the driver.
pub fn step(bus: &mut dyn GuestBus) -> StepOutcome {
    let Some(p) = Params::load(bus) else {
        return StepOutcome::Failed;
    };
    let mut s = State::load(bus);
    let out = match s.phase {
        PHASE_BOOT => boot(bus, &p, &mut s),
        PHASE_FRAMES => frame(bus, &p, &mut s),
        _ => StepOutcome::Failed,
    };
    s.store(bus);
    out
}

/// The interrupt handler for `vector`: acknowledge the device's IIR and note what fired.
pub fn interrupt(bus: &mut dyn GuestBus, vector: u32) {
    let mut s = State::load(bus);
    if vector != MSI_VECTOR || s.phase != PHASE_FRAMES {
        return;
    }
    let iir = mmio_read(bus, &s, REG_IIR);
    if iir != 0 {
        mmio_write(bus, &s, REG_IIR, iir);
    }
    s.irq_seen |= iir;
    if iir & (INT_GTT_ERROR | INT_CMD_ERROR) != 0 {
        let err = mmio_read(bus, &s, REG_ERROR_STATUS);
        s.errors_seen |= err;
        mmio_write(bus, &s, REG_ERROR_STATUS, err);
    }
    s.store(bus);
}

fn mmio_read(bus: &mut dyn GuestBus, s: &State, reg: u32) -> u32 {
    bus.read_u32(s.bar0 + u64::from(reg))
}

fn mmio_write(bus: &mut dyn GuestBus, s: &State, reg: u32, v: u32) {
    bus.write_u32(s.bar0 + u64::from(reg), v)
}

fn cfg_read32(bus: &mut dyn GuestBus, off: u64) -> u32 {
    bus.read_u32(ECAM_GPA + off)
}

fn cfg_read16(bus: &mut dyn GuestBus, off: u64) -> u16 {
    let mut b = [0u8; 2];
    bus.read(ECAM_GPA + off, &mut b);
    u16::from_le_bytes(b)
}

fn cfg_write16(bus: &mut dyn GuestBus, off: u64, v: u16) {
    bus.write(ECAM_GPA + off, &v.to_le_bytes());
}

fn bar_address(bus: &mut dyn GuestBus, off: u64) -> u64 {
    let lo = u64::from(cfg_read32(bus, off) & !0xf);
    let hi = u64::from(cfg_read32(bus, off + 4));
    (hi << 32) | lo
}

/// Find a capability by id in the standard capability list.
fn find_cap(bus: &mut dyn GuestBus, id: u8) -> Option<u64> {
    let mut ptr = u64::from(cfg_read32(bus, PCI_CAP_PTR) as u8) & !3;
    for _ in 0..48 {
        if ptr < 0x40 {
            return None;
        }
        let hdr = cfg_read16(bus, ptr);
        if hdr as u8 == id {
            return Some(ptr);
        }
        ptr = u64::from(hdr >> 8) & !3;
    }
    None
}

fn boot(bus: &mut dyn GuestBus, p: &Params, s: &mut State) -> StepOutcome {
    s.bar0 = bar_address(bus, PCI_BAR0);
    s.bar2 = bar_address(bus, PCI_BAR2);
    let cmd = cfg_read16(bus, PCI_COMMAND);
    cfg_write16(
        bus,
        PCI_COMMAND,
        cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER,
    );
    if mmio_read(bus, s, REG_ID) != ID_VALUE {
        s.phase = PHASE_FAILED;
        return StepOutcome::Failed;
    }
    let gmem = u64::from(mmio_read(bus, s, REG_GMEM_SIZE_LO))
        | (u64::from(mmio_read(bus, s, REG_GMEM_SIZE_HI)) << 32);
    if p.validate(gmem).is_err() {
        s.phase = PHASE_FAILED;
        return StepOutcome::Failed;
    }

    // MSI-X vector 0 -> our vector, then enable.
    let Some(msix) = find_cap(bus, PCI_CAP_ID_MSIX) else {
        s.phase = PHASE_FAILED;
        return StepOutcome::Failed;
    };
    let table = s.bar0 + MSIX_TABLE_OFFSET;
    bus.write_u32(table, MSI_ADDRESS as u32);
    bus.write_u32(table + 4, (MSI_ADDRESS >> 32) as u32);
    bus.write_u32(table + 8, MSI_VECTOR);
    bus.write_u32(table + 12, 0);
    let ctl = cfg_read16(bus, msix + 2);
    cfg_write16(bus, msix + 2, ctl | MSIX_CTL_ENABLE);

    // Map the driver's guest RAM into the GTT.
    for i in 0..GTT_MAPPED_PAGES {
        let gpa = GTT_MAPPED_BASE + i * PAGE_SIZE;
        bus.write_u64(
            s.bar0 + GTT_WINDOW_OFFSET + i * GTT_ENTRY_SIZE,
            gpa | GTT_PRESENT | GTT_WRITABLE,
        );
    }

    // The scene's meshes and the texture pool, into guest RAM once: the device reads them
    // by DMA (the pool's textures are uploaded into graphics memory every frame).
    let spec = p.profile.spec();
    let (built, meshes) = scene::build_meshes(p.triangles, spec.objects);
    let mut raw = Vec::with_capacity(built.vertices.len() * crate::cmd::VERTEX3D_SIZE);
    for v in &built.vertices {
        raw.extend_from_slice(&v.to_bytes());
    }
    bus.write(VB_GPA, &raw);
    raw.clear();
    for i in &built.indices {
        raw.extend_from_slice(&i.to_le_bytes());
    }
    bus.write(IB_GPA, &raw);
    drop(built);
    store_meshes(bus, &meshes);
    raw.clear();
    raw.resize(TEX_DIM as usize * 4, 0);
    for t in 0..u64::from(spec.pool) {
        let tex = scene::Checker::new(p.seed, t);
        for y in 0..TEX_DIM {
            tex.row(y, &mut raw);
            bus.write(
                POOL_GPA + t * TEX_BYTES + u64::from(y) * u64::from(TEX_DIM) * 4,
                &raw,
            );
            if y % 64 == 0 {
                // Poll the device now and then: a long boot still shows the VMM progress.
                mmio_read(bus, s, REG_ID);
            }
        }
    }
    let plan = p.plan();

    // Ring, interrupts, display.
    mmio_write(bus, s, REG_RING_CTL, 0);
    mmio_write(bus, s, REG_RING_START_LO, gaddr(RING_GPA) as u32);
    mmio_write(bus, s, REG_RING_START_HI, (gaddr(RING_GPA) >> 32) as u32);
    mmio_write(bus, s, REG_RING_HEAD, 0);
    mmio_write(bus, s, REG_RING_TAIL, 0);
    let pages = (RING_SIZE / PAGE_SIZE) as u32 - 1;
    mmio_write(
        bus,
        s,
        REG_RING_CTL,
        RING_CTL_ENABLE | (pages << RING_CTL_SIZE_SHIFT),
    );
    mmio_write(bus, s, REG_IMR, 0);
    mmio_write(bus, s, REG_IIR, INT_ALL);
    mmio_write(bus, s, REG_IER, INT_ALL);
    mmio_write(bus, s, REG_DSP_STRIDE, plan.stride);
    mmio_write(bus, s, REG_DSP_SIZE, p.width | (p.height << 16));
    mmio_write(bus, s, REG_DSP_SURF, plan.fb[1] as u32);
    mmio_write(bus, s, REG_DSP_CTL, DSP_CTL_ENABLE);

    s.phase = PHASE_FRAMES;
    s.frame = 0;
    s.ring_tail = 0;
    StepOutcome::Progress
}

fn frame(bus: &mut dyn GuestBus, p: &Params, s: &mut State) -> StepOutcome {
    let done = super::completed_frames(bus);
    if s.frame >= p.frame_limit {
        let idle = done >= s.frame && mmio_read(bus, s, REG_IIR) == 0;
        return if idle {
            StepOutcome::Done
        } else {
            StepOutcome::Waiting
        };
    }
    // Slot s.frame % 2 was last used by frame s.frame - 2 (seqno s.frame - 1).
    if s.frame >= 2 && done + 1 < s.frame {
        return StepOutcome::Waiting;
    }
    let n = s.frame;
    let slot = n % 2;
    let batch = BATCH_GPA + slot * BATCH_SIZE;
    let meshes = load_meshes(bus);
    let b = frame::build(bus, p, &meshes, n);
    bus.write(batch, &b);

    // Submit: BATCH_START + NOOP (16 bytes, so a command never straddles the ring's end).
    let mut r = frame::Batch::default();
    r.cmd(crate::cmd::OP_BATCH_START, &frame::split(gaddr(batch)));
    r.cmd(crate::cmd::OP_NOOP, &[]);
    bus.write(RING_GPA + u64::from(s.ring_tail), &r.bytes);
    s.ring_tail = ((u64::from(s.ring_tail) + r.bytes.len() as u64) % RING_SIZE) as u32;
    // The host may have lowered the frame limit while this frame was being built (a vCPU
    // stopped inside a step, as a KVM vCPU is at a switchover or a pause, resumes in it):
    // look again just before the device can see the frame. Abandoning it is harmless: the
    // next step builds the same frame into the same free slot.
    if Params::load(bus).is_some_and(|now| s.frame >= now.frame_limit) {
        return StepOutcome::Waiting;
    }
    // Count the frame in guest RAM before the device can see it: a vCPU stopped at the
    // tail write (an MMIO exit) has then already counted every frame the device may
    // render, so a host reading the counter sets limits that hold.
    s.frame += 1;
    s.store(bus);
    mmio_write(bus, s, REG_RING_TAIL, s.ring_tail);
    StepOutcome::Progress
}
