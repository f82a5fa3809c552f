//! Writes the seed corpus: `gen-corpus DIR` puts each target's seeds in `DIR/<target>/`
//! (the repository keeps them in `fuzz/corpus/`).

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    for (target, seeds) in vgpu_fuzz_harness::seeds::all() {
        let d = dir.join(target);
        if let Err(e) = std::fs::create_dir_all(&d) {
            eprintln!("error: cannot create {}: {e}", d.display());
            std::process::exit(1);
        }
        for (name, bytes) in seeds {
            let p = d.join(format!("seed-{name}"));
            if let Err(e) = std::fs::write(&p, &bytes) {
                eprintln!("error: cannot write {}: {e}", p.display());
                std::process::exit(1);
            }
            println!("{} {} bytes", p.display(), bytes.len());
        }
    }
}
