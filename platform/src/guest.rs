//! The vGPU's guest driver as the simulated vCPU's program.

use vgpu_sim::workload::{self, StepOutcome};
use vmm::{GuestBus, GuestProgram, GuestStep};

/// The driver's view of the VMM's bus.
struct Bus<'a>(&'a mut dyn GuestBus);

impl workload::GuestBus for Bus<'_> {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) {
        self.0.read(gpa, buf);
    }
    fn write(&mut self, gpa: u64, buf: &[u8]) {
        self.0.write(gpa, buf);
    }
}

/// The workload driver (`vgpu_guest::workload`), stateless: everything it keeps is in
/// guest RAM.
#[derive(Debug, Clone, Copy, Default)]
pub struct DriverProgram;

impl GuestProgram for DriverProgram {
    fn step(&mut self, bus: &mut dyn GuestBus) -> GuestStep {
        match workload::step(&mut Bus(bus)) {
            StepOutcome::Progress => GuestStep::Progress,
            StepOutcome::Waiting => GuestStep::Waiting,
            StepOutcome::Done => GuestStep::Done,
            StepOutcome::Failed => GuestStep::Failed,
        }
    }

    fn interrupt(&mut self, bus: &mut dyn GuestBus, vector: u32) {
        workload::interrupt(&mut Bus(bus), vector);
    }

    fn progress(&mut self, bus: &mut dyn GuestBus) -> u64 {
        workload::completed_frames(&mut Bus(bus))
    }
}
