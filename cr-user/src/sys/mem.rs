//! Another process's memory (process_vm_readv/writev) and read-only file mappings of our own.

use std::fs::File;
use std::os::fd::AsRawFd;

use super::{SyscallError, check};

/// Most iovecs one process_vm_* call takes (`UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// Reads remote ranges `(addr, len)` of `pid` into `buf`, back to back. Returns the bytes read,
/// which is less than asked only if a range became unreadable.
pub fn read_remote(
    pid: i32,
    ranges: &[(u64, usize)],
    buf: &mut [u8],
) -> Result<usize, SyscallError> {
    let total: usize = ranges.iter().map(|r| r.1).sum();
    assert!(
        buf.len() >= total,
        "read_remote: buffer smaller than ranges"
    );
    let mut done = 0usize;
    for chunk in ranges.chunks(IOV_MAX) {
        let len: usize = chunk.iter().map(|r| r.1).sum();
        let local = libc::iovec {
            iov_base: buf[done..done + len].as_mut_ptr().cast(),
            iov_len: len,
        };
        let remote: Vec<libc::iovec> = chunk
            .iter()
            .map(|&(addr, len)| libc::iovec {
                iov_base: addr as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        // SAFETY: `local` covers `len` writable bytes of `buf`; the remote iovecs are only
        // addresses in the other process, checked by the kernel.
        let ret = unsafe {
            libc::process_vm_readv(
                pid,
                &raw const local,
                1,
                remote.as_ptr(),
                remote.len() as u64,
                0,
            )
        };
        let got = check(ret as libc::c_long, "process_vm_readv")? as usize;
        done += got;
        if got < len {
            break;
        }
    }
    Ok(done)
}

/// Reads remote address `remote[i]` of `pid` into `local[i]` (its whole length), for every
/// `i`, in as few `process_vm_readv` calls as the iovec limit allows: the pages land where
/// the caller wants them, with no buffer in between. Returns the bytes read, which is less
/// than asked only if a range became unreadable (nothing after it is read).
pub fn read_remote_scatter(
    pid: i32,
    remote: &[u64],
    local: &mut [&mut [u8]],
) -> Result<usize, SyscallError> {
    assert_eq!(
        remote.len(),
        local.len(),
        "read_remote_scatter: one address per buffer"
    );
    let mut done = 0usize;
    for (addrs, bufs) in remote.chunks(IOV_MAX).zip(local.chunks_mut(IOV_MAX)) {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        let local_iov: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let remote_iov: Vec<libc::iovec> = addrs
            .iter()
            .zip(bufs.iter())
            .map(|(&addr, b)| libc::iovec {
                iov_base: addr as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: each local iovec covers one whole `&mut [u8]` of `local`, exclusively
        // borrowed for the call; the remote iovecs are only addresses in the other process,
        // checked by the kernel.
        let ret = unsafe {
            libc::process_vm_readv(
                pid,
                local_iov.as_ptr(),
                local_iov.len() as u64,
                remote_iov.as_ptr(),
                remote_iov.len() as u64,
                0,
            )
        };
        let got = match check(ret as libc::c_long, "process_vm_readv") {
            Ok(n) => n as usize,
            // Nothing of the first range could be read.
            Err(e) if e.errno() == Some(libc::EFAULT) => 0,
            Err(e) => return Err(e),
        };
        done += got;
        if got < len {
            break;
        }
    }
    Ok(done)
}

/// Writes `data` to address `addr` of `pid`. Returns the bytes written.
pub fn write_remote(pid: i32, addr: u64, data: &[u8]) -> Result<usize, SyscallError> {
    let mut done = 0usize;
    while done < data.len() {
        let local = libc::iovec {
            iov_base: data[done..].as_ptr() as *mut libc::c_void,
            iov_len: data.len() - done,
        };
        let remote = libc::iovec {
            iov_base: (addr + done as u64) as *mut libc::c_void,
            iov_len: data.len() - done,
        };
        // SAFETY: `local` covers the rest of `data`, which the kernel only reads.
        let ret =
            unsafe { libc::process_vm_writev(pid, &raw const local, 1, &raw const remote, 1, 0) };
        let n = check(ret as libc::c_long, "process_vm_writev")? as usize;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// A whole file mapped read-only into fastcr (page images are read through this, no copy).
pub struct MappedFile {
    ptr: *mut libc::c_void,
    len: usize,
}

impl MappedFile {
    /// Maps `file` (all `len` bytes) read-only and private.
    pub fn map(file: &File, len: usize) -> Result<Self, SyscallError> {
        if len == 0 {
            return Ok(Self {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a fresh read-only mapping of a file we hold open; nothing else aliases it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(SyscallError::last("mmap(page image)"));
        }
        Ok(Self { ptr, len })
    }

    /// The mapped bytes.
    pub fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` is a live PROT_READ mapping of `len` bytes owned by self until Drop.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: unmapping exactly the mapping we created; no slice outlives self.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

/// The PFN of the kernel's shared zero page, found by read-faulting a fresh anonymous page of
/// our own and looking it up in `/proc/self/pagemap` (PFNs are visible to root only; `None`
/// otherwise). Pages mapped to it hold no data and are not saved.
pub fn zero_page_pfn() -> Option<u64> {
    use std::os::unix::fs::FileExt;
    // SAFETY: a fresh private anonymous read-only page, unmapped below; nothing aliases it.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: `ptr` is a live readable page; a volatile read forces the zero-page fault.
    unsafe { std::ptr::read_volatile(ptr.cast::<u8>()) };
    let mut word = [0u8; 8];
    let read = File::open("/proc/self/pagemap")
        .and_then(|f| f.read_exact_at(&mut word, (ptr as u64 / 4096) * 8));
    // SAFETY: unmapping the page mapped above.
    unsafe { libc::munmap(ptr, 4096) };
    read.ok()?;
    let pm = u64::from_le_bytes(word);
    let pfn = pm & ((1 << 55) - 1);
    (pm & (1 << 63) != 0 && pfn != 0).then_some(pfn)
}
