//! Marks a measured loop for `bench/qemu/insn.c`, the QEMU plugin that counts guest instructions
//! between two marks (`instructions --qemu`). A mark is a seek of /dev/null to an offset no
//! program uses: a safe system call whose argument the plugin sees (the workspace forbids the
//! unsafe code a raw marker call would need). Natively it costs one system call and does nothing.

use std::{
    fs::File,
    io::{Seek, SeekFrom},
};

/// Must match `MARK_START` / `MARK_STOP` in bench/qemu/insn.c.
const START: u64 = 0x7a11_57a7;
const STOP: u64 = 0x7a11_57b0;

pub struct Marker(Option<File>);

impl Marker {
    /// Without /dev/null (a sandbox) there are no marks, and `instructions --qemu` says that it
    /// saw none rather than counting something else.
    pub fn new() -> Self {
        Self(File::open("/dev/null").ok())
    }

    pub fn start(&mut self) {
        self.seek(START);
    }

    pub fn stop(&mut self) {
        self.seek(STOP);
    }

    fn seek(&mut self, to: u64) {
        if let Some(f) = &mut self.0 {
            // The seek's result is irrelevant: the plugin reads the call, not what it returns.
            let _ = f.seek(SeekFrom::Start(to));
        }
    }
}
