use super::*;

/// Guest memory covering the image range.
fn memory() -> Vec<u8> {
    vec![0xaa; (IMAGE_END - IMAGE_BASE) as usize]
}

fn load_into(elf: &[u8], mem: &mut [u8]) -> Result<LoadedImage, LoadError> {
    load(elf, &mut |gpa, data| {
        let at = (gpa - IMAGE_BASE) as usize;
        mem[at..at + data.len()].copy_from_slice(data);
        Ok(())
    })
}

fn load_fresh(elf: &[u8]) -> Result<LoadedImage, LoadError> {
    load_into(elf, &mut memory())
}

/// File offset of the program header of the first `PT_LOAD` segment.
fn first_load_phdr(elf: &[u8]) -> usize {
    let phoff = u64_at(elf, 32) as usize;
    let phnum = usize::from(u16_at(elf, 56));
    (0..phnum)
        .map(|i| phoff + i * usize::from(PHDR_SIZE))
        .find(|o| u32_at(elf, *o) == PT_LOAD)
        .expect("a PT_LOAD segment")
}

fn patched(at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut elf = GUEST_ELF.to_vec();
    elf[at..at + bytes.len()].copy_from_slice(bytes);
    elf
}

#[test]
fn the_built_image_loads_inside_the_contract() {
    let mut mem = memory();
    let img = load_into(GUEST_ELF, &mut mem).expect("the guest image loads");
    assert_eq!(img.entry, IMAGE_BASE, "_start is linked first");
    assert!(IMAGE_BASE <= img.start && img.start <= img.entry && img.entry < img.end);
    assert!(img.end <= IMAGE_END);
    // The entry's first instructions are `_start`'s `cli; cld`.
    assert_eq!(&mem[..2], &[0xfa, 0xfc]);
    // .bss is zeroed: every byte the loader did not write stayed 0xaa, and the loaded
    // range holds no untouched byte.
    let loaded = &mem[(img.start - IMAGE_BASE) as usize..(img.end - IMAGE_BASE) as usize];
    let (_, segs) = parse(GUEST_ELF).expect("parses");
    for s in segs {
        assert!(s.paddr >= IMAGE_BASE && s.paddr + s.memsz <= IMAGE_END);
        let at = (s.paddr - img.start) as usize;
        let bss = &loaded[at + s.filesz as usize..at + s.memsz as usize];
        assert!(bss.iter().all(|b| *b == 0), "bss zeroed");
    }
}

#[test]
fn the_image_is_small_and_fully_linked() {
    assert!(
        GUEST_ELF.len() < 1 << 20,
        "image is {} bytes",
        GUEST_ELF.len()
    );
    // Walk the section headers to the symbol table: a freestanding link must leave no
    // undefined symbol (index 0 is the null symbol).
    let shoff = u64_at(GUEST_ELF, 40) as usize;
    let shnum = usize::from(u16_at(GUEST_ELF, 60));
    let mut symtabs = 0;
    for i in 0..shnum {
        let sh = &GUEST_ELF[shoff + 64 * i..shoff + 64 * (i + 1)];
        if u32_at(sh, 4) != 2 {
            continue; // not SHT_SYMTAB
        }
        symtabs += 1;
        let (off, size) = (u64_at(sh, 24) as usize, u64_at(sh, 32) as usize);
        for (n, sym) in GUEST_ELF[off..off + size]
            .chunks_exact(24)
            .enumerate()
            .skip(1)
        {
            assert_ne!(u16_at(sym, 6), 0, "symbol {n} is undefined");
        }
    }
    assert_eq!(symtabs, 1, "the image keeps its symbol table");
}

#[test]
fn malformed_images_are_refused() {
    let e = load_fresh(&GUEST_ELF[..10]).unwrap_err();
    assert!(matches!(e, LoadError::Truncated { .. }), "{e}");
    let e = load_fresh(&GUEST_ELF[..40]).unwrap_err();
    assert!(matches!(e, LoadError::Truncated { .. }), "{e}");
    let e = load_fresh(&GUEST_ELF[..80]).unwrap_err();
    assert!(
        matches!(
            e,
            LoadError::Truncated {
                what: "program headers",
                ..
            }
        ),
        "{e}"
    );
    let e = load_fresh(&GUEST_ELF[..GUEST_ELF.len() / 2]).unwrap_err();
    assert!(
        matches!(
            e,
            LoadError::Truncated {
                what: "segment data",
                ..
            }
        ),
        "{e}"
    );

    let e = load_fresh(&patched(0, b"\x7fELG")).unwrap_err();
    assert!(matches!(e, LoadError::BadMagic { .. }), "{e}");
    let e = load_fresh(&patched(4, &[1])).unwrap_err();
    assert!(matches!(e, LoadError::BadClass { class: 1 }), "{e}");
    let e = load_fresh(&patched(5, &[2])).unwrap_err();
    assert!(matches!(e, LoadError::BadEncoding { data: 2 }), "{e}");
    let e = load_fresh(&patched(18, &183u16.to_le_bytes())).unwrap_err();
    assert!(matches!(e, LoadError::BadMachine { machine: 183 }), "{e}");
    let e = load_fresh(&patched(16, &3u16.to_le_bytes())).unwrap_err();
    assert!(matches!(e, LoadError::BadType { e_type: 3, .. }), "{e}");
    let e = load_fresh(&patched(24, &0x1000u64.to_le_bytes())).unwrap_err();
    assert!(matches!(e, LoadError::BadEntry { entry: 0x1000 }), "{e}");

    let ph = first_load_phdr(GUEST_ELF);
    for (field, value) in [
        (16, 0x1000u64),
        (24, 0x1000),
        (24, IMAGE_END - 0x10),
        (24, u64::MAX),
    ] {
        let mut elf = patched(ph + field, &value.to_le_bytes());
        if field == 24 {
            elf[ph + 16..ph + 24].copy_from_slice(&value.to_le_bytes());
        }
        let e = load_fresh(&elf).unwrap_err();
        assert!(
            matches!(e, LoadError::SegmentOutsideImage { index: 0, .. }),
            "{e}"
        );
    }
    let memsz = u64_at(GUEST_ELF, ph + 40);
    let e = load_fresh(&patched(ph + 32, &(memsz + 1).to_le_bytes())).unwrap_err();
    assert!(
        matches!(e, LoadError::FileSizeExceedsMemSize { index: 0, .. }),
        "{e}"
    );
    let e = load_fresh(&patched(ph, &6u32.to_le_bytes())).unwrap_err();
    assert!(matches!(e, LoadError::BadEntry { .. }), "{e}");
}

#[test]
fn nothing_is_written_before_the_checks_pass_and_write_errors_propagate() {
    let ph = first_load_phdr(GUEST_ELF);
    let mut elf = GUEST_ELF.to_vec();
    // The last PT_LOAD segment moved out of range: the first one must not be written.
    let phnum = usize::from(u16_at(&elf, 56));
    let last = ph + (phnum - 1) * usize::from(PHDR_SIZE);
    elf[last + 24..last + 32].copy_from_slice(&0u64.to_le_bytes());
    let mut writes = 0;
    let e = load(&elf, &mut |_, _| {
        writes += 1;
        Ok(())
    })
    .unwrap_err();
    assert!(matches!(e, LoadError::SegmentOutsideImage { .. }), "{e}");
    assert_eq!(writes, 0);

    let e = load(GUEST_ELF, &mut |_, _| Err("guest memory is gone".into())).unwrap_err();
    assert!(
        matches!(
            e,
            LoadError::Write {
                gpa: IMAGE_BASE,
                ..
            }
        ),
        "{e}"
    );
    assert!(std::error::Error::source(&e).is_some());
}
