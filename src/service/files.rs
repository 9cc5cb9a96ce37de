//! Files in and out of a run: the rules for a file's path, the caps on count and size, and the output files' types.
//!
//! The harness writes and collects the files inside the sandbox; these rules are the
//! server's, checked once here for every front end (the spec's request, a session's
//! `PUT`, `nsbox run --file`), and again on what comes back, which the code controls.

use base64::Engine;

use super::ServiceError;
use crate::sandbox::{FileCaps, InputFile, OutputFile, SkippedFile};

/// Base64 as clients write it: padding optional, stray bits in the last character
/// ignored (the standard alphabet only).
const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Longest path, and longest component of one, in bytes (Linux's NAME_MAX).
const MAX_PATH_BYTES: usize = 1024;
const MAX_COMPONENT_BYTES: usize = 255;

/// An input file as a front end read it: its path and content, text or base64.
#[derive(Debug, Clone, PartialEq)]
pub struct FileInput {
    pub path: String,
    pub content: FileContent,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FileContent {
    /// UTF-8 text, written as is.
    Text(String),
    /// Base64 of the bytes.
    Base64(String),
    /// The bytes themselves (a raw upload).
    Bytes(Vec<u8>),
}

/// The caps on files, one set for each direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FileLimits {
    pub max_count: usize,
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
}

impl FileLimits {
    pub fn caps(&self) -> FileCaps {
        FileCaps {
            max_count: self.max_count,
            max_file_bytes: self.max_file_bytes,
            max_total_bytes: self.max_total_bytes,
        }
    }

    /// The request body that can carry files up to these caps (base64 is 4/3 of the
    /// bytes), the code, and the JSON around them: whole MiB, so proxies in front can be
    /// given the same figure (45 MiB with the default 32 MiB of files).
    pub fn body_bytes(&self) -> usize {
        let files_mib = (self.max_total_bytes * 4).div_ceil(3 << 20);
        ((files_mib + 2) << 20) as usize
    }
}

/// Why a path is not one a file may have, or `None` when it is fine: relative, normal, no
/// `..`, `.` or empty component, no NUL or control character, within the length limits.
pub fn path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("is empty");
    }
    if path.len() > MAX_PATH_BYTES {
        return Some("is longer than 1024 bytes");
    }
    if path.starts_with('/') {
        return Some("is absolute; paths are relative to the working directory");
    }
    if path.chars().any(char::is_control) {
        return Some("contains a NUL or control character");
    }
    for part in path.split('/') {
        match part {
            "" => return Some("has an empty component (`//` or a trailing `/`)"),
            "." | ".." => return Some("has a `.` or `..` component"),
            p if p.len() > MAX_COMPONENT_BYTES => {
                return Some("has a component longer than 255 bytes")
            }
            _ => {}
        }
    }
    None
}

/// Checks a request's input files against the path rules and the caps, and turns them
/// into what the sandbox writes.
pub fn check_inputs(
    files: &[FileInput],
    limits: &FileLimits,
) -> Result<Vec<InputFile>, ServiceError> {
    if files.len() > limits.max_count {
        return Err(ServiceError::TooLarge(format!(
            "{} files sent; the maximum is {}",
            files.len(),
            limits.max_count
        )));
    }
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut checked = Vec::with_capacity(files.len());
    for file in files {
        if let Some(problem) = path_problem(&file.path) {
            return Err(ServiceError::Invalid(format!(
                "file path {:?} {problem}",
                file.path
            )));
        }
        // `a` and `a/b` cannot both be files.
        for (i, _) in file.path.match_indices('/') {
            if files.iter().any(|f| f.path == file.path[..i]) {
                return Err(ServiceError::Invalid(format!(
                    "file path {:?} is inside {:?}, which is also sent as a file",
                    file.path,
                    &file.path[..i]
                )));
            }
        }
        if !seen.insert(file.path.as_str()) {
            return Err(ServiceError::Invalid(format!(
                "file path {:?} is sent twice",
                file.path
            )));
        }
        let engine = &base64::engine::general_purpose::STANDARD;
        let (size, content_base64) = match &file.content {
            FileContent::Text(text) => (text.len() as u64, engine.encode(text)),
            FileContent::Bytes(bytes) => (bytes.len() as u64, engine.encode(bytes)),
            FileContent::Base64(b64) => {
                let bytes = LENIENT.decode(b64).map_err(|e| {
                    ServiceError::Invalid(format!(
                        "file {:?}: `content_base64` is not valid base64 ({e})",
                        file.path
                    ))
                })?;
                // Re-encoded, so the harness only ever sees canonical base64.
                (bytes.len() as u64, engine.encode(bytes))
            }
        };
        if size > limits.max_file_bytes {
            return Err(ServiceError::TooLarge(format!(
                "file {:?} is {size} bytes; the maximum per file is {} bytes",
                file.path, limits.max_file_bytes
            )));
        }
        total += size;
        if total > limits.max_total_bytes {
            return Err(ServiceError::TooLarge(format!(
                "the files sent add up to more than {} bytes (at {:?})",
                limits.max_total_bytes, file.path
            )));
        }
        checked.push(InputFile {
            path: file.path.clone(),
            content_base64,
            append: false,
        });
    }
    Ok(checked)
}

/// The files a run returned that keep the rules: the code chose their names, so one
/// that breaks them is dropped (and said on stderr) rather than handed to a client that
/// would write it to disk.
pub fn check_outputs(files: Vec<OutputFile>, stderr: &mut String) -> Vec<OutputFile> {
    files
        .into_iter()
        .filter(|f| match path_problem(&f.path) {
            None => true,
            Some(problem) => {
                stderr.push_str(&format!(
                    "nsbox: an output file was not returned: its path {problem}\n"
                ));
                false
            }
        })
        .collect()
}

/// The files a run skipped whose names keep the rules (a bad name is dropped silently:
/// the file was not returned either way).
pub fn check_skipped(skipped: Vec<SkippedFile>) -> Vec<SkippedFile> {
    skipped
        .into_iter()
        .filter(|f| path_problem(&f.path).is_none())
        .collect()
}

/// A file of a session's working directory as a listing shows it (the REST API and MCP).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FileInfo {
    pub path: String,
    pub size: u64,
    pub mime_type: String,
}

impl FileInfo {
    pub fn new(path: String, size: u64) -> FileInfo {
        FileInfo {
            mime_type: mime_type(&path),
            path,
            size,
        }
    }
}

/// The number of bytes canonical (padded) base64 stands for.
pub fn decoded_len(b64: &str) -> u64 {
    let padding = b64.bytes().rev().take_while(|&b| b == b'=').count();
    (b64.len() / 4 * 3 - padding) as u64
}

/// The media type a file's name suggests, `application/octet-stream` when it says none.
pub fn mime_type(path: &str) -> String {
    mime_guess::from_path(path)
        .first_or_octet_stream()
        .essence_str()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(path: &str, content: &str) -> FileInput {
        FileInput {
            path: path.into(),
            content: FileContent::Text(content.into()),
        }
    }

    const LIMITS: FileLimits = FileLimits {
        max_count: 3,
        max_file_bytes: 10,
        max_total_bytes: 15,
    };

    #[test]
    fn paths_must_be_relative_and_normal() {
        for good in [
            "a.csv",
            "data/sales.csv",
            "out/x y/z.txt",
            "é/ü.txt",
            ".hidden",
        ] {
            assert_eq!(path_problem(good), None, "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/./b",
            "./a",
            "a//b",
            "a/",
            "a\0b",
            "a\nb",
        ] {
            assert!(path_problem(bad).is_some(), "{bad:?}");
        }
        assert!(path_problem(&"x".repeat(256)).is_some());
        assert!(path_problem(&format!("{}/y", "x".repeat(255))).is_none());
        assert!(path_problem(&"ab/".repeat(400)).is_some());
    }

    #[test]
    fn inputs_are_checked_and_carried_as_base64() {
        let files = check_inputs(
            &[
                text("a.txt", "hi"),
                FileInput {
                    path: "b.bin".into(),
                    content: FileContent::Base64("AAEC".into()),
                },
                FileInput {
                    path: "c.bin".into(),
                    content: FileContent::Base64("AB".into()),
                },
            ],
            &LIMITS,
        )
        .unwrap();
        assert_eq!(files[0].content_base64, "aGk=");
        assert_eq!(files[1].content_base64, "AAEC");
        assert_eq!(files[2].content_base64, "AA==", "lenient in, canonical out");
    }

    #[test]
    fn bad_inputs_name_the_file_and_the_rule() {
        let e = check_inputs(&[text("../x", "")], &LIMITS).unwrap_err();
        assert!(
            matches!(&e, ServiceError::Invalid(m) if m.contains("\"../x\"")),
            "{e}"
        );
        let e = check_inputs(&[text("a", ""), text("a", "")], &LIMITS).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = check_inputs(&[text("a", ""), text("a/b", "")], &LIMITS).unwrap_err();
        assert!(e.to_string().contains("also sent as a file"), "{e}");
        let bad64 = FileInput {
            path: "b".into(),
            content: FileContent::Base64("!!".into()),
        };
        let e = check_inputs(&[bad64], &LIMITS).unwrap_err();
        assert!(
            matches!(&e, ServiceError::Invalid(m) if m.contains("base64")),
            "{e}"
        );
    }

    #[test]
    fn caps_give_too_large_naming_the_file() {
        let e = check_inputs(&[text("big.txt", &"x".repeat(11))], &LIMITS).unwrap_err();
        assert!(
            matches!(&e, ServiceError::TooLarge(m) if m.contains("big.txt")),
            "{e}"
        );
        let e = check_inputs(
            &[text("a", &"x".repeat(8)), text("b", &"x".repeat(8))],
            &LIMITS,
        )
        .unwrap_err();
        assert!(
            matches!(&e, ServiceError::TooLarge(m) if m.contains("\"b\"")),
            "{e}"
        );
        let many: Vec<_> = (0..4).map(|i| text(&format!("f{i}"), "")).collect();
        assert!(matches!(
            check_inputs(&many, &LIMITS),
            Err(ServiceError::TooLarge(_))
        ));
    }

    #[test]
    fn outputs_with_bad_names_are_dropped_and_said() {
        let out = |path: &str| OutputFile {
            path: path.into(),
            size: 0,
            content_base64: Some(String::new()),
            truncated: false,
        };
        let mut stderr = String::new();
        let kept = check_outputs(vec![out("ok.csv"), out("bad\u{1b}[2J")], &mut stderr);
        assert_eq!(kept.len(), 1);
        assert!(stderr.starts_with("nsbox: an output file was not returned"));
    }

    #[test]
    fn the_body_limit_fits_the_files_in_base64_and_the_code() {
        let limits = FileLimits {
            max_count: 32,
            max_file_bytes: 16 << 20,
            max_total_bytes: 32 << 20,
        };
        assert_eq!(limits.body_bytes(), 45 << 20);
        let none = FileLimits {
            max_total_bytes: 0,
            ..limits
        };
        assert_eq!(
            none.body_bytes(),
            2 << 20,
            "the spec's 50,000 characters still fit"
        );
    }

    #[test]
    fn decoded_lengths_follow_the_padding() {
        let engine = &base64::engine::general_purpose::STANDARD;
        for n in 0..10 {
            assert_eq!(decoded_len(&engine.encode(vec![7u8; n])), n as u64);
        }
    }

    #[test]
    fn mime_types_come_from_the_name() {
        assert_eq!(mime_type("out/summary.csv"), "text/csv");
        assert_eq!(mime_type("plot.png"), "image/png");
        assert_eq!(mime_type("blob"), "application/octet-stream");
    }
}
