//! Tests on real KVM with hand-assembled 64-bit guests. Each skips (prints `skipped: why`)
//! when `/dev/kvm` is not usable here. No timing asserts; deadlines only guard hangs.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

use super::asm::{idt_gate, Asm};
use std::os::fd::{AsRawFd, FromRawFd};

use super::*;
use crate::memory;

pub(super) const RAM: u64 = 64 << 20;
const TABLES: u64 = 0x1000;
const STACK_TOP: u64 = 0x9000;
pub(super) const CODE: u64 = 0x10000;
const IDT: u64 = 0x20000;
const IDTR: u64 = 0x21000;
pub(super) const DATA: u64 = 0x30000;
const STATUS: u16 = 0x500;
const MMIO: u64 = 0xd000_0000;
pub(super) const HANG: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Event {
    Read(u64, usize),
    Write(u64, Vec<u8>),
    Out(u16, Vec<u8>),
    In(u16, usize),
}

/// Records every exit; MMIO reads return `read_value`, `in` returns 0x99; an `out` to the
/// status port pauses.
struct Recorder {
    tx: Sender<Event>,
    read_value: u64,
}

impl ExitHandler for Recorder {
    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) {
        let n = data.len();
        data.copy_from_slice(&self.read_value.to_le_bytes()[..n]);
        let _ = self.tx.send(Event::Read(gpa, n));
    }
    fn mmio_write(&mut self, gpa: u64, data: &[u8]) {
        let _ = self.tx.send(Event::Write(gpa, data.to_vec()));
    }
    fn io_out(&mut self, port: u16, data: &[u8]) -> ExitAction {
        let _ = self.tx.send(Event::Out(port, data.to_vec()));
        if port == STATUS {
            ExitAction::Pause
        } else {
            ExitAction::Continue
        }
    }
    fn io_in(&mut self, port: u16, data: &mut [u8]) {
        data.fill(0x99);
        let _ = self.tx.send(Event::In(port, data.len()));
    }
}

pub(super) fn log() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// Guest RAM and a long-mode machine with `code` at CODE, or `None` (skipped).
pub(super) fn machine(code: &Asm) -> Option<(memory::GuestMem, KvmMachine)> {
    if let Err(e) = available() {
        println!("skipped: {e}");
        return None;
    }
    let mem = memory::create(RAM, 0xb000_0000).unwrap();
    let mut m = KvmMachine::new(&mem, log()).unwrap();
    m.setup_long_mode(&BootSpec {
        tables_gpa: TABLES,
        entry: CODE,
        stack_top: STACK_TOP,
    })
    .unwrap();
    memory::write(&mem, CODE, &code.0).unwrap();
    Some((mem, m))
}

pub(super) fn spawn(m: &mut KvmMachine) -> (VcpuHandle, Receiver<Event>) {
    let (tx, rx) = channel();
    let h = m
        .spawn(Box::new(Recorder {
            tx,
            read_value: 0x1234_5678_cafe_f00d,
        }))
        .unwrap();
    (h, rx)
}

pub(super) fn read_u64(mem: &memory::GuestMem, gpa: u64) -> u64 {
    let mut b = [0u8; 8];
    memory::read(mem, gpa, &mut b).unwrap();
    u64::from_le_bytes(b)
}

pub(super) fn next(rx: &Receiver<Event>) -> Event {
    rx.recv_timeout(HANG)
        .expect("the guest made no exit in time")
}

/// Wait (hang guard only) until `f` holds.
pub(super) fn wait_until(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < HANG, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

#[test]
fn mmio_write_and_read_reach_the_handler_exactly() {
    let mut a = Asm::default();
    a.mov_rax(0x1122_3344_5566_7788)
        .mov_rbx(MMIO)
        .store_rax_at_rbx()
        .load_eax_at_rbx(0x10)
        .store_eax(DATA as u32)
        .out32(STATUS, 1)
        .hlt();
    let Some((mem, mut m)) = machine(&a) else {
        return;
    };
    let (h, rx) = spawn(&mut m);
    assert_eq!(
        next(&rx),
        Event::Write(MMIO, 0x1122_3344_5566_7788u64.to_le_bytes().to_vec())
    );
    assert_eq!(next(&rx), Event::Read(MMIO + 0x10, 4));
    assert_eq!(next(&rx), Event::Out(STATUS, vec![1, 0, 0, 0]));
    h.wait_paused(HANG).unwrap();
    assert!(h.is_paused());
    assert_eq!(
        read_u64(&mem, DATA),
        0xcafe_f00d,
        "the read value reached RAM"
    );
    let s = h.save_state().unwrap();
    assert_eq!(
        s.regs.rip,
        CODE + a.here() as u64 - 1,
        "parked after the out"
    );
    assert_eq!(s.regs.rbx, MMIO);
    h.stop().unwrap();
}

#[test]
fn port_io_reaches_the_handler_and_pause_parks() {
    let mut a = Asm::default();
    a.out32(0x501, 0x42)
        .in8(0x502)
        .store_eax(DATA as u32)
        .out32(STATUS, 1)
        .inc_mem(DATA as u32 + 8)
        .out32(STATUS, 1)
        .hlt();
    let Some((mem, mut m)) = machine(&a) else {
        return;
    };
    let (h, rx) = spawn(&mut m);
    assert_eq!(next(&rx), Event::Out(0x501, vec![0x42, 0, 0, 0]));
    assert_eq!(next(&rx), Event::In(0x502, 1));
    assert_eq!(next(&rx), Event::Out(STATUS, vec![1, 0, 0, 0]));
    h.wait_paused(HANG).unwrap();
    assert_eq!(read_u64(&mem, DATA) & 0xff, 0x99);
    assert_eq!(read_u64(&mem, DATA + 8), 0, "parked before the increment");
    h.resume().unwrap();
    assert_eq!(next(&rx), Event::Out(STATUS, vec![1, 0, 0, 0]));
    h.wait_paused(HANG).unwrap();
    assert_eq!(read_u64(&mem, DATA + 8), 1);
    assert!(rx.try_recv().is_err());
    h.stop().unwrap();
}

#[test]
fn pause_kicks_a_spinning_guest_and_resume_continues() {
    let mut a = Asm::default();
    let top = a.here();
    a.inc_mem(DATA as u32).jmp(top);
    let Some((mem, mut m)) = machine(&a) else {
        return;
    };
    let (h, _rx) = spawn(&mut m);
    wait_until("the guest to count", || read_u64(&mem, DATA) > 0);
    let t = Instant::now();
    h.pause(HANG).unwrap();
    println!("pause of a spinning guest took {:?}", t.elapsed());
    assert!(h.is_paused());
    let c1 = read_u64(&mem, DATA);
    assert_eq!(read_u64(&mem, DATA), c1, "a paused guest does not count");
    h.pause(HANG).unwrap(); // already paused: returns at once
    h.resume().unwrap();
    wait_until("the guest to count on", || read_u64(&mem, DATA) > c1);
    h.pause(HANG).unwrap();
    h.stop().unwrap();
}

#[test]
fn pause_kicks_a_halted_guest() {
    let mut a = Asm::default();
    a.out32(0x501, 0).cli();
    let top = a.here();
    a.hlt().jmp(top);
    let Some((_mem, mut m)) = machine(&a) else {
        return;
    };
    let (h, rx) = spawn(&mut m);
    assert_eq!(next(&rx), Event::Out(0x501, vec![0, 0, 0, 0]));
    let t = Instant::now();
    h.pause(HANG).unwrap();
    println!("pause of a halted guest took {:?}", t.elapsed());
    let s = h.save_state().unwrap();
    assert!(s.regs.rip >= CODE && s.regs.rip <= CODE + a.here() as u64);
    h.resume().unwrap();
    h.pause(HANG).unwrap();
    h.stop().unwrap();
}

const VECTOR: u32 = 0x41;

/// A guest that enables its LAPIC, says ready (`out 0x501`) and halts with interrupts on;
/// its vector-0x41 handler writes 0xdeadbeef at DATA, EOIs and reports on the status port.
fn interrupt_guest() -> Option<(memory::GuestMem, KvmMachine)> {
    const HANDLER: u64 = CODE + 0x800;
    let mut a = Asm::default();
    a.lidt(IDTR as u32)
        .mov_rbx(0xfee0_0000)
        .store_imm32_at_rbx(0xf0, 0x1ff) // SVR: software enable, spurious vector 0xff
        .out32(0x501, 0) // ready
        .sti();
    let top = a.here();
    a.hlt().jmp(top);
    let mut handler = Asm::default();
    handler
        .mov_rax(0xdead_beef)
        .store_rax(DATA as u32)
        .mov_rbx(0xfee0_0000)
        .store_imm32_at_rbx(0xb0, 0) // EOI
        .out32(STATUS, 1)
        .iretq();
    let (mem, m) = machine(&a)?;
    memory::write(&mem, HANDLER, &handler.0).unwrap();
    memory::write(&mem, IDT + 16 * u64::from(VECTOR), &idt_gate(HANDLER)).unwrap();
    let mut idtr = [0u8; 10];
    idtr[0..2].copy_from_slice(&(256u16 * 16 - 1).to_le_bytes());
    idtr[2..10].copy_from_slice(&IDT.to_le_bytes());
    memory::write(&mem, IDTR, &idtr).unwrap();
    Some((mem, m))
}

#[test]
fn msi_wakes_a_halted_guest_into_its_handler() {
    let Some((mem, mut m)) = interrupt_guest() else {
        return;
    };
    let (h, rx) = spawn(&mut m);
    assert_eq!(next(&rx), Event::Out(0x501, vec![0, 0, 0, 0]));
    assert_eq!(read_u64(&mem, DATA), 0);
    assert!(m.signal_msi(0xfee0_0000, VECTOR).unwrap(), "MSI delivered");
    assert_eq!(next(&rx), Event::Out(STATUS, vec![1, 0, 0, 0]));
    h.wait_paused(HANG).unwrap();
    assert_eq!(read_u64(&mem, DATA), 0xdead_beef, "the handler ran");
    h.resume().unwrap();
    // Back to hlt after iretq; a second MSI runs the handler again.
    memory::write(&mem, DATA, &[0; 8]).unwrap();
    assert!(m.signal_msi(0xfee0_0000, VECTOR).unwrap());
    assert_eq!(next(&rx), Event::Out(STATUS, vec![1, 0, 0, 0]));
    h.wait_paused(HANG).unwrap();
    assert_eq!(read_u64(&mem, DATA), 0xdead_beef);
    h.stop().unwrap();
}

#[test]
fn irqfd_on_an_msi_route_interrupts_the_guest() {
    let Some((mem, mut m)) = interrupt_guest() else {
        return;
    };
    // SAFETY: eventfd creates a new descriptor that this test owns and closes below.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(efd >= 0);
    // SAFETY: `efd` is a fresh descriptor nobody else owns.
    let efd = unsafe { std::os::fd::OwnedFd::from_raw_fd(efd) };
    m.set_msi_route(24, 0xfee0_0000, VECTOR).unwrap();
    m.register_irqfd(&efd, 24).unwrap();
    let (h, rx) = spawn(&mut m);
    assert_eq!(next(&rx), Event::Out(0x501, vec![0, 0, 0, 0]));
    let one = 1u64.to_ne_bytes();
    // SAFETY: an 8-byte write from a live buffer to an eventfd this test owns.
    let n = unsafe { libc::write(efd.as_raw_fd(), one.as_ptr().cast(), 8) };
    assert_eq!(n, 8);
    assert_eq!(next(&rx), Event::Out(STATUS, vec![1, 0, 0, 0]));
    h.wait_paused(HANG).unwrap();
    assert_eq!(read_u64(&mem, DATA), 0xdead_beef, "the handler ran");
    m.unregister_irqfd(&efd, 24).unwrap();
    m.remove_msi_route(24).unwrap();
    h.stop().unwrap();
}

#[test]
fn a_triple_fault_ends_the_thread_with_an_error() {
    let mut a = Asm::default();
    a.ud2(); // no IDT: #UD, then #DF, then shutdown
    let Some((_mem, mut m)) = machine(&a) else {
        return;
    };
    let (h, _rx) = spawn(&mut m);
    let e = h.wait_paused(HANG).unwrap_err();
    assert!(matches!(e, KvmError::VcpuEnded { .. }), "{e}");
    assert!(h.ended().is_some_and(|r| r.contains("Shutdown")), "{e}");
    assert!(matches!(h.pause(HANG), Err(KvmError::VcpuEnded { .. })));
    let e = h.stop().unwrap_err();
    assert!(matches!(e, KvmError::UnexpectedExit { .. }), "{e}");
}
