//! Where the warm path's shared library (nsbox built as `libnsbox_sandbox.so`) comes from, and how it reaches the zygotes.
//!
//! A normal build finds it as a file beside the binary (or at `--warm-library`). The static
//! build (`scripts/build-static.sh`) is a single file, so it carries the library inside
//! itself; the spawner copies those bytes into a sealed memfd, which reaches each zygote at
//! fd 4 exactly as an opened file would (`zygote.py` loads `/proc/self/fd/4`).

use std::ffi::CStr;
use std::io::{Seek, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use serde::{Deserialize, Serialize};

/// The library's file name, looked for beside the executable.
pub const FILE_NAME: &str = "libnsbox_sandbox.so";

/// Where the warm path's shared library comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarmLibrary {
    /// A file: `--warm-library`, or `libnsbox_sandbox.so` beside the executable.
    Path(PathBuf),
    /// The copy built into this executable (the static build), handed over as a sealed memfd.
    Embedded,
}

#[derive(Debug, thiserror::Error)]
pub enum WarmLibraryError {
    #[error("{0} not found (build it with `cargo build`, or use scripts/build-static.sh, whose binary carries it)")]
    NotFound(PathBuf),
    #[error("no warm library: the executable's directory is unknown and no copy is built in")]
    NowhereToLook,
    #[error("opening the warm library {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("this binary carries no warm library (not built by scripts/build-static.sh)")]
    NotEmbedded,
    #[error("creating a memfd for the embedded warm library: {0}")]
    Memfd(#[source] Errno),
    #[error("copying the embedded warm library into its memfd: {0}")]
    Copy(#[source] std::io::Error),
    #[error("sealing the embedded warm library's memfd: {0}")]
    Seal(#[source] Errno),
}

/// The library a static build carries, registered by `main` before anything looks for it.
static EMBEDDED: OnceLock<&'static [u8]> = OnceLock::new();

/// Registers the library built into this executable. `main` calls it first thing, in the
/// server and again in the spawner (the same executable, re-executed), so both see it.
pub fn embed(library: &'static [u8]) {
    let _ = EMBEDDED.set(library);
}

/// The library built into this executable, if it is a static build.
pub fn embedded() -> Option<&'static [u8]> {
    EMBEDDED.get().copied()
}

impl WarmLibrary {
    /// Chooses the library: an explicit path (`--warm-library`) first, then `libnsbox_sandbox.so`
    /// beside the executable, then the copy built in.
    pub fn resolve(explicit: Option<&Path>) -> Result<WarmLibrary, WarmLibraryError> {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join(FILE_NAME)));
        choose(explicit, beside.as_deref(), embedded().is_some())
    }

    /// Opens the library for the zygotes: a descriptor (close-on-exec) that the template
    /// places at fd 4.
    pub fn open(&self) -> Result<OwnedFd, WarmLibraryError> {
        match self {
            WarmLibrary::Path(path) => {
                std::fs::File::open(path)
                    .map(OwnedFd::from)
                    .map_err(|source| WarmLibraryError::Open {
                        path: path.clone(),
                        source,
                    })
            }
            WarmLibrary::Embedded => {
                let bytes = embedded().ok_or(WarmLibraryError::NotEmbedded)?;
                sealed_memfd(c"libnsbox_sandbox.so", bytes, false)
            }
        }
    }
}

/// The precedence of [`WarmLibrary::resolve`], apart from the filesystem and the executable.
/// An explicit path that is missing is an error rather than a reason to fall back to the
/// built-in copy: the operator asked for that file, and running another would hide the
/// mistake.
fn choose(
    explicit: Option<&Path>,
    beside: Option<&Path>,
    embedded: bool,
) -> Result<WarmLibrary, WarmLibraryError> {
    if let Some(path) = explicit {
        return match path.is_file() {
            true => Ok(WarmLibrary::Path(path.to_path_buf())),
            false => Err(WarmLibraryError::NotFound(path.to_path_buf())),
        };
    }
    match beside {
        Some(path) if path.is_file() => Ok(WarmLibrary::Path(path.to_path_buf())),
        _ if embedded => Ok(WarmLibrary::Embedded),
        Some(path) => Err(WarmLibraryError::NotFound(path.to_path_buf())),
        None => Err(WarmLibraryError::NowhereToLook),
    }
}

/// A memfd holding `bytes`, sealed so nobody (a zygote included: it gets the descriptor
/// read-write, as every memfd is) can change, grow or shrink it, or lift the seals.
/// `executable` says whether it is a program to exec (the run init) or not (the library,
/// which dlopen maps but nothing executes).
pub(crate) fn sealed_memfd(
    name: &CStr,
    bytes: &[u8],
    executable: bool,
) -> Result<OwnedFd, WarmLibraryError> {
    let flags = MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING;
    // Linux 6.3 asks which: MFD_NOEXEC_SEAL makes it non-executable for good, MFD_EXEC says
    // it is meant to run (hosts with vm.memfd_noexec=2 refuse that, and the caller copes).
    // Older kernels (Debian's 6.1) reject either unknown flag with EINVAL.
    let which = match executable {
        true => libc::MFD_EXEC,
        false => libc::MFD_NOEXEC_SEAL,
    };
    let fd = match memfd_create(name, flags | MemFdCreateFlag::from_bits_retain(which)) {
        Err(Errno::EINVAL) => memfd_create(name, flags),
        created => created,
    }
    .map_err(WarmLibraryError::Memfd)?;
    let mut file = std::fs::File::from(fd);
    // Rewound, so the descriptor reads like a freshly opened file (as the Path variant's).
    file.write_all(bytes)
        .and_then(|()| file.rewind())
        .map_err(WarmLibraryError::Copy)?;
    let seals = SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_SEAL;
    fcntl(file.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals)).map_err(WarmLibraryError::Seal)?;
    Ok(file.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn precedence_is_explicit_then_beside_the_executable_then_built_in() {
        let dir = tempfile::tempdir().unwrap();
        let explicit = dir.path().join("explicit.so");
        let beside = dir.path().join(FILE_NAME);
        let missing = dir.path().join("missing.so");
        std::fs::write(&explicit, b"").unwrap();
        std::fs::write(&beside, b"").unwrap();

        let path = |p: &Path| WarmLibrary::Path(p.to_path_buf());
        let chosen = |e: Option<&Path>, b: Option<&Path>, built_in| choose(e, b, built_in).ok();
        assert_eq!(
            chosen(Some(&explicit), Some(&beside), true),
            Some(path(&explicit))
        );
        assert_eq!(chosen(None, Some(&beside), true), Some(path(&beside)));
        assert_eq!(
            chosen(None, Some(&missing), true),
            Some(WarmLibrary::Embedded)
        );
        assert_eq!(chosen(None, None, true), Some(WarmLibrary::Embedded));
        // A missing explicit path never falls back to the built-in copy.
        assert!(matches!(
            choose(Some(&missing), Some(&beside), true),
            Err(WarmLibraryError::NotFound(p)) if p == missing
        ));
        assert!(matches!(
            choose(None, Some(&missing), false),
            Err(WarmLibraryError::NotFound(p)) if p == missing
        ));
        assert!(matches!(
            choose(None, None, false),
            Err(WarmLibraryError::NowhereToLook)
        ));
    }

    #[test]
    fn the_memfd_holds_the_bytes_and_cannot_be_changed() {
        let bytes = b"\x7fELF not really a library";
        let mut file = std::fs::File::from(sealed_memfd(c"test", bytes, false).unwrap());
        let mut read_back = Vec::new();
        file.read_to_end(&mut read_back).unwrap();
        assert_eq!(read_back, bytes);

        let seals = fcntl(file.as_raw_fd(), FcntlArg::F_GET_SEALS).unwrap();
        let wanted = SealFlag::F_SEAL_WRITE
            | SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_SEAL;
        assert_eq!(SealFlag::from_bits_truncate(seals) & wanted, wanted);
        assert_eq!(
            file.write(b"x").map_err(|e| e.raw_os_error()),
            Err(Some(libc::EPERM))
        );
        assert!(file.set_len(1).is_err());
        assert!(fcntl(file.as_raw_fd(), FcntlArg::F_ADD_SEALS(SealFlag::empty())).is_err());
    }

    #[test]
    fn a_binary_built_without_the_library_says_so() {
        // Only the static build's `main` registers a built-in copy; unit tests never do.
        assert!(matches!(
            WarmLibrary::Embedded.open(),
            Err(WarmLibraryError::NotEmbedded)
        ));
    }
}
