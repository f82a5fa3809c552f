//! One frame's batch: texture uploads, the render-to-texture passes, the main pass, then
//! checksum, seqno, flip and interrupt. The draws' matrices go to the frame slot's matrix
//! area in guest RAM, where `LOAD_MATRIX` reads them.

use alloc::vec::Vec;

use crate::cmd::{self, DEPTH_ONE, DEPTH_TEST, DEPTH_WRITE, DRAW3D_LIT, DRAW3D_TEXTURED};

use super::driver::Params;
use super::layout::*;
use super::scene::{self, Draw, SceneMeshes};
use super::GuestBus;

/// Light intensities: ambient 0.3, diffuse 0.7 (16.16).
const AMBIENT: u32 = 19_661;
const DIFFUSE: u32 = 45_875;
/// Clear colour of the render-to-texture targets.
const RTT_CLEAR: u32 = 0xff10_2030;

/// A 64-bit address as two dwords.
pub(super) fn split(a: u64) -> [u32; 2] {
    [a as u32, (a >> 32) as u32]
}

/// A command buffer being written.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) bytes: Vec<u8>,
}

impl Batch {
    pub(super) fn cmd(&mut self, op: u32, args: &[u32]) {
        self.bytes.extend_from_slice(&cmd::header(op).to_le_bytes());
        for a in args {
            self.bytes.extend_from_slice(&a.to_le_bytes());
        }
    }
}

/// Writes draws into a batch and their matrices into a matrix area.
struct Pass<'a> {
    b: &'a mut Batch,
    mats: &'a mut Vec<u8>,
    mat_gpa: u64,
    plan: GmemPlan,
    meshes: &'a SceneMeshes,
    rtt: u32,
}

impl Pass<'_> {
    fn target(&mut self, offset: u64, stride: u32, w: u32, h: u32, clear: u32, depth: u64) {
        let dims = w | (h << 16);
        self.b
            .cmd(cmd::OP_SET_RENDER_TARGET, &[offset as u32, stride, dims]);
        self.b.cmd(cmd::OP_CLEAR, &[clear]);
        self.b
            .cmd(cmd::OP_SET_DEPTH_BUFFER, &[depth as u32, stride, dims]);
        self.b.cmd(cmd::OP_CLEAR_DEPTH, &[DEPTH_ONE]);
        self.b.cmd(cmd::OP_SET_VIEWPORT, &[0, dims]);
    }

    fn draws(&mut self, draws: &[Draw]) {
        for d in draws {
            let at = self.mat_gpa + self.mats.len() as u64;
            for m in d.mvp.iter().chain(&d.normal) {
                self.mats.extend_from_slice(&m.to_le_bytes());
            }
            let [lo, hi] = split(gaddr(at));
            self.b.cmd(cmd::OP_LOAD_MATRIX, &[cmd::MATRIX_MVP, lo, hi]);
            let [lo, hi] = split(gaddr(at + 64));
            self.b
                .cmd(cmd::OP_LOAD_MATRIX, &[cmd::MATRIX_NORMAL, lo, hi]);
            let tex = match d.texture {
                Ok(slot) => [
                    self.plan.texture(u64::from(slot)) as u32,
                    TEX_DIM * 4,
                    TEX_DIM | (TEX_DIM << 16),
                ],
                Err(p) => [
                    self.plan.target(u64::from(p)) as u32,
                    self.rtt * 4,
                    self.rtt | (self.rtt << 16),
                ],
            };
            self.b.cmd(cmd::OP_SET_TEXTURE, &tex);
            let m = self.meshes.all[d.mesh];
            let flags = DRAW3D_TEXTURED | if d.lit { DRAW3D_LIT } else { 0 };
            self.b.cmd(
                cmd::OP_DRAW_INDEXED,
                &[m.first_index, m.indices, m.base_vertex, m.vertices, flags],
            );
        }
    }
}

/// Build frame `n`'s batch; its matrices are written to guest RAM here.
pub(super) fn build(bus: &mut dyn GuestBus, p: &Params, meshes: &SceneMeshes, n: u64) -> Vec<u8> {
    let spec = p.profile.spec();
    let plan = p.plan();
    let slot = n % 2;
    let fb = plan.fb[slot as usize];
    let mut b = Batch::default();

    // Texture uploads by DMA from the pool: every slot on the first frame, then `uploads`
    // slots a frame, round robin, each from a pool texture that changes frame to frame.
    let (slots, pool) = (u64::from(spec.slots.max(1)), u64::from(spec.pool.max(1)));
    let (count, first) = if n == 0 {
        (slots, 0)
    } else {
        let u = u64::from(spec.uploads).min(slots);
        (u, n.wrapping_mul(u))
    };
    for k in 0..count {
        let dst = (first + k) % slots;
        let src = (n + 3 * k) % pool;
        let [lo, hi] = split(gaddr(POOL_GPA + src * TEX_BYTES));
        let dims = TEX_DIM | (TEX_DIM << 16);
        b.cmd(
            cmd::OP_UPLOAD,
            &[lo, hi, plan.texture(dst) as u32, TEX_DIM * 4, dims],
        );
    }

    b.cmd(cmd::OP_SET_VERTEX_BUFFER, &split(gaddr(VB_GPA)));
    b.cmd(cmd::OP_SET_INDEX_BUFFER, &split(gaddr(IB_GPA)));
    b.cmd(cmd::OP_SET_DEPTH_STATE, &[DEPTH_TEST | DEPTH_WRITE]);
    b.cmd(cmd::OP_SET_CULL_MODE, &[cmd::CULL_BACK]);
    let l = scene::light_dir(n);
    b.cmd(
        cmd::OP_SET_LIGHT,
        &[l[0] as u32, l[1] as u32, l[2] as u32, AMBIENT, DIFFUSE],
    );

    let objs = scene::objects(p.seed, spec.objects, spec.slots);
    let mut mats = Vec::new();
    let mut draws = Vec::new();
    let rtt = spec.rtt_size;
    let mut pass = Pass {
        b: &mut b,
        mats: &mut mats,
        mat_gpa: MATRIX_GPA + slot * MATRIX_SIZE,
        plan,
        meshes,
        rtt,
    };
    for k in 1..=spec.passes {
        let target = plan.target(u64::from(k - 1));
        pass.target(target, rtt * 4, rtt, rtt, RTT_CLEAR, plan.rtt_depth);
        draws.clear();
        scene::draws(&objs, n, k, spec.passes, (rtt, rtt), &mut draws);
        pass.draws(&draws);
    }
    let clear = scene::clear_color(p.seed, n);
    pass.target(fb, plan.stride, p.width, p.height, clear, plan.depth);
    draws.clear();
    scene::draws(&objs, n, 0, spec.passes, (p.width, p.height), &mut draws);
    pass.draws(&draws);
    bus.write(MATRIX_GPA + slot * MATRIX_SIZE, &mats);

    let dims = p.width | (p.height << 16);
    let [lo, hi] = split(gaddr(LOG_GPA + 8 * n));
    b.cmd(cmd::OP_CHECKSUM, &[fb as u32, plan.stride, dims, lo, hi]);
    let [lo, hi] = split(gaddr(SEQNO_GPA));
    b.cmd(cmd::OP_PIPE_CONTROL, &[lo, hi, (n + 1) as u32]);
    b.cmd(cmd::OP_FLIP, &[fb as u32]);
    b.cmd(cmd::OP_USER_INTERRUPT, &[]);
    b.cmd(cmd::OP_BATCH_END, &[]);
    b.bytes
}
