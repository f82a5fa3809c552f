//! Guest RAM reached by `DMA_READ`/`DMA_WRITE` messages: the client maps it without file
//! descriptors, and guest RAM is private memory the device process cannot map, so every
//! device DMA that makes these runs right went over the socket. A proxy between client and
//! device process spoils the client's replies to show that the device faults on them and
//! nothing hangs.

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
    // Precise tracking over v2, and the pinned set (remote pages count) over the v1 region.
    for (protocol, tracking) in [(Protocol::V2, "shadow-pt"), (Protocol::Region, "pinned")] {
        let (got, want, rep) = migrate_between(protocol, tracking, true)
            .unwrap_or_else(|e| panic!("{protocol:?}/{tracking} by message: {e}"));
        assert_eq!(
            got, want,
            "{protocol:?}/{tracking}: as the run that never migrated"
        );
        assert!(rep.bytes.device_stopcopy > 0, "device data moved");
    }
}

/// How the proxy spoils the client's `DMA_READ` replies.
#[derive(Debug, Clone, Copy)]
enum Spoil {
    /// An error reply (EIO).
    Error,
    /// One data byte short.
    Short,
    /// Three bytes of garbage.
    Garbage,
    /// The connection closes instead.
    Close,
}

/// A proxy between the VMM's client and the device process `dev` that passes everything
/// (descriptors too) but spoils the client's `DMA_READ` replies from the `after`-th on; its
/// socket, and a handle giving how many it spoiled.
fn spoiling_proxy(dev: &DeviceProcess, after: u64, spoil: Spoil) -> (PathBuf, JoinHandle<u64>) {
    use std::net::Shutdown;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixListener;
    use vfio_user::proto::{Command as Cmd, Header, FLAGS_ERROR};
    use vfio_user::wire;
    const D: Duration = Duration::from_secs(20);
    const CAP: usize = (16 << 20) + 8192;
    let path = dev.socket.with_extension(format!("{spoil:?}.proxy"));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let upstream = dev.socket.clone();
    let h = std::thread::spawn(move || {
        let (client, _) = listener.accept().unwrap();
        let server = UnixStream::connect(&upstream).unwrap();
        for s in [&client, &server] {
            wire::arm(s, D).unwrap();
        }
        let forward = |to: &UnixStream, m: wire::Message| {
            let fds: Vec<_> = m.fds.iter().map(AsRawFd::as_raw_fd).collect();
            wire::send(to, &m.header, &[&m.payload], &fds, D).is_ok()
        };
        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let down = std::thread::spawn(move || {
            while let Ok(Some(m)) = wire::recv(&s2, true, D, CAP, 16) {
                if !forward(&c2, m) {
                    break;
                }
            }
            let _ = c2.shutdown(Shutdown::Both);
            let _ = s2.shutdown(Shutdown::Both);
        });
        let (mut seen, mut spoiled) = (0u64, 0u64);
        while let Ok(Some(mut m)) = wire::recv(&client, true, D, CAP, 16) {
            if m.header.is_reply() && m.header.command == Cmd::DmaRead as u16 {
                seen += 1;
                if seen > after {
                    spoiled += 1;
                    match spoil {
                        Spoil::Error => {
                            m.header.flags |= FLAGS_ERROR;
                            m.header.error = libc::EIO as u32;
                            m.payload.clear();
                        }
                        Spoil::Short => {
                            m.payload.pop();
                        }
                        Spoil::Garbage => m.payload = vec![0xff; 3],
                        Spoil::Close => break,
                    }
                    m.header = Header {
                        size: (16 + m.payload.len()) as u32,
                        ..m.header
                    };
                }
            }
            if !forward(&server, m) {
                break;
            }
        }
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
        let _ = down.join();
        spoiled
    });
    (path, h)
}

#[test]
fn bad_or_missing_dma_replies_fault_the_device_and_nothing_hangs() {
    let dev = DeviceProcess::start("spoiled", "vgpu-64", &["--deadline-ms", "500"]);
    let want = reference("vgpu-64", FRAMES, SEED);
    for spoil in [Spoil::Error, Spoil::Short, Spoil::Garbage, Spoil::Close] {
        let (path, proxy) = spoiling_proxy(&dev, 100, spoil);
        let mut f = RemoteFactory::new(vgpu_platform::factory(DirtyTracking::ShadowPt), path);
        f.client.dma_by_message = true;
        let mut vm = booted_with(Arc::new(f), FRAMES);
        // The device faults on the spoiled DMA: its engine halts with a GTT error the
        // guest's interrupt handler records, and the guest waits on it; without a
        // connection the device process is unreachable. Either way the run ends.
        let err = vm
            .run(StopAt::Done)
            .expect_err("the run cannot finish")
            .to_string();
        let mut b = [0u8; 4];
        vm.guest_read(vgpu_sim::workload::layout::STATE_GPA + 44, &mut b);
        let errors_seen = u32::from_le_bytes(b);
        match spoil {
            Spoil::Close => assert!(err.contains("unreachable"), "{spoil:?}: {err}"),
            _ => {
                assert!(err.contains("engine status 0x7"), "{spoil:?}: {err}");
                assert_ne!(
                    errors_seen & vgpu_sim::regs::INT_GTT_ERROR,
                    0,
                    "{spoil:?}: the guest saw the device's GTT error"
                );
            }
        }
        drop(vm);
        assert!(proxy.join().unwrap() > 0, "{spoil:?}: replies were spoiled");
    }
    // The device process lived through all of it: the next client's run is right.
    let mut vm = booted_remote(&dev, FRAMES);
    vm.run(StopAt::Done).unwrap();
    assert_eq!(outcome(&mut vm, FRAMES), want);
}

#[test]
fn the_cli_runs_with_dma_by_message_and_refuses_it_in_process() {
    use vgpu_migrate_tests::process::Proc;
    let dev = DeviceProcess::start("cli-by-message", "vgpu-64", &[]);
    let device = format!("vfio-user:{}", dev.socket.display());
    let common = [
        "run",
        "--type",
        "vgpu-64",
        "--frames",
        "2",
        "--profile",
        "light",
        "--ram-mib",
        "64",
    ];
    let by_message = [&common[..], &["--device", &device, "--dma-by-message"]].concat();
    let remote = Proc::start("run by message", &by_message).wait().ok();
    let local = Proc::start("run in process", &common).wait().ok();
    assert!(!local.stdout.trim().is_empty());
    assert_eq!(remote.stdout, local.stdout, "the same final checksum");
    let refused = [&common[..], &["--dma-by-message"]].concat();
    let out = Proc::start("refused", &refused).wait();
    assert_ne!(out.code, Some(0));
    assert!(
        out.one_error_line()
            .contains("--dma-by-message needs --device vfio-user:PATH"),
        "{}",
        out.stderr
    );
}
