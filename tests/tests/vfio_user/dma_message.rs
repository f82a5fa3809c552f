//! Guest RAM reached by `DMA_READ`/`DMA_WRITE` messages: the client maps it without file
//! descriptors, and guest RAM is private memory the device process cannot map, so every
//! device DMA that makes these runs right went over the socket.

use super::*;

#[test]
fn out_of_process_run_with_dma_by_message_has_the_in_process_checksum_log() {
    let dev = DeviceProcess::start("by-message", "vgpu-64", &[]);
    let factory = vgpu_by_message(&dev);
    assert!(
        !factory.shared_memory(),
        "guest RAM is private: the device process cannot map it"
    );
    let mut vm = booted_with(factory, FRAMES);
    vm.run(StopAt::Done).unwrap();
    let got = outcome(&mut vm, FRAMES);
    let want = reference("vgpu-64", FRAMES, SEED);
    assert_eq!(got.checksums.len(), FRAMES as usize);
    assert_eq!(
        got, want,
        "checksum log, guest RAM and graphics memory as in process"
    );
}

#[test]
fn live_migration_with_dma_by_message_on_the_source_verifies() {
    let (got, want, rep) = migrate_between(Protocol::V2, "shadow-pt", true)
        .unwrap_or_else(|e| panic!("V2/shadow-pt by message: {e}"));
    assert_eq!(got, want, "as the run that never migrated");
    assert!(rep.bytes.device_stopcopy > 0, "device data moved");
}
