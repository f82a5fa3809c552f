//! Builds the guest image (`guest-x86`, outside the workspace) with a nested, offline cargo
//! for the host target with freestanding link flags, and copies the ELF into `OUT_DIR`.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Variables the outer build sets (or inherits) that must not reach the nested cargo: they
/// would redirect its output, change its flags, wrap its compiler (clippy-driver under
/// `cargo clippy`) or tie it to the outer jobserver.
const CLEARED: &[&str] = &[
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "MAKEFLAGS",
    "MFLAGS",
    "CLIPPY_ARGS",
    "CLIPPY_CONF_DIR",
    "TARGET",
    "HOST",
    "OUT_DIR",
    "PROFILE",
    "OPT_LEVEL",
    "DEBUG",
    "NUM_JOBS",
    "RUSTC_LINKER",
];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("guest-image lives in the workspace root");
    let guest = root.join("guest-x86");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    for p in [
        guest.join("src"),
        guest.join("Cargo.toml"),
        guest.join("Cargo.lock"),
        guest.join("link.ld"),
        root.join("vgpu-guest/src"),
        root.join("vgpu-guest/Cargo.toml"),
        root.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", p.display());
    }

    let target_dir = out.join("guest-target");
    let script = guest.join("link.ld");
    let flags = [
        "-Crelocation-model=static".to_owned(),
        "-Cpanic=abort".to_owned(),
        "-Clink-arg=-nostartfiles".to_owned(),
        "-Clink-arg=-nostdlib".to_owned(),
        "-Clink-arg=-static".to_owned(),
        format!("-Clink-arg=-T{}", script.display()),
        "-Clink-arg=-Wl,--build-id=none".to_owned(),
        // No SSE in the image: a KVM that emulates the guest instruction by instruction
        // (kvm_pvm running a non-PVM guest, as on the 2-core development machine) stops
        // with an emulation failure at the first SSE move (`movd`). The driver computes in
        // integers only and the image passes no floats, so the hard-float ABI rustc warns
        // about ("sse2 must be enabled ... ABI") is never used. The interrupt stub's
        // `fxsave64`/`fxrstor64`, which that emulator does handle, stay.
        "-Ctarget-feature=-sse,-sse2".to_owned(),
    ];

    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guest)
        .args([
            "build",
            "--release",
            "--offline",
            "--locked",
            "--target",
            TARGET,
        ])
        .arg("--manifest-path")
        .arg(guest.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for (key, _) in env::vars_os() {
        let k = key.to_string_lossy();
        let cargo_var = (k.starts_with("CARGO_") && k != "CARGO_HOME") || k.starts_with("__CARGO");
        if cargo_var || CLEARED.contains(&k.as_ref()) {
            cmd.env_remove(&key);
        }
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));

    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("guest-image: could not run the nested cargo for guest-x86: {e}"),
    };
    if !output.status.success() {
        panic!(
            "guest-image: building the guest image (guest-x86) failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
    }
    let built = target_dir.join(TARGET).join("release").join("guest-x86");
    copy(&built, &out.join("guest-x86.elf"));
}

fn copy(from: &Path, to: &Path) {
    if let Err(e) = fs::copy(from, to) {
        panic!(
            "guest-image: copying the guest image {} to {}: {e}",
            from.display(),
            to.display()
        );
    }
}
