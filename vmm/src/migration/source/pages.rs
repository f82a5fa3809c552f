//! Sending guest RAM pages: non-zero pages in runs, zero pages as zero runs.

use mdev_core::DirtyBitmap;

use super::guest::{busy_turn, run_while_busy, HIGH_WATER};
use super::peer;
use crate::memory::{self, PAGE_SIZE};
use crate::migration::error::{MigrationError, Result};
use crate::migration::multifd::{RamChannels, MAX_UNIT_PAGES};
use crate::migration::transport::ChannelWriter;
use crate::stream::StreamWriter;
use crate::vm::Vm;

/// Bytes of consecutive pages per RAM record: the buffer the sender thread takes whole.
/// Small enough that the sender and the target start on a run soon after the source does
/// (4 MiB runs left both cores idle more often), large enough that a record's framing is
/// noise.
const RAM_RECORD: usize = 512 << 10;

/// What [`send_pages`] sent.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Sent {
    /// Non-zero pages sent whole.
    pub nonzero: u64,
    /// Zero pages sent as zero runs (or skipped).
    pub zero: u64,
    /// Of the non-zero pages, those only the DMA log reported.
    pub dma_nonzero: u64,
}

impl Sent {
    /// Wire bytes per page processed (a zero run costs a 24-byte record, shared by a run).
    pub fn bytes_per_page(&self) -> Option<f64> {
        let n = self.nonzero + self.zero;
        (n > 0).then(|| (self.nonzero * PAGE_SIZE + self.zero * 24) as f64 / n as f64)
    }
}

/// Send the pages of `pages` in runs; zero pages as zero runs when `zeros` is set (the
/// target's RAM starts zeroed, so round 0 skips them).
pub(super) fn send_pages(
    vm: &mut Vm,
    w: &mut StreamWriter<ChannelWriter>,
    pages: &DirtyBitmap,
    dma_only: &DirtyBitmap,
    zeros: bool,
    running: bool,
) -> Result<Sent> {
    if let Some(channels) = w.get_mut().ram_channels() {
        return send_on_channels(vm, channels, pages, dma_only, zeros, running);
    }
    let mut sent = Sent::default();
    // The run of non-zero pages is read straight from guest RAM into `run` (one copy), which
    // the sender thread then takes whole: no copy into its frames. `run` keeps its length;
    // `used` bytes of it hold the run.
    let mut run = w.get_mut().bulk_buffer(RAM_RECORD);
    let mut used = 0usize;
    let mut run_start = 0;
    let mut zrun: Option<(u64, u64)> = None;
    let res = (|| -> Result<()> {
        let flush = |w: &mut StreamWriter<ChannelWriter>,
                     start: u64,
                     run: &mut Vec<u8>,
                     used: &mut usize|
         -> Result<()> {
            if *used > 0 {
                *run = w.ram_pages_bulk(start, std::mem::take(run), *used)?;
                *used = 0;
            }
            Ok(())
        };
        let flush_zero =
            |w: &mut StreamWriter<ChannelWriter>, z: &mut Option<(u64, u64)>| -> Result<()> {
                if let Some((gpa, n)) = z.take() {
                    w.ram_zero(gpa, n)?;
                }
                Ok(())
            };
        for gpa in pages.iter_dirty() {
            // A page that does not continue the run ends it.
            if used > 0 && run_start + used as u64 != gpa {
                flush(w, run_start, &mut run, &mut used)?;
            }
            if used == 0 {
                run_start = gpa;
            }
            // The page lands at the run's end and stays there only if it is not zero.
            let page = &mut run[used..used + PAGE_SIZE as usize];
            memory::read(vm.memory(), gpa, page).map_err(|e| MigrationError::Vmm {
                source: crate::VmmError::Memory { source: e },
            })?;
            if memory::is_zero(page) {
                flush(w, run_start, &mut run, &mut used)?;
                sent.zero += 1;
                if zeros {
                    match &mut zrun {
                        Some((start, n)) if *start + *n * PAGE_SIZE == gpa => *n += 1,
                        _ => {
                            flush_zero(w, &mut zrun)?;
                            zrun = Some((gpa, 1));
                        }
                    }
                }
                continue;
            }
            flush_zero(w, &mut zrun)?;
            // Hashed now, while the copy is in the cache; the flush does not hash it again.
            w.ram_ahead(&run[used..used + PAGE_SIZE as usize]);
            used += PAGE_SIZE as usize;
            sent.nonzero += 1;
            if dma_only.is_dirty(gpa) {
                sent.dma_nonzero += 1;
            }
            if used >= RAM_RECORD {
                flush(w, run_start, &mut run, &mut used)?;
                if running {
                    run_while_busy(vm, w, HIGH_WATER).map_err(peer)?;
                }
            }
        }
        flush(w, run_start, &mut run, &mut used)?;
        flush_zero(w, &mut zrun)
    })();
    w.get_mut().keep_bulk_buffer(run);
    res?;
    Ok(sent)
}

/// [`send_pages`] on the RAM channels: runs of consecutive pages (at most a unit's worth)
/// go to the channels in turn, whose threads read, check for zero, hash and send them.
/// The pages' counts arrive later ([`crate::migration::multifd::RamChannels::take_counts`],
/// once the round is synced); `dma_nonzero` counts the DMA-only pages handed on, zero or
/// not.
fn send_on_channels(
    vm: &mut Vm,
    ch: &mut RamChannels,
    pages: &DirtyBitmap,
    dma_only: &DirtyBitmap,
    zeros: bool,
    running: bool,
) -> Result<Sent> {
    let mut sent = Sent::default();
    let mut run: Option<(u64, u32)> = None;
    let mut hand_on = |vm: &mut Vm, (gpa, n): (u64, u32)| -> Result<()> {
        if !running {
            return ch.send(gpa, n, zeros);
        }
        // Every queue full: the guest takes its turn while the channels catch up.
        while !ch.offer(gpa, n, zeros)? {
            busy_turn(vm);
        }
        Ok(())
    };
    for gpa in pages.iter_dirty() {
        if dma_only.is_dirty(gpa) {
            sent.dma_nonzero += 1;
        }
        run = match run {
            Some((start, n)) if start + u64::from(n) * PAGE_SIZE == gpa && n < MAX_UNIT_PAGES => {
                Some((start, n + 1))
            }
            Some(r) => {
                hand_on(vm, r)?;
                Some((gpa, 1))
            }
            None => Some((gpa, 1)),
        };
    }
    if let Some(r) = run {
        hand_on(vm, r)?;
    }
    Ok(sent)
}
