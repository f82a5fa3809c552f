//! A tiny x86-64 assembler for the test guests: the few instructions they use, encoded by
//! hand.

/// Machine code being built.
#[derive(Debug, Default)]
pub(super) struct Asm(pub(super) Vec<u8>);

impl Asm {
    fn emit(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }

    /// Offset of the next instruction.
    pub(super) fn here(&self) -> usize {
        self.0.len()
    }

    /// `mov rax, imm64`.
    pub(super) fn mov_rax(&mut self, v: u64) -> &mut Self {
        self.emit(&[0x48, 0xb8]).emit(&v.to_le_bytes())
    }

    /// `mov rbx, imm64`.
    pub(super) fn mov_rbx(&mut self, v: u64) -> &mut Self {
        self.emit(&[0x48, 0xbb]).emit(&v.to_le_bytes())
    }

    /// `mov [rbx], rax`.
    pub(super) fn store_rax_at_rbx(&mut self) -> &mut Self {
        self.emit(&[0x48, 0x89, 0x03])
    }

    /// `mov eax, [rbx + disp8]`.
    pub(super) fn load_eax_at_rbx(&mut self, disp: i8) -> &mut Self {
        self.emit(&[0x8b, 0x43, disp as u8])
    }

    /// `mov dword [rbx + disp32], imm32`.
    pub(super) fn store_imm32_at_rbx(&mut self, disp: u32, v: u32) -> &mut Self {
        self.emit(&[0xc7, 0x83])
            .emit(&disp.to_le_bytes())
            .emit(&v.to_le_bytes())
    }

    /// `mov [abs32], eax` (address below 2 GiB).
    pub(super) fn store_eax(&mut self, addr: u32) -> &mut Self {
        self.emit(&[0x89, 0x04, 0x25]).emit(&addr.to_le_bytes())
    }

    /// `mov [abs32], rax` (address below 2 GiB).
    pub(super) fn store_rax(&mut self, addr: u32) -> &mut Self {
        self.emit(&[0x48, 0x89, 0x04, 0x25])
            .emit(&addr.to_le_bytes())
    }

    /// `mov [abs32], rcx` (address below 2 GiB).
    pub(super) fn store_rcx(&mut self, addr: u32) -> &mut Self {
        self.emit(&[0x48, 0x89, 0x0c, 0x25])
            .emit(&addr.to_le_bytes())
    }

    /// `inc rcx`.
    pub(super) fn inc_rcx(&mut self) -> &mut Self {
        self.emit(&[0x48, 0xff, 0xc1])
    }

    /// `inc qword [abs32]`.
    pub(super) fn inc_mem(&mut self, addr: u32) -> &mut Self {
        self.emit(&[0x48, 0xff, 0x04, 0x25])
            .emit(&addr.to_le_bytes())
    }

    /// `mov dx, port; mov eax, v; out dx, eax`.
    pub(super) fn out32(&mut self, port: u16, v: u32) -> &mut Self {
        self.emit(&[0x66, 0xba])
            .emit(&port.to_le_bytes())
            .emit(&[0xb8])
            .emit(&v.to_le_bytes())
            .emit(&[0xef])
    }

    /// `mov dx, port; in al, dx`.
    pub(super) fn in8(&mut self, port: u16) -> &mut Self {
        self.emit(&[0x66, 0xba])
            .emit(&port.to_le_bytes())
            .emit(&[0xec])
    }

    /// `lidt [abs32]`.
    pub(super) fn lidt(&mut self, addr: u32) -> &mut Self {
        self.emit(&[0x0f, 0x01, 0x1c, 0x25])
            .emit(&addr.to_le_bytes())
    }

    /// `jmp` to offset `target` (within 128 bytes).
    pub(super) fn jmp(&mut self, target: usize) -> &mut Self {
        let rel = target as i64 - (self.here() as i64 + 2);
        self.emit(&[0xeb, rel as i8 as u8])
    }

    /// `add rbx, imm32`.
    pub(super) fn add_rbx(&mut self, v: u32) -> &mut Self {
        self.emit(&[0x48, 0x81, 0xc3]).emit(&v.to_le_bytes())
    }

    /// `cmp rbx, imm32`.
    pub(super) fn cmp_rbx(&mut self, v: u32) -> &mut Self {
        self.emit(&[0x48, 0x81, 0xfb]).emit(&v.to_le_bytes())
    }

    /// `jb` to offset `target` (within 128 bytes).
    pub(super) fn jb(&mut self, target: usize) -> &mut Self {
        let rel = target as i64 - (self.here() as i64 + 2);
        self.emit(&[0x72, rel as i8 as u8])
    }

    /// `ud2`.
    pub(super) fn ud2(&mut self) -> &mut Self {
        self.emit(&[0x0f, 0x0b])
    }

    /// `hlt`.
    pub(super) fn hlt(&mut self) -> &mut Self {
        self.emit(&[0xf4])
    }

    /// `sti`.
    pub(super) fn sti(&mut self) -> &mut Self {
        self.emit(&[0xfb])
    }

    /// `cli`.
    pub(super) fn cli(&mut self) -> &mut Self {
        self.emit(&[0xfa])
    }

    /// `iretq`.
    pub(super) fn iretq(&mut self) -> &mut Self {
        self.emit(&[0x48, 0xcf])
    }
}

/// A 64-bit interrupt gate to `handler` through code selector 0x08.
pub(super) fn idt_gate(handler: u64) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    g[2..4].copy_from_slice(&0x08u16.to_le_bytes());
    g[5] = 0x8e; // present, DPL 0, 64-bit interrupt gate
    g[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    g[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    g
}
