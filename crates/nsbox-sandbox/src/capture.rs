//! Capturing a run's pipes under their caps, and turning what was captured into the outcome's text and plots.

use std::os::fd::{AsRawFd, OwnedFd};

use base64::Engine;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::read;

use super::run::{Plot, RunEvent};

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

/// The first complete length-prefixed PNG frame of `bytes`, and the bytes it takes.
fn next_plot_frame(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let png = bytes.get(4..4 + len)?;
    Some((png, 4 + len))
}

fn plot(png: &[u8], number: usize) -> Plot {
    Plot {
        content_base64: base64::engine::general_purpose::STANDARD.encode(png),
        format: "png".into(),
        filename: format!("plot_{number}.png"),
    }
}

/// Splits the harness's length-prefixed PNG frames into plots; true when some were dropped.
pub fn decode_plots(bytes: &[u8], truncated: bool) -> (Vec<Plot>, bool) {
    let mut plots = Vec::new();
    let mut rest = bytes;
    while let Some((png, used)) = next_plot_frame(rest) {
        plots.push(plot(png, plots.len() + 1));
        rest = &rest[used..];
    }
    (plots, truncated || !rest.is_empty())
}

/// The longest text `bytes` starts with, up to a character cut by the end of what was read
/// (kept for later unless `finished`), and how many bytes it used. Invalid sequences become
/// U+FFFD, as in `String::from_utf8_lossy`, so the streamed text adds up to the outcome's.
fn take_text(bytes: &[u8], finished: bool) -> (String, usize) {
    let mut text = String::new();
    let mut used = 0;
    loop {
        match std::str::from_utf8(&bytes[used..]) {
            Ok(rest) => {
                text.push_str(rest);
                return (text, bytes.len());
            }
            Err(e) => {
                let valid = e.valid_up_to();
                text.push_str(
                    std::str::from_utf8(&bytes[used..used + valid]).expect("checked valid"),
                );
                used += valid;
                match e.error_len() {
                    Some(bad) => {
                        text.push(char::REPLACEMENT_CHARACTER);
                        used += bad;
                    }
                    None if finished => {
                        text.push(char::REPLACEMENT_CHARACTER);
                        return (text, bytes.len());
                    }
                    None => return (text, used),
                }
            }
        }
    }
}

/// How much of a run's captured output has gone out as events.
#[derive(Debug, Default)]
pub struct Streamed {
    stdout: usize,
    stderr: usize,
    plot_bytes: usize,
    plots: usize,
}

impl Streamed {
    /// Events for what was captured since the last call; `finished` once the pipes are
    /// closed, so a character cut by the cap is sent (as U+FFFD) rather than held.
    pub fn events(
        &mut self,
        out: &Capture,
        err: &Capture,
        figs: &Capture,
        finished: bool,
    ) -> Vec<RunEvent> {
        let mut events = Vec::new();
        for (sent, capture, make) in [
            (
                &mut self.stdout,
                out,
                (|text| RunEvent::Stdout { text }) as fn(String) -> RunEvent,
            ),
            (&mut self.stderr, err, |text| RunEvent::Stderr { text }),
        ] {
            let (text, used) = take_text(&capture.data[*sent..], finished);
            *sent += used;
            if !text.is_empty() {
                events.push(make(text));
            }
        }
        while let Some((png, used)) = next_plot_frame(&figs.data[self.plot_bytes..]) {
            self.plots += 1;
            self.plot_bytes += used;
            events.push(RunEvent::Plot {
                plot: plot(png, self.plots),
            });
        }
        events
    }
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
    fn streamed_text_is_cut_at_characters_and_adds_up_to_the_lossy_whole() {
        let whole = "héllo wörld ✓".as_bytes();
        for cut in 0..whole.len() {
            let (a, used) = take_text(&whole[..cut], false);
            let (b, _) = take_text(&whole[used..], true);
            assert_eq!(a + &b, "héllo wörld ✓", "cut at {cut}");
        }
        let bad = b"ok\xffok\xe2\x9c";
        assert_eq!(take_text(bad, false).0, "ok\u{fffd}ok");
        assert_eq!(take_text(bad, true).0, String::from_utf8_lossy(bad));
    }

    #[test]
    fn events_carry_what_is_new_and_each_plot_once() {
        let (r, _w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut out = Capture::new(r.try_clone().unwrap(), 1024);
        let err = Capture::new(r.try_clone().unwrap(), 1024);
        let mut figs = Capture::new(r, 1024);
        let mut streamed = Streamed::default();
        out.data = b"one\n".to_vec();
        figs.data = 3u32.to_le_bytes().to_vec();
        figs.data.extend_from_slice(b"PNG");
        figs.data.extend_from_slice(&9u32.to_le_bytes());
        let events = streamed.events(&out, &err, &figs, false);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(
            events[0],
            RunEvent::Stdout {
                text: "one\n".into()
            }
        );
        assert!(matches!(&events[1], RunEvent::Plot { plot } if plot.filename == "plot_1.png"));
        out.data.extend_from_slice(b"two\n");
        figs.data.extend_from_slice(b"PNG-again");
        let events = streamed.events(&out, &err, &figs, true);
        assert_eq!(
            events[0],
            RunEvent::Stdout {
                text: "two\n".into()
            }
        );
        assert!(matches!(&events[1], RunEvent::Plot { plot } if plot.filename == "plot_2.png"));
        assert!(streamed.events(&out, &err, &figs, true).is_empty());
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(1 << 20), "1 MiB");
        assert_eq!(human_bytes(512 << 20), "512 MiB");
        assert_eq!(human_bytes(2048), "2 KiB");
        assert_eq!(human_bytes(1000), "1000 bytes");
    }
}
