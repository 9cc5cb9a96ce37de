//! Passing descriptors over unix sockets (SCM_RIGHTS): one message of bytes with descriptors attached, sent or received.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::sys;

/// Sends `data` with `fds` attached as one message. A peer that is gone is an error
/// (EPIPE), never a SIGPIPE.
pub fn send(sock: RawFd, data: &[u8], fds: &[RawFd]) -> Result<(), Errno> {
    send_with(sock, data, fds, MsgFlags::MSG_NOSIGNAL)
}

/// Like [`send`], but EAGAIN instead of waiting when the peer's buffer is full: for a peer
/// that may never read.
pub fn try_send(sock: RawFd, data: &[u8], fds: &[RawFd]) -> Result<(), Errno> {
    send_with(
        sock,
        data,
        fds,
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
    )
}

fn send_with(sock: RawFd, data: &[u8], fds: &[RawFd], flags: MsgFlags) -> Result<(), Errno> {
    sendmsg::<()>(
        sock,
        &[IoSlice::new(data)],
        &[ControlMessage::ScmRights(fds)],
        flags,
        None,
    )
    .map(drop)
}

/// One received message.
pub struct Received {
    /// Bytes read into the caller's buffer; 0 at EOF.
    pub len: usize,
    /// The descriptors attached, owned here and close-on-exec.
    pub fds: Vec<OwnedFd>,
}

/// Receives one message into `buf`, with room for up to `MAX_FDS` descriptors. A message
/// with more descriptors than that fails with ENOBUFS once read (the kernel closes those
/// that did not fit).
pub fn recv<const MAX_FDS: usize>(sock: RawFd, buf: &mut [u8]) -> Result<Received, Errno> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let fds = msg
        .cmsgs()?
        .filter_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => Some(fds),
            _ => None,
        })
        .flatten()
        // The kernel just installed these descriptors for us; nothing else owns them.
        .map(sys::take_fd)
        .collect();
    Ok(Received {
        len: msg.bytes,
        fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::fd::AsRawFd;

    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use nix::unistd::{pipe, read, write};

    #[test]
    fn descriptors_and_bytes_arrive_together() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (r, w) = pipe().unwrap();
        send(a.as_raw_fd(), b"run", &[w.as_raw_fd()]).unwrap();
        drop(w);
        let mut buf = [0u8; 16];
        let got = recv::<2>(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..got.len], b"run");
        assert_eq!(got.fds.len(), 1);
        write(&got.fds[0], b"x").unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(read(r.as_raw_fd(), &mut byte), Ok(1));
    }

    #[test]
    fn a_peer_that_never_reads_makes_try_send_say_so_instead_of_waiting() {
        let (a, _b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (_r, w) = pipe().unwrap();
        let message = [0u8; 4096];
        let full = (0..100_000)
            .map(|_| try_send(a.as_raw_fd(), &message, &[w.as_raw_fd()]))
            .find(|r| r.is_err());
        assert_eq!(full, Some(Err(Errno::EAGAIN)));
    }
}
