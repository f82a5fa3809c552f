//! The seed corpus: real inputs for every target, built from real device contexts, a real
//! stream, real control messages and the uAPI's own save and resume sequences, so that
//! fuzzing starts from the deep paths. `gen-corpus` writes them to `fuzz/corpus/<target>/`.

use mdev_core::migration::ALL_STATES;
use mdev_core::uapi::{VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR2_REGION_INDEX};
use mdev_core::{MigState, MigrationDevice, VfioDevice};
use pci_config_replay::regs::COMMAND;
use vgpu_sim::cmd::{self, header, payload_dwords};
use vgpu_sim::regs::*;
use vmm::migration::control::{self, Ack, FromSource, FromTarget, Hello, KeepAlive, Start};
use vmm::stream::{Header, StreamWriter, STREAM_MAJOR, STREAM_MINOR};
use vmm::vcpu::{SavedVcpu, Vcpu};

use crate::device::{booted, gaddr, guest_mem, put, MAPPED, RAM, RING_PAGES};
use crate::input::Output;
use crate::targets::{device_context, gpu_commands, v1_region, v2_arcs};

fn cmd_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// A small real batch: render target at gmem 0 (64x32), clear, a store to the data page,
/// a checksum of the surface, a pipe control, a flip, a user interrupt, the end.
pub fn real_batch() -> Vec<u32> {
    let data = gaddr(MAPPED - 1);
    let (lo, hi) = (data as u32, (data >> 32) as u32);
    let mut w = Vec::new();
    w.push(header(cmd::OP_SET_RENDER_TARGET));
    w.extend([0, 64 * 4, 64 | (32 << 16)]);
    w.push(header(cmd::OP_CLEAR));
    w.push(0xff20_4080);
    w.push(header(cmd::OP_STORE_DWORD));
    w.extend([lo, hi, 0x1234_5678]);
    w.push(header(cmd::OP_CHECKSUM));
    w.extend([0, 64 * 4, 64 | (32 << 16), lo + 16, hi]);
    w.push(header(cmd::OP_PIPE_CONTROL));
    w.extend([lo + 32, hi, 7]);
    w.push(header(cmd::OP_FLIP));
    w.push(0);
    w.push(header(cmd::OP_USER_INTERRUPT));
    w.push(header(cmd::OP_BATCH_END));
    w
}

/// A ring that jumps into the batch at the first batch page.
pub fn real_ring() -> Vec<u32> {
    let b = gaddr(RING_PAGES);
    vec![
        header(cmd::OP_NOOP),
        header(cmd::OP_BATCH_START),
        b as u32,
        (b >> 32) as u32,
    ]
}

/// Every opcode the command set has (by `payload_dwords`), once, with a zero payload.
pub fn every_opcode() -> Vec<u32> {
    let mut w = Vec::new();
    for op in 0..0x40 {
        if op == cmd::OP_BATCH_START || op == cmd::OP_BATCH_END {
            continue;
        }
        if let Some(n) = payload_dwords(op) {
            w.push(header(op));
            w.extend(std::iter::repeat_n(0, n as usize));
        }
    }
    w
}

/// A device that rendered the real batch (graphics memory pages written, registers, GTT,
/// engine and interrupt state all non-trivial), and its saved context, made small: the
/// device saves all 64 MiB of graphics memory in `GMEM` chunks when it did not pre-copy;
/// the seed carries only the pages that are not zero, in `GMEM_PAGES` sections (what a
/// stop-copy after pre-copy sends), re-encoded with correct digests.
pub fn real_context() -> Vec<u8> {
    let full = full_context();
    let mut sections = Vec::new();
    for s in split_context(&full) {
        if s.0 != GMEM_SECTION {
            sections.push(s);
            continue;
        }
        // GMEM 2.x is chunks, each its offset (u64) then the data; 1.x all of it at once.
        let (base, data) = if s.1 >= 2 {
            let at = u64::from_le_bytes(s.3[..8].try_into().expect("a chunk offset"));
            (at / PAGE_SIZE, &s.3[8..])
        } else {
            (0, &s.3[..])
        };
        let mut pages = Vec::new();
        for (i, page) in data.chunks(PAGE_SIZE as usize).enumerate() {
            if page.iter().any(|b| *b != 0) {
                pages.extend_from_slice(&((base + i as u64) as u32).to_le_bytes());
                pages.extend_from_slice(page);
            }
        }
        if !pages.is_empty() {
            use vgpu_sim::device::migration::{SECTION_MAJOR, SECTION_MINOR};
            sections.push((GMEM_PAGES_SECTION, SECTION_MAJOR, SECTION_MINOR, pages));
        }
    }
    let header = state_region::format::ContextHeader::new("vgpu-64").expect("a type name");
    let (mut enc, mut out) = state_region::format::ContextEncoder::new(&header);
    for (id, major, minor, payload) in &sections {
        out.extend(
            enc.section(*id, *major, *minor, payload)
                .expect("a section"),
        );
    }
    out.extend(enc.end());
    out
}

/// Section id of all of graphics memory.
const GMEM_SECTION: u32 = 1;
/// Section id of some graphics memory pages.
const GMEM_PAGES_SECTION: u32 = 2;

/// The device's own context, as saved (64 MiB of graphics memory included).
pub fn full_context() -> Vec<u8> {
    let mem = guest_mem();
    let (mut d, _sink) = booted(mem.clone());
    let ring = cmd_bytes(&real_ring());
    put(&mem, 0, &ring);
    put(&mem, RING_PAGES, &cmd_bytes(&real_batch()));
    let tail = ring.len() as u32;
    let _ = d.region_write(
        VFIO_PCI_BAR0_REGION_INDEX,
        u64::from(REG_RING_TAIL),
        &tail.to_le_bytes(),
    );
    d.run(64);
    let s = crate::device::session(d.set_mig_state(MigState::StopCopy).expect("STOP_COPY"))
        .expect("a stream");
    crate::device::drain(&mut d, s, 1 << 20).expect("the stop-copy stream reads")
}

/// The sections of a context: (id, major, minor, payload).
pub fn split_context(ctx: &[u8]) -> Vec<(u32, u16, u16, Vec<u8>)> {
    use state_region::format::{SectionHeader, CONTEXT_HEADER_FIXED_SIZE, DIGEST_SIZE};
    let name_len = usize::from(u16::from_le_bytes([ctx[12], ctx[13]]));
    let mut at = CONTEXT_HEADER_FIXED_SIZE + name_len;
    let mut out = Vec::new();
    while at + 16 <= ctx.len() {
        let h = SectionHeader::decode(ctx[at..at + 16].try_into().expect("16 bytes"));
        if h.id == state_region::format::END_SECTION_ID {
            break;
        }
        let start = at + 16;
        let end = start + h.length as usize;
        out.push((h.id, h.major, h.minor, ctx[start..end].to_vec()));
        at = end + DIGEST_SIZE;
    }
    out
}

/// A real snapshot stream of a device that rendered: RAM pages, a zero run, the device's
/// context in chunks, config space, a simulated vCPU, and with `live`, the sync and
/// switchover records of a live migration.
pub fn real_stream(live: bool) -> Vec<u8> {
    let ctx = real_context();
    let mem = guest_mem();
    let (d, _sink) = booted(mem);
    let header = Header {
        major: STREAM_MAJOR,
        minor: STREAM_MINOR,
        flags: 0,
        ram_size: RAM as u64,
        page_size: 4096,
        mdev_type: "vgpu-64".into(),
    };
    let mut w = StreamWriter::new(Vec::new(), &header).expect("header");
    let mut pages = vec![0x5au8; 2 * 4096];
    pages[4096..].fill(0xa5);
    w.ram_pages(0x10_0000, &pages).expect("ram");
    w.ram_zero(0x20_0000, 3).expect("zero");
    if live {
        w.sync(1).expect("sync");
        w.switchover(123_456_789).expect("switchover");
    }
    for c in ctx.chunks(256 << 10) {
        w.device_data(c).expect("device data");
    }
    w.device_end().expect("device end");
    w.config(&d.config().state().to_bytes()).expect("config");
    let vcpu = SavedVcpu::Sim(Vcpu::new().state()).to_bytes();
    w.vcpu(&vcpu).expect("vcpu");
    w.finish().expect("finish").0
}

fn framed(sel: u8, frame: Vec<u8>) -> Vec<u8> {
    let mut v = vec![sel << 1];
    v.extend(frame);
    v
}

/// The control messages of a migration, framed, each with its selector byte.
pub fn control_seeds() -> Seeds {
    let hello = Hello {
        mdev_type: "vgpu-64".into(),
        stream_version: (1, 0),
        context_version: (1, 1),
        features: 15,
        session: 7,
    };
    let resumed = Ack::Resumed {
        resumed_ns: 1_000_000,
        switchover_seen_ns: 990_000,
        residue_ms: 1.25,
        load_ms: 3.5,
        config_ms: 0.06,
        resume_ms: 0.01,
        bytes: 123_456,
    };
    let e = |r: Result<Vec<u8>, vmm::migration::MigrationError>| r.expect("encode");
    vec![
        ("hello".into(), framed(0, e(control::encode(&hello)))),
        (
            "start".into(),
            framed(1, e(control::encode(&Start::Go { protocol: "v2".into(), channels: 2 }))),
        ),
        (
            "refuse".into(),
            framed(1, e(control::encode(&Start::Refuse { reason: "type".into() }))),
        ),
        (
            "synced".into(),
            framed(2, e(control::encode(&FromTarget::Synced { seq: 3 }))),
        ),
        (
            "ack".into(),
            framed(2, e(control::encode(&FromTarget::Ack(resumed.clone())))),
        ),
        (
            "keepalive".into(),
            framed(3, e(control::encode(&FromSource::KeepAlive(KeepAlive { seq: 9 })))),
        ),
        ("resumed".into(), framed(4, e(control::encode(&resumed)))),
        (
            "summary".into(),
            framed(
                5,
                b"VGPUCTRL\x55\0\0\0{\"rounds\":2,\"total_ms\":206.2,\"downtime_ms\":19.39,\"bytes_total\":9,\"breakdown\":{}}".to_vec(),
            ),
        ),
    ]
}

/// The v1 region's save sequence (SAVING, then save steps to the end) and its resume
/// sequence (RESUMING, `ctx` in window-sized steps, STOP, RUNNING).
pub fn v1_seeds(ctx: &[u8]) -> Seeds {
    use v1_region::op;
    let mut save = Output::default();
    save.u8(0).u8(op::SET_STATE).u8(2);
    for _ in 0..40 {
        save.u8(op::SAVE_STEP);
    }
    save.u8(op::SET_STATE).u8(0).u8(op::SET_STATE).u8(1);
    let mut resume = Output::default();
    resume.u8(0).u8(op::SET_STATE).u8(4);
    for c in ctx.chunks(v1_region::WINDOWS[0]) {
        resume.u8(op::RESUME_STEP).u32(c.len() as u32).raw(c);
    }
    resume
        .u8(op::SET_STATE)
        .u8(0)
        .u8(op::SET_STATE)
        .u8(1)
        .u8(op::RUN)
        .u8(8);
    vec![
        ("save".into(), pad_for_check(save.bytes, op::SAVE_STEP)),
        ("resume".into(), pad_for_check(resume.bytes, op::SAVE_STEP)),
    ]
}

/// `bytes` followed by `filler` (an op without arguments) until the length gets the
/// migratability check ([`crate::device::check_migratable`]).
fn pad_for_check(mut bytes: Vec<u8>, filler: u8) -> Vec<u8> {
    while !crate::device::check_migratable(bytes.len()) {
        bytes.push(filler);
    }
    bytes
}

fn state_sel(s: MigState) -> u8 {
    ALL_STATES.iter().position(|x| *x == s).expect("a state") as u8
}

/// v2 sequences: pre-copy with guest writes between reads then stop-copy; resume of `ctx`.
pub fn v2_seeds(ctx: &[u8]) -> Seeds {
    use v2_arcs::op;
    let mut save = Output::default();
    save.u8(op::SET_STATE).u8(state_sel(MigState::PreCopy));
    save.u8(op::PRECOPY_INFO).u8(op::READ).u16(4096).u8(0);
    save.u8(op::APERTURE).u32(8192).u8(16).raw(&[0x77; 16]);
    save.u8(op::READ).u16(65535).u8(0).u8(op::PRECOPY_INFO);
    save.u8(op::SET_STATE).u8(state_sel(MigState::StopCopy));
    save.u8(op::STOP_COPY_SIZE);
    for _ in 0..12 {
        save.u8(op::READ).u16(65535).u8(0);
    }
    save.u8(op::SET_STATE).u8(state_sel(MigState::Stop));
    save.u8(op::SET_STATE).u8(state_sel(MigState::Running));
    let mut resume = Output::default();
    resume.u8(op::SET_STATE).u8(state_sel(MigState::Resuming));
    for c in ctx.chunks(65535) {
        resume.u8(op::WRITE).u16(c.len() as u16).u8(0).raw(c);
    }
    resume.u8(op::SET_STATE).u8(state_sel(MigState::Running));
    resume.u8(op::RUN).u8(16).u8(op::RESET);
    vec![
        ("save".into(), pad_for_check(save.bytes, op::PRECOPY_INFO)),
        (
            "resume".into(),
            pad_for_check(resume.bytes, op::PRECOPY_INFO),
        ),
    ]
}

/// Config space: a saved state, and the writes a firmware and a driver make (BAR sizing
/// and placement, command, MSI-X enable and mask).
pub fn config_seeds() -> Seeds {
    let (d, _sink) = booted(guest_mem());
    let mut state = vec![0xff];
    state.extend(d.config().state().to_bytes());
    let mut w = Output::default();
    let write = |o: &mut Output, off: u16, width_sel: u8, v: &[u8]| {
        o.u8(width_sel << 2).u16(off).raw(v);
    };
    for bar in [0x10u16, 0x14, 0x18, 0x1c] {
        write(&mut w, bar, 2, &[0xff; 4]);
        w.u8((2 << 2) | 2).u16(bar);
        write(&mut w, bar, 2, &[0, 0, 0, 0xc0]);
    }
    write(&mut w, COMMAND as u16, 1, &[0x07, 0x04]);
    write(&mut w, 0x04, 0, &[0]);
    w.u8(1).u8(0).raw(&[0, 0, 0xe0, 0xfe]);
    w.u8(1).u8(12).raw(&[1, 0, 0, 0]);
    for off in (0x40u16..0x100).step_by(4) {
        write(&mut w, off, 2, &[0xff; 4]);
    }
    vec![("state".into(), state), ("writes".into(), w.bytes)]
}

/// GPU command streams: the real batch, every opcode once, a ring with garbage.
pub fn command_seeds() -> Seeds {
    let ring = cmd_bytes(&real_ring());
    let every = cmd_bytes(&every_opcode());
    vec![
        (
            "batch".into(),
            gpu_commands::seed(&ring, &cmd_bytes(&real_batch()), 4),
        ),
        ("every-opcode".into(), gpu_commands::seed(&every, &[], 4)),
        (
            "every-opcode-in-batch".into(),
            gpu_commands::seed(&ring, &every, 4),
        ),
    ]
}

/// Guest MMIO: register reads and writes, GTT entries, the aperture, MSI-X.
pub fn mmio_seeds() -> Seeds {
    let mut o = Output::default();
    for reg in [REG_ID, REG_VERSION, REG_IIR, REG_ENGINE_STATUS, REG_SEQNO] {
        o.u8(0x20).u8(0).u16(reg as u16).u8(0);
    }
    for reg in [REG_IMR, REG_IER, REG_DSP_CTL, REG_SCRATCH0] {
        o.u8(0).u8(0).u16(reg as u16).u8(0).u32(0xffff_ffff);
    }
    o.u8(0).u8(2).u16(0x40).u8(1).u64(0x0010_0003);
    o.u8(4).u8(0).u16(0x100).u8(0).u32(0x1234_5678);
    o.u8(0x40 | 0x20).u8(1).u16(0).u8(0).u8(4);
    let _ = (VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR2_REGION_INDEX);
    vec![("registers".into(), o.bytes)]
}

/// Named seeds of one target.
pub type Seeds = Vec<(String, Vec<u8>)>;

/// Every target's seeds, by target name.
pub fn all() -> Vec<(&'static str, Seeds)> {
    let ctx = real_context();
    let sections = split_context(&ctx);
    let mut raw = vec![0u8, 0];
    raw.extend_from_slice(&ctx);
    vec![
        (
            "stream_reader",
            vec![
                ("snapshot".into(), real_stream(false)),
                ("live".into(), real_stream(true)),
            ],
        ),
        (
            "snapshot_restore",
            vec![("serial".into(), crate::targets::snapshot_restore::seed())],
        ),
        ("control_messages", control_seeds()),
        (
            "device_context",
            vec![
                ("raw".into(), raw),
                (
                    "structured".into(),
                    device_context::structured_seed(0, 0, &sections),
                ),
            ],
        ),
        ("v1_region", v1_seeds(&ctx)),
        ("v2_arcs", v2_seeds(&ctx)),
        ("config_space", config_seeds()),
        ("gpu_commands", command_seeds()),
        ("guest_mmio", mmio_seeds()),
        (
            "vfio_user_messages",
            vec![("session".into(), crate::targets::vfio_user_messages::seed())],
        ),
    ]
}
