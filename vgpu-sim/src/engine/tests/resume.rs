//! Stopping after every command and resuming from the saved state gives the same result as
//! an uninterrupted run, bit for bit.

use super::super::testbus::{Cmds, TestBus, BATCH, BATCH2, RESULTS, RING_SIZE, VERTICES};
use super::super::{Engine, EngineState};
use super::{run_all, GMEM};
use crate::cmd::{Vertex, DRAW_TEXTURED};
use crate::engine::EngineBus;
use crate::regs::{INT_FLIP_DONE, INT_PIPE_NOTIFY, INT_USER, REG_SEQNO};

const ONE: i32 = 1 << 16;
/// Render target: 64x48 at 0, packed.
const RT: u32 = 0;
const RT_STRIDE: u32 = 64 * 4;
/// Texture: 8x8 after the render target, with padding.
const TEX: u32 = 0x4000;
/// Blit destination.
const COPY: u32 = 0x8000;

/// Triangles with sub-pixel vertices, mixed windings, off-target parts, uv beyond 0..1.
fn vertices() -> Vec<Vertex> {
    let mut s = 0x1234_5678u32;
    let mut next = move |m: i32| {
        s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        ((s >> 8) % m as u32) as i32
    };
    (0..21)
        .map(|_| Vertex {
            x: next(80 * ONE) - 8 * ONE,
            y: next(64 * ONE) - 8 * ONE,
            u: next(4 * ONE) - 2 * ONE,
            v: next(4 * ONE) - 2 * ONE,
            color: 0x80ff_ffff | (next(0x7fff_ffff) as u32),
        })
        .collect()
}

/// A device with a workload of 21 commands using every opcode, wrapping the ring, with two
/// batches.
fn workload() -> TestBus {
    let mut bus = TestBus::new(GMEM);
    for (i, b) in bus.gmem.iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    bus.put_vertices(VERTICES, &vertices());
    let batch1 = Cmds::default()
        .texture(TEX, 8 * 4 + 12, 8, 8)
        .draw(0, 6, 0)
        .draw(6, 3, DRAW_TEXTURED)
        .store(RESULTS, 0x1234)
        .pipe_control(RESULTS + 4, 7)
        .batch_end();
    bus.put(BATCH, &batch1.0);
    let batch2 = Cmds::default()
        .draw(9, 12, DRAW_TEXTURED)
        .checksum(RT, RT_STRIDE, 64, 48, RESULTS + 16)
        .pipe_control(RESULTS + 4, 8)
        .batch_end();
    bus.put(BATCH2, &batch2.0);
    bus.ring_at(RING_SIZE - 24);
    let ring = Cmds::default()
        .render_target(RT, RT_STRIDE, 64, 48)
        .clear(0xff20_4060)
        .vertex_buffer(VERTICES)
        .batch_start(BATCH)
        .user_interrupt()
        .blit(RT + 8 * RT_STRIDE, RT_STRIDE, COPY, 32 * 4, 32, 16)
        .checksum(RT, RT_STRIDE, 64, 48, RESULTS + 8)
        .flip(RT)
        .batch_start(BATCH2)
        .noop()
        .pipe_control(RESULTS + 4, 9);
    bus.submit(&ring.0);
    bus
}

const COMMANDS: usize = 21;

/// What must match between runs: memory and registers, not the logs.
fn outcome(bus: &TestBus) -> (&[u32], &[u8], &[u8]) {
    (&bus.regs, &bus.gmem, &bus.ram)
}

#[test]
fn the_workload_does_what_it_says() {
    let mut bus = workload();
    let initial = bus.gmem.clone();
    let mut e = Engine::new();
    assert_eq!(run_all(&mut e, &mut bus), COMMANDS);
    assert!(!e.is_halted() && e.is_idle(&bus));
    assert_eq!(bus.iir(), INT_USER | INT_PIPE_NOTIFY | INT_FLIP_DONE);
    assert_eq!(bus.reg(REG_SEQNO), 9);
    assert_eq!(bus.get(RESULTS), 0x1234);
    // The two checksums differ: batch 2 drew between them.
    assert_ne!(bus.ram[0xe008..0xe010], bus.ram[0xe010..0xe018]);
    // Every byte that changed was reported dirty.
    let mut dirty = vec![false; GMEM];
    for &(o, l) in &bus.dirty {
        dirty[o as usize..(o + l) as usize].fill(true);
    }
    for (i, (a, b)) in initial.iter().zip(&bus.gmem).enumerate() {
        assert!(a == b || dirty[i], "byte {i:#x} changed but is not dirty");
    }
    // Bit-exact on every machine: the first checksum (after batch 1) and the second.
    let sum = |at| u64::from(bus.get(at)) | (u64::from(bus.get(at + 4)) << 32);
    assert_eq!(
        (sum(RESULTS + 8), sum(RESULTS + 16)),
        (0x7b80_1874_0ee8_f5a8, 0x11f6_5403_3c94_8887),
        "golden checksums"
    );
}

#[test]
fn stopping_after_any_command_and_resuming_is_exact() {
    let mut reference = workload();
    assert_eq!(run_all(&mut Engine::new(), &mut reference), COMMANDS);
    for k in 0..=COMMANDS {
        let mut source = workload();
        let mut e = Engine::new();
        assert_eq!(e.run(&mut source, k), k);
        // Migrate: the state through its byte format, memory and registers copied.
        let bytes = e.state().to_bytes();
        let state = EngineState::from_bytes(&bytes).expect("state decodes");
        let mut resumed = Engine::from_state(GMEM as u64, &state).expect("state restores");
        assert_eq!(resumed.state(), e.state());
        let mut target = source.clone();
        assert_eq!(
            run_all(&mut resumed, &mut target),
            COMMANDS - k,
            "after {k}"
        );
        assert!(outcome(&target) == outcome(&reference), "stopped after {k}");
        // The source, had it gone on, would have done the same.
        assert_eq!(run_all(&mut e, &mut source), COMMANDS - k);
        assert!(outcome(&source) == outcome(&reference), "source after {k}");
    }
}

#[test]
fn resuming_one_command_at_a_time_is_exact() {
    let mut reference = workload();
    run_all(&mut Engine::new(), &mut reference);
    let mut bus = workload();
    let mut e = Engine::new();
    for _ in 0..COMMANDS {
        assert_eq!(e.run(&mut bus, 1), 1);
        e = Engine::from_state(GMEM as u64, &e.state()).expect("state restores");
    }
    assert_eq!(run_all(&mut e, &mut bus), 0);
    assert!(outcome(&bus) == outcome(&reference));
}

#[test]
fn state_conformance() {
    // state -> modify -> restore -> state equal; and modifying changes the state.
    let mut bus = workload();
    let mut e = Engine::new();
    let initial = e.state();
    e.run(&mut bus, 5);
    let modified = e.state();
    assert_ne!(modified, initial);
    assert!(modified.in_batch);
    let restored = Engine::from_state(GMEM as u64, &modified).expect("state restores");
    assert_eq!(restored.state(), modified);
    // A graphics memory too small for the saved render target is refused.
    assert!(Engine::from_state(0x1000, &modified).is_err());
}
