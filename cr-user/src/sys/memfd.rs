//! memfds, seals, sparse-file extents and filesystem types: what `files/objects.rs` needs that
//! std does not offer.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use super::{SyscallError, check};

/// `HUGETLBFS_MAGIC` from `linux/magic.h`.
pub const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
/// `TMPFS_MAGIC` from `linux/magic.h` (shmem: memfds, shared anonymous memory).
pub const TMPFS_MAGIC: i64 = 0x0102_1994;

/// `memfd_create(name, flags)`.
pub fn memfd_create(name: &str, flags: u32) -> Result<OwnedFd, SyscallError> {
    let name =
        CString::new(name).map_err(|_| SyscallError::from_errno("memfd_create", libc::EINVAL))?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    check(fd.into(), "memfd_create")?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The seals of the memfd (or other shmem file) behind `fd` (`F_GET_SEALS`).
pub fn get_seals(fd: impl AsFd) -> Result<u32, SyscallError> {
    // SAFETY: fcntl on a descriptor we borrow; F_GET_SEALS takes no argument.
    let ret = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_GET_SEALS) };
    check(ret.into(), "fcntl(F_GET_SEALS)").map(|n| n as u32)
}

/// Adds `seals` to the file behind `fd` (`F_ADD_SEALS`).
pub fn add_seals(fd: impl AsFd, seals: u32) -> Result<(), SyscallError> {
    // SAFETY: fcntl on a descriptor we borrow, with an integer argument.
    let ret = unsafe {
        libc::fcntl(
            fd.as_fd().as_raw_fd(),
            libc::F_ADD_SEALS,
            seals as libc::c_int,
        )
    };
    check(ret.into(), "fcntl(F_ADD_SEALS)").map(drop)
}

/// The next data range at or after `from` in the file behind `fd` (`SEEK_DATA`, then
/// `SEEK_HOLE`), or `None` past the last one. Moves the file offset.
pub fn next_data(fd: impl AsFd, from: u64) -> Result<Option<(u64, u64)>, SyscallError> {
    let raw = fd.as_fd().as_raw_fd();
    // SAFETY: lseek on a descriptor we borrow; no pointers.
    let start = unsafe { libc::lseek(raw, from as libc::off_t, libc::SEEK_DATA) };
    if start == -1 {
        let e = SyscallError::last("lseek(SEEK_DATA)");
        return match e.errno() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(raw, start, libc::SEEK_HOLE) };
    check(end, "lseek(SEEK_HOLE)")?;
    Ok(Some((start as u64, end as u64)))
}

/// The `f_type` of the filesystem holding the file behind `fd` (`fstatfs`).
pub fn fs_type(fd: impl AsFd) -> Result<i64, SyscallError> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `st` is a writable statfs buffer of the right size; the fd is borrowed.
    let ret = unsafe { libc::fstatfs(fd.as_fd().as_raw_fd(), st.as_mut_ptr()) };
    check(ret.into(), "fstatfs")?;
    // SAFETY: fstatfs succeeded, so it filled the buffer (and it was zeroed before).
    let st = unsafe { st.assume_init() };
    Ok(st.f_type)
}

/// `open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, mode)`: an unnamed regular file in `dir`'s
/// filesystem.
pub fn tmpfile_in(dir: &str, mode: u32) -> Result<OwnedFd, SyscallError> {
    let dir =
        CString::new(dir).map_err(|_| SyscallError::from_errno("open(O_TMPFILE)", libc::EINVAL))?;
    // SAFETY: `dir` is a valid NUL-terminated path that outlives the call.
    let fd = unsafe {
        libc::open(
            dir.as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    check(fd.into(), "open(O_TMPFILE)")?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A new shmem file of `len` bytes like the one behind `MAP_SHARED | MAP_ANONYMOUS` memory
/// (`/dev/zero (deleted)` in maps): mapped here for a moment, taken through
/// `/proc/self/map_files` (needs `CAP_SYS_ADMIN`), unmapped again.
pub fn shared_anon_file(len: u64) -> Result<std::fs::File, SyscallError> {
    let size = usize::try_from(len).map_err(|_| SyscallError::from_errno("mmap", libc::EINVAL))?;
    // SAFETY: a fresh shared anonymous mapping at an address the kernel chooses; it overlaps
    // nothing of ours and is unmapped below without ever being accessed.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(SyscallError::last("mmap(MAP_SHARED|MAP_ANONYMOUS)"));
    }
    let start = ptr as u64;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!(
            "/proc/self/map_files/{start:x}-{:x}",
            start + (size as u64).next_multiple_of(super::PAGE_SIZE)
        ));
    // SAFETY: `ptr`/`size` is exactly the mapping made above, which nothing references.
    unsafe { libc::munmap(ptr, size) };
    opened.map_err(|io_error| SyscallError {
        call: "open(/proc/self/map_files)",
        io_error,
    })
}
