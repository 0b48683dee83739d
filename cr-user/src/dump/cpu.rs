//! A frozen process's CPU, signal and mm state, saved by syscalls injected into its threads.
//!
//! [`CpuProbe::new`] makes the process ready for injection (seccomp suspended where it has
//! filters, every thread's signals blocked, a scratch area mapped) and [`CpuProbe::unmap`]
//! removes the scratch area again. They are two steps so that a pre-copy dump can run its final
//! page-table walk between them: the walk holds the process's mmap lock for reading, chunk by
//! chunk, and the injected `mmap` and `munmap` need it for writing. Injected beside the walk,
//! the `mmap` was measured to wait 1–4.5 ms (the walking threads keep taking the lock); before
//! it, it takes some 50 µs.

use std::time::Instant;

use super::DumpError;
use crate::freeze::FrozenProcess;
use crate::image::core::{CoreImage, ThreadsImage};
use crate::image::mm::{MmImage, Vma};
use crate::image::sigstate::SigStateImage;
use crate::inject::Injector;
use crate::proc::maps::MapEntry;
use crate::proc::{self, stat::Stat, status::Status};
use crate::stats::micros;
use crate::sys::remote::Remote;

/// What [`CpuProbe::dump`] saves.
pub(crate) type CpuState = (MmImage, CoreImage, ThreadsImage, SigStateImage);

/// A frozen process made ready for injected syscalls.
pub(crate) struct CpuProbe {
    inj: Injector,
    /// Threads with seccomp filters, and their modes.
    seccomp: Vec<(i32, u32)>,
    /// A `syscall` instruction in the process.
    ip: u64,
    /// The scratch area, while mapped.
    scratch: Option<(u64, u64)>,
}

impl CpuProbe {
    /// Suspends seccomp where needed, blocks every thread's signals and maps the scratch area
    /// (`smaps`: the process's current layout, for its `[vdso]`).
    pub(crate) fn new(frozen: &FrozenProcess, smaps: &[MapEntry]) -> Result<Self, DumpError> {
        let pid = frozen.main().pid();
        let t = Instant::now();
        // Before any injection: a filter could kill the process for a syscall fastcr injects.
        let seccomp = crate::core::sigstate::seccomp_threads(pid)?;
        if !seccomp.is_empty() {
            frozen.suspend_seccomp()?;
        }
        frozen.block_signals()?;
        let ip = crate::inject::vdso_syscall_ip(pid, smaps)?;
        let mut inj = Injector::new(Remote::new(pid, *frozen.main().regs(), ip));
        let len = crate::core::DUMP_SCRATCH_LEN;
        let addr = inj.call(
            || "mmap of a scratch area".into(),
            "mmap",
            libc::SYS_mmap,
            // Executable too: core's batches of syscalls run from it.
            crate::inject::anon_mmap_args_prot(
                len,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            ),
        )?;
        inj.set_scratch(addr, len);
        tracing::debug!(us = micros(t.elapsed()), "cpu: scratch mapped");
        Ok(Self {
            inj,
            seccomp,
            ip,
            scratch: Some((addr, len)),
        })
    }

    /// Saves the CPU, signal and mm state; `close_fd` (fastcr's own tracking fd) is closed in
    /// the process on the way.
    pub(crate) fn dump(
        &self,
        frozen: &FrozenProcess,
        vmas: Vec<Vma>,
        stat: &Stat,
        status: &Status,
        comm: String,
        close_fd: Option<i32>,
    ) -> Result<CpuState, DumpError> {
        let pid = frozen.main().pid();
        let inj = &self.inj;
        let t = Instant::now();
        let (core, brk) = crate::core::dump(frozen.main(), inj, status, stat, comm)?;
        tracing::debug!(us = micros(t.elapsed()), "cpu: core");
        let threads = crate::core::threads::dump(pid, frozen.others(), inj, self.ip)?;
        let sigstate =
            crate::core::sigstate::dump(pid, &frozen.tids(), inj, status, &self.seccomp)?;
        tracing::debug!(us = micros(t.elapsed()), "cpu: threads and sigstate");
        // The tracking fd a pre-dump left in the process is not the program's: it goes.
        if let Some(fd) = close_fd {
            inj.call(
                || format!("close of tracking fd {fd}"),
                "close",
                libc::SYS_close,
                [fd as u64, 0, 0, 0, 0, 0],
            )?;
        }
        let auxv = proc::auxv(pid)?;
        let exe = proc::read_link(pid, "exe")?.to_string_lossy().into_owned();
        let mm = crate::mm::dump::mm_image(exe, stat, brk, &auxv, vmas);
        Ok((mm, core, threads, sigstate))
    }

    /// Unmaps the scratch area.
    pub(crate) fn unmap(mut self) -> Result<(), DumpError> {
        self.release().map_err(DumpError::from)
    }

    fn release(&mut self) -> Result<(), crate::inject::InjectError> {
        let Some((addr, len)) = self.scratch.take() else {
            return Ok(());
        };
        self.inj
            .call(
                || "munmap of the scratch area".into(),
                "munmap",
                libc::SYS_munmap,
                [addr, len, 0, 0, 0, 0],
            )
            .map(drop)
    }
}

impl Drop for CpuProbe {
    /// A dump that failed half-way still leaves the process as it was.
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!(error = %e, "the scratch area stays mapped in the process");
        }
    }
}

/// Saves a frozen process's CPU, signal and mm state in one go (see [`CpuProbe`]).
pub(crate) fn dump_cpu(
    frozen: &FrozenProcess,
    smaps: &[MapEntry],
    vmas: Vec<Vma>,
    stat: &Stat,
    status: &Status,
    comm: String,
    close_fd: Option<i32>,
) -> Result<CpuState, DumpError> {
    let probe = CpuProbe::new(frozen, smaps)?;
    let state = probe.dump(frozen, vmas, stat, status, comm, close_fd);
    let unmapped = probe.unmap();
    let state = state?;
    unmapped?;
    Ok(state)
}
