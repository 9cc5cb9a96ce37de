//! The warm path's run init: the few-KiB static program (`init/run-init.c`, built by
//! `build.rs`) that a zygote execs as each run's PID 1, so the run holds one copy of the
//! zygote's image (Python's) rather than two.
//!
//! The library carries the program's bytes; a zygote puts them in a sealed memfd once, at
//! start, and execs that (after `pivot_root` no host path would do, and a sealed copy is
//! one the run cannot change through `/proc/1/exe`).

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;

use crate::warm_library::{sealed_memfd, WarmLibraryError};

/// The program, where this build has one (x86_64 Linux).
#[cfg(nsbox_run_init)]
const PROGRAM: Option<&[u8]> = Some(include_bytes!(concat!(env!("OUT_DIR"), "/nsbox-run-init")));
#[cfg(not(nsbox_run_init))]
const PROGRAM: Option<&[u8]> = None;

/// Why a zygote keeps the two-copy shape (its init cloned, not exec'd).
#[derive(Debug, thiserror::Error)]
pub enum RunInitError {
    #[error("this build carries no run init (it is built for x86_64 Linux only)")]
    NotBuilt,
    #[error("no /proc/<pid>/task/<tid>/children (CONFIG_PROC_CHILDREN), where a zygote finds each run's Python")]
    NoChildrenFile,
    #[error("the run init's memfd: {0}")]
    Memfd(#[from] WarmLibraryError),
    #[error("moving the run init's memfd above fd 3: {0}")]
    Descriptor(#[source] nix::errno::Errno),
}

/// A sealed, executable memfd holding the run init, if a zygote here can use it. It is
/// above fd 3, where the program finds its report pipe (`sys::clone_nested` moves that
/// pipe there before the exec).
pub fn open() -> Result<OwnedFd, RunInitError> {
    use std::os::fd::AsRawFd;
    let bytes = PROGRAM.ok_or(RunInitError::NotBuilt)?;
    if !std::path::Path::new("/proc/thread-self/children").exists() {
        return Err(RunInitError::NoChildrenFile);
    }
    let memfd = sealed_memfd(c"nsbox-run-init", bytes, true)?;
    nix::fcntl::fcntl(memfd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
        .map(crate::sys::take_fd)
        .map_err(RunInitError::Descriptor)
}

/// Whether a zygote here can start runs in the nested shape, for `nsbox check`: the
/// program is built in, a zygote can find its runs' Python processes, and the program runs
/// from its memfd (started here with no child to wait for, it must report just that).
pub fn probe() -> Result<String, String> {
    use std::io::Read;
    use std::os::fd::AsRawFd;

    let two_copies = "each warm run's PID 1 is a second fork of its zygote";
    let program = open().map_err(|e| format!("{e}: {two_copies}"))?;
    let (report_read, report_write) = nix::unistd::pipe().map_err(|e| format!("a pipe: {e}"))?;
    let mut cmd = std::process::Command::new(format!("/proc/self/fd/{}", program.as_raw_fd()));
    cmd.arg0("nsbox-run-init");
    crate::sys::pass_fd(&mut cmd, report_write.as_raw_fd(), 3);
    let status = cmd
        .status()
        .map_err(|e| format!("the run init did not start from its memfd ({e}): {two_copies}"))?;
    drop(report_write);
    let mut report = Vec::new();
    let _ = std::fs::File::from(report_read).read_to_end(&mut report);
    match crate::child::reported_failure(&report) {
        Some((step, errno))
            if step == crate::failure::Step::StartPython as u32 && errno == libc::ECHILD =>
        {
            Ok(
                "each warm run holds one copy of its zygote; PID 1 is the run init (a few KiB, \
                exec'd from a sealed memfd)"
                    .into(),
            )
        }
        other => Err(format!(
            "the run init answered {other:?} ({status}) instead of \"no Python to wait for\": \
             {two_copies}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(nsbox_run_init)]
    #[test]
    fn the_probe_starts_the_program_and_reads_its_report() {
        let detail = probe().unwrap();
        assert!(detail.contains("one copy"), "{detail}");
    }

    #[test]
    fn the_init_reports_in_the_record_and_step_the_rust_side_reads() {
        // The C program cannot include Rust's constants; this holds the two to each other.
        let source = include_str!("../init/run-init.c");
        let define = |name: &str| -> u32 {
            let line = source
                .lines()
                .find(|l| l.starts_with(&format!("#define {name} ")))
                .unwrap_or_else(|| panic!("{name} is not defined"));
            line.split_whitespace().nth(2).unwrap().parse().unwrap()
        };
        assert_eq!(
            define("STEP_START_PYTHON"),
            crate::failure::Step::StartPython as u32
        );
        let failed = crate::child::Record::Failed { step: 7, errno: 9 }.encode();
        assert_eq!(
            u32::from_le_bytes(failed[..4].try_into().unwrap()),
            define("RECORD_FAILED")
        );
        let status = crate::child::Record::PythonStatus(3).encode();
        assert_eq!(
            u32::from_le_bytes(status[..4].try_into().unwrap()),
            define("RECORD_PYTHON_STATUS")
        );
        assert_eq!(define("REPORT_FD"), 3);
    }

    /// Runs `scenario` in a forked child (clone_nested wants a single-threaded caller, and
    /// the test harness has threads) and returns its exit code.
    #[cfg(nsbox_run_init)]
    fn in_a_single_threaded_child(scenario: impl FnOnce() -> i32) -> i32 {
        use nix::sys::wait::{waitpid, WaitStatus};
        match crate::sys::fork().unwrap() {
            None => crate::sys::exit_now(scenario()),
            Some(pid) => match waitpid(pid, None).unwrap() {
                WaitStatus::Exited(_, code) => code,
                other => panic!("the scenario's process ended as {other:?}"),
            },
        }
    }

    #[cfg(nsbox_run_init)]
    #[test]
    fn python_is_pid_2_under_the_exec_d_init_which_reports_its_status() {
        use crate::sys::{clone_nested, Nested};
        use nix::sched::CloneFlags;
        use std::io::Read;
        use std::os::fd::AsRawFd;

        let init = open().unwrap();
        let (report_read, report_write) = nix::unistd::pipe().unwrap();
        // Python waits on it, so the init is still there to be looked at.
        let (go_read, go_write) = nix::unistd::pipe().unwrap();
        let code = in_a_single_threaded_child(|| {
            let flags = CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWPID;
            match clone_nested(flags, init.as_raw_fd(), report_write.as_raw_fd()) {
                // Python: the namespace's second process, the init's child.
                Ok(Nested::Python) => {
                    let _ = nix::unistd::read(go_read.as_raw_fd(), &mut [0u8; 1]);
                    // PID 2, the init's child, in the session and group the init leads.
                    match (
                        nix::unistd::getpid().as_raw(),
                        nix::unistd::getppid().as_raw(),
                        nix::unistd::getpgid(None).map(|p| p.as_raw()),
                        nix::unistd::getsid(None).map(|p| p.as_raw()),
                    ) {
                        (2, 1, Ok(1), Ok(1)) => 7,
                        _ => 9,
                    }
                }
                // The caller, released by the init's exec.
                Ok(Nested::Caller { init }) => {
                    let exe = std::fs::read_link(format!("/proc/{init}/exe"));
                    let _ = nix::unistd::write(&go_write, &[1]);
                    match exe {
                        Ok(exe) if exe.to_string_lossy().contains("nsbox-run-init") => 0,
                        other => {
                            eprintln!("the init's exe: {other:?}");
                            1
                        }
                    }
                }
                Err(e) => {
                    eprintln!("clone_nested: {e:?}");
                    2
                }
            }
        });
        assert_eq!(code, 0, "the caller did not see the init exec'd");
        drop(report_write);
        let mut report = Vec::new();
        std::fs::File::from(report_read)
            .read_to_end(&mut report)
            .unwrap();
        // Python exited with 7 (pid 2, parent 1, the init's group), and the init said so.
        assert_eq!(
            crate::child::reported_python_status(&report),
            Some(7 << 8),
            "{report:?}"
        );
    }

    #[cfg(nsbox_run_init)]
    #[test]
    fn an_init_that_cannot_exec_is_an_error_for_the_caller() {
        use crate::sys::{clone_nested, Nested, NestedStep};
        use nix::sched::CloneFlags;
        use std::os::fd::AsRawFd;

        // A pipe is no program: execveat refuses it.
        let (_report_read, report_write) = nix::unistd::pipe().unwrap();
        let (not_a_program, _keep) = nix::unistd::pipe().unwrap();
        let code = in_a_single_threaded_child(|| {
            let flags = CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWPID;
            match clone_nested(flags, not_a_program.as_raw_fd(), report_write.as_raw_fd()) {
                // Python, forked before the exec failed, dies with the namespace.
                Ok(Nested::Python) => 7,
                Ok(Nested::Caller { .. }) => 1,
                Err((NestedStep::Exec, nix::errno::Errno::EACCES)) => 0,
                Err(_) => 2,
            }
        });
        assert_eq!(code, 0);
    }

    #[cfg(nsbox_run_init)]
    #[test]
    fn the_memfd_is_a_sealed_static_program() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let memfd = open().unwrap();
        assert!(
            memfd.as_raw_fd() > 3,
            "the memfd is where the report pipe goes"
        );
        let mut file = std::fs::File::from(memfd);
        let mut head = [0u8; 4];
        file.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"\x7fELF");
        assert!(std::io::Write::write(&mut file, b"x").is_err());
    }
}
