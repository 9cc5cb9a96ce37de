//! The egress door's listener: a socket made in a run's own network namespace (its loopback) and handed to the server, which serves it as the run's proxy.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::sys::wait::waitpid;

use super::failure::{step, Failure, Step};
use super::fdpass;
use super::run::RunRequest;
use super::sandbox::Sandbox;
use crate::sys;

/// The URL of a run's egress proxy (on its own loopback), when it has a door.
pub(crate) fn proxy_url(request: &RunRequest) -> Option<String> {
    request
        .egress_port
        .map(|port| format!("http://127.0.0.1:{port}"))
}

/// The certificates a run with a door trusts beside the tree's own, when the operator
/// named any.
pub(crate) fn extra_ca(request: &RunRequest) -> Option<String> {
    request.egress_port.and(request.egress_ca.as_ref()).cloned()
}

/// Hands the server the listener of the run's egress door, made in the run's network
/// namespace before the run is released: one message of one byte, with the listener
/// attached, before any report. A run without a door sends nothing.
pub(crate) fn open_door(
    request: &RunRequest,
    sandbox: &Sandbox,
    client: &UnixStream,
) -> Result<(), Failure> {
    let Some(port) = request.egress_port else {
        return Ok(());
    };
    let listener = step(
        Step::EgressListener,
        sandbox
            .pidfd()
            .and_then(|pidfd| door_listener(&pidfd, port)),
    );
    let sent = match &listener {
        Ok(fd) => fdpass::send(client.as_raw_fd(), &[1], &[fd.as_raw_fd()]),
        Err(_) => fdpass::send(client.as_raw_fd(), &[0], &[]),
    };
    listener?;
    step(Step::EgressListener, sent)
}

/// The door's listener, made in the run's network namespace by a helper process: it
/// enters the run's user and network namespaces (`setns` moves a whole process only
/// when it is single-threaded, and there is no way back without privileges in our own
/// user namespace), binds and listens, sends the socket back and exits. The socket keeps
/// the namespace it was made in: the run's processes connect to it, only its holder
/// accepts. The helper runs none of the run's code and holds none of the run's pipes (they
/// are close-on-exec, but it never execs: it only exits).
fn door_listener(pidfd: &OwnedFd, port: u16) -> Result<OwnedFd, Errno> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let Some(helper) = sys::fork()? else {
        let made = sys::enter_user_and_net_of(pidfd).and_then(|()| sys::listen_on_loopback(port));
        let sent = match &made {
            Ok(fd) => fdpass::send(theirs.as_raw_fd(), &[0; 4], &[fd.as_raw_fd()]),
            Err(errno) => fdpass::send(theirs.as_raw_fd(), &(*errno as i32).to_ne_bytes(), &[]),
        };
        sys::exit_now(i32::from(sent.is_err()))
    };
    drop(theirs);
    let mut word = [0u8; 4];
    let got = fdpass::recv::<1>(ours.as_raw_fd(), &mut word);
    let _ = waitpid(helper, None);
    let got = got?;
    match got.fds.into_iter().next() {
        Some(fd) => Ok(fd),
        None if got.len == 4 => Err(Errno::from_raw(i32::from_ne_bytes(word))),
        None => Err(Errno::EIO),
    }
}

/// Tells the server a run with a door that set-up failed before the door existed (the
/// message it waits for before the reports, with nothing attached).
pub(crate) fn no_door(request: &RunRequest, client: &UnixStream) {
    if request.egress_port.is_some() {
        let _ = fdpass::send(client.as_raw_fd(), &[0], &[]);
    }
}
