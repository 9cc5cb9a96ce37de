//! Checks that need no parse: the source-encoding declaration, and the trigger-word filter
//! that lets code which cannot match any rule skip the parser.
//!
//! The filter is sound because every way the checker reaches a rule goes through an
//! identifier the policy names: the module in an import, the last component of a dotted
//! name, the attribute, the builtin, or a sink/namespace construct (getattr, `__dict__`,
//! globals, sys.modules, `__builtins__`) when the name is built from strings. Source that
//! contains none of those words anywhere, strings and comments included, can produce no
//! violation, so parsing it would only confirm that. A test runs the whole corpus with and
//! without the filter and requires identical results.

use unicode_normalization::UnicodeNormalization;

use super::policy::{normalise_encoding, Policy, Triggers};

/// True when `code` contains any word that could make a rule fire.
pub(crate) fn has_trigger(code: &str, triggers: &Triggers) -> bool {
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !(b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80) {
            i += 1;
            continue;
        }
        let start = i;
        let mut ascii = true;
        while i < bytes.len()
            && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] >= 0x80)
        {
            ascii &= bytes[i] < 0x80;
            i += 1;
        }
        // Runs are cut at ASCII punctuation only, so `i` is on a char boundary.
        let run = &code[start..i];
        if ascii {
            // `1if` style runs: the number is not part of the name.
            let word = run.trim_start_matches(|c: char| c.is_ascii_digit());
            if word.is_empty() {
                continue;
            }
            let after_dot = start > 0 && preceded_by_dot(bytes, start);
            if triggers.words.contains(word)
                || (!after_dot && triggers.bare_words.contains(word))
                || triggers
                    .prefixes
                    .iter()
                    .any(|p| word.starts_with(p.as_str()))
            {
                return true;
            }
        } else {
            // Python folds identifiers with NFKC, so `ｅｖａｌ` spells eval. Where the run's
            // boundaries fall after folding is the tokenizer's business; a substring test is
            // the conservative answer.
            let folded: String = run.nfkc().collect();
            if triggers
                .words
                .iter()
                .chain(&triggers.bare_words)
                .chain(&triggers.prefixes)
                .any(|w| folded.contains(w.as_str()))
            {
                return true;
            }
        }
    }
    false
}

/// `x.compile` is an attribute, never the builtin; spaces may sit between.
fn preceded_by_dot(bytes: &[u8], start: usize) -> bool {
    let mut j = start;
    while j > 0 && matches!(bytes[j - 1], b' ' | b'\t') {
        j -= 1;
    }
    j > 0 && bytes[j - 1] == b'.'
}

/// The first two lines' coding declaration, if it names an encoding the policy refuses:
/// returns the byte range of the offending line.
pub(crate) fn bad_encoding(code: &str, policy: &Policy) -> Option<(usize, (u32, u32))> {
    let (rule, allowed) = policy.encodings.as_ref()?;
    let mut start = 0usize;
    for _ in 0..2 {
        if start >= code.len() {
            break;
        }
        let rest = &code[start..];
        let len = rest.find(['\n', '\r']).unwrap_or(rest.len());
        let line = &rest[..len];
        if let Some(enc) = coding_cookie(line) {
            let enc = normalise_encoding(enc);
            // Python treats any "utf-8-<variant>" spelling as UTF-8.
            if !(allowed.contains(&enc) || enc.starts_with("utf-8-")) {
                return Some((*rule, (start as u32, (start + len) as u32)));
            }
        }
        // A line ends at \n, \r\n or a lone \r, as Python's tokenizer sees it.
        let ending = if rest[len..].starts_with("\r\n") {
            2
        } else {
            1
        };
        start += len + ending;
    }
    None
}

/// PEP 263: `^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)`.
fn coding_cookie(line: &str) -> Option<&str> {
    let rest = line.trim_start_matches([' ', '\t', '\x0c']);
    let comment = rest.strip_prefix('#')?;
    let mut search = comment;
    loop {
        let pos = search.find("coding")?;
        let after = &search[pos + "coding".len()..];
        if let Some(value) = after.strip_prefix([':', '=']) {
            let value = value.trim_start_matches([' ', '\t']);
            let end = value
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-' || c == '.'))
                .unwrap_or(value.len());
            if end > 0 {
                return Some(&value[..end]);
            }
            return None;
        }
        search = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_on_second_crlf_line() {
        let p = Policy::builtin();
        assert!(bad_encoding("#!/usr/bin/python\r\n# coding: utf-7\r\nx = 1\r\n", &p).is_some());
        assert!(bad_encoding("#!/usr/bin/python\r# coding: utf-7\r", &p).is_some());
        assert!(bad_encoding("x = 1\n\n# coding: utf-7\n", &p).is_none());
        assert!(bad_encoding("# coding: UTF_8\n", &p).is_none());
    }

    #[test]
    fn cookie_syntax() {
        assert_eq!(coding_cookie("# -*- coding: utf-7 -*-\n"), Some("utf-7"));
        assert_eq!(coding_cookie("#coding=latin_1"), Some("latin_1"));
        assert_eq!(
            coding_cookie("  # vim: set fileencoding=utf-8 :"),
            Some("utf-8")
        );
        assert_eq!(coding_cookie("x = 1  # coding: utf-7"), None);
        assert_eq!(coding_cookie("# no cookie here"), None);
    }

    #[test]
    fn triggers_respect_words_and_dots() {
        let p = Policy::builtin();
        assert!(!has_trigger(
            "import pandas as pd\nprint(pd.__version__)\n",
            &p.triggers
        ));
        assert!(!has_trigger("pattern = re.compile(r'x')\n", &p.triggers));
        assert!(has_trigger(
            "code = compile('1', 's', 'eval')\n",
            &p.triggers
        ));
        assert!(has_trigger("import os\n", &p.triggers));
        assert!(has_trigger("x = 'os'\n", &p.triggers));
        assert!(has_trigger("ｅｖａｌ('1')\n", &p.triggers));
        assert!(has_trigger("os.execvp('x', [])\n", &p.triggers));
        assert!(has_trigger("1if eval else 2\n", &p.triggers));
        assert!(!has_trigger("evaluation = 1; total = 2\n", &p.triggers));
    }
}
