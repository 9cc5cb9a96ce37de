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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two ends of one loopback TCP connection.
    async fn connection() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (b, _) = listener.accept().await.unwrap();
        (a, b)
    }

    fn data() -> Vec<u8> {
        (0..3_000_000u32).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn every_byte_passes_in_order_and_the_end_is_passed_on() {
        let (mut writer, from) = connection().await;
        let (to, mut reader) = connection().await;
        let pipe = Pipe::new().unwrap();
        let sent = data();
        let source = sent.clone();
        let write = tokio::spawn(async move {
            writer.write_all(&source).await.unwrap();
            writer.shutdown().await.unwrap();
        });
        let moved = Cell::new(0);
        let relay = one_way(
            &from,
            &to,
            &pipe,
            || Ok(usize::MAX),
            |n| moved.set(moved.get() + n),
        );
        let mut got = Vec::new();
        let (relayed, read) = tokio::join!(relay, reader.read_to_end(&mut got));
        relayed.unwrap();
        read.unwrap();
        write.await.unwrap();
        assert_eq!(moved.get(), sent.len());
        assert!(got == sent, "the bytes differ");
    }

    #[tokio::test]
    async fn a_direction_stops_when_its_room_is_used_up() {
        let (mut writer, from) = connection().await;
        let (to, mut reader) = connection().await;
        let pipe = Pipe::new().unwrap();
        let write = tokio::spawn(async move {
            let _ = writer.write_all(&data()).await;
        });
        let cap = 1 << 20;
        let moved = Cell::new(0);
        let relay = one_way(
            &from,
            &to,
            &pipe,
            || match cap - moved.get() {
                0 => Err(io::Error::other("cap")),
                room => Ok(room),
            },
            |n| moved.set(moved.get() + n),
        );
        let err = relay.await.unwrap_err();
        assert_eq!(err.to_string(), "cap");
        assert_eq!(moved.get(), cap);
        drop((from, to));
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), cap);
        write.abort();
    }
}
