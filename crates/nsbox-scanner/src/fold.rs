//! Python string operations re-implemented on constants, for folding computed names.
//!
//! Only what obfuscated attribute and module names are built with: slicing, %-formatting,
//! str.format, base64 and rot13; and what paths are built with: os.path.join and pathlib's
//! `/`. Anything unusual returns None, and the caller then treats the
//! value as unknown, which the sinks report as dynamic: folding can only make the scanner more
//! precise, never blinder.

/// Most distinct values one expression may fold to before it counts as unknown.
pub(crate) const MAX_STRS: usize = 16;
/// Longest folded string kept; names longer than this are not identifiers anyone writes.
pub(crate) const MAX_STR_LEN: usize = 256;

/// Possible string values of an expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StrSet {
    Unknown,
    Known(Vec<String>),
}

impl StrSet {
    pub(crate) fn one(s: String) -> StrSet {
        if s.len() > MAX_STR_LEN {
            StrSet::Unknown
        } else {
            StrSet::Known(vec![s])
        }
    }

    pub(crate) fn empty() -> StrSet {
        StrSet::Known(Vec::new())
    }

    /// Adds the other set's values, keeping the caps.
    pub(crate) fn union(&mut self, other: StrSet) {
        match (&mut *self, other) {
            (StrSet::Unknown, _) => {}
            (_, StrSet::Unknown) => *self = StrSet::Unknown,
            (StrSet::Known(a), StrSet::Known(b)) => {
                for s in b {
                    if !a.contains(&s) {
                        a.push(s);
                    }
                }
                if a.len() > MAX_STRS {
                    *self = StrSet::Unknown;
                }
            }
        }
    }

    pub(crate) fn map(self, f: impl Fn(&str) -> Option<String>) -> StrSet {
        match self {
            StrSet::Unknown => StrSet::Unknown,
            StrSet::Known(v) => {
                let mut out = StrSet::empty();
                for s in v {
                    match f(&s) {
                        Some(r) => out.union(StrSet::one(r)),
                        None => return StrSet::Unknown,
                    }
                }
                out
            }
        }
    }

    /// The single value, when there is exactly one.
    pub(crate) fn single(&self) -> Option<&str> {
        match self {
            StrSet::Known(v) if v.len() == 1 => Some(&v[0]),
            _ => None,
        }
    }
}

/// Every concatenation of one choice per part (the cartesian product), capped.
pub(crate) fn product(parts: Vec<StrSet>) -> StrSet {
    let mut acc = vec![String::new()];
    for part in parts {
        let StrSet::Known(choices) = part else {
            return StrSet::Unknown;
        };
        if choices.is_empty() {
            return StrSet::empty();
        }
        if acc.len() * choices.len() > MAX_STRS {
            return StrSet::Unknown;
        }
        let mut next = Vec::with_capacity(acc.len() * choices.len());
        for a in &acc {
            for c in &choices {
                let mut s = String::with_capacity(a.len() + c.len());
                s.push_str(a);
                s.push_str(c);
                if s.len() > MAX_STR_LEN {
                    return StrSet::Unknown;
                }
                next.push(s);
            }
        }
        acc = next;
    }
    let mut out = StrSet::empty();
    for s in acc {
        out.union(StrSet::one(s));
    }
    out
}

/// `os.path.join(*parts)` (and pathlib's `/`, which joins the same way) over every choice
/// of each part: an absolute part starts the path again.
pub(crate) fn join_paths(parts: Vec<StrSet>) -> StrSet {
    let mut acc = StrSet::one(String::new());
    for part in parts {
        let (StrSet::Known(heads), StrSet::Known(tails)) = (&acc, &part) else {
            return StrSet::Unknown;
        };
        if heads.len() * tails.len() > MAX_STRS {
            return StrSet::Unknown;
        }
        let mut next = StrSet::empty();
        for head in heads {
            for tail in tails {
                let joined = if tail.starts_with('/') || head.is_empty() {
                    tail.clone()
                } else if head.ends_with('/') {
                    format!("{head}{tail}")
                } else {
                    format!("{head}/{tail}")
                };
                next.union(StrSet::one(joined));
            }
        }
        acc = next;
    }
    acc
}

/// Python's `s[lower:upper:step]` on characters.
pub(crate) fn slice(
    s: &str,
    lower: Option<i64>,
    upper: Option<i64>,
    step: Option<i64>,
) -> Option<String> {
    let chars: Vec<char> = s.chars().collect();
    let len = chars.len() as i64;
    let step = step.unwrap_or(1);
    if step == 0 {
        return None;
    }
    let clamp = |v: i64, lo: i64, hi: i64| v.max(lo).min(hi);
    let norm = |v: i64| if v < 0 { v + len } else { v };
    let mut out = String::new();
    if step > 0 {
        let start = lower.map_or(0, |v| clamp(norm(v), 0, len));
        let stop = upper.map_or(len, |v| clamp(norm(v), 0, len));
        let mut i = start;
        while i < stop {
            out.push(chars[i as usize]);
            i += step;
        }
    } else {
        let start = lower.map_or(len - 1, |v| clamp(norm(v), -1, len - 1));
        let stop = upper.map_or(-1, |v| clamp(norm(v), -1, len - 1));
        let mut i = start;
        while i > stop {
            out.push(chars[i as usize]);
            i += step;
        }
    }
    Some(out)
}

/// Python's `s[i]`.
pub(crate) fn index(s: &str, i: i64) -> Option<String> {
    let chars: Vec<char> = s.chars().collect();
    let len = chars.len() as i64;
    let i = if i < 0 { i + len } else { i };
    (0..len).contains(&i).then(|| chars[i as usize].to_string())
}

/// A value usable as a formatting argument.
#[derive(Debug, Clone)]
pub(crate) enum FmtArg {
    Str(String),
    Int(i64),
}

impl FmtArg {
    fn as_str(&self) -> String {
        match self {
            FmtArg::Str(s) => s.clone(),
            FmtArg::Int(i) => i.to_string(),
        }
    }
}

/// `fmt % args` for the conversions names are built with: %s, %d, %i, %c and %%.
pub(crate) fn percent(fmt: &str, args: &[FmtArg]) -> Option<String> {
    let mut out = String::new();
    let mut it = fmt.chars();
    let mut next_arg = args.iter();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next()? {
            '%' => out.push('%'),
            's' => out.push_str(&next_arg.next()?.as_str()),
            'd' | 'i' => match next_arg.next()? {
                FmtArg::Int(i) => out.push_str(&i.to_string()),
                FmtArg::Str(_) => return None,
            },
            'c' => match next_arg.next()? {
                FmtArg::Int(i) => out.push(char::from_u32(u32::try_from(*i).ok()?)?),
                FmtArg::Str(s) if s.chars().count() == 1 => out.push_str(s),
                FmtArg::Str(_) => return None,
            },
            _ => return None,
        }
    }
    // Python raises when arguments are left over; so do we, by giving up.
    next_arg.next().is_none().then_some(out)
}

/// `fmt.format(*args, **kwargs)` for plain `{}`, `{0}` and `{name}` fields.
pub(crate) fn format(fmt: &str, args: &[FmtArg], kwargs: &[(String, FmtArg)]) -> Option<String> {
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    let mut auto = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut field = String::new();
                loop {
                    match chars.next()? {
                        '}' => break,
                        c => field.push(c),
                    }
                }
                if field.contains([':', '!', '.', '[']) {
                    return None;
                }
                let value = if field.is_empty() {
                    auto += 1;
                    args.get(auto - 1)?
                } else if let Ok(i) = field.parse::<usize>() {
                    args.get(i)?
                } else {
                    &kwargs.iter().find(|(k, _)| *k == field)?.1
                };
                out.push_str(&value.as_str());
            }
            '}' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// Standard base64 (what `base64.b64decode` accepts without `validate`), as text.
pub(crate) fn b64decode(s: &str) -> Option<String> {
    let mut bits: u32 = 0;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    String::from_utf8(out).ok()
}

pub(crate) fn rot13(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' => (((c as u8 - b'a') + 13) % 26 + b'a') as char,
            'A'..='Z' => (((c as u8 - b'A') + 13) % 26 + b'A') as char,
            _ => c,
        })
        .collect()
}

pub(crate) fn fromhex(s: &str) -> Option<String> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slicing_follows_python() {
        assert_eq!(slice("metsys", None, None, Some(-1)).unwrap(), "system");
        assert_eq!(
            slice("xxsystemxx", Some(2), Some(-2), None).unwrap(),
            "system"
        );
        assert_eq!(slice("s_y_s", None, None, Some(2)).unwrap(), "sys");
        assert_eq!(slice("abc", Some(-10), Some(10), None).unwrap(), "abc");
        assert_eq!(slice("abcdef", Some(4), Some(1), Some(-1)).unwrap(), "edc");
        assert_eq!(index("eval", -1).unwrap(), "l");
        assert!(index("eval", 9).is_none());
    }

    #[test]
    fn formatting_follows_python() {
        let a = [FmtArg::Str("sys".into()), FmtArg::Str("tem".into())];
        assert_eq!(percent("%s%s", &a).unwrap(), "system");
        assert_eq!(
            percent("%c%c", &[FmtArg::Int(111), FmtArg::Int(115)]).unwrap(),
            "os"
        );
        assert!(percent("%s", &a).is_none());
        assert_eq!(format("{}{}", &a, &[]).unwrap(), "system");
        assert_eq!(format("{1}{0}", &a, &[]).unwrap(), "temsys");
        assert_eq!(
            format(
                "__{x}__",
                &[],
                &[("x".into(), FmtArg::Str("globals".into()))]
            )
            .unwrap(),
            "__globals__"
        );
        assert!(format("{0:>4}", &a, &[]).is_none());
    }

    #[test]
    fn decoders() {
        assert_eq!(b64decode("b3M=").unwrap(), "os");
        assert_eq!(rot13("flfgrz"), "system");
        assert_eq!(fromhex("6f73").unwrap(), "os");
    }

    #[test]
    fn product_caps() {
        let two = StrSet::Known(vec!["a".into(), "b".into()]);
        let p = product(vec![two.clone(), two.clone()]);
        assert_eq!(
            p,
            StrSet::Known(vec!["aa".into(), "ab".into(), "ba".into(), "bb".into()])
        );
        assert_eq!(product(vec![two.clone(); 5]), StrSet::Unknown);
    }
}
