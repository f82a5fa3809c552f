//! Running the guest from the migration thread: accounted guest steps, running it while the
//! link is busy or the target catches up, and placing the switchover exactly.

use std::io::Write;
use std::time::{Duration, Instant};

use super::options::{SourceOptions, SwitchoverAt};
use super::peer;
use super::report::SwitchoverPoint;
use crate::migration::clock::monotonic_ns;
use crate::migration::control::{Ack, FromTarget, TargetEvents};
use crate::migration::error::{MigrationError, Result};
use crate::migration::transport::ChannelWriter;
use crate::migration::StopPoint;
use crate::stream::StreamWriter;
use crate::vm::Vm;

/// Backlog above which the source runs the guest instead of queueing more.
pub(super) const HIGH_WATER: u64 = 16 << 20;

thread_local! {
    /// Time the guest ran on this thread during the current round (see [`guest_step`]).
    static GUEST_TIME: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
    /// The guest runs only in [`paced_work`] (`SourceOptions::guest_work_per_round`).
    static PACED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While alive, the guest runs only when [`paced_work`] runs it.
pub(super) struct Paced;

impl Paced {
    /// Pace the guest on this thread if `on`.
    pub(super) fn new(on: bool) -> Self {
        PACED.with(|p| p.set(on));
        Self
    }
}

impl Drop for Paced {
    fn drop(&mut self) {
        PACED.with(|p| p.set(false));
    }
}

/// Run the guest for `work` units of its hardware's work (fewer if it goes idle, as at the
/// end of its workload).
pub(super) fn paced_work(vm: &mut Vm, work: u64) {
    let t = Instant::now();
    let mut left = work;
    let mut idle = 0u32;
    while left > 0 && idle < 100_000 {
        let (_, ran) = vm.step(left.min(64) as usize);
        if ran == 0 {
            idle += 1;
        } else {
            idle = 0;
            left = left.saturating_sub(ran as u64);
        }
    }
    GUEST_TIME.with(|g| g.set(g.get() + t.elapsed()));
}

/// One guest step, with its time accounted: a round's transfer time is its wall time less
/// the time the guest held this thread. Paced, the guest does not run here.
pub(super) fn guest_step(vm: &mut Vm, budget: usize) -> usize {
    if PACED.with(|p| p.get()) {
        return 0;
    }
    let t = Instant::now();
    let (_, ran) = vm.step(budget);
    GUEST_TIME.with(|g| g.set(g.get() + t.elapsed()));
    ran
}

/// The guest time accounted since the last call, reset to zero.
pub(super) fn take_guest_time() -> Duration {
    GUEST_TIME.with(|g| g.replace(Duration::ZERO))
}

/// Run `vm` on the main thread until the sender's backlog is below `max`.
pub(super) fn run_while_busy(
    vm: &mut Vm,
    w: &mut StreamWriter<ChannelWriter>,
    max: u64,
) -> std::io::Result<()> {
    w.get_mut().flush()?;
    while w.get_mut().backlog() > max {
        busy_turn(vm);
        if let Some(e) = w.get_mut().peer_error_now() {
            return Err(e);
        }
    }
    Ok(())
}

/// The guest's turn while the link is busy: one device command (a long guest slice would
/// leave the link idle), then as long a pause. On this simulation the guest, the senders
/// and (in tests and benches) the target share the host's cores; the guest gets half of
/// this thread while the link is busy, as a guest on its own cores would leave the
/// migration thread its share.
pub(super) fn busy_turn(vm: &mut Vm) {
    let t = Instant::now();
    let ran = guest_step(vm, 1);
    let spent = t.elapsed();
    if ran == 0 {
        std::thread::sleep(Duration::from_micros(100));
    } else {
        std::thread::sleep(spent.min(Duration::from_millis(5)));
    }
}

/// Step the guest one device command at a time until `at` holds (bounded).
pub(super) fn position(vm: &mut Vm, at: SwitchoverAt) -> Result<()> {
    if at == SwitchoverAt::Converged {
        return Ok(());
    }
    let start_frames = vm.completed_frames();
    for _ in 0..200_000 {
        let holds = match at {
            SwitchoverAt::MidBatch => {
                let p = vm.hardware().position();
                p.mid_work && p.offset > 0
            }
            SwitchoverAt::IrqPending => vm.vcpu().has_pending(),
            SwitchoverAt::NextFrame => vm.completed_frames() > start_frames,
            SwitchoverAt::Converged => true,
        };
        if holds {
            return Ok(());
        }
        // One device command; interrupts it raises are queued to the vCPU but not run. When
        // the device has nothing to do, the guest runs a step to give it work.
        if vm.step_device(1) == 0 {
            vm.step(0);
        }
    }
    Err(MigrationError::Position {
        what: format!("{at:?}"),
    })
}

/// Where the guest and the device are now.
pub(super) fn switchover_point(vm: &mut Vm) -> SwitchoverPoint {
    let p = vm.hardware().position();
    SwitchoverPoint {
        commands: vm.command_count(),
        frames: vm.completed_frames(),
        in_batch: p.mid_work,
        batch_offset: p.offset,
        iir: p.irq_status,
        vcpu_irq_pending: vm.vcpu().has_pending(),
    }
}

/// Send a SYNC and keep the guest running until the target has consumed everything sent.
pub(super) fn sync(
    vm: &mut Vm,
    w: &mut StreamWriter<ChannelWriter>,
    events: &TargetEvents,
    seq: u64,
    opts: &SourceOptions,
) -> Result<()> {
    if let Ok(round) = u32::try_from(seq) {
        StopPoint::stop_if(opts.stop_self_at, StopPoint::Round(round), vm.log());
    }
    w.sync(seq)?;
    w.get_mut().flush().map_err(peer)?;
    let since = monotonic_ns();
    loop {
        match events.poll(since)? {
            Some(FromTarget::Synced { seq: s }) if s == seq => break,
            Some(FromTarget::Ack(Ack::Rejected { reason })) => {
                return Err(MigrationError::Rejected { reason })
            }
            Some(_) => {}
            None => {
                if let Some(e) = w.get_mut().peer_error_now() {
                    return Err(peer(e));
                }
                // Small steps, so the answer is noticed promptly.
                let ran = guest_step(vm, SYNC_BUDGET);
                if ran == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
    }
    events
        .liveness()
        .set_phase(format!("pre-copy round {}", seq + 1));
    Ok(())
}

/// Device commands per guest step while waiting for the target.
const SYNC_BUDGET: usize = 4;
