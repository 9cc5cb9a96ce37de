//! The systemd notification protocol (`Type=notify`): the server says READY=1 once the warm
//! interpreters are up and STOPPING=1 when it starts draining, so `systemctl start` and
//! rolling restarts wait for a server that can take traffic.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` to `$NOTIFY_SOCKET`; does nothing when systemd did not ask for it.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let sent = (|| {
        // "@name" is a socket in the abstract namespace.
        let addr = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
            None => SocketAddr::from_pathname(&path)?,
        };
        UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, "notifying systemd ({state:?})");
    }
}
