//! The vCPU thread: `KVM_RUN` in a loop, exits to an [`ExitHandler`], and pause by kick.
//!
//! Pausing is a real kick: [`VcpuHandle::pause`] sets `immediate_exit` in the vCPU's
//! `kvm_run` page and sends the kick signal (`SIGRTMIN`, whose handler does nothing) to the
//! vCPU thread with `pthread_kill`. A vCPU inside `KVM_RUN` (running or halted in the
//! in-kernel LAPIC) returns `EINTR`; one outside it sees `immediate_exit` on its next entry
//! and returns at once. The flag and the request are set under the same lock that the thread
//! takes before each entry, so no kick is lost. Before parking, a vCPU whose last exit was
//! I/O or MMIO re-enters once with `immediate_exit` set so that KVM completes the
//! instruction (the KVM API's rule before saving state).

use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use slog::{debug, warn, Logger};
use snafu::{ensure, ResultExt};

use super::error::{
    KvmError, NotPausedSnafu, PauseTimeoutSnafu, Result, SpawnSnafu, VcpuEndedSnafu,
};
use super::state::{self, KvmVcpuState};
use super::KvmMachine;
use crate::memory::GuestMem;

/// What the vCPU does after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitAction {
    /// Run on.
    Continue,
    /// Park, as if the VMM had paused it (the guest said it is idle or done):
    /// [`VcpuHandle::wait_paused`] returns, [`VcpuHandle::resume`] runs it on.
    Pause,
}

/// Receives the guest's MMIO and port I/O. Called on the vCPU thread; the guest waits in the
/// exit until the call returns.
pub trait ExitHandler: Send {
    /// A read of `data.len()` bytes (1, 2, 4 or 8) at `gpa`: fill `data` (little-endian).
    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]);
    /// A write of `data` at `gpa`.
    fn mmio_write(&mut self, gpa: u64, data: &[u8]);
    /// An `out` of `data` (1, 2 or 4 bytes; more for `rep outs`) to `port`.
    fn io_out(&mut self, port: u16, data: &[u8]) -> ExitAction;
    /// An `in` from `port`: fill `data`.
    fn io_in(&mut self, port: u16, data: &mut [u8]);
}

/// What the VMM and the vCPU thread share.
#[derive(Debug, Default)]
struct Gate {
    /// Someone wants the vCPU parked (the VMM, or the guest through [`ExitAction::Pause`]).
    requested: bool,
    /// The thread is parked (and holds no lock on the vCPU).
    parked: bool,
    /// The thread must end.
    stop: bool,
    /// Why the thread ended, once it has.
    ended: Option<String>,
}

/// The `kvm_run` page of the vCPU, written by the pausing thread (only `immediate_exit`,
/// only under the gate's lock).
#[derive(Debug, Clone, Copy)]
struct RunPage(*mut kvm_run);

// SAFETY: the pointer is only dereferenced to write the `immediate_exit` byte, under the
// gate's lock, while the `VcpuFd` that owns the mapping is alive (the handle and the thread
// both hold it); the kernel reads the byte with READ_ONCE semantics.
unsafe impl Send for RunPage {}
// SAFETY: as above; every write goes through the gate's lock.
unsafe impl Sync for RunPage {}

impl RunPage {
    fn set_immediate_exit(&self, on: bool) {
        // SAFETY: the page is mapped for as long as the `VcpuFd` lives (see the Send impl),
        // `immediate_exit` is a plain byte of it, and a volatile write is what the kernel's
        // concurrent read expects.
        unsafe { std::ptr::addr_of_mut!((*self.0).immediate_exit).write_volatile(u8::from(on)) }
    }
}

#[derive(Debug)]
struct Shared {
    gate: Mutex<Gate>,
    changed: Condvar,
    run: RunPage,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The kick signal: the first real-time signal.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int) {}

/// Install the no-op kick handler once per process, without `SA_RESTART` (so `KVM_RUN`
/// returns `EINTR`).
fn install_kick_handler() -> Result<()> {
    static INSTALLED: OnceLock<i32> = OnceLock::new();
    let errno = *INSTALLED.get_or_init(|| {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler is
        // an `extern "C" fn(c_int)` that touches nothing, so it is async-signal-safe.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut())
        };
        if rc == 0 {
            0
        } else {
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL)
        }
    });
    if errno != 0 {
        return Err(KvmError::Signal {
            what: "install",
            source: std::io::Error::from_raw_os_error(errno),
        });
    }
    Ok(())
}

/// Unblock the kick signal on the calling (vCPU) thread.
fn unblock_kick() {
    // SAFETY: a sigset built with sigemptyset/sigaddset, and pthread_sigmask only changes
    // the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, kick_signal());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// The running vCPU: pause, resume, state, stop. Dropping it stops the thread.
#[derive(Debug)]
pub struct VcpuHandle {
    shared: Arc<Shared>,
    vcpu: Arc<Mutex<VcpuFd>>,
    thread: Option<JoinHandle<Result<()>>>,
    msrs: Vec<u32>,
    xsave: bool,
    log: Logger,
}

impl KvmMachine {
    /// Start the vCPU on its own thread, running `KVM_RUN` in a loop and handing MMIO and
    /// port I/O exits to `handler`. Once only: the vCPU then belongs to the handle.
    pub fn spawn(&mut self, handler: Box<dyn ExitHandler>) -> Result<VcpuHandle> {
        install_kick_handler()?;
        let mut vcpu = self.vcpu.take().ok_or(KvmError::AlreadySpawned)?;
        let shared = Arc::new(Shared {
            gate: Mutex::new(Gate::default()),
            changed: Condvar::new(),
            run: RunPage(vcpu.get_kvm_run() as *mut kvm_run),
        });
        let vcpu = Arc::new(Mutex::new(vcpu));
        let (s, v, mem, log) = (
            shared.clone(),
            vcpu.clone(),
            self.mem.clone(),
            self.log.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("kvm-vcpu0".into())
            .spawn(move || vcpu_thread(s, v, mem, handler, log))
            .context(SpawnSnafu)?;
        Ok(VcpuHandle {
            shared,
            vcpu,
            thread: Some(thread),
            msrs: self.msrs.clone(),
            xsave: self.xsave,
            log: self.log.clone(),
        })
    }
}

fn vcpu_thread(
    shared: Arc<Shared>,
    vcpu: Arc<Mutex<VcpuFd>>,
    _mem: GuestMem,
    handler: Box<dyn ExitHandler>,
    log: Logger,
) -> Result<()> {
    unblock_kick();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_loop(&shared, &vcpu, handler, &log)
    }))
    .unwrap_or(Err(KvmError::Panicked));
    let mut g = shared.lock();
    g.ended = Some(match &result {
        Ok(()) => "stopped".to_string(),
        Err(e) => e.to_string(),
    });
    g.parked = false;
    shared.changed.notify_all();
    drop(g);
    if let Err(e) = &result {
        warn!(log, "vCPU thread ended"; "error" => %e);
    }
    result
}

fn lock_vcpu(vcpu: &Mutex<VcpuFd>) -> MutexGuard<'_, VcpuFd> {
    vcpu.lock().unwrap_or_else(|e| e.into_inner())
}

fn run_loop(
    shared: &Shared,
    vcpu: &Mutex<VcpuFd>,
    mut handler: Box<dyn ExitHandler>,
    log: &Logger,
) -> Result<()> {
    let mut fd = lock_vcpu(vcpu);
    // The last exit was I/O or MMIO: KVM completes it on the next entry.
    let mut incomplete = false;
    loop {
        {
            let mut g = shared.lock();
            if g.stop {
                return Ok(());
            }
            if g.requested {
                if incomplete {
                    // Complete the instruction without running the guest further.
                    shared.run.set_immediate_exit(true);
                    drop(g);
                    match fd.run() {
                        Err(e) if e.errno() == libc::EINTR => {}
                        Err(e) => return Err(KvmError::Run { source: e }),
                        Ok(exit) => debug!(log, "exit while completing I/O"; "exit" => ?exit),
                    }
                    incomplete = false;
                    continue;
                }
                drop(fd);
                g.parked = true;
                shared.changed.notify_all();
                while g.requested && !g.stop {
                    g = shared.changed.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                g.parked = false;
                shared.changed.notify_all();
                drop(g);
                fd = lock_vcpu(vcpu);
                continue;
            }
            shared.run.set_immediate_exit(false);
        }
        let action = match fd.run() {
            Ok(VcpuExit::MmioRead(gpa, data)) => {
                handler.mmio_read(gpa, data);
                incomplete = true;
                ExitAction::Continue
            }
            Ok(VcpuExit::MmioWrite(gpa, data)) => {
                handler.mmio_write(gpa, data);
                incomplete = true;
                ExitAction::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                incomplete = true;
                handler.io_out(port, data)
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                handler.io_in(port, data);
                incomplete = true;
                ExitAction::Continue
            }
            Ok(VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr) => ExitAction::Continue,
            Ok(other) => {
                let exit = format!("{other:?}");
                let exit = describe(&mut fd, exit);
                let rip = fd.get_regs().map(|r| r.rip).unwrap_or(0);
                return Err(KvmError::UnexpectedExit { exit, rip });
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => ExitAction::Continue,
            Err(e) => return Err(KvmError::Run { source: e }),
        };
        if action == ExitAction::Pause {
            shared.lock().requested = true;
        }
    }
}

/// Add the internal-error sub-reason to an exit's description.
fn describe(fd: &mut VcpuFd, exit: String) -> String {
    let run = fd.get_kvm_run();
    if run.exit_reason == kvm_bindings::KVM_EXIT_INTERNAL_ERROR {
        // SAFETY: the exit reason says the `internal` member of the union is the valid one.
        let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
        return format!("{exit} (suberror {suberror})");
    }
    exit
}

impl VcpuHandle {
    /// Kick the vCPU out of the guest and wait until its thread has parked, at most
    /// `deadline`. Returns at once when it is already parked.
    pub fn pause(&self, deadline: Duration) -> Result<()> {
        let kicked = Instant::now();
        let mut g = self.shared.lock();
        if let Some(reason) = &g.ended {
            return VcpuEndedSnafu {
                reason: reason.clone(),
            }
            .fail();
        }
        g.requested = true;
        if g.parked {
            return Ok(());
        }
        self.shared.run.set_immediate_exit(true);
        drop(g);
        self.kick()?;
        self.wait_parked(kicked, deadline)?;
        debug!(self.log, "vCPU parked"; "kick_to_parked_us" => kicked.elapsed().as_micros() as u64);
        Ok(())
    }

    /// Wait until the vCPU has parked itself (an [`ExitAction::Pause`]) or been paused, at
    /// most `deadline`.
    pub fn wait_paused(&self, deadline: Duration) -> Result<()> {
        self.wait_parked(Instant::now(), deadline)
    }

    fn wait_parked(&self, since: Instant, deadline: Duration) -> Result<()> {
        let mut g = self.shared.lock();
        loop {
            if g.parked && g.requested {
                return Ok(());
            }
            if let Some(reason) = &g.ended {
                return VcpuEndedSnafu {
                    reason: reason.clone(),
                }
                .fail();
            }
            let left = deadline.saturating_sub(since.elapsed());
            ensure!(!left.is_zero(), PauseTimeoutSnafu { waited: deadline });
            g = self
                .shared
                .changed
                .wait_timeout(g, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn kick(&self) -> Result<()> {
        let Some(t) = &self.thread else {
            return Ok(());
        };
        // SAFETY: the thread is not joined yet (we hold its JoinHandle), so its pthread_t
        // is valid; the signal has a no-op handler installed.
        let rc = unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
        if rc != 0 && rc != libc::ESRCH {
            return Err(KvmError::Signal {
                what: "send",
                source: std::io::Error::from_raw_os_error(rc),
            });
        }
        Ok(())
    }

    /// Let a parked vCPU run on. Does nothing when it runs.
    pub fn resume(&self) -> Result<()> {
        let mut g = self.shared.lock();
        if let Some(reason) = &g.ended {
            return VcpuEndedSnafu {
                reason: reason.clone(),
            }
            .fail();
        }
        g.requested = false;
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Whether the vCPU thread is parked.
    pub fn is_paused(&self) -> bool {
        let g = self.shared.lock();
        g.parked && g.requested
    }

    /// Why the thread ended, if it has (`"stopped"` after [`stop`](Self::stop)).
    pub fn ended(&self) -> Option<String> {
        self.shared.lock().ended.clone()
    }

    /// Save the vCPU state. Only while paused.
    pub fn save_state(&self) -> Result<KvmVcpuState> {
        let g = self.shared.lock();
        ensure!(
            g.parked && g.requested,
            NotPausedSnafu {
                what: "save its state"
            }
        );
        // The parked thread holds no lock on the vCPU and cannot leave the park while we
        // hold the gate.
        let fd = lock_vcpu(&self.vcpu);
        let state = state::save(&fd, &self.msrs, self.xsave);
        drop(fd);
        drop(g);
        state
    }

    /// End the thread (kicking it out of the guest) and report how it ended: `Ok` when it
    /// was running or parked, the error that stopped it otherwise.
    pub fn stop(mut self) -> Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        {
            let mut g = self.shared.lock();
            g.stop = true;
            self.shared.run.set_immediate_exit(true);
            self.shared.changed.notify_all();
        }
        // SAFETY: not joined yet, so the pthread_t is valid; the handler is a no-op.
        let rc = unsafe { libc::pthread_kill(thread.as_pthread_t(), kick_signal()) };
        if rc != 0 && rc != libc::ESRCH {
            warn!(self.log, "cannot kick the vCPU to stop it"; "errno" => rc);
        }
        thread.join().unwrap_or(Err(KvmError::Panicked))
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            debug!(self.log, "vCPU thread had ended with an error"; "error" => %e);
        }
    }
}
