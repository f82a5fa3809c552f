//! The pre-copy phase: round 0 sends every page the host ever backed, each later round what
//! the guest and the device dirtied while the last one was in flight, until the policy
//! switches over (or gives up).

use std::sync::atomic::Ordering;
use std::time::Instant;

use mdev_core::DirtyBitmap;
use slog::{debug, info};

use super::guest::{paced_work, run_while_busy, sync, take_guest_time, Paced, HIGH_WATER};
use super::options::{FailPoint, SourceOptions};
use super::pages::send_pages;
use super::peer;
use super::policy::{self, Decision, Limits, RoundFigures};
use super::report::{Progress, RoundStats, SourceReport};
use crate::memory::{self, PAGE_SIZE};
use crate::migration::control::TargetEvents;
use crate::migration::device_io::DeviceIo;
use crate::migration::dirty::DmaTracker;
use crate::migration::error::{MigrationError, Result};
use crate::migration::transport::{ChannelWriter, Counters};
use crate::stream::StreamWriter;
use crate::vm::Vm;

/// Assumed fixed device state when the protocol cannot say (v1 has no size query).
const V1_FIXED_ESTIMATE: u64 = 1 << 20;

/// Where pre-copy left off: what the stop-and-copy phase still has to send, and the figures
/// the report gives.
pub(super) struct Precopy {
    /// Pages dirtied since they were last sent.
    pub pending: DirtyBitmap,
    /// Of those, pages only the device's DMA log reported.
    pub dma_only: DirtyBitmap,
    /// Rounds done.
    pub round: u32,
    /// The downtime expected after the last round, ms.
    pub expected_downtime_ms: f64,
    /// Bandwidth estimate, bytes/s.
    pub bandwidth: f64,
    /// Engine throttle, percent.
    pub throttle: u32,
}

/// Set the device, the DMA log and the CPU log up for pre-copy, then run rounds until the
/// policy switches over.
#[allow(clippy::too_many_arguments)]
pub(super) fn precopy(
    vm: &mut Vm,
    w: &mut StreamWriter<ChannelWriter>,
    counters: &Counters,
    events: &TargetEvents,
    opts: &SourceOptions,
    dio: &mut DeviceIo,
    dma: &mut Option<DmaTracker>,
    t_start: Instant,
    report: &mut SourceReport,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Precopy> {
    let _paced = Paced::new(opts.guest_work_per_round.is_some());
    // Setup: device pre-copy, DMA log, a clean CPU log. Round 0 sends every page.
    dio.start_precopy(vm)?;
    *dma = Some(DmaTracker::start(vm, opts.protocol)?);
    // A KVM guest runs on its own vCPU from here on, while this thread migrates it.
    if vm.on_kvm() {
        vm.start_kvm()?;
    }
    let _ = vm.harvest_cpu_dirty()?;
    let ram = memory::size(vm.memory());
    // Round 0: every page the host ever backed (a page never backed has never been written
    // by anyone and is zero on the fresh target).
    let mut pending = memory::maybe_written(vm.memory());
    let mut dma_only = DirtyBitmap::new(0, ram, PAGE_SIZE).map_err(|e| MigrationError::Device {
        doing: "allocating the dirty bitmap",
        reason: e.to_string(),
    })?;
    let mut throttle = 0u32;
    let limit_s = opts.downtime_limit.as_secs_f64();
    let limits = Limits::of(opts);
    let mut round = 0u32;
    let mut expected_downtime_ms;
    let mut bandwidth = opts.bandwidth.map_or(1e9, |b| b as f64);
    let mut measured = false;
    let mut prev_remaining = u64::MAX;
    // Until a round has shown otherwise, every dirty page is assumed to cost a full page.
    let mut ram_bytes_per_page = PAGE_SIZE as f64;
    loop {
        if opts.fail_at == Some(FailPoint::Round(round)) {
            return Err(MigrationError::Injected {
                point: format!("pre-copy round {round}"),
            });
        }
        let t_round = Instant::now();
        let _ = take_guest_time();
        let sent_before = counters.sent.load(Ordering::Relaxed);
        let dma_pages = dma_only
            .iter_dirty()
            .filter(|a| pending.is_dirty(*a))
            .count() as u64;
        let mut sent = send_pages(vm, w, &pending, &dma_only, round > 0, true)?;
        let mut dev_bytes = 0;
        while let Some(n) = dio.next_chunk_to(vm, &mut |c| w.device_data(c))? {
            dev_bytes += n;
            run_while_busy(vm, w, HIGH_WATER).map_err(peer)?;
        }
        // Let the link drain and the target catch up while the guest runs: the next
        // harvest then covers what was dirtied while this round was in flight, and the
        // round's time is the end-to-end time.
        // Paced (testing), the guest's work of this round runs now, after the round's data
        // went out: what it dirties is the next round's to send.
        if let Some(work) = opts.guest_work_per_round {
            paced_work(
                vm,
                u64::from(work) * u64::from(100 - throttle.min(100)) / 100,
            );
        }
        // The round ends on every RAM channel before its SYNC on the main stream: the
        // target answers once it has applied all of them.
        if let Some(ch) = w.get_mut().ram_channels() {
            ch.mark(u64::from(round))?;
        }
        sync(vm, w, events, u64::from(round), opts)?;
        if let Some(ch) = w.get_mut().ram_channels() {
            (sent.nonzero, sent.zero) = ch.take_counts();
        }
        let pages = sent.nonzero;
        if round > 0 {
            if let Some(b) = sent.bytes_per_page() {
                ram_bytes_per_page = b;
            }
        }
        let round_s = t_round.elapsed().as_secs_f64().max(1e-6);
        let guest_s = take_guest_time().as_secs_f64();

        // What is dirty now: CPU log, device DMA log, device pre-copy data.
        let cpu = vm.harvest_cpu_dirty()?;
        let dev_dma = dma.as_mut().map(|d| d.harvest(vm)).transpose()?;
        pending = cpu.clone();
        dma_only.clear();
        if let Some(d) = &dev_dma {
            for a in d.iter_dirty() {
                if !cpu.is_dirty(a) {
                    dma_only.mark(a);
                }
            }
            pending.merge(d);
        }
        let dev_pending = dio.pending(vm, false)?;
        // v2 says how long the stop-copy stream would be now (dirty graphics pages and the
        // fixed sections); v1 has no such query: its pending bytes plus an assumed fixed part.
        let dev_remaining = dio
            .stop_copy_estimate(vm)
            .unwrap_or(dev_pending + V1_FIXED_ESTIMATE);
        let remaining = (pending.count() as f64 * ram_bytes_per_page) as u64 + dev_remaining;
        let sent_round = counters.sent.load(Ordering::Relaxed) - sent_before;
        // End-to-end rate of this round (to the target having consumed it), when the round
        // moved enough to measure; else the last estimate, the cap, or 1 GB/s.
        if sent_round >= 1 << 20 {
            // Transfer time: the round less the time the guest held this thread (bounded
            // below, as the guest and the transfer partly overlap on other cores). The best
            // round is the closest to the link's capacity: noise only slows rounds.
            let transfer_s = (round_s - guest_s).max(round_s / 4.0);
            let r = sent_round as f64 / transfer_s;
            bandwidth = if measured { bandwidth.max(r) } else { r };
            measured = true;
        }
        if let Some(cap) = opts.bandwidth {
            bandwidth = bandwidth.min(cap as f64);
        }
        // Paced (testing), the guest ran only for its measured work: the rate is over the
        // round's link time, so it compares with the bandwidth whatever the machine's speed.
        let rate_s = if opts.guest_work_per_round.is_some() {
            (round_s - guest_s).max(1e-6)
        } else {
            round_s
        };
        let dirty_rate = (pending.count() * PAGE_SIZE + dev_pending) as f64 / rate_s;
        expected_downtime_ms = policy::expected_downtime_ms(remaining, bandwidth);
        report.bytes.dma_ram += sent.dma_nonzero * PAGE_SIZE;
        report.rounds.push(RoundStats {
            round,
            ram_pages: pages,
            dma_only_pages: dma_pages,
            device_bytes: dev_bytes,
            ms: round_s * 1e3,
            dirty_rate,
        });
        report.bytes.device_precopy += dev_bytes;
        let p = Progress {
            phase: "pre-copy",
            round,
            sent: counters.sent.load(Ordering::Relaxed),
            remaining,
            dirty_rate,
            bandwidth,
            expected_downtime_ms,
            expected_total_ms: t_start.elapsed().as_secs_f64() * 1e3 + expected_downtime_ms,
            throttle_pct: throttle,
        };
        progress(&p);
        debug!(vm.log(), "pre-copy round"; "round" => round, "pages" => pages, "dma_only" => dma_pages,
               "device" => dev_bytes, "remaining" => remaining, "dirty_rate" => dirty_rate, "bandwidth" => bandwidth);
        round += 1;
        let decision = policy::decide(
            &RoundFigures {
                round,
                remaining,
                prev_remaining,
                bandwidth,
                dirty_rate,
                throttle,
            },
            &limits,
        );
        prev_remaining = remaining;
        match decision {
            Decision::Switchover => break,
            Decision::Continue => {}
            Decision::Throttle(pct) => {
                throttle = pct;
                vm.hardware().set_throttle(throttle as u8);
                info!(vm.log(), "auto-converge: throttling the engine"; "percent" => throttle);
            }
            Decision::GiveUp => {
                return Err(MigrationError::NoConvergence {
                    rounds: round,
                    remaining,
                    limit_bytes: (bandwidth * limit_s) as u64,
                    bandwidth_mbps: bandwidth / 1e6,
                    dirty_mbps: dirty_rate / 1e6,
                });
            }
        }
    }
    Ok(Precopy {
        pending,
        dma_only,
        round,
        expected_downtime_ms,
        bandwidth,
        throttle,
    })
}
