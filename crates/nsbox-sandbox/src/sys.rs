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

/// Which process came back from [`clone_nested`].
#[derive(Debug, PartialEq, Eq)]
pub enum Nested {
    /// The run's Python process: a fork of the caller, in the new namespaces, whose
    /// parent is the run's init.
    Python,
    /// The caller, once the run's init has exec'd (its pid here).
    Caller { init: Pid },
}

/// Where [`clone_nested`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NestedStep {
    Clone,
    DefaultSigchld,
    Session,
    Fork,
    ReportFd,
    Exec,
}

/// What the run's first process reads (and, on failure, writes) while it shares the
/// caller's memory; one pointer reaches all of it. The offsets are the assembly's.
#[repr(C)]
struct NestedArgs {
    init_fd: i64,                // 0
    report_fd: i64,              // 8
    argv: *const libc::c_char,   // 16: a pointer to the argv array
    envp: *const libc::c_char,   // 24
    empty: *const libc::c_char,  // 32: "" for execveat(AT_EMPTY_PATH)
    sigchld_default: *const u64, // 40: the kernel's struct sigaction for SIG_DFL
    failed_step: i64,            // 48: written by the first process, 0 if it exec'd
    failed_errno: i64,           // 56
}

/// The nested shape of a warm run: one copy of the caller's address space per run.
///
/// Clones the run's first process with `CLONE_VM | CLONE_VFORK` into `flags`' namespaces.
/// That process shares the caller's memory and stack while the caller is suspended, runs
/// only the instructions below (no call, no stack, no heap): it puts SIGCHLD back to its
/// default, starts a session (so Python is in the init's process group), forks the run's Python process (a copy of the caller as it is suspended, so a
/// consistent one), moves `report` to fd 3 and execs the program in `init` (a sealed
/// memfd) as the run's PID 1. Python comes back from this function as a fork would,
/// returning [`Nested::Python`]; the caller comes back once the init has exec'd.
///
/// Only for single-threaded callers (as a fork). Neither descriptor may be fd 3, where the
/// report pipe goes (EINVAL).
#[cfg(target_arch = "x86_64")]
pub fn clone_nested(
    flags: CloneFlags,
    init: RawFd,
    report: RawFd,
) -> Result<Nested, (NestedStep, Errno)> {
    if init == 3 || report == 3 {
        return Err((NestedStep::ReportFd, Errno::EINVAL));
    }
    let argv: [*const libc::c_char; 2] = [c"nsbox-run-init".as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // handler (SIG_DFL = 0), flags, restorer, mask
    let sigchld_default = [0u64; 4];
    let mut args = NestedArgs {
        init_fd: init as i64,
        report_fd: report as i64,
        argv: argv.as_ptr().cast(),
        envp: envp.as_ptr().cast(),
        empty: c"".as_ptr(),
        sigchld_default: sigchld_default.as_ptr(),
        failed_step: 0,
        failed_errno: 0,
    };
    let raw_flags = flags.bits() as u64
        | libc::CLONE_VM as u64
        | libc::CLONE_VFORK as u64
        | libc::SIGCHLD as u64;
    // No signal handler of the caller may run in the first process (it would write to the
    // caller's memory): every signal is blocked across the clone, and the mask put back in
    // the caller and in Python. The init's program clears the mask it inherits.
    let all = nix::sys::signal::SigSet::all();
    let mut saved = nix::sys::signal::SigSet::empty();
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&all),
        Some(&mut saved),
    )
    .map_err(|e| (NestedStep::Clone, e))?;
    let ret: i64;
    // SAFETY: the first clone has CLONE_VM | CLONE_VFORK and no new stack, as vfork(2): the
    // caller sleeps until the child execs or exits, and the child runs on the caller's
    // stack. The child executes only the instructions of this block: system calls, which
    // use no user stack, and two stores into `args` (a local that outlives the block) on
    // failure. It calls no function, so no frame, red zone or heap of the caller is
    // touched, and with every signal blocked no handler runs in it. Its fork (a plain
    // clone with SIGCHLD) copies the caller's memory while the caller is suspended, so the
    // copy is the caller's state at this block; in that copy the block ends with rax = 0
    // and the registers declared clobbered, as a fork returns. The execveat replaces the
    // child's memory, which releases the caller; on failure the child records the step
    // and errno in `args` and exits. Every pointer in `args` points at locals of this
    // frame or at static C strings, alive while the caller is suspended.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            // The first process: SIGCHLD to default, for the init and for Python.
            "mov eax, {rt_sigaction}",
            "mov edi, {sigchld}",
            "mov rsi, [r12 + 40]",
            "xor edx, edx",
            "mov r10d, 8",
            "syscall",
            "mov r9d, 2",
            "test rax, rax",
            "jnz 3f",
            // A session and process group of the run's own, led by the init as a cloned
            // init's are, so Python (forked next) is in the init's group: a session's
            // interrupt signals that group, and Python's kill(0) reaches no other run.
            "mov eax, {setsid}",
            "syscall",
            "mov r9d, 3",
            "test rax, rax",
            "js 3f",
            // Python.
            "mov eax, {clone}",
            "mov edi, {sigchld}",
            "xor esi, esi",
            "xor edx, edx",
            "xor r10d, r10d",
            "xor r8d, r8d",
            "syscall",
            "test rax, rax",
            "jz 2f",
            "mov r9d, 4",
            "js 3f",
            // The report pipe at fd 3, where the init writes Python's status.
            "mov eax, {dup2}",
            "mov rdi, [r12 + 8]",
            "mov esi, 3",
            "syscall",
            "mov r9d, 5",
            "test rax, rax",
            "js 3f",
            "mov eax, {execveat}",
            "mov rdi, [r12]",
            "mov rsi, [r12 + 32]",
            "mov rdx, [r12 + 16]",
            "mov r10, [r12 + 24]",
            "mov r8d, {at_empty_path}",
            "syscall",
            "mov r9d, 6",
            "3:",
            "mov [r12 + 48], r9",
            "neg rax",
            "mov [r12 + 56], rax",
            "mov eax, {exit}",
            "mov edi, 127",
            "syscall",
            "ud2",
            "2:",
            rt_sigaction = const libc::SYS_rt_sigaction,
            setsid = const libc::SYS_setsid,
            clone = const libc::SYS_clone,
            dup2 = const libc::SYS_dup2,
            execveat = const libc::SYS_execveat,
            exit = const libc::SYS_exit,
            sigchld = const libc::SIGCHLD,
            at_empty_path = const libc::AT_EMPTY_PATH,
            inlateout("rax") libc::SYS_clone => ret,
            inlateout("rdi") raw_flags => _,
            inlateout("rsi") 0u64 => _,
            inlateout("rdx") 0u64 => _,
            inlateout("r10") 0u64 => _,
            inlateout("r8") 0u64 => _,
            out("r9") _,
            out("rcx") _,
            out("r11") _,
            in("r12") &mut args as *mut NestedArgs,
        );
    }
    // Python, and the caller, take their mask back.
    let restored = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&saved),
        None,
    );
    // SAFETY: `args` is a live local of plain integers and pointers; the loads are
    // volatile because the block wrote these fields through a raw pointer.
    let (failed_step, failed_errno) = unsafe {
        (
            std::ptr::read_volatile(&args.failed_step),
            std::ptr::read_volatile(&args.failed_errno),
        )
    };
    match ret {
        0 => {
            if restored.is_err() {
                exit_now(127);
            }
            Ok(Nested::Python)
        }
        r if r < 0 => Err((NestedStep::Clone, Errno::from_raw(-r as i32))),
        init => {
            let step = match failed_step {
                0 => {
                    return Ok(Nested::Caller {
                        init: Pid::from_raw(init as libc::pid_t),
                    })
                }
                2 => NestedStep::DefaultSigchld,
                3 => NestedStep::Session,
                4 => NestedStep::Fork,
                5 => NestedStep::ReportFd,
                _ => NestedStep::Exec,
            };
            Err((step, Errno::from_raw(failed_errno as i32)))
        }
    }
}

/// The children of `pid` (a process of ours or of our PID namespace's), as this namespace
/// numbers them.
pub fn children_of(pid: Pid) -> Result<Vec<Pid>, Errno> {
    let list = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    list.split_whitespace()
        .map(|p| p.parse().map(Pid::from_raw).map_err(|_| Errno::EINVAL))
        .collect()
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

/// Whether each 4 KiB page of `[addr, addr + len)` is in memory (bit 0 of its byte), from
/// `mincore`: for anonymous memory, whether the page was ever touched. `addr` is page
/// aligned and the range mapped (ENOMEM otherwise).
pub fn resident_pages(addr: usize, len: usize) -> Result<Vec<u8>, Errno> {
    let mut pages = vec![0u8; len.div_ceil(4096)];
    // SAFETY: mincore only reads the page tables of the range and writes one byte per page
    // into `pages`, which has exactly that many; it never touches the range's contents.
    match unsafe { libc::mincore(addr as *mut libc::c_void, len, pages.as_mut_ptr()) } {
        0 => Ok(pages),
        _ => Err(Errno::last()),
    }
}

/// CPython's `PyObjectArenaAllocator`: how the interpreter gets and gives back the 1 MiB
/// arenas its small objects live in. CPython copies the table when it is installed.
#[repr(C)]
pub struct ArenaAllocator {
    ctx: *mut libc::c_void,
    alloc: extern "C" fn(*mut libc::c_void, usize) -> *mut libc::c_void,
    free: extern "C" fn(*mut libc::c_void, *mut libc::c_void, usize),
}

// SAFETY: two function pointers and a null context, never written after they are built.
unsafe impl Sync for ArenaAllocator {}

/// The arenas of a warm interpreter, carved in order out of one 2 MiB-aligned region while
/// it warms up, so they form one mapping that `MADV_COLLAPSE` can put in huge pages
/// (CPython's own allocator maps each arena alone, between the libraries it loads, where
/// few 2 MiB-aligned ranges fit). Past the region, and once it is trimmed, an arena is a
/// mapping of its own, as CPython's default would make it.
pub static ARENA_ALLOCATOR: ArenaAllocator = ArenaAllocator {
    ctx: std::ptr::null_mut(),
    alloc: arena_alloc,
    free: arena_free,
};

/// The free part of the arena region: `[next, end)`; both 0 when there is none.
static ARENA_NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static ARENA_END: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A transparent huge page's size (x86_64's PMD).
pub const HUGE_PAGE: usize = 2 << 20;

extern "C" fn arena_alloc(_ctx: *mut libc::c_void, size: usize) -> *mut libc::c_void {
    use std::sync::atomic::Ordering::Relaxed;
    // CPython asks under its global lock; the atomics only keep this sound without it.
    let mut next = ARENA_NEXT.load(Relaxed);
    while next != 0 && ARENA_END.load(Relaxed).saturating_sub(next) >= size {
        match ARENA_NEXT.compare_exchange(next, next + size, Relaxed, Relaxed) {
            Ok(_) => return next as *mut libc::c_void,
            Err(now) => next = now,
        }
    }
    map_anonymous(size, 0).unwrap_or(std::ptr::null_mut())
}

/// A new private, read-write anonymous mapping of `len` bytes, with `flags` besides.
fn map_anonymous(len: usize, flags: libc::c_int) -> Result<*mut libc::c_void, Errno> {
    // SAFETY: a new private anonymous mapping: no memory of anyone's changes.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(Errno::last())
    } else {
        Ok(p)
    }
}

extern "C" fn arena_free(_ctx: *mut libc::c_void, arena: *mut libc::c_void, size: usize) {
    // SAFETY: CPython gives back whole arenas it got from an arena allocator (this one, or
    // the default one before this was installed, which maps each arena alone), and nothing
    // else refers to an arena it gives back; unmapping part of the region is as valid as
    // unmapping a mapping of its own.
    unsafe {
        libc::munmap(arena, size);
    }
}

/// Reserves `len` bytes of address space, 2 MiB aligned, for the arenas [`ARENA_ALLOCATOR`]
/// hands out. The pages cost nothing until an arena is used (`MAP_NORESERVE`, never touched).
pub fn arena_region_reserve(len: usize) -> Result<(), Errno> {
    use std::sync::atomic::Ordering::Relaxed;
    let len = len.next_multiple_of(HUGE_PAGE);
    let p = map_anonymous(len + HUGE_PAGE, libc::MAP_NORESERVE)?;
    let start = p as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE);
    // SAFETY: the unaligned head and tail of the mapping just made, which nothing uses.
    unsafe {
        if aligned > start {
            libc::munmap(p, aligned - start);
        }
        let tail = aligned + len;
        let end = start + len + HUGE_PAGE;
        if end > tail {
            libc::munmap(tail as *mut libc::c_void, end - tail);
        }
    }
    ARENA_END.store(aligned + len, Relaxed);
    ARENA_NEXT.store(aligned, Relaxed);
    Ok(())
}

/// Gives back the region's unused part past the next 2 MiB boundary; from then on new
/// arenas are mappings of their own. Returns the bytes given back.
pub fn arena_region_trim() -> usize {
    use std::sync::atomic::Ordering::Relaxed;
    let next = ARENA_NEXT.load(Relaxed);
    let end = ARENA_END.load(Relaxed);
    let tail = next.next_multiple_of(HUGE_PAGE).min(end);
    if next == 0 || tail >= end {
        return 0;
    }
    ARENA_END.store(tail, Relaxed);
    // SAFETY: past `next` no arena was handed out, and the end moved before the unmap, so
    // none will be.
    unsafe {
        libc::munmap(tail as *mut libc::c_void, end - tail);
    }
    end - tail
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

    #[test]
    fn arenas_come_in_order_from_the_aligned_region_then_alone_once_it_is_trimmed() {
        use std::sync::atomic::Ordering::Relaxed;
        const ARENA: usize = 1 << 20;
        let (alloc, free) = (ARENA_ALLOCATOR.alloc, ARENA_ALLOCATOR.free);
        let ctx = std::ptr::null_mut();
        arena_region_reserve(8 << 20).unwrap();
        let a = alloc(ctx, ARENA) as usize;
        let b = alloc(ctx, ARENA) as usize;
        let c = alloc(ctx, ARENA) as usize;
        assert_eq!(a % HUGE_PAGE, 0, "the region starts on a 2 MiB boundary");
        assert_eq!(
            (b, c),
            (a + ARENA, a + 2 * ARENA),
            "arenas follow each other"
        );
        // SAFETY: the arena just handed out, 1 MiB of writable memory nothing else uses.
        let arena = unsafe { std::slice::from_raw_parts_mut(c as *mut u8, ARENA) };
        arena.fill(7);
        assert!(arena.iter().all(|&x| x == 7));
        free(ctx, b as *mut libc::c_void, ARENA);
        // Used up to 3 MiB: the region keeps 4 and gives back the other 4.
        assert_eq!(arena_region_trim(), 4 << 20);
        assert_eq!(
            arena_region_trim(),
            0,
            "trimming twice gives back nothing more"
        );
        let d = alloc(ctx, ARENA) as usize;
        assert_eq!(
            d,
            a + 3 * ARENA,
            "the region's last arena before the boundary"
        );
        let e = alloc(ctx, ARENA);
        assert!(!e.is_null());
        assert_eq!(
            ARENA_NEXT.load(Relaxed),
            a + 4 * ARENA,
            "past the region an arena is a mapping of its own"
        );
        for arena in [a, c, d, e as usize] {
            free(ctx, arena as *mut libc::c_void, ARENA);
        }
    }
}
