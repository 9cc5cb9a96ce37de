//! Capturing a run's pipes under their caps, and turning what was captured into the outcome's text and plots.

use std::os::fd::{AsRawFd, OwnedFd};

use base64::Engine;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::read;

use super::run::{
    FileCaps, JsonText, Limits, NotebookError, NotebookOutput, OutputFile, OutputType, Plot,
    ResultCaps, RunEvent, SkippedFile,
};

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

/// The captured text of one stream, with a line saying so when it was cut. The cap counts
/// the text as it is sent (in a JSON string, where a control byte takes six bytes and an
/// invalid one three), not the bytes the run wrote, so the answer is bounded by the cap.
pub fn text(capture: &Capture, stream: &str) -> String {
    let mut budget = capture.cap;
    let (mut s, used) = take_text(&capture.data, true, &mut budget);
    let dropped = capture.dropped + (capture.data.len() - used);
    if dropped > 0 {
        let note = format!(
            "[nsbox: {stream} truncated at {} ({dropped} more bytes dropped)]",
            human_bytes(capture.cap as u64),
        );
        if !s.ends_with('\n') && !s.is_empty() {
            s.push('\n');
        }
        s.push_str(&note);
        s.push('\n');
    }
    s
}

/// The longest prefix of `s` whose JSON string form (as serde_json writes it) fits in
/// `budget` bytes: its length in `s`, and the bytes it takes in JSON.
fn fit_json(s: &str, budget: usize) -> (usize, usize) {
    let mut cost = 0;
    for (i, b) in s.bytes().enumerate() {
        let c = match b {
            b'"' | b'\\' | 8 | 9 | 10 | 12 | 13 => 2,
            0..=0x1f => 6,
            _ => 1,
        };
        if cost + c > budget {
            // Back to a character boundary: the bytes given back are continuation bytes,
            // one JSON byte each.
            let mut end = i;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            return (end, cost - (i - end));
        }
        cost += c;
    }
    (s.len(), cost)
}

/// Kinds of the frames on a run's plots pipe.
const PLOT_FRAME: u8 = b'P';
const FILE_FRAME: u8 = b'F';
/// A file the code created or changed that is not returned: `{"path", "reason"}`.
const SKIP_FRAME: u8 = b'S';
/// The harness's last frame in a one-shot run: the code it is about to exit with, sent
/// once the output is complete, so the supervisor can answer before the interpreter's
/// address space is torn down. The run's own code could forge one; it would only end its
/// own run early with a code of its choosing, as `os._exit` does, and a status reported by
/// init (a signal, the kernel's word) still wins over it.
const EXIT_FRAME: u8 = b'X';
/// A notebook result (JSON: output_type, data, metadata), when the run asked for them.
const RESULT_FRAME: u8 = b'R';
/// The exception the code raised, in nbformat's error shape (JSON), at most one.
const ERROR_FRAME: u8 = b'E';
/// The largest error frame taken: a traceback of a deep recursion is long, not this long.
pub const ERROR_FRAME_MAX: usize = 1 << 20;

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

/// A file frame's parts: its length-prefixed JSON header, then the content (none when
/// truncated).
fn file_parts(payload: &[u8]) -> Option<(FileHeader, &[u8])> {
    let len = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let header: FileHeader = serde_json::from_slice(payload.get(4..4 + len)?).ok()?;
    Some((header, &payload[4 + len..]))
}

fn file(header: FileHeader, content: &[u8]) -> OutputFile {
    OutputFile {
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
    }
}

/// What a run's frames may carry, enforced while they are decoded. The harness is told its
/// caps, but the run's code shares its process and can write any frames it likes; the
/// supervisor decodes them outside the run's cgroup, so the caps hold here, frame by frame:
/// an empty plot frame is five bytes on the pipe and a whole `Plot` once decoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameCaps {
    pub max_plots: usize,
    /// PNG bytes of the plots, in all.
    pub plot_bytes: usize,
    /// The files that may come back with their content; `None` when no file frames are
    /// expected at all.
    pub files: Option<FileCaps>,
    /// Notebook results; `None` when the run did not ask for them.
    pub results: Option<ResultCaps>,
}

/// The most file frames a run may send (listed or with content): the harness looks at no
/// more entries of the working directory than this (`_NSBOX_MAX_ENTRIES`).
pub const MAX_FILE_FRAMES: usize = 20_000;

impl FrameCaps {
    /// A run's (or a session call's) caps: its plot limits, and the file and result caps
    /// it asked for.
    pub fn of(limits: &Limits, files: Option<FileCaps>, results: Option<ResultCaps>) -> FrameCaps {
        FrameCaps {
            max_plots: limits.max_plots,
            plot_bytes: limits.plot_bytes,
            files,
            results,
        }
    }

    /// A session's file listing: names and sizes, no plots and no content.
    pub fn listing() -> FrameCaps {
        FrameCaps {
            max_plots: 0,
            plot_bytes: 0,
            files: Some(FileCaps {
                max_count: 0,
                max_file_bytes: 0,
                max_total_bytes: 0,
            }),
            results: None,
        }
    }
}

/// One frame that passed the caps.
#[derive(Debug)]
enum Decoded {
    Plot(Plot),
    File(OutputFile),
    Result(NotebookOutput),
    Error(NotebookError),
    Skipped(SkippedFile),
}

/// Reads a plots pipe's frames in order under [`FrameCaps`]: what passes is decoded once,
/// what does not is skipped and marks the frames as cut.
#[derive(Debug)]
struct FrameDecoder {
    caps: FrameCaps,
    /// Bytes of the pipe taken so far (whole frames only).
    offset: usize,
    plots: usize,
    plot_bytes: usize,
    file_frames: usize,
    returned_files: usize,
    returned_bytes: u64,
    results: usize,
    result_bytes: usize,
    errors: usize,
    /// A frame was refused: past a cap, malformed, or of an unknown kind.
    dropped: bool,
}

impl FrameDecoder {
    fn new(caps: FrameCaps) -> FrameDecoder {
        FrameDecoder {
            caps,
            offset: 0,
            plots: 0,
            plot_bytes: 0,
            file_frames: 0,
            returned_files: 0,
            returned_bytes: 0,
            results: 0,
            result_bytes: 0,
            errors: 0,
            dropped: false,
        }
    }

    /// The next frame of `bytes` (everything the pipe gave so far) that passes the caps.
    fn next(&mut self, bytes: &[u8]) -> Option<Decoded> {
        loop {
            let (kind, payload, used) = next_frame(&bytes[self.offset..])?;
            self.offset += used;
            let decoded = match kind {
                PLOT_FRAME => self.plot(payload),
                FILE_FRAME => self.file(payload),
                RESULT_FRAME => self.result(payload),
                ERROR_FRAME => self.error(payload),
                SKIP_FRAME => self.skipped(payload),
                EXIT_FRAME => continue,
                _ => None,
            };
            match decoded {
                Some(d) => return Some(d),
                None => self.dropped = true,
            }
        }
    }

    fn plot(&mut self, png: &[u8]) -> Option<Decoded> {
        if self.plots >= self.caps.max_plots
            || self.plot_bytes.saturating_add(png.len()) > self.caps.plot_bytes
        {
            return None;
        }
        self.plots += 1;
        self.plot_bytes += png.len();
        Some(Decoded::Plot(plot(png, self.plots)))
    }

    fn file(&mut self, payload: &[u8]) -> Option<Decoded> {
        let caps = self.caps.files?;
        if self.file_frames >= MAX_FILE_FRAMES {
            return None;
        }
        let (header, content) = file_parts(payload)?;
        if !header.truncated {
            let size = content.len() as u64;
            if self.returned_files >= caps.max_count
                || size > caps.max_file_bytes
                || self.returned_bytes.saturating_add(size) > caps.max_total_bytes
            {
                return None;
            }
            self.returned_files += 1;
            self.returned_bytes += size;
        }
        self.file_frames += 1;
        Some(Decoded::File(file(header, content)))
    }

    fn result(&mut self, payload: &[u8]) -> Option<Decoded> {
        let caps = self.caps.results?;
        if self.results >= caps.max_count
            || payload.len() > caps.max_bytes
            || self.result_bytes.saturating_add(payload.len()) > caps.max_total_bytes
        {
            return None;
        }
        let output = notebook_output(payload)?;
        self.results += 1;
        self.result_bytes += payload.len();
        Some(Decoded::Result(output))
    }

    fn error(&mut self, payload: &[u8]) -> Option<Decoded> {
        self.caps.results?;
        if self.errors >= 1 || payload.len() > ERROR_FRAME_MAX {
            return None;
        }
        let error: NotebookError = serde_json::from_slice(payload).ok()?;
        self.errors += 1;
        Some(Decoded::Error(error))
    }

    /// A skipped file counts as a listed one: the harness names at most one per entry it
    /// looked at, and its reason is one of a few words, so a forged frame carries no text.
    fn skipped(&mut self, payload: &[u8]) -> Option<Decoded> {
        self.caps.files?;
        if self.file_frames >= MAX_FILE_FRAMES {
            return None;
        }
        let skipped: SkippedFile = serde_json::from_slice(payload).ok()?;
        self.file_frames += 1;
        Some(Decoded::Skipped(skipped))
    }
}

/// A result frame as the harness writes it: MIME values and metadata are taken as the
/// JSON text they are, checked, never built into values.
#[derive(serde::Deserialize)]
struct ResultFrame<'a> {
    output_type: OutputType,
    #[serde(borrow)]
    data: std::collections::BTreeMap<String, &'a serde_json::value::RawValue>,
    #[serde(borrow)]
    metadata: &'a serde_json::value::RawValue,
}

fn notebook_output(payload: &[u8]) -> Option<NotebookOutput> {
    let frame: ResultFrame = serde_json::from_slice(payload).ok()?;
    if !frame.metadata.get().trim_start().starts_with('{') {
        return None;
    }
    Some(NotebookOutput {
        output_type: frame.output_type,
        data: frame
            .data
            .into_iter()
            .map(|(mime, value)| Some((mime, JsonText::new(value.get())?)))
            .collect::<Option<_>>()?,
        metadata: JsonText::new(frame.metadata.get())?,
    })
}

/// What a run sent on its plots pipe.
#[derive(Debug, Default)]
pub struct Frames {
    pub plots: Vec<Plot>,
    pub files: Vec<OutputFile>,
    pub results: Vec<NotebookOutput>,
    pub error: Option<NotebookError>,
    pub skipped: Vec<SkippedFile>,
    /// Some frames were lost: the pipe's cap cut them, one was past the caps, or one was
    /// malformed.
    pub dropped: bool,
}

/// Splits the harness's frames into plots and files, under `caps`.
pub fn decode_frames(bytes: &[u8], truncated: bool, caps: FrameCaps) -> Frames {
    let mut decoder = FrameDecoder::new(caps);
    let mut frames = Frames::default();
    while let Some(decoded) = decoder.next(bytes) {
        match decoded {
            Decoded::Plot(p) => frames.plots.push(p),
            Decoded::File(f) => frames.files.push(f),
            Decoded::Result(r) => frames.results.push(r),
            Decoded::Error(e) => frames.error = Some(e),
            Decoded::Skipped(s) => frames.skipped.push(s),
        }
    }
    frames.dropped = truncated || decoder.dropped || decoder.offset < bytes.len();
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
/// (kept for later unless `finished`) or the first character past `budget` (the bytes left
/// in JSON form, spent here), and how many bytes it used. Invalid sequences become U+FFFD,
/// as in `String::from_utf8_lossy`, so the streamed text adds up to the outcome's.
fn take_text(bytes: &[u8], finished: bool, budget: &mut usize) -> (String, usize) {
    const REPLACEMENT_LEN: usize = 3;
    let mut text = String::new();
    let mut used = 0;
    loop {
        let (valid, bad) = match std::str::from_utf8(&bytes[used..]) {
            Ok(rest) => (rest, None),
            Err(e) => (
                std::str::from_utf8(&bytes[used..used + e.valid_up_to()]).expect("checked valid"),
                Some(e.error_len()),
            ),
        };
        let (fits, cost) = fit_json(valid, *budget);
        text.push_str(&valid[..fits]);
        *budget -= cost;
        used += fits;
        if fits < valid.len() {
            return (text, used);
        }
        let bad_len = match bad {
            None => return (text, used),
            Some(Some(n)) => n,
            // A character cut by the end of what was read: the rest may come later.
            Some(None) if !finished => return (text, used),
            Some(None) => bytes.len() - used,
        };
        if *budget < REPLACEMENT_LEN {
            return (text, used);
        }
        text.push(char::REPLACEMENT_CHARACTER);
        *budget -= REPLACEMENT_LEN;
        used += bad_len;
    }
}

/// How much of one stream's capture has gone out as events.
#[derive(Debug, Default)]
struct SentText {
    /// Bytes of the capture sent.
    bytes: usize,
    /// JSON bytes they took, against the capture's cap.
    spent: usize,
}

impl SentText {
    fn next(&mut self, capture: &Capture, finished: bool) -> String {
        let mut budget = capture.cap.saturating_sub(self.spent);
        let before = budget;
        let (text, used) = take_text(&capture.data[self.bytes..], finished, &mut budget);
        self.bytes += used;
        self.spent += before - budget;
        text
    }
}

/// How much of a run's captured output has gone out as events: the same text and plots,
/// under the same caps, as the outcome will hold.
#[derive(Debug)]
pub struct Streamed {
    stdout: SentText,
    stderr: SentText,
    frames: FrameDecoder,
}

impl Streamed {
    pub fn new(caps: FrameCaps) -> Streamed {
        Streamed {
            stdout: SentText::default(),
            stderr: SentText::default(),
            frames: FrameDecoder::new(caps),
        }
    }

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
        let text = self.stdout.next(out, finished);
        if !text.is_empty() {
            events.push(RunEvent::Stdout { text });
        }
        let text = self.stderr.next(err, finished);
        if !text.is_empty() {
            events.push(RunEvent::Stderr { text });
        }
        // Files and the error come with the outcome, not as events.
        while let Some(decoded) = self.frames.next(&figs.data) {
            match decoded {
                Decoded::Plot(plot) => events.push(RunEvent::Plot { plot }),
                Decoded::Result(output) => events.push(RunEvent::Display { output }),
                Decoded::File(_) | Decoded::Error(_) | Decoded::Skipped(_) => {}
            }
        }
        events
    }
}

/// The cap on a run's plots pipe: the plots' bytes, the files' when they are collected
/// (with room for their headers), and the results' and the error's when asked for.
pub(crate) fn frames_cap(
    limits: &Limits,
    files: Option<FileCaps>,
    results: Option<ResultCaps>,
) -> usize {
    let files = files.map_or(0, |caps| {
        caps.max_total_bytes as usize + caps.max_count.saturating_add(1) * 4096
    });
    let results = results.map_or(0, |caps| {
        caps.max_total_bytes
            .saturating_add(caps.max_count.saturating_mul(5))
            .saturating_add(ERROR_FRAME_MAX)
    });
    limits
        .plot_bytes
        .saturating_add(files)
        .saturating_add(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    use nix::unistd::pipe2;

    /// Caps wide enough for the frames of a test that is not about them.
    fn roomy() -> FrameCaps {
        FrameCaps {
            max_plots: 16,
            plot_bytes: 1 << 20,
            files: Some(FileCaps {
                max_count: 8,
                max_file_bytes: 1 << 20,
                max_total_bytes: 1 << 20,
            }),
            results: Some(ResultCaps::default()),
        }
    }

    fn capture_of(data: &[u8], cap: usize) -> Capture {
        let (r, _w) = pipe2(OFlag::O_CLOEXEC).unwrap();
        let mut capture = Capture::new(r, cap);
        capture.data = data.to_vec();
        capture
    }

    #[test]
    fn plot_frames_are_split_and_named_in_order() {
        let mut bytes = Vec::new();
        for payload in [&b"\x89PNG-one"[..], &b"\x89PNG-two"[..]] {
            bytes.extend_from_slice(&frame(PLOT_FRAME, payload));
        }
        let frames = decode_frames(&bytes, false, roomy());
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
        let frames = decode_frames(&bytes, true, roomy());
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
        let frames = decode_frames(&bytes, false, roomy());
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
        let frames = decode_frames(&bytes, false, roomy());
        assert_eq!(frames.plots.len(), 1);
        assert_eq!(frames.files.len(), 2);
        assert_eq!(frames.files[0].path, "out/a.csv");
        assert_eq!(frames.files[0].content_base64.as_deref(), Some("YSxi"));
        assert!(frames.files[1].truncated && frames.files[1].content_base64.is_none());
        assert!(!frames.dropped);
        let bad = file_frame("not json", b"");
        assert!(decode_frames(&bad, false, roomy()).dropped);
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
        let roomy = || usize::MAX;
        for cut in 0..whole.len() {
            let (a, used) = take_text(&whole[..cut], false, &mut roomy());
            let (b, _) = take_text(&whole[used..], true, &mut roomy());
            assert_eq!(a + &b, "héllo wörld ✓", "cut at {cut}");
        }
        let bad = b"ok\xffok\xe2\x9c";
        assert_eq!(take_text(bad, false, &mut roomy()).0, "ok\u{fffd}ok");
        assert_eq!(
            take_text(bad, true, &mut roomy()).0,
            String::from_utf8_lossy(bad)
        );
    }

    #[test]
    fn events_carry_what_is_new_and_each_plot_once() {
        let (r, _w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut out = Capture::new(r.try_clone().unwrap(), 1024);
        let err = Capture::new(r.try_clone().unwrap(), 1024);
        let mut figs = Capture::new(r, 1024);
        let mut streamed = Streamed::new(roomy());
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

    #[test]
    fn empty_plot_frames_decode_to_no_more_than_the_plot_limit() {
        // The attack: five-byte frames, each a whole Plot once decoded.
        let flood: Vec<u8> = (0..100_000).flat_map(|_| frame(PLOT_FRAME, b"")).collect();
        let caps = FrameCaps {
            max_plots: 16,
            ..roomy()
        };
        let frames = decode_frames(&flood, false, caps);
        assert_eq!(frames.plots.len(), 16);
        assert!(
            frames.dropped,
            "the frames past the limit are said to be dropped"
        );
        let mut streamed = Streamed::new(caps);
        let figs = capture_of(&flood, flood.len());
        let none = capture_of(b"", 1);
        let events = streamed.events(&none, &none, &figs, true);
        assert_eq!(events.len(), 16, "events are held to the same caps");
    }

    #[test]
    fn plot_bytes_are_capped_as_decoded() {
        let mut bytes = frame(PLOT_FRAME, &[1u8; 600]);
        bytes.extend(frame(PLOT_FRAME, &[2u8; 600]));
        bytes.extend(frame(PLOT_FRAME, &[3u8; 400]));
        let caps = FrameCaps {
            plot_bytes: 1000,
            ..roomy()
        };
        let frames = decode_frames(&bytes, false, caps);
        // The second is past the bytes left; the third still fits.
        assert_eq!(frames.plots.len(), 2);
        assert_eq!(frames.plots[1].filename, "plot_2.png");
        assert!(frames.dropped);
    }

    #[test]
    fn file_frames_are_held_to_the_file_caps() {
        let returned = |path: &str, content: &[u8]| {
            file_frame(
                &format!(r#"{{"path":"{path}","size":0,"truncated":false}}"#),
                content,
            )
        };
        let listed = |path: &str| {
            file_frame(
                &format!(r#"{{"path":"{path}","size":99,"truncated":true}}"#),
                b"",
            )
        };
        let caps = FrameCaps {
            files: Some(FileCaps {
                max_count: 2,
                max_file_bytes: 10,
                max_total_bytes: 15,
            }),
            ..roomy()
        };
        let mut bytes = returned("a", &[b'a'; 8]);
        bytes.extend(returned("big", &[b'b'; 11])); // past the per-file cap
        bytes.extend(returned("b", &[b'c'; 8])); // past the total
        bytes.extend(returned("c", &[b'c'; 7]));
        bytes.extend(returned("d", b"")); // past the count
        bytes.extend(listed("e"));
        let frames = decode_frames(&bytes, false, caps);
        let paths: Vec<&str> = frames.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["a", "c", "e"]);
        assert!(frames.dropped);
        // No file caps: no file frame is taken at all.
        let none = FrameCaps {
            files: None,
            ..roomy()
        };
        assert!(decode_frames(&listed("x"), false, none).files.is_empty());
        // A listing takes names only, up to the harness's own bound.
        let flood: Vec<u8> = (0..MAX_FILE_FRAMES + 5).flat_map(|_| listed("f")).collect();
        let frames = decode_frames(&flood, false, FrameCaps::listing());
        assert_eq!(frames.files.len(), MAX_FILE_FRAMES);
        assert!(frames.dropped);
        let content = decode_frames(&returned("a", b"x"), false, FrameCaps::listing());
        assert!(content.files.is_empty() && content.dropped);
    }

    #[test]
    fn result_frames_are_checked_and_held_to_their_caps() {
        let result = |n: usize| {
            frame(
                RESULT_FRAME,
                format!(
                    r#"{{"output_type":"display_data","data":{{"text/plain":"{n}","application/json":{{"a":[1,2]}}}},"metadata":{{}}}}"#
                )
                .as_bytes(),
            )
        };
        let mut bytes = result(1);
        bytes.extend(frame(
            RESULT_FRAME,
            br#"{"output_type":"evil","data":{},"metadata":{}}"#,
        ));
        bytes.extend(frame(
            RESULT_FRAME,
            br#"{"output_type":"display_data","data":{},"metadata":[]}"#,
        ));
        bytes.extend(result(2));
        bytes.extend(result(3)); // past the count
        bytes.extend(frame(
            ERROR_FRAME,
            br#"{"ename":"E","evalue":"v","traceback":["l"],"lineno":3}"#,
        ));
        bytes.extend(frame(
            ERROR_FRAME,
            br#"{"ename":"F","evalue":"v","traceback":[],"lineno":null}"#,
        ));
        let caps = FrameCaps {
            results: Some(ResultCaps {
                max_count: 2,
                ..ResultCaps::default()
            }),
            ..roomy()
        };
        let frames = decode_frames(&bytes, false, caps);
        assert_eq!(frames.results.len(), 2);
        assert_eq!(frames.results[1].data["text/plain"].as_str(), "\"2\"");
        assert_eq!(
            frames.results[0].data["application/json"].as_str(),
            r#"{"a":[1,2]}"#,
            "JSON values pass as the text they were"
        );
        assert_eq!(frames.error.as_ref().map(|e| e.ename.as_str()), Some("E"));
        assert!(frames.dropped);
        // A run that did not ask takes none.
        let none = FrameCaps {
            results: None,
            ..roomy()
        };
        let frames = decode_frames(&bytes, false, none);
        assert!(frames.results.is_empty() && frames.error.is_none());
    }

    #[test]
    fn skipped_files_are_names_and_known_reasons_within_the_file_frames() {
        let skip = |path: &str, reason: &str| {
            frame(
                SKIP_FRAME,
                format!(r#"{{"path":"{path}","reason":"{reason}"}}"#).as_bytes(),
            )
        };
        let mut bytes = skip("rootdir", "symlink");
        bytes.extend(skip("fifo", "not_regular_file"));
        bytes.extend(file_frame(
            r#"{"path":"a","size":1,"truncated":false}"#,
            b"a",
        ));
        let frames = decode_frames(&bytes, false, roomy());
        assert_eq!(
            frames.skipped,
            [
                SkippedFile {
                    path: "rootdir".into(),
                    reason: crate::run::SkipReason::Symlink
                },
                SkippedFile {
                    path: "fifo".into(),
                    reason: crate::run::SkipReason::NotRegularFile
                },
            ]
        );
        assert_eq!(frames.files.len(), 1);
        assert!(!frames.dropped);
        // A reason of the code's own words is not taken.
        let forged = decode_frames(&skip("x", "rm -rf / said so"), false, roomy());
        assert!(forged.skipped.is_empty() && forged.dropped);
        // Not asked for files: none taken; and they count in the file frames' bound.
        let none = FrameCaps {
            files: None,
            ..roomy()
        };
        assert!(decode_frames(&skip("x", "symlink"), false, none)
            .skipped
            .is_empty());
        let flood: Vec<u8> = (0..MAX_FILE_FRAMES + 5)
            .flat_map(|_| skip("f", "symlink"))
            .collect();
        let frames = decode_frames(&flood, false, roomy());
        assert_eq!(frames.skipped.len(), MAX_FILE_FRAMES);
        assert!(frames.dropped);
    }

    #[test]
    fn the_output_cap_counts_the_text_as_sent() {
        let sent_len = |s: &str| serde_json::to_string(s).unwrap().len() - 2;
        for raw in [
            vec![1u8; 5000],
            vec![0xffu8; 5000],
            b"\"\\\n".repeat(2000),
            "ü✓".repeat(1000).into_bytes(),
            b"plain".repeat(1000),
        ] {
            let cap = 1024;
            let capture = capture_of(&raw[..raw.len().min(cap)], cap);
            let s = text(&capture, "stdout");
            let body = s.split("[nsbox:").next().unwrap();
            // The streamed text is the same text, under the same budget.
            let mut streamed = Streamed::new(roomy());
            let none = capture_of(b"", 1);
            let streamed_text: String = streamed
                .events(&capture, &none, &none, true)
                .into_iter()
                .map(|e| match e {
                    RunEvent::Stdout { text } => text,
                    other => panic!("{other:?}"),
                })
                .collect();
            assert!(
                sent_len(&streamed_text) <= cap,
                "{} > {cap}",
                sent_len(&streamed_text)
            );
            // text() puts the truncation note on a line of its own.
            assert!(
                body == streamed_text || body == streamed_text.clone() + "\n",
                "streamed {} bytes, outcome {}",
                streamed_text.len(),
                body.len()
            );
        }
        // Text within the cap is untouched.
        assert_eq!(text(&capture_of(b"a\x01b", 64), "stdout"), "a\u{1}b");
    }
}
