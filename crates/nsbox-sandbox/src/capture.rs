//! Capturing a run's pipes under their caps, and turning what was captured into the outcome's text and plots.

use std::os::fd::{AsRawFd, OwnedFd};

use base64::Engine;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::read;

use super::run::{OutputFile, Plot, RunEvent};

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

/// Kinds of the frames on a run's plots pipe.
const PLOT_FRAME: u8 = b'P';
const FILE_FRAME: u8 = b'F';
/// The harness's last frame in a one-shot run: the code it is about to exit with, sent
/// once the output is complete, so the supervisor can answer before the interpreter's
/// address space is torn down. The run's own code could forge one; it would only end its
/// own run early with a code of its choosing, as `os._exit` does, and a status reported by
/// init (a signal, the kernel's word) still wins over it.
const EXIT_FRAME: u8 = b'X';

/// The first complete frame of `bytes` (a kind byte, a little-endian length, the
/// payload): its kind, its payload, and the bytes it takes.
fn next_frame(bytes: &[u8]) -> Option<(u8, &[u8], usize)> {
    let kind = *bytes.first()?;
    let len = u32::from_le_bytes(bytes.get(1..5)?.try_into().ok()?) as usize;
    let payload = bytes.get(5..5 + len)?;
    Some((kind, payload, 5 + len))
}

fn plot(png: &[u8], number: usize) -> Plot {
    Plot {
        content_base64: base64::engine::general_purpose::STANDARD.encode(png),
        format: "png".into(),
        filename: format!("plot_{number}.png"),
    }
}

/// A file frame's header, as the harness writes it.
#[derive(serde::Deserialize)]
struct FileHeader {
    path: String,
    size: u64,
    truncated: bool,
}

/// A file frame: a length-prefixed JSON header, then the content (none when truncated).
fn file(payload: &[u8]) -> Option<OutputFile> {
    let len = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let header: FileHeader = serde_json::from_slice(payload.get(4..4 + len)?).ok()?;
    let content = &payload[4 + len..];
    Some(OutputFile {
        path: header.path,
        // The code shares the harness's process and could forge a header: a returned
        // file's size is what arrived, only a listed one's is the header's word.
        size: if header.truncated {
            header.size
        } else {
            content.len() as u64
        },
        content_base64: (!header.truncated)
            .then(|| base64::engine::general_purpose::STANDARD.encode(content)),
        truncated: header.truncated,
    })
}

/// What a run sent on its plots pipe.
#[derive(Debug, Default)]
pub struct Frames {
    pub plots: Vec<Plot>,
    pub files: Vec<OutputFile>,
    /// Some frames were lost: the pipe's cap cut them, or one was malformed.
    pub dropped: bool,
}

/// Splits the harness's frames into plots and files.
pub fn decode_frames(bytes: &[u8], truncated: bool) -> Frames {
    let mut frames = Frames {
        dropped: truncated,
        ..Frames::default()
    };
    let mut rest = bytes;
    while let Some((kind, payload, used)) = next_frame(rest) {
        match kind {
            PLOT_FRAME => frames.plots.push(plot(payload, frames.plots.len() + 1)),
            FILE_FRAME => match file(payload) {
                Some(f) => frames.files.push(f),
                None => frames.dropped = true,
            },
            EXIT_FRAME => {}
            _ => frames.dropped = true,
        }
        rest = &rest[used..];
    }
    frames.dropped |= !rest.is_empty();
    frames
}

/// The exit code the harness announced, when its exit frame is the last of the frames.
pub fn harness_exit(bytes: &[u8]) -> Option<i32> {
    let mut rest = bytes;
    let mut code = None;
    while let Some((kind, payload, used)) = next_frame(rest) {
        rest = &rest[used..];
        code = match (kind, <[u8; 4]>::try_from(payload)) {
            (EXIT_FRAME, Ok(word)) if rest.is_empty() => Some(i32::from_le_bytes(word)),
            _ => None,
        };
    }
    code
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
        while let Some((kind, payload, used)) = next_frame(&figs.data[self.plot_bytes..]) {
            self.plot_bytes += used;
            // Files come with the outcome, not as events.
            if kind == PLOT_FRAME {
                self.plots += 1;
                events.push(RunEvent::Plot {
                    plot: plot(payload, self.plots),
                });
            }
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
            bytes.extend_from_slice(&frame(PLOT_FRAME, payload));
        }
        let frames = decode_frames(&bytes, false);
        assert_eq!(frames.plots.len(), 2);
        assert_eq!(frames.plots[1].filename, "plot_2.png");
        assert_eq!(frames.plots[0].format, "png");
        assert!(!frames.dropped);
    }

    #[test]
    fn a_cut_plot_frame_is_dropped() {
        let mut bytes = vec![PLOT_FRAME];
        bytes.extend_from_slice(&100u32.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 10]);
        let frames = decode_frames(&bytes, true);
        assert!(frames.plots.is_empty());
        assert!(frames.dropped);
    }

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    fn file_frame(header: &str, content: &[u8]) -> Vec<u8> {
        let mut payload = (header.len() as u32).to_le_bytes().to_vec();
        payload.extend_from_slice(header.as_bytes());
        payload.extend_from_slice(content);
        frame(FILE_FRAME, &payload)
    }

    #[test]
    fn the_exit_frame_counts_only_as_the_last_frame() {
        let exit = frame(EXIT_FRAME, &3i32.to_le_bytes());
        let mut bytes = frame(PLOT_FRAME, b"\x89PNG");
        bytes.extend(&exit);
        assert_eq!(harness_exit(&bytes), Some(3));
        let frames = decode_frames(&bytes, false);
        assert_eq!(frames.plots.len(), 1);
        assert!(!frames.dropped, "the exit frame is not a lost frame");
        // Anything after it, or a cut frame, means the harness had not finished.
        bytes.extend(frame(PLOT_FRAME, b"\x89PNG"));
        assert_eq!(harness_exit(&bytes), None);
        assert_eq!(harness_exit(&exit[..exit.len() - 1]), None);
        assert_eq!(harness_exit(&frame(EXIT_FRAME, b"12345")), None);
        assert_eq!(harness_exit(&[]), None);
    }

    #[test]
    fn file_frames_carry_their_content_unless_truncated() {
        let mut bytes = file_frame(r#"{"path":"out/a.csv","size":3,"truncated":false}"#, b"a,b");
        bytes.extend(frame(PLOT_FRAME, b"\x89PNG"));
        bytes.extend(file_frame(
            r#"{"path":"big","size":99999,"truncated":true}"#,
            b"",
        ));
        let frames = decode_frames(&bytes, false);
        assert_eq!(frames.plots.len(), 1);
        assert_eq!(frames.files.len(), 2);
        assert_eq!(frames.files[0].path, "out/a.csv");
        assert_eq!(frames.files[0].content_base64.as_deref(), Some("YSxi"));
        assert!(frames.files[1].truncated && frames.files[1].content_base64.is_none());
        assert!(!frames.dropped);
        let bad = file_frame("not json", b"");
        assert!(decode_frames(&bad, false).dropped);
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
        figs.data = frame(PLOT_FRAME, b"PNG");
        figs.data.extend(file_frame(
            r#"{"path":"f","size":0,"truncated":false}"#,
            b"",
        ));
        figs.data.push(PLOT_FRAME);
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
