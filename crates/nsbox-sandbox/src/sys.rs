//! The one place that holds `unsafe` code and raw system calls; everything else calls these safe wrappers.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::unistd::Pid;

/// Creates a child process in new namespaces, like `fork()` but with `clone` flags.
///
/// Returns `Some(pid)` in the parent and `None` in the child. The child runs on a copy of
/// the caller's stack, so the caller must be single-threaded (the spawner and the
/// supervisors it forks are): no other thread can hold a lock the child would need.
pub fn clone_fork(flags: CloneFlags) -> Result<Option<Pid>, Errno> {
    let raw_flags = flags.bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: `clone` without CLONE_VM and with a null stack behaves like fork(): the child
    // gets a private copy of the address space and continues from this point. The callers
    // are single-threaded processes, so no lock can be held by a thread that does not exist
    // in the child. The pointer arguments (parent_tid, child_tid, tls) are null and unused
    // because the corresponding flags are not set.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            raw_flags,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(None),
        pid => Ok(Some(Pid::from_raw(pid as libc::pid_t))),
    }
}

/// Plain `fork()`, for single-threaded callers only.
pub fn fork() -> Result<Option<Pid>, Errno> {
    // SAFETY: every caller is a single-threaded process (the spawner, a supervisor, the
    // sandbox's init, or nsbox as PID 1 before `main` starts anything), so the child cannot
    // inherit a lock held by another thread.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Some(child)),
        nix::unistd::ForkResult::Child => Ok(None),
    }
}

/// Ends the calling process at once, without running atexit handlers or destructors.
///
/// Forked children use it so they never run the parent's cleanup (flushing buffers that
/// belong to the parent, removing the parent's files).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and never returns; skipping destructors is the
    // point, and no Rust invariant depends on them running in a forked child.
    unsafe { libc::_exit(code) }
}

/// Closes every file descriptor from `first` upwards.
pub fn close_fds_from(first: RawFd) -> Result<(), Errno> {
    close_range(first as libc::c_uint, libc::c_uint::MAX)
}

/// Closes the descriptors `first..=last`.
fn close_range(first: libc::c_uint, last: libc::c_uint) -> Result<(), Errno> {
    // SAFETY: close_range only takes integers; closing descriptors this process does not
    // use any more cannot break memory safety. Callers pass ranges they no longer use
    // (about to execve, or keeping only what a run was handed).
    if unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) } == -1 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Closes every descriptor except 0, 1, 2 and those in `keep`: a process cloned from a
/// zygote inherits the zygote's control socket and whatever else it holds at that moment.
/// Allocates nothing, so a freshly forked child may call it.
pub fn close_fds_except(keep: &[RawFd]) -> Result<(), Errno> {
    let mut first: RawFd = 3;
    loop {
        let next = keep.iter().copied().filter(|&fd| fd >= first).min();
        match next {
            Some(fd) => {
                if fd > first {
                    close_range(first as libc::c_uint, (fd - 1) as libc::c_uint)?;
                }
                first = fd + 1;
            }
            None => return close_fds_from(first),
        }
    }
}

/// Whether the calling process has a single thread: `clone_fork` from any other would
/// leave the child with locks (malloc's among them) held by threads it does not have.
pub fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.count() == 1)
}

/// Puts SIGCHLD back to its default disposition. A zygote ignores it (the kernel then
/// reaps its forks), which a process cloned from it inherits; a process that waits for its
/// children needs it back.
pub fn default_sigchld() -> Result<(), Errno> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installing SIG_DFL runs no code of ours in a signal context, so no handler
    // can observe a half-updated state.
    unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) }.map(drop)
}

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> Result<(), Errno> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket() takes only integers; the result is checked and wrapped in an OwnedFd
    // so it is closed on every path.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `raw` is a fresh, valid descriptor owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value for it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the interface name from `req` and writes the flags into
    // its union; `req` is a valid, exclusively borrowed ifreq for the whole call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Moves the calling process into the user and network namespaces of the process `pidfd`
/// refers to (a run's init), in one step. The user namespace comes first, so the caller
/// then holds the capabilities the network namespace asks for there, and needs none in
/// its own user namespace (only to own, or be root above, the run's). For a single-threaded
/// process that never comes back (a supervisor's short-lived helper).
pub fn enter_user_and_net_of(pidfd: &std::os::fd::OwnedFd) -> Result<(), Errno> {
    nix::sched::setns(pidfd, CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET)
}

/// A TCP socket listening on `127.0.0.1:port` in the calling process's network namespace,
/// its loopback brought up first (the address does not exist before; a run's init would
/// bring it up anyway).
pub fn listen_on_loopback(port: u16) -> Result<std::os::fd::OwnedFd, Errno> {
    loopback_up()?;
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port))
        .map(std::os::fd::OwnedFd::from)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

/// Makes `fd` appear as descriptor `target` (without close-on-exec) in a command's child.
pub fn pass_fd(cmd: &mut Command, fd: RawFd, target: RawFd) {
    // SAFETY: the closure runs in the forked child before exec and only calls dup2 and
    // fcntl, which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if fd == target {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, target) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    };
}

/// Borrows a descriptor number that the caller keeps open for the rest of the process.
pub fn borrow_fd(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: callers pass descriptors that stay open until the process exits or execs
    // (the report pipe in a sandbox child), so the borrow never outlives the descriptor.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// Takes ownership of a descriptor number nothing else in the process owns (one inherited
/// at a fixed number, or one just received with SCM_RIGHTS).
pub fn take_fd(fd: RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: callers pass descriptors that were handed to this process for it to own and
    // that no other object wraps, so exactly one owner will close it.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// Opens a pidfd for `pid`: a handle that stays valid (and polls readable once the process
/// has exited) even if the pid number is reused.
pub fn pidfd_open(pid: nix::unistd::Pid) -> Result<std::os::fd::OwnedFd, Errno> {
    // SAFETY: pidfd_open takes two integers; on success it returns a new descriptor that
    // nothing else owns, which is wrapped at once.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if ret < 0 {
        return Err(Errno::last());
    }
    Ok(take_fd(ret as RawFd))
}

/// Sends SIGKILL to the process a pidfd refers to: never to another process that took its
/// pid number since.
pub fn pidfd_kill(pidfd: &std::os::fd::OwnedFd) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal takes a descriptor we own (borrowed for the call), a signal
    // number, a null siginfo (the kernel fills in a default one) and zero flags; it touches
    // no memory of ours.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if ret < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// The pid, in this process's PID namespace, of the process a pidfd refers to (the `Pid:`
/// line of its fdinfo; -1 once it has exited, 0 when it is not visible from here).
pub fn pidfd_pid(pidfd: &std::os::fd::OwnedFd) -> Result<nix::unistd::Pid, Errno> {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    let pid: libc::pid_t = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(Errno::EINVAL)?;
    if pid <= 0 {
        return Err(Errno::ESRCH);
    }
    Ok(nix::unistd::Pid::from_raw(pid))
}

/// Asks the kernel to collapse what is mapped in `[addr, addr + len)` of this process into
/// transparent huge pages now (`MADV_COLLAPSE`, Linux 6.1+). The range should be private
/// anonymous memory, 2 MiB aligned. Only how the memory is backed changes, never its
/// contents; the mappings keep no huge-page hint (no `MADV_HUGEPAGE`), so processes forked
/// later are not made to fault in whole 2 MiB pages, and khugepaged leaves them alone.
pub fn collapse_to_huge_pages(addr: usize, len: usize) -> Result<(), Errno> {
    // SAFETY: MADV_COLLAPSE changes how pages are backed, never their contents or the
    // mapping's protection, so no Rust reference into the range can observe a difference.
    // Where the range is not (or not wholly) mapped the kernel returns ENOMEM, having
    // changed at most how the mapped parts are backed.
    match unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_COLLAPSE) } {
        0 => Ok(()),
        _ => Err(Errno::last()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::fd::AsRawFd;

    #[test]
    fn a_pidfd_names_its_process_here() {
        let pidfd = pidfd_open(nix::unistd::getpid()).unwrap();
        assert_eq!(pidfd_pid(&pidfd).unwrap(), nix::unistd::getpid());
    }

    #[test]
    fn a_pidfd_kills_its_process() {
        let Some(child) = fork().unwrap() else {
            std::thread::sleep(std::time::Duration::from_secs(30));
            exit_now(0)
        };
        let pidfd = pidfd_open(child).unwrap();
        pidfd_kill(&pidfd).unwrap();
        let status = nix::sys::wait::waitpid(child, None).unwrap();
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Signaled(child, nix::sys::signal::Signal::SIGKILL, false)
        );
    }

    #[test]
    fn a_second_thread_is_seen() {
        let _other = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(1)));
        assert!(!single_threaded());
    }

    #[test]
    fn close_fds_except_keeps_only_what_it_is_told() {
        let (keep, _keep_w) = nix::unistd::pipe().unwrap();
        let (gone, _gone_w) = nix::unistd::pipe().unwrap();
        let (keep, gone) = (keep.as_raw_fd(), gone.as_raw_fd());
        // In a child: closing descriptors in the test process would close the harness's.
        let Some(child) = fork().unwrap() else {
            let open = |fd| nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_ok();
            let ok = close_fds_except(&[keep, 1]).is_ok() && open(keep) && !open(gone);
            exit_now(if ok { 0 } else { 1 })
        };
        let status = nix::sys::wait::waitpid(child, None).unwrap();
        assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
    }
}
