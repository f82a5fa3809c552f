//! Bad input at the library level: every class of damaged snapshot is refused by
//! `vmm::snapshot::restore` with an error that says what is wrong, never accepted and never
//! a panic; the same for a device-only context through the state-region format and the
//! vGPU's own decoder.
//!
//! One snapshot (64 MiB guest RAM, saved mid-batch) is made once and damaged in memory; the
//! readers stream it through adapters, so no test copies the 65 MiB.

use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use vgpu_platform::VgpuVm;

use pci_config_replay::ConfigSpaceState;
use state_region::format;
use vgpu_migrate_tests::{booted, quiet, reference};
use vmm::stream::{Header, Record, RecordKind, StreamReader, StreamWriter, TrailerCheck};
use vmm::StopAt;

const FRAMES: u64 = 4;
const SEED: u64 = 9;
/// Frames complete in the snapshot (it is saved a few commands into the next one).
const SAVED_FRAMES: u64 = 2;

struct Fixture {
    /// The whole snapshot stream.
    stream: Vec<u8>,
    /// The device-only context the same VM state produces.
    context: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut vm = booted("vgpu-64", FRAMES, SEED, 100);
        vm.run(StopAt::Frame(SAVED_FRAMES)).unwrap();
        let c = vm.command_count() + 5;
        vm.run(StopAt::Command(c)).unwrap();
        let mut stream = Vec::new();
        vmm::snapshot::save(&mut vm, &mut stream).unwrap();
        let mut vm = booted("vgpu-64", FRAMES, SEED, 100);
        vm.run(StopAt::Command(c)).unwrap();
        let mut context = Vec::new();
        vmm::snapshot::save_device_only(&mut vm, &mut context).unwrap();
        Fixture { stream, context }
    })
}

/// One record's place in the encoded stream.
#[derive(Debug, Clone, Copy)]
struct Span {
    offset: usize,
    kind: u32,
    len: usize,
}

impl Span {
    fn payload(&self) -> usize {
        self.offset + 8
    }
    fn end(&self) -> usize {
        self.offset + 8 + self.len
    }
}

/// Walk the framing of a valid stream.
fn layout(bytes: &[u8]) -> Vec<Span> {
    let name_len = u16::from_le_bytes([bytes[28], bytes[29]]) as usize;
    let mut off = 30 + name_len;
    let mut out = Vec::new();
    while off < bytes.len() {
        let kind = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap());
        let len = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
        out.push(Span {
            offset: off,
            kind,
            len,
        });
        off += 8 + len;
    }
    assert_eq!(off, bytes.len());
    out
}

fn spans(kind: RecordKind) -> Vec<Span> {
    layout(&fixture().stream)
        .into_iter()
        .filter(|s| s.kind == kind as u32)
        .collect()
}

/// Stream offset of byte `ctx` of the device context carried in DEVICE_DATA records.
fn stream_offset_of_context_byte(ctx: usize) -> usize {
    let mut base = 0;
    for s in spans(RecordKind::DeviceData) {
        if ctx < base + s.len {
            return s.payload() + ctx - base;
        }
        base += s.len;
    }
    panic!("context byte {ctx} is past the device data ({base} bytes)");
}

/// The stream with one byte XORed on the fly.
struct Flipped<'a> {
    data: &'a [u8],
    pos: usize,
    mask: u8,
    at: usize,
}

impl Read for Flipped<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        if (self.at..self.at + n).contains(&self.pos) {
            buf[self.pos - self.at] ^= self.mask;
        }
        self.at += n;
        Ok(n)
    }
}

fn flipped(data: &[u8], pos: usize, mask: u8) -> Flipped<'_> {
    Flipped {
        data,
        pos,
        mask,
        at: 0,
    }
}

/// Restore must fail with an error (not succeed, not panic); the message.
fn restore_err(input: impl Read, what: &str) -> String {
    let res = catch_unwind(AssertUnwindSafe(|| {
        vgpu_platform::restore(input, &quiet(), Default::default(), 300)
    }));
    match res {
        Ok(Ok(_)) => panic!("{what}: the damaged snapshot was accepted"),
        Ok(Err(e)) => {
            let msg = e.to_string();
            assert!(!msg.is_empty() && !msg.contains('\n'), "{what}: {msg:?}");
            msg
        }
        Err(_) => panic!("{what}: restore panicked"),
    }
}

/// Header and records of a valid stream.
fn decode(bytes: &[u8]) -> (Header, Vec<Record>) {
    let mut r = StreamReader::new(bytes, TrailerCheck::Enforce).unwrap();
    let h = r.header().clone();
    let mut recs = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        recs.push(rec);
    }
    (h, recs)
}

/// Encode records with a correct framing and digest.
fn encode(h: &Header, recs: &[Record]) -> Vec<u8> {
    let mut w = StreamWriter::new(Vec::new(), h).unwrap();
    for rec in recs {
        match rec {
            Record::RamPages { gpa, data } => w.ram_pages(*gpa, data),
            Record::RamZero { gpa, pages } => w.ram_zero(*gpa, *pages),
            Record::DeviceData(c) => w.device_data(c),
            Record::DeviceEnd => w.device_end(),
            Record::Config(c) => w.config(c),
            Record::Vcpu(v) => w.vcpu(v),
            Record::Sync { seq } => w.sync(*seq),
            Record::Switchover { stopped_ns } => w.switchover(*stopped_ns),
        }
        .unwrap();
    }
    w.finish().unwrap().0
}

#[test]
fn the_undamaged_snapshot_restores_and_finishes_like_the_reference() {
    // The control for everything below: the fixture and the readers are sound.
    let f = fixture();
    let mut vm = vgpu_platform::restore(&f.stream[..], &quiet(), Default::default(), 300).unwrap();
    assert_eq!(vm.completed_frames(), SAVED_FRAMES);
    vm.run(StopAt::Done).unwrap();
    assert_eq!(
        vm.checksums(FRAMES),
        reference("vgpu-64", FRAMES, SEED).checksums
    );
    // The in-memory adapter with no flip is the identity.
    let mut copy = Vec::new();
    flipped(&f.stream, usize::MAX, 0xff)
        .read_to_end(&mut copy)
        .unwrap();
    assert!(copy == f.stream);
    // Re-encoding the decoded records reproduces the stream byte for byte.
    let (h, recs) = decode(&f.stream);
    assert!(encode(&h, &recs) == f.stream);
    // The device-only context is what the stream carries.
    let carried: Vec<u8> = recs
        .iter()
        .filter_map(|r| match r {
            Record::DeviceData(c) => Some(c.as_slice()),
            _ => None,
        })
        .flatten()
        .copied()
        .collect();
    assert!(carried == f.context);
}

#[test]
fn truncated_snapshot_is_refused_at_every_kind_of_place() {
    let s = &fixture().stream;
    let ram = spans(RecordKind::RamPages)[0];
    let dev = spans(RecordKind::DeviceData);
    let dev_end = spans(RecordKind::DeviceEnd)[0];
    let config = spans(RecordKind::Config)[0];
    let end = spans(RecordKind::End)[0];
    let cases = [
        (0, "empty file"),
        (5, "inside the magic"),
        (20, "inside the header's RAM size"),
        (33, "inside the mdev type name"),
        (ram.offset + 4, "inside a RAM record header"),
        (ram.payload() + 100, "inside a RAM record"),
        (dev[0].payload() + 10, "inside the first device chunk"),
        (dev[dev.len() / 2].offset, "between device chunks"),
        (dev[dev.len() - 1].end() - 1, "inside the last device chunk"),
        (dev_end.offset + 3, "inside DEVICE_END"),
        (config.payload() + 7, "inside the config record"),
        (end.offset, "before the end record"),
        (end.payload() + 31, "inside the end digest"),
    ];
    for (n, what) in cases {
        let msg = restore_err(&s[..n], what);
        assert!(
            msg.contains(&format!("stream truncated at byte {n}")),
            "{what}: {msg}"
        );
    }
}

/// Positions across the whole snapshot: every header byte, record framing of every kind,
/// payload bytes of RAM, config and vCPU records, the end digest, and bytes of every section
/// of the device context (header, payload, digest) inside the DEVICE_DATA chunks.
fn flip_positions() -> Vec<(usize, &'static str)> {
    let f = fixture();
    let l = layout(&f.stream);
    let mut v: Vec<(usize, &str)> = (0..l[0].offset).map(|i| (i, "stream header")).collect();
    let first = |k: RecordKind| *l.iter().find(|s| s.kind == k as u32).unwrap();
    let dev = spans(RecordKind::DeviceData);
    let ram = first(RecordKind::RamPages);
    v.extend([
        (ram.offset, "RAM record kind"),
        (ram.offset + 5, "RAM record length"),
        (ram.payload() + 1, "RAM record address"),
        (ram.payload() + 8, "RAM page data"),
        (
            spans(RecordKind::RamPages).last().unwrap().end() - 1,
            "last RAM page",
        ),
    ]);
    for s in [dev[0], dev[dev.len() / 2], dev[dev.len() - 1]] {
        v.push((s.offset, "DEVICE_DATA kind"));
        v.push((s.offset + 6, "DEVICE_DATA length"));
    }
    let end = first(RecordKind::End);
    let dev_end = first(RecordKind::DeviceEnd);
    let config = first(RecordKind::Config);
    let vcpu = first(RecordKind::Vcpu);
    v.extend([
        (dev_end.offset, "DEVICE_END kind"),
        (dev_end.offset + 4, "DEVICE_END length"),
        (config.offset + 4, "config length"),
        (config.payload(), "config state"),
        (config.payload() + 0x20, "config state"),
        (config.end() - 1, "config state"),
        (vcpu.payload() + 3, "vCPU state"),
        (vcpu.end() - 1, "vCPU state"),
        (end.offset, "END kind"),
        (end.offset + 4, "END length"),
        (end.payload(), "END digest"),
        (end.end() - 1, "END digest"),
    ]);
    // The device context, through the chunks: its header, and every section's header,
    // first payload byte, last payload byte and digest.
    let summary = format::inspect(&f.context, vgpu_sim::inspect::context_limits(None)).unwrap();
    v.extend(
        (0..summary.sections[0].offset as usize)
            .map(|c| (stream_offset_of_context_byte(c), "device context header")),
    );
    for sec in &summary.sections {
        let o = sec.offset as usize;
        let hdr = format::SECTION_HEADER_SIZE;
        let len = sec.header.length as usize;
        // id, version, length
        for c in [o, o + 4, o + 8] {
            v.push((stream_offset_of_context_byte(c), "device section header"));
        }
        if len > 0 {
            v.push((
                stream_offset_of_context_byte(o + hdr),
                "device section payload",
            ));
            v.push((
                stream_offset_of_context_byte(o + hdr + len - 1),
                "device section payload",
            ));
        }
        v.push((
            stream_offset_of_context_byte(o + hdr + len),
            "device section digest",
        ));
        v.push((
            stream_offset_of_context_byte(o + hdr + len + 31),
            "device section digest",
        ));
    }
    v
}

#[test]
fn bit_flips_anywhere_are_refused() {
    let s = &fixture().stream;
    let positions = flip_positions();
    assert!(positions.len() > 100, "{}", positions.len());
    let masks = [0x01u8, 0x80, 0xff, 0x10];
    // Two workers: each restore reads up to the whole 65 MiB.
    let failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let positions = &positions;
                scope.spawn(move || {
                    let mut bad = Vec::new();
                    for (i, (pos, what)) in positions.iter().enumerate().skip(w).step_by(2) {
                        let mask = masks[i % masks.len()];
                        let label = format!("{what} at byte {pos} ^ {mask:#04x}");
                        match catch_unwind(AssertUnwindSafe(|| {
                            restore_err(flipped(s, *pos, mask), &label)
                        })) {
                            Ok(msg) if msg.is_empty() => bad.push(format!("{label}: empty")),
                            Ok(_) => {}
                            Err(e) => bad.push(
                                e.downcast_ref::<String>()
                                    .cloned()
                                    .unwrap_or_else(|| label.clone()),
                            ),
                        }
                    }
                    bad
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn flips_are_caught_by_the_right_check() {
    let s = &fixture().stream;
    let ram = spans(RecordKind::RamPages)[0];
    let msg = restore_err(flipped(s, ram.payload() + 100, 1), "RAM page");
    assert!(msg.contains("stream digest mismatch"), "{msg}");
    // Inside graphics memory: the device's section digest, not the stream's.
    let msg = restore_err(
        flipped(s, stream_offset_of_context_byte(4096), 1),
        "graphics memory",
    );
    assert!(
        msg.contains("rejected") && msg.contains("does not match its SHA-256 digest"),
        "{msg}"
    );
    // The device context's header names the type: caught by the end section's chain.
    let msg = restore_err(
        flipped(s, stream_offset_of_context_byte(10), 1),
        "context minor version",
    );
    assert!(msg.contains("rejected"), "{msg}");
}

#[path = "bad_input/framing.rs"]
mod framing;
