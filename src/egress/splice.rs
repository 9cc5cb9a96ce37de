//! A CONNECT tunnel's bytes moved between its two TCP sockets through a pipe in the kernel (`splice`), so the server never copies them through its own memory: on a download the proxy's two copies per byte were most of its cost (docs/egress.md, Throughput).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The pipe's size asked for: more per call than the default 64 KiB, within what an
/// unprivileged process may ask (`/proc/sys/fs/pipe-max-size`, 1 MiB by default).
const PIPE_SIZE: usize = 256 * 1024;

/// One direction's pipe.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // Refused past the system's limit: the default size then, which only costs calls.
        let size = fcntl(write.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32))
            .map(|n| n as usize)
            .unwrap_or(64 * 1024);
        Ok(Pipe { read, write, size })
    }
}

fn splice_flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE
}

/// Moves what `from` sends to `to` until `from` ends its side (then `to`'s write side is
/// shut, as a byte copy would), through `pipe`. `room` says how many bytes may move next
/// (an error ends the direction: a cap reached); `moved` is told of every chunk taken from
/// `from`, before it is passed on.
pub async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    mut room: impl FnMut() -> io::Result<usize>,
    mut moved: impl FnMut(usize),
) -> io::Result<()> {
    loop {
        // The room is asked once there is something to move, so a cap reached stops
        // only a direction that has more to send. The pipe is empty here (each chunk is
        // passed on whole below), so a would-block is the socket's: its readiness is
        // cleared and awaited again.
        let n = loop {
            from.readable().await?;
            let want = room()?.min(pipe.size);
            let spliced = from.try_io(Interest::READABLE, || {
                splice(
                    from.as_fd(),
                    None,
                    pipe.write.as_fd(),
                    None,
                    want,
                    splice_flags(),
                )
                .map_err(io::Error::from)
            });
            match spliced {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => break done?,
            }
        };
        if n == 0 {
            // Already shut or reset: nothing more to pass on either way.
            use nix::sys::socket::{shutdown, Shutdown};
            let _ = shutdown(to.as_raw_fd(), Shutdown::Write);
            return Ok(());
        }
        moved(n);
        let mut left = n;
        while left > 0 {
            left -= to
                .async_io(Interest::WRITABLE, || {
                    splice(
                        pipe.read.as_fd(),
                        None,
                        to.as_fd(),
                        None,
                        left,
                        splice_flags(),
                    )
                    .map_err(io::Error::from)
                })
                .await?;
        }
    }
}
