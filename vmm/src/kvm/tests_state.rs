//! Tests of vCPU state (save, restore on a second machine, the byte record) and of the
//! dirty log. The KVM ones skip (print `skipped: why`) when `/dev/kvm` is not usable.

use std::time::Instant;

use kvm_bindings::kvm_msr_entry;

use super::asm::Asm;
use super::error::KvmError;
use super::tests::{machine, next, read_u64, spawn, wait_until, Event, CODE, DATA, HANG, RAM};
use super::*;
use crate::memory;

#[test]
fn state_moves_a_paused_guest_to_a_second_machine() {
    // loop: inc rcx; mov [DATA], rcx; jmp loop
    let mut a = Asm::default();
    let top = a.here();
    a.inc_rcx().store_rcx(DATA as u32).jmp(top);
    let Some((mem, mut m)) = machine(&a) else {
        return;
    };
    let (h, _rx) = spawn(&mut m);
    wait_until("the guest to count", || read_u64(&mem, DATA) > 1000);
    h.pause(HANG).unwrap();
    let saved = h.save_state().unwrap();
    let bytes = saved.to_bytes();
    let counted = read_u64(&mem, DATA);
    let rcx = saved.regs.rcx;
    assert!(
        rcx == counted || rcx == counted + 1,
        "rcx {rcx} RAM {counted}"
    );
    assert!(saved.regs.rip >= CODE && saved.regs.rip < CODE + a.here() as u64);

    // A copy of RAM on a fresh machine that never ran; the source stays paused.
    let mem2 = memory::create(RAM, 0xb000_0000).unwrap();
    let mut page = vec![0u8; 1 << 20];
    for off in (0..RAM).step_by(page.len()) {
        memory::read(&mem, off, &mut page).unwrap();
        memory::write(&mem2, off, &page).unwrap();
    }
    let mut m2 = KvmMachine::new(&mem2, super::tests::log()).unwrap();
    m2.restore_state(&KvmVcpuState::from_bytes(&bytes).unwrap())
        .unwrap();
    let loaded = m2.save_state().unwrap();
    assert_eq!(loaded.regs.rip, saved.regs.rip);
    assert_eq!(loaded.regs.rcx, rcx);
    assert_eq!(loaded.sregs.cr3, saved.sregs.cr3);
    assert_eq!(loaded.sregs.efer, saved.sregs.efer);
    assert_eq!(loaded.mp_state.mp_state, saved.mp_state.mp_state);

    let (h2, _rx2) = spawn(&mut m2);
    wait_until("the copy to count on", || {
        read_u64(&mem2, DATA) > rcx + 1000
    });
    h2.pause(HANG).unwrap();
    let after = h2.save_state().unwrap();
    let c2 = read_u64(&mem2, DATA);
    assert!(after.regs.rcx == c2 || after.regs.rcx == c2 + 1);
    assert_eq!(read_u64(&mem, DATA), counted, "the source stayed paused");
    h2.stop().unwrap();
    h.stop().unwrap();
}

#[test]
fn state_needs_a_paused_or_idle_vcpu() {
    let mut a = Asm::default();
    let top = a.here();
    a.inc_mem(DATA as u32).jmp(top);
    let Some((_mem, mut m)) = machine(&a) else {
        return;
    };
    let s = m.save_state().unwrap();
    let (h, _rx) = spawn(&mut m);
    assert!(matches!(h.save_state(), Err(KvmError::NotPaused { .. })));
    assert!(matches!(m.save_state(), Err(KvmError::AlreadySpawned)));
    assert!(matches!(m.restore_state(&s), Err(KvmError::AlreadySpawned)));
    h.stop().unwrap();
}

fn sample() -> KvmVcpuState {
    let mut s = KvmVcpuState {
        regs: Default::default(),
        sregs: Default::default(),
        fpu: Default::default(),
        xsave: Some(Default::default()),
        xcrs: Some(Default::default()),
        lapic: Default::default(),
        msrs: vec![
            kvm_msr_entry {
                index: 0x10,
                data: 1234,
                ..Default::default()
            };
            3
        ],
        events: Default::default(),
        mp_state: Default::default(),
    };
    s.regs.rip = 0x1234;
    s.sregs.cr3 = 0x2000;
    s
}

/// Offset of part `n` (0 = regs) of a record.
fn part_offset(b: &[u8], n: usize) -> usize {
    let mut off = 20;
    for _ in 0..n {
        let len = u32::from_le_bytes(b[off..off + 4].try_into().unwrap()) as usize;
        off += 4 + len;
    }
    off
}

fn fix_total(b: &mut [u8]) {
    let n = b.len() as u64;
    b[12..20].copy_from_slice(&n.to_le_bytes());
}

#[test]
fn state_record_round_trips() {
    let s = sample();
    let b = s.to_bytes();
    let back = KvmVcpuState::from_bytes(&b).unwrap();
    assert_eq!(back.to_bytes(), b);
    assert_eq!(back.regs.rip, 0x1234);
    assert_eq!(back.msrs.len(), 3);
    let mut no_xsave = sample();
    no_xsave.xsave = None;
    no_xsave.xcrs = None;
    let b2 = no_xsave.to_bytes();
    assert!(KvmVcpuState::from_bytes(&b2).unwrap().xsave.is_none());
    assert_eq!(b.len() - b2.len(), 4096 + 392);
}

#[test]
fn malformed_state_records_are_refused() {
    let good = sample().to_bytes();
    let parse = KvmVcpuState::from_bytes;

    let mut b = good.clone();
    b[0] ^= 0xff;
    assert!(matches!(parse(&b), Err(KvmError::StateMagic { .. })));

    let mut b = good.clone();
    b[8] = 2;
    assert!(matches!(
        parse(&b),
        Err(KvmError::StateVersion { found: 2, .. })
    ));

    for len in 0..good.len() {
        let e = parse(&good[..len]).expect_err("a truncated record parses");
        assert!(
            matches!(
                e,
                KvmError::StateTruncated { .. } | KvmError::StateLength { .. }
            ),
            "{len}: {e}"
        );
    }
    // Truncated but with a total length that agrees: the missing part is named.
    let mut b = good[..good.len() - 2].to_vec();
    fix_total(&mut b);
    assert!(matches!(parse(&b), Err(KvmError::StateTruncated { .. })));

    // regs one byte short, the record otherwise consistent.
    let mut b = good[..20].to_vec();
    b.extend_from_slice(&143u32.to_le_bytes());
    b.extend_from_slice(&good[24..24 + 143]);
    b.extend_from_slice(&good[24 + 144..]);
    fix_total(&mut b);
    let e = parse(&b).unwrap_err();
    assert!(
        matches!(
            e,
            KvmError::StatePart {
                part: "kvm_regs",
                found: 143,
                expected: 144
            }
        ),
        "{e}"
    );

    // An MSR part that is not whole entries.
    let msrs = part_offset(&good, 6);
    let mut b = good.clone();
    b[msrs..msrs + 4].copy_from_slice(&47u32.to_le_bytes());
    b.remove(msrs + 4);
    fix_total(&mut b);
    assert!(matches!(
        parse(&b),
        Err(KvmError::StatePart { part: "msrs", .. })
    ));

    // Too many MSRs.
    let mut many = sample();
    many.msrs = vec![kvm_msr_entry::default(); state::MAX_MSRS + 1];
    let e = parse(&many.to_bytes()).unwrap_err();
    assert!(
        matches!(e, KvmError::StateTooManyMsrs { count: 65, .. }),
        "{e}"
    );

    // Trailing bytes inside the declared length.
    let mut b = good.clone();
    b.push(0);
    fix_total(&mut b);
    assert!(matches!(
        parse(&b),
        Err(KvmError::StateTrailing { extra: 1 })
    ));

    // A declared length that disagrees.
    let mut b = good.clone();
    b.push(0);
    assert!(matches!(parse(&b), Err(KvmError::StateLength { .. })));
}

#[test]
fn dirty_log_holds_exactly_the_pages_the_guest_wrote() {
    let mut a = Asm::default();
    a.mov_rax(7)
        .store_rax(0x40000)
        .store_rax(0x42000)
        .store_rax(0x44ff8)
        .out32(0x500, 1)
        .hlt();
    let Some((mem, mut m)) = machine(&a) else {
        return;
    };
    // The VMM's own writes (tables, code) are vm-memory's to log, not KVM's.
    assert_eq!(m.harvest_dirty().unwrap().count(), 0);
    let (h, rx) = spawn(&mut m);
    assert_eq!(next(&rx), Event::Out(0x500, vec![1, 0, 0, 0]));
    h.wait_paused(HANG).unwrap();
    let d = m.harvest_dirty().unwrap();
    for gpa in [0x40000, 0x42000, 0x44000] {
        assert!(d.is_dirty(gpa), "{gpa:#x} written");
    }
    for gpa in [0x41000, 0x43000, 0x45000, CODE, DATA] {
        assert!(!d.is_dirty(gpa), "{gpa:#x} untouched");
    }
    assert_eq!(d.pages(), RAM / memory::PAGE_SIZE);
    assert_eq!(m.harvest_dirty().unwrap().count(), 0, "a harvest clears");
    // Merges with vm-memory's log of the VMM's writes.
    let mut cpu = memory::harvest_dirty(&mem);
    assert!(cpu.merge(&d));
    assert!(cpu.is_dirty(CODE) && cpu.is_dirty(0x42000));
    h.stop().unwrap();
}

#[test]
fn harvest_cost_per_gib() {
    // 1 GiB of RAM; the guest writes one qword in each page of 64 MiB at 256 MiB.
    const FROM: u32 = 256 << 20;
    const TO: u32 = 320 << 20;
    let mut a = Asm::default();
    a.mov_rax(1).mov_rbx(u64::from(FROM));
    let top = a.here();
    a.store_rax_at_rbx()
        .add_rbx(memory::PAGE_SIZE as u32)
        .cmp_rbx(TO)
        .jb(top)
        .out32(0x500, 1)
        .hlt();
    if let Err(e) = available() {
        println!("skipped: {e}");
        return;
    }
    let size = 1u64 << 30;
    let mem = memory::create(size, 0xb000_0000).unwrap();
    let mut m = KvmMachine::new(&mem, super::tests::log()).unwrap();
    m.setup_long_mode(&BootSpec {
        tables_gpa: 0x1000,
        entry: CODE,
        stack_top: 0x9000,
    })
    .unwrap();
    memory::write(&mem, CODE, &a.0).unwrap();

    let rounds = 20;
    let t = Instant::now();
    for _ in 0..rounds {
        assert_eq!(m.harvest_dirty().unwrap().count(), 0);
    }
    let clean = t.elapsed() / rounds;

    let (h, rx) = spawn(&mut m);
    assert_eq!(next(&rx), Event::Out(0x500, vec![1, 0, 0, 0]));
    h.wait_paused(HANG).unwrap();
    let t = Instant::now();
    let d = m.harvest_dirty().unwrap();
    let dirty = t.elapsed();
    let written = u64::from(TO - FROM) / memory::PAGE_SIZE;
    assert!(d.count() >= written, "every written page is dirty");
    assert!(d.is_dirty(u64::from(FROM)) && d.is_dirty(u64::from(TO) - 1));
    assert!(!d.is_dirty(u64::from(TO)));
    println!(
        "KVM dirty-log harvest of 1 GiB: {clean:?} clean, {dirty:?} with {} dirty pages",
        d.count()
    );
    h.stop().unwrap();
}
