//! Capturing a run's pipes under their caps, and turning what was captured into the outcome's text and plots.

use std::os::fd::{AsRawFd, OwnedFd};

use base64::Engine;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::read;

use super::run::Plot;

/// Bytes read from one pipe, kept up to a cap; the rest is drained and counted.
pub struct Capture {
    /// Our read end, until EOF.
    pub fd: Option<OwnedFd>,
    pub data: Vec<u8>,
    cap: usize,
    /// Bytes read past the cap and thrown away.
    pub dropped: usize,
}

impl Capture {
    pub fn new(fd: OwnedFd, cap: usize) -> Capture {
        // Non-blocking, so draining one pipe never waits on a run that writes to another.
        // Only our read end: the run's write ends stay blocking, as programs expect.
        let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
        Capture {
            fd: Some(fd),
            data: Vec::new(),
            cap,
            dropped: 0,
        }
    }

    /// Reads what is available; closes the pipe at EOF.
    fn pump(&mut self) {
        let Some(fd) = &self.fd else { return };
        let mut buf = [0u8; 65536];
        match read(fd.as_raw_fd(), &mut buf) {
            Ok(0) | Err(Errno::EBADF) => self.fd = None,
            Ok(n) => {
                let room = self.cap.saturating_sub(self.data.len());
                let keep = room.min(n);
                self.data.extend_from_slice(&buf[..keep]);
                self.dropped += n - keep;
            }
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
            Err(_) => self.fd = None,
        }
    }

    /// Reads until the pipe is empty or closed, at most 1 MiB at a time so that a flood on
    /// one pipe cannot starve the others.
    pub fn drain(&mut self) {
        let before = |c: &Capture| (c.fd.is_some(), c.data.len() + c.dropped);
        for _ in 0..16 {
            let was = before(self);
            self.pump();
            if before(self) == was {
                return;
            }
        }
    }
}

pub fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// The captured text of one stream, with a line saying so when it was cut.
pub fn text(capture: &Capture, stream: &str) -> String {
    let mut s = String::from_utf8_lossy(&capture.data).into_owned();
    if capture.dropped > 0 {
        let note = format!(
            "[nsbox: {stream} truncated at {} ({} more bytes dropped)]",
            human_bytes(capture.cap as u64),
            capture.dropped
        );
        if !s.ends_with('\n') && !s.is_empty() {
            s.push('\n');
        }
        s.push_str(&note);
        s.push('\n');
    }
    s
}

/// Splits the harness's length-prefixed PNG frames into plots; true when some were dropped.
pub fn decode_plots(bytes: &[u8], truncated: bool) -> (Vec<Plot>, bool) {
    let mut plots = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 4 {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        if rest.len() - 4 < len {
            break;
        }
        plots.push(Plot {
            content_base64: base64::engine::general_purpose::STANDARD.encode(&rest[4..4 + len]),
            format: "png".into(),
            filename: format!("plot_{}.png", plots.len() + 1),
        });
        rest = &rest[4 + len..];
    }
    (plots, truncated || !rest.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    use nix::unistd::pipe2;

    #[test]
    fn plot_frames_are_split_and_named_in_order() {
        let mut bytes = Vec::new();
        for payload in [&b"\x89PNG-one"[..], &b"\x89PNG-two"[..]] {
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(payload);
        }
        let (plots, dropped) = decode_plots(&bytes, false);
        assert_eq!(plots.len(), 2);
        assert_eq!(plots[1].filename, "plot_2.png");
        assert_eq!(plots[0].format, "png");
        assert!(!dropped);
    }

    #[test]
    fn a_cut_plot_frame_is_dropped() {
        let mut bytes = 100u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 10]);
        let (plots, dropped) = decode_plots(&bytes, true);
        assert!(plots.is_empty());
        assert!(dropped);
    }

    #[test]
    fn truncated_output_is_marked() {
        let (r, _w) = pipe2(OFlag::O_CLOEXEC).unwrap();
        let mut cap = Capture::new(r, 4);
        cap.data = b"abcd".to_vec();
        cap.dropped = 10;
        let s = text(&cap, "stdout");
        assert!(s.starts_with("abcd\n[nsbox: stdout truncated at 4 bytes (10 more bytes dropped)]"));
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(1 << 20), "1 MiB");
        assert_eq!(human_bytes(512 << 20), "512 MiB");
        assert_eq!(human_bytes(2048), "2 KiB");
        assert_eq!(human_bytes(1000), "1000 bytes");
    }
}
