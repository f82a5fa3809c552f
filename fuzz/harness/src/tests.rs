//! Every seed runs through its target without a finding, and the seeds reach the deep
//! paths they were built for (a real context loads, a real stream reads to its verified
//! end), so a corpus that stopped exercising them would fail here.

use std::path::Path;

use mdev_core::MigState;
use vmm::stream::{StreamReader, TrailerCheck};

use crate::device::{fresh, load};
use crate::seeds;

#[test]
fn the_real_context_loads_and_the_real_stream_verifies() {
    let ctx = seeds::real_context();
    let mut d = fresh();
    assert_eq!(load(&mut d, &ctx, 4096).expect("loads"), MigState::Stop);
    for live in [false, true] {
        let s = seeds::real_stream(live);
        let mut r = StreamReader::new(&s[..], TrailerCheck::Enforce).expect("header");
        let mut n = 0;
        while r.next_record().expect("a record").is_some() {
            n += 1;
        }
        assert!(n >= 6, "{n} records");
        assert_eq!(r.digest_ok(), Some(true));
    }
}

#[test]
fn the_structured_encoding_of_a_real_context_is_that_context() {
    let ctx = seeds::real_context();
    let seed = crate::targets::device_context::structured_seed(0, 0, &seeds::split_context(&ctx));
    let mut i = crate::Input::new(&seed[2..]);
    assert_eq!(
        crate::targets::device_context::encode_structured(&mut i),
        ctx
    );
}

#[test]
fn every_generated_seed_passes_its_target() {
    for (target, seeds) in seeds::all() {
        let run = crate::TARGETS
            .iter()
            .find(|(n, _)| *n == target)
            .map(|(_, f)| *f)
            .expect("a target of that name");
        for (name, bytes) in seeds {
            eprintln!("{target}/{name}");
            run(&bytes);
        }
    }
}

#[test]
fn every_committed_corpus_file_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    let mut files = 0;
    for (target, run) in crate::TARGETS {
        let Ok(dir) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        for e in dir.flatten() {
            let bytes = std::fs::read(e.path()).expect("a corpus file");
            run(&bytes);
            files += 1;
        }
    }
    assert!(
        files > 0 || !root.exists(),
        "an empty corpus at {}",
        root.display()
    );
}

#[test]
fn the_vfio_user_seed_is_served_message_by_message() {
    let got =
        crate::targets::vfio_user_messages::replay(&crate::targets::vfio_user_messages::seed());
    assert_eq!(got.len(), 8);
    assert!(got.iter().all(|r| r.is_ok()), "{got:?}");
    assert_eq!(
        got[4],
        Ok(16 + 4),
        "the register read returns its header and 4 bytes"
    );
}

#[test]
fn the_serial_snapshot_seed_restores() {
    let seed = crate::targets::snapshot_restore::seed();
    vmm::snapshot::restore_with(&seed[..], &crate::targets::snapshot_restore::host())
        .expect("the seed restores");
}
