//! The guest driver's step and interrupt handler.
//!
//! State lives in guest RAM: [`Params`] at [`PARAMS_GPA`] (written by the host loader) and
//! the driver's own block at [`STATE_GPA`]. Every call loads what it needs from there and
//! stores what it changes back; the functions themselves are stateless.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::cmd::{self, Vertex, DRAW_TEXTURED, VERTEX_SIZE};
use crate::regs::*;

use super::layout::*;
use super::scene;
use super::GuestBus;

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
}

impl Default for Params {
    fn default() -> Self {
        Self {
            seed: 1,
            width: 1280,
            height: 720,
            triangles: 3000,
            frame_limit: 60,
        }
    }
}

impl Params {
    /// Check the parameters against what the layout can hold and `gmem_size`.
    pub fn validate(&self, gmem_size: u64) -> Result<(), DriverError> {
        let bad = |what, value: u64, range| Err(DriverError::BadParam { what, value, range });
        if !(16..=4096).contains(&self.width) {
            return bad("width", self.width.into(), "16..=4096");
        }
        if !(16..=4096).contains(&self.height) {
            return bad("height", self.height.into(), "16..=4096");
        }
        let max_tris = (VB_SIZE / (3 * VERTEX_SIZE as u64)) as u32;
        if self.triangles < scene::MESHES || self.triangles > max_tris {
            return bad("triangles", self.triangles.into(), "6..=69905");
        }
        if self.frame_limit > MAX_FRAMES {
            return bad("frames", self.frame_limit, "0..=262144");
        }
        let plan = GmemPlan::new(self.width, self.height);
        if plan.end > gmem_size {
            return bad(
                "width x height",
                u64::from(self.width) * u64::from(self.height),
                "framebuffers and textures must fit graphics memory",
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
    }

    /// Load from guest RAM; `None` if the loader never wrote them.
    pub fn load(bus: &mut dyn GuestBus) -> Option<Self> {
        (bus.read_u32(PARAMS_GPA) == PARAMS_MAGIC).then(|| Self {
            seed: bus.read_u64(PARAMS_GPA + 8),
            width: bus.read_u32(PARAMS_GPA + 16),
            height: bus.read_u32(PARAMS_GPA + 20),
            triangles: bus.read_u32(PARAMS_GPA + 24),
            frame_limit: bus.read_u64(PARAMS_GPA + 32),
        })
    }
}

/// The driver's own state block in guest RAM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct State {
    phase: u32,
    ring_tail: u32,
    frame: u64,
    bar0: u64,
    bar2: u64,
    irq_seen: u32,
    errors_seen: u32,
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
            irq_seen: bus.read_u32(STATE_GPA + 40),
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
        bus.write_u32(STATE_GPA + 40, self.irq_seen);
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

    // Upload the textures through the aperture, a row at a time.
    let plan = GmemPlan::new(p.width, p.height);
    let mut row = vec![0u8; TEX_DIM as usize * 4];
    for t in 0..TEXTURES {
        for y in 0..TEX_DIM {
            for (x, px) in row.chunks_exact_mut(4).enumerate() {
                px.copy_from_slice(&scene::texel(p.seed, t, x as u32, y).to_le_bytes());
            }
            let off = plan.texture(t) + u64::from(y) * u64::from(TEX_DIM) * 4;
            for (i, q) in row.chunks_exact(8).enumerate() {
                let v = u64::from_le_bytes([q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]]);
                bus.write_u64(s.bar2 + off + 8 * i as u64, v);
            }
        }
    }

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
    let plan = GmemPlan::new(p.width, p.height);
    let fb = plan.fb[slot as usize];
    let vb = VB_GPA + slot * VB_SIZE;
    let batch = BATCH_GPA + slot * BATCH_SIZE;

    // Vertices into guest RAM.
    let meshes = scene::meshes(p.seed, p.triangles, p.height);
    let mut verts: Vec<Vertex> = Vec::with_capacity(p.triangles as usize * 3);
    let mut draws = Vec::with_capacity(meshes.len());
    for m in &meshes {
        let first = verts.len() as u32;
        scene::mesh_vertices(m, n, p.width, p.height, &mut verts);
        draws.push((first, verts.len() as u32 - first, m.texture));
    }
    let mut raw = Vec::with_capacity(verts.len() * VERTEX_SIZE);
    for v in &verts {
        raw.extend_from_slice(&v.to_bytes());
    }
    bus.write(vb, &raw);

    // The batch.
    let dims = p.width | (p.height << 16);
    let mut b = Batch::default();
    b.cmd(cmd::OP_SET_RENDER_TARGET, &[fb as u32, plan.stride, dims]);
    b.cmd(cmd::OP_CLEAR, &[scene::clear_color(p.seed, n)]);
    b.cmd(cmd::OP_SET_VERTEX_BUFFER, &split(gaddr(vb)));
    for (first, count, tex) in draws {
        let flags = match tex {
            Some(t) => {
                let off = plan.texture(u64::from(t)) as u32;
                b.cmd(
                    cmd::OP_SET_TEXTURE,
                    &[off, TEX_DIM * 4, TEX_DIM | (TEX_DIM << 16)],
                );
                DRAW_TEXTURED
            }
            None => 0,
        };
        b.cmd(cmd::OP_DRAW, &[first, count, flags]);
    }
    let [lo, hi] = split(gaddr(LOG_GPA + 8 * n));
    b.cmd(cmd::OP_CHECKSUM, &[fb as u32, plan.stride, dims, lo, hi]);
    let [lo, hi] = split(gaddr(SEQNO_GPA));
    b.cmd(cmd::OP_PIPE_CONTROL, &[lo, hi, (n + 1) as u32]);
    b.cmd(cmd::OP_FLIP, &[fb as u32]);
    b.cmd(cmd::OP_USER_INTERRUPT, &[]);
    b.cmd(cmd::OP_BATCH_END, &[]);
    bus.write(batch, &b.bytes);

    // Submit: BATCH_START + NOOP (16 bytes, so a command never straddles the ring's end).
    let mut r = Batch::default();
    r.cmd(cmd::OP_BATCH_START, &split(gaddr(batch)));
    r.cmd(cmd::OP_NOOP, &[]);
    bus.write(RING_GPA + u64::from(s.ring_tail), &r.bytes);
    s.ring_tail = ((u64::from(s.ring_tail) + r.bytes.len() as u64) % RING_SIZE) as u32;
    mmio_write(bus, s, REG_RING_TAIL, s.ring_tail);
    s.frame += 1;
    StepOutcome::Progress
}

fn split(a: u64) -> [u32; 2] {
    [a as u32, (a >> 32) as u32]
}

/// A command buffer being written.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
}

impl Batch {
    fn cmd(&mut self, op: u32, args: &[u32]) {
        self.bytes.extend_from_slice(&cmd::header(op).to_le_bytes());
        for a in args {
            self.bytes.extend_from_slice(&a.to_le_bytes());
        }
    }
}
