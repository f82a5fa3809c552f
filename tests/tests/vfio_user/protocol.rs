//! Hostile and concurrent clients against a live device process.

use super::*;

/// Send raw bytes (a whole message) and read one reply header, or None if the server
/// closed the connection.
fn raw(sock: &mut UnixStream, bytes: &[u8]) -> Option<[u8; 16]> {
    use std::io::Read;
    sock.write_all(bytes).ok()?;
    let mut h = [0u8; 16];
    sock.read_exact(&mut h).ok()?;
    let size = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
    let mut rest = vec![0u8; size.saturating_sub(16)];
    sock.read_exact(&mut rest).ok()?;
    Some(h)
}

fn msg(id: u16, cmd: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&cmd.to_le_bytes());
    m.extend_from_slice(&((16 + payload.len()) as u32).to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    m.extend_from_slice(payload);
    m
}

fn error_of(h: [u8; 16]) -> Option<u32> {
    let flags = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    (flags & (1 << 5) != 0).then(|| u32::from_le_bytes([h[12], h[13], h[14], h[15]]))
}

#[test]
fn malformed_messages_get_an_error_or_a_clean_disconnect_and_the_server_lives_on() {
    let dev = DeviceProcess::start("hostile", "vgpu-64", &["--deadline-ms", "300"]);
    let connect = || {
        let s = UnixStream::connect(&dev.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    let version = msg(1, 1, b"\0\0\x01\0{\"capabilities\":{\"max_msg_fds\":4}}\0");
    let mut s = connect();
    // Before VERSION, everything is refused.
    assert_eq!(
        error_of(
            raw(
                &mut s,
                &msg(1, 4, &[16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
            )
            .unwrap()
        ),
        Some(22)
    );
    assert_eq!(error_of(raw(&mut s, &version).unwrap()), None);
    // A second VERSION, an unknown command, short payloads, wrong lengths.
    assert!(error_of(raw(&mut s, &version).unwrap()).is_some());
    assert_eq!(
        error_of(raw(&mut s, &msg(2, 99, &[])).unwrap()),
        Some(libc::ENOTSUP as u32)
    );
    assert_eq!(
        error_of(raw(&mut s, &msg(3, 9, &[1, 2, 3])).unwrap()),
        Some(22)
    );
    assert_eq!(
        error_of(raw(&mut s, &msg(4, 5, &[0; 8])).unwrap()),
        Some(22)
    );
    // A region read far outside the region and one above max_data_xfer_size.
    let mut rd = Vec::new();
    rd.extend_from_slice(&(1u64 << 40).to_le_bytes());
    rd.extend_from_slice(&0u32.to_le_bytes());
    rd.extend_from_slice(&4u32.to_le_bytes());
    assert_eq!(error_of(raw(&mut s, &msg(5, 9, &rd)).unwrap()), Some(22));
    rd[12..16].copy_from_slice(&(64u32 << 20).to_le_bytes());
    assert_eq!(error_of(raw(&mut s, &msg(6, 9, &rd)).unwrap()), Some(22));
    // A write whose count disagrees with its data, and a MIG_DATA_READ without a session.
    let mut wr = vec![0u8; 16];
    wr[12..16].copy_from_slice(&8u32.to_le_bytes());
    wr.extend_from_slice(&[0; 4]);
    assert_eq!(error_of(raw(&mut s, &msg(7, 10, &wr)).unwrap()), Some(22));
    assert!(error_of(raw(&mut s, &msg(8, 17, &[8, 0, 0, 0, 0, 1, 0, 0])).unwrap()).is_some());
    // A DMA map without a descriptor, then one pointing nowhere sensible.
    let mut map = vec![0u8; 32];
    map[0] = 32;
    map[4] = 3;
    map[24..32].copy_from_slice(&(1u64 << 20).to_le_bytes());
    assert!(error_of(raw(&mut s, &msg(9, 2, &map)).unwrap()).is_some());
    // A header that claims a huge message: the connection is dropped, not allocated for.
    let mut huge = msg(10, 10, &[]);
    huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(
        raw(&mut s, &huge).is_none(),
        "an oversize message ends the connection"
    );
    // A client that stops in the middle of a message is dropped after the deadline.
    let mut s = connect();
    assert_eq!(error_of(raw(&mut s, &version).unwrap()), None);
    let half = msg(11, 10, &[0; 32]);
    s.write_all(&half[..20]).unwrap();
    let mut b = [0u8; 1];
    use std::io::Read;
    assert_eq!(s.read(&mut b).unwrap_or(0), 0, "dropped after the deadline");
    // A disconnect mid-message, then a well-behaved client still gets a working device.
    let mut s = connect();
    s.write_all(&half[..10]).unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(50));
    let mut vm = booted_remote(&dev, 2);
    vm.run(StopAt::Done).unwrap();
    assert_eq!(
        outcome(&mut vm, 2).checksums,
        reference("vgpu-64", 2, SEED).checksums
    );
}

#[test]
fn a_second_client_is_refused_while_one_is_served() {
    let dev = DeviceProcess::start("busy", "vgpu-64", &[]);
    let vm = booted_remote(&dev, 1);
    let mut cfg = VmConfig::new("vgpu-64", vgpu_remote(&dev), quiet());
    cfg.ram_size = 64 << 20;
    let e = Vm::new(&cfg).unwrap_err().to_string();
    assert!(e.contains("device process"), "{e}");
    drop(vm);
    // After the first client left, a new one is served (a reconnect works).
    std::thread::sleep(Duration::from_millis(50));
    let mut vm = booted_remote(&dev, 1);
    vm.run(StopAt::Done).unwrap();
}

/// A scratch register of the vGPU's BAR0, read and written as the VMM does.
fn scratch(client: &mut vfio_user::client::Client, write: Option<u32>) -> u32 {
    use mdev_core::VfioDevice;
    use vfio_bindings::bindings::vfio::VFIO_PCI_BAR0_REGION_INDEX;
    let at = u64::from(vgpu_sim::regs::REG_SCRATCH0);
    if let Some(v) = write {
        client
            .region_write(VFIO_PCI_BAR0_REGION_INDEX, at, &v.to_le_bytes())
            .unwrap();
    }
    let mut b = [0u8; 4];
    client
        .region_read(VFIO_PCI_BAR0_REGION_INDEX, at, &mut b)
        .unwrap();
    u32::from_le_bytes(b)
}

#[test]
fn the_device_state_outlives_a_client_and_a_reset_clears_it() {
    // The spec's "Client Disconnection": the maps and eventfds go, the device state stays,
    // so a client that reconnects (a VMM upgrading itself) finds the device as it left it.
    use vfio_user::client::{Client, ClientConfig};
    let dev = DeviceProcess::start("keep", "vgpu-64", &[]);
    let mem = vmm::memory::create_shared(64 << 20, 1 << 32).unwrap();
    let cfg = ClientConfig::default();
    let mut a = Client::connect(&dev.socket, &mem, &cfg, &quiet()).unwrap();
    assert_eq!(scratch(&mut a, Some(0x00c0_ffee)), 0x00c0_ffee);
    drop(a);
    // The server saves the device when it sees the close; a client that comes back within
    // the grace period waits for the slot.
    let mut b = Client::connect(&dev.socket, &mem, &cfg, &quiet()).unwrap();
    assert_eq!(
        scratch(&mut b, None),
        0x00c0_ffee,
        "the register written by the last client"
    );
    // A VMM that starts a new VM resets the device first (RemoteFactory does).
    mdev_core::VfioDevice::reset(&mut b).unwrap();
    assert_eq!(scratch(&mut b, None), 0, "a reset device is at power-on");
    drop(b);
    let mut c = Client::connect(&dev.socket, &mem, &cfg, &quiet()).unwrap();
    assert_eq!(scratch(&mut c, None), 0, "the reset state is what was kept");
}
