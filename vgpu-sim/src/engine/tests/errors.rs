//! Every class of bad input halts with the right error bits, and nothing panics.

use super::super::testbus::{
    Cmds, TestBus, BATCH, BATCH2, RAM_SIZE, RESULTS, RING, RING_SIZE, VERTICES,
};
use super::super::{EngineBus, EngineError, EngineState, GTT_END};
use super::{device, reg64, run_all, GMEM};
use crate::cmd::{self, DRAW_TEXTURED, OP_NOOP, OP_STORE_DWORD};
use crate::regs::{
    ENGINE_HALTED, INT_CMD_ERROR, INT_GTT_ERROR, REG_ACTHD_HI, REG_ACTHD_LO, REG_ENGINE_STATUS,
    REG_ERROR_ADDR_HI, REG_ERROR_ADDR_LO, REG_ERROR_STATUS, REG_RING_HEAD, REG_RING_START_HI,
    REG_RING_START_LO, REG_RING_TAIL, REG_SEQNO, SYS_BASE,
};

/// End of the test bus's guest RAM.
const RAM_END: u64 = SYS_BASE + RAM_SIZE as u64;

/// One bad input and what it must do.
struct Case {
    name: &'static str,
    /// Ring contents.
    ring: Cmds,
    /// Anything else to set up.
    setup: fn(&mut TestBus),
    /// Commands that complete before the error.
    done: usize,
    /// `INT_CMD_ERROR` or `INT_GTT_ERROR`.
    bit: u32,
    /// Expected `REG_ERROR_ADDR`.
    addr: u64,
    /// Address of the failing command (`REG_ACTHD` after the halt).
    at: u64,
    /// The error kept by the engine.
    is: fn(&EngineError) -> bool,
}

fn nothing(_: &mut TestBus) {}

fn cases() -> Vec<Case> {
    let c = Cmds::default;
    let cmd = |name, ring: Cmds, done, at, is| Case {
        name,
        ring,
        setup: nothing,
        done,
        bit: INT_CMD_ERROR,
        addr: at,
        at,
        is,
    };
    let gtt = |name, ring: Cmds, done, addr, at, is| Case {
        name,
        ring,
        setup: nothing,
        done,
        bit: INT_GTT_ERROR,
        addr,
        at,
        is,
    };
    let g = GMEM as u32;
    vec![
        cmd(
            "unknown opcode",
            c().noop().raw(&[0xff00_0000]),
            1,
            RING + 4,
            |e| matches!(e, EngineError::UnknownOpcode { opcode: 0xff, .. }),
        ),
        cmd(
            "wrong length",
            c().raw(&[cmd::header(OP_NOOP) | 1, 0]),
            0,
            RING,
            |e| {
                matches!(
                    e,
                    EngineError::BadLength {
                        len: 1,
                        expected: 0,
                        ..
                    }
                )
            },
        ),
        cmd(
            "render target past gmem",
            c().render_target(g - 16, 64, 16, 1),
            0,
            RING,
            |e| {
                matches!(
                    e,
                    EngineError::BadSurface {
                        which: "render target",
                        ..
                    }
                )
            },
        ),
        cmd(
            "render target stride",
            c().render_target(0, 60, 16, 2),
            0,
            RING,
            |e| matches!(e, EngineError::BadSurface { .. }),
        ),
        cmd(
            "render target extremes",
            c().render_target(u32::MAX, u32::MAX, 0xffff, 0xffff),
            0,
            RING,
            |e| matches!(e, EngineError::BadSurface { .. }),
        ),
        cmd(
            "texture past gmem",
            c().noop().texture(g, 4, 1, 1),
            1,
            RING + 4,
            |e| {
                matches!(
                    e,
                    EngineError::BadSurface {
                        which: "texture",
                        ..
                    }
                )
            },
        ),
        cmd(
            "blit source",
            c().blit(g - 4, 8, 0, 8, 2, 1),
            0,
            RING,
            |e| {
                matches!(
                    e,
                    EngineError::BadSurface {
                        which: "blit source",
                        ..
                    }
                )
            },
        ),
        cmd(
            "blit destination",
            c().blit(0, 8, g - 4, 8, 2, 1),
            0,
            RING,
            |e| {
                matches!(
                    e,
                    EngineError::BadSurface {
                        which: "blit destination",
                        ..
                    }
                )
            },
        ),
        cmd(
            "checksum surface",
            c().checksum(0, 4, 2, 1, RESULTS),
            0,
            RING,
            |e| {
                matches!(
                    e,
                    EngineError::BadSurface {
                        which: "checksum surface",
                        ..
                    }
                )
            },
        ),
        cmd(
            "vertex count",
            c().vertex_buffer(VERTICES).draw(0, 4, 0),
            1,
            RING + 12,
            |e| *e == EngineError::VertexCount { count: 4 },
        ),
        cmd("draw flags", c().draw(0, 3, 0x80), 0, RING, |e| {
            *e == EngineError::DrawFlags { flags: 0x80 }
        }),
        cmd("no texture", c().draw(0, 3, DRAW_TEXTURED), 0, RING, |e| {
            *e == EngineError::NoTexture
        }),
        cmd("nested batch", c().batch_start(BATCH), 1, BATCH, |e| {
            *e == EngineError::NestedBatch
        }),
        cmd("batch end in the ring", c().batch_end(), 0, RING, |e| {
            *e == EngineError::BatchEndOutsideBatch
        }),
        cmd(
            "misaligned batch",
            c().batch_start(BATCH + 2),
            0,
            RING,
            |e| *e == EngineError::BatchAlign { addr: BATCH + 2 },
        ),
        cmd("flip past gmem", c().flip(g), 0, RING, |e| {
            matches!(e, EngineError::FlipOffset { .. })
        }),
        cmd(
            "command past the tail",
            c().raw(&[
                cmd::header(OP_STORE_DWORD),
                RESULTS as u32,
                (RESULTS >> 32) as u32,
            ]),
            0,
            RING,
            |e| matches!(e, EngineError::PastTail { len: 16, .. }),
        ),
        gtt(
            "batch outside the GTT range",
            c().batch_start(0x1000),
            0,
            0x1000,
            RING,
            |e| *e == EngineError::Dma { addr: 0x1000 },
        ),
        gtt(
            "vertex buffer in gmem",
            c().vertex_buffer(0x100),
            0,
            0x100,
            RING,
            |e| *e == EngineError::Dma { addr: 0x100 },
        ),
        gtt(
            "vertices past guest RAM",
            c().vertex_buffer(RAM_END - 20).draw(0, 3, 0),
            1,
            RAM_END,
            RING + 12,
            |e| *e == EngineError::Dma { addr: RAM_END },
        ),
        gtt(
            "vertices past the GTT range",
            c().vertex_buffer(VERTICES).draw(u32::MAX, 3, 0),
            1,
            VERTICES + u64::from(u32::MAX) * 20,
            RING + 12,
            |e| matches!(e, EngineError::Dma { .. }),
        ),
        gtt(
            "vertices up to the GTT end",
            c().vertex_buffer(GTT_END - 40).draw(0, 3, 0),
            1,
            GTT_END,
            RING + 12,
            |e| *e == EngineError::Dma { addr: GTT_END },
        ),
        gtt(
            "store outside the GTT range",
            c().store(0x10, 1),
            0,
            0x10,
            RING,
            |e| *e == EngineError::Dma { addr: 0x10 },
        ),
        gtt(
            "pipe control past RAM",
            c().pipe_control(RAM_END, 5),
            0,
            RAM_END,
            RING,
            |e| *e == EngineError::Dma { addr: RAM_END },
        ),
        gtt(
            "checksum to gmem",
            c().checksum(0, 4, 1, 1, 0),
            0,
            0,
            RING,
            |e| *e == EngineError::Dma { addr: 0 },
        ),
        Case {
            setup: |b| b.read_only = RESULTS..RESULTS + 4,
            ..gtt(
                "store to read-only memory",
                c().noop().store(RESULTS, 1),
                1,
                RESULTS,
                RING + 4,
                |e| *e == EngineError::Dma { addr: RESULTS },
            )
        },
        Case {
            setup: |b| b.put(RAM_END - 4, &[cmd::header(OP_NOOP)]),
            ..gtt(
                "batch runs off guest RAM",
                c().batch_start(RAM_END - 4),
                2,
                RAM_END,
                RAM_END,
                |e| *e == EngineError::Dma { addr: RAM_END },
            )
        },
        Case {
            setup: |b| b.set_reg(REG_RING_START_LO, RING as u32 + 0x10),
            ..cmd("misaligned ring", c().noop(), 0, RING + 0x10, |e| {
                matches!(e, EngineError::RingStart { .. })
            })
        },
        Case {
            setup: |b| b.set_reg(REG_RING_HEAD, RING_SIZE + 4),
            ..cmd(
                "head outside the ring",
                c().noop(),
                0,
                RING + u64::from(RING_SIZE) + 4,
                |e| matches!(e, EngineError::RingPointer { which: "head", .. }),
            )
        },
        Case {
            setup: |b| b.set_reg(REG_RING_TAIL, 2),
            ..cmd("misaligned tail", c().noop(), 0, RING, |e| {
                matches!(e, EngineError::RingPointer { which: "tail", .. })
            })
        },
        Case {
            setup: |b| b.set_reg(REG_RING_START_HI, 0),
            ..gtt(
                "ring in gmem",
                c().noop(),
                0,
                RING & 0xffff_ffff,
                RING & 0xffff_ffff,
                |e| matches!(e, EngineError::Dma { .. }),
            )
        },
    ]
}

#[test]
fn every_bad_input_halts_with_its_error() {
    for case in cases() {
        let name = case.name;
        let (mut e, mut bus) = device(case.ring);
        // The nested-batch case needs a batch holding a BATCH_START.
        bus.put(BATCH, &Cmds::default().batch_start(BATCH2).0);
        (case.setup)(&mut bus);
        let seqno = bus.reg(REG_SEQNO);
        assert_eq!(
            run_all(&mut e, &mut bus),
            case.done,
            "{name}: commands done"
        );
        assert!(e.is_halted(), "{name}: not halted");
        assert_ne!(
            bus.reg(REG_ENGINE_STATUS) & ENGINE_HALTED,
            0,
            "{name}: status"
        );
        assert_eq!(bus.reg(REG_ERROR_STATUS), case.bit, "{name}: error status");
        assert_eq!(
            reg64(&bus, REG_ERROR_ADDR_LO, REG_ERROR_ADDR_HI),
            case.addr,
            "{name}: addr"
        );
        assert_eq!(
            reg64(&bus, REG_ACTHD_LO, REG_ACTHD_HI),
            case.at,
            "{name}: acthd"
        );
        assert_eq!(bus.iir(), case.bit, "{name}: interrupts");
        assert_eq!(bus.reg(REG_SEQNO), seqno, "{name}: seqno");
        let err = e.last_error().cloned();
        assert!(err.as_ref().is_some_and(case.is), "{name}: {err:?}");
        assert_eq!(
            err.map(|e| e.interrupt()),
            Some(case.bit),
            "{name}: interrupt()"
        );
        // Halted: nothing more runs, and a saved halted engine restores halted.
        let (state, regs) = (e.state(), bus.regs.clone());
        assert_eq!(e.run(&mut bus, 10), 0, "{name}: ran while halted");
        assert_eq!(
            (e.state(), &bus.regs),
            (state.clone(), &regs),
            "{name}: changed while halted"
        );
        assert!(state.halted);
        // Reset clears the halt.
        e.reset();
        assert!(!e.is_halted() && e.last_error().is_none());
        assert_eq!(e.state(), EngineState::default());
    }
}

#[test]
fn the_first_error_keeps_its_address() {
    let (mut e, mut bus) = device(Cmds::default().raw(&[0xee00_0000]));
    run_all(&mut e, &mut bus);
    e.reset();
    bus.ring_at(0x100);
    bus.submit(&Cmds::default().store(0x20, 0).0);
    run_all(&mut e, &mut bus);
    assert_eq!(bus.reg(REG_ERROR_STATUS), INT_CMD_ERROR | INT_GTT_ERROR);
    assert_eq!(reg64(&bus, REG_ERROR_ADDR_LO, REG_ERROR_ADDR_HI), RING);
    assert_eq!(reg64(&bus, REG_ACTHD_LO, REG_ACTHD_HI), RING + 0x100);
    assert_eq!(bus.raised, vec![INT_CMD_ERROR, INT_GTT_ERROR]);
}

#[test]
fn random_command_streams_never_panic() {
    // Opcodes with plausible lengths and random payloads, in the ring and in a batch.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u32
    };
    for _ in 0..300 {
        let mut words = Vec::new();
        for _ in 0..8 {
            let op = next() % 0x10;
            let len = if next() % 8 == 0 {
                next() % 7
            } else {
                cmd::payload_dwords(op).unwrap_or(0)
            };
            words.push((op << 24) | len);
            for _ in 0..len {
                let w = match next() % 4 {
                    0 => next() % 64,
                    1 => next(),
                    2 => (next() % 0x1_0000) * 4,
                    _ => 1,
                };
                words.push(w);
            }
        }
        let (mut e, mut bus) = device(Cmds::default().batch_start(BATCH));
        bus.put(BATCH, &words);
        bus.put(VERTICES, &(0..60).map(|_| next()).collect::<Vec<_>>());
        bus.submit(&words);
        let _ = e.run(&mut bus, 100);
    }
}
