//! Pre-execution security scanner: parses submitted Python and reports policy violations.
//!
//! This is the policy layer, not the wall. It refuses the obvious early and names it the way
//! the hosted API does (`["Operating system interface", "os.system line execution"]`), while
//! letting LLM-written pandas/numpy/matplotlib code through. Isolation never depends on it.
//!
//! How it works: the code is parsed with rustpython-parser (a syntax error yields no
//! violations: the code then runs and Python reports the error). A first pass collects every
//! binding (imports, assignments, loop variables...) and resolves each name to the qualified
//! names and constant strings it may hold, so aliases (`import os as o`), rebinding
//! (`f = eval`) and computed names (`getattr(os, "sys" + "tem")`) are seen through. A second
//! pass matches every node against the policy in `policy/scanner.toml`. Whatever cannot be
//! resolved at a place where it matters (`getattr(x, name)`) is reported as dynamic access
//! rather than passed.
//!
//! Cost: parsing dominates (rustpython-parser needs ~6.5 ms for 50 kB on our 2-core hosts;
//! the analysis adds under 1 ms). Code that contains none of the words the policy watches
//! for cannot violate it and skips the parse (~0.2 ms for 50 kB); see `prefilter`. Code that
//! does is first cut into top-level statements by a byte scan (`chunks`), and only those a
//! rule can reach are parsed (`partial`): about 1 ms for 50 kB with a few watched words.
//! Whatever that finds is confirmed by the whole parse, so refused code costs what it did.
//!
//! Known limits, by design of a policy layer: analysis is flow-insensitive and merges scopes
//! (a dangerous builtin's name counts even where an import rebinds it); strings executed by
//! libraries are only judged where a rule names the library call; a restricted module reached
//! as an attribute of an allowed one (`matplotlib.os`) counts once a refused function of it
//! is named; trees nested deeper than the policy's `max_depth` are refused, not analysed.

mod check;
mod chunks;
mod fold;
mod partial;
mod policy;
mod prefilter;
mod resolve;
mod walk;

#[cfg(test)]
mod tests;

use rustpython_parser::{ast, Parse};
use serde::Serialize;

pub use policy::Policy;

/// One rule that fired, at the line (1-based) of the construct that made it fire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub rule_id: String,
    pub name: String,
    pub category: String,
    pub line: usize,
}

/// Everything the scanner learns from one parse.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Analysis {
    pub violations: Vec<Violation>,
    /// Top-level modules imported by statements anywhere, first-seen order.
    pub imported_modules: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScannerError {
    #[error("reading scanner policy {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing scanner policy TOML")]
    Parse(#[source] toml::de::Error),
    #[error("validating scanner policy rule `{rule}`: {reason}")]
    Invalid { rule: String, reason: String },
}

/// Scans `code`; violations come in source order, each rule at most once per line.
pub fn scan(code: &str, policy: &Policy) -> Vec<Violation> {
    run(code, policy, Mode::Violations).violations
}

/// Top-level module names imported anywhere in `code` (empty on a syntax error). The runtime
/// uses it to pick a warm interpreter template.
pub fn imported_modules(code: &str) -> Vec<String> {
    run(code, policy::builtin_ref(), Mode::Imports).imported_modules
}

/// Violations and imported modules from a single parse, for callers that want both.
pub fn analyze(code: &str, policy: &Policy) -> Analysis {
    run(code, policy, Mode::Both)
}

/// [`analyze`] without the partial parse: every statement is parsed once a watched word or
/// an import appears anywhere. Only for benchmarks that compare the two.
#[doc(hidden)]
pub fn analyze_parsing_everything(code: &str, policy: &Policy) -> Analysis {
    run(code, policy, Mode::BothWhole)
}

/// The names the API returns: deduplicated, in first-seen order.
pub fn violation_names(v: &[Violation]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for x in v {
        if !names.contains(&x.name) {
            names.push(x.name.clone());
        }
    }
    names
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Violations,
    Imports,
    Both,
    /// Both, parsing the whole source whenever a rule may apply (the reference for benches).
    BothWhole,
    /// Violations, always parsing: lets the tests prove the prefilter changes nothing.
    #[cfg(test)]
    NoPrefilter,
}

fn run(code: &str, policy: &Policy, mode: Mode) -> Analysis {
    let want_violations = mode != Mode::Imports;
    let mut findings = Vec::new();
    if want_violations {
        if let Some((rule, (start, end))) = prefilter::bad_encoding(code, policy) {
            findings.push(check::Finding { rule, start, end });
        }
    }
    let may_violate = want_violations && {
        #[cfg(test)]
        let forced = mode == Mode::NoPrefilter;
        #[cfg(not(test))]
        let forced = false;
        forced || prefilter::has_trigger(code, &policy.triggers)
    };
    let may_import = mode != Mode::Violations && code.contains("import");
    if !may_violate && !may_import {
        return finish(code, policy, findings, Vec::new());
    }
    // imported_modules() alone keeps the whole parse: its answer for code with a syntax
    // error (nothing) is part of its contract.
    #[cfg(test)]
    let partial_allowed = !matches!(mode, Mode::Imports | Mode::BothWhole | Mode::NoPrefilter);
    #[cfg(not(test))]
    let partial_allowed = !matches!(mode, Mode::Imports | Mode::BothWhole);
    if partial_allowed {
        if let Some(imported) = partial::scan(code, policy, may_violate) {
            let imported = if mode == Mode::Violations {
                Vec::new()
            } else {
                imported
            };
            return finish(code, policy, findings, imported);
        }
    }

    let Ok(body) = ast::Suite::parse(code, "<string>") else {
        // Python will report the syntax error itself; the declaration check still stands.
        return finish(code, policy, findings, Vec::new());
    };

    let mut env = resolve::Env::new(policy);
    let deep = {
        let mut collector = resolve::Collector { env: &mut env };
        let mut walker = walk::Walker::new(&mut collector, policy.max_depth);
        walker.stmts(&body);
        walker.exceeded
    };
    if may_violate {
        env.solve();
        let mut checker = check::Checker {
            policy,
            env: &env,
            findings: Vec::new(),
        };
        let mut walker = walk::Walker::new(&mut checker, policy.max_depth);
        walker.stmts(&body);
        findings.extend(checker.findings);
    }
    let imported = if mode == Mode::Violations {
        Vec::new()
    } else {
        std::mem::take(&mut env.imported)
    };
    drop(env);
    if deep {
        walk::dismantle(body);
    } else {
        drop(body);
    }
    finish(code, policy, findings, imported)
}

fn finish(
    code: &str,
    policy: &Policy,
    findings: Vec<check::Finding>,
    imported_modules: Vec<String>,
) -> Analysis {
    if findings.is_empty() {
        return Analysis {
            violations: Vec::new(),
            imported_modules,
        };
    }
    let lines = LineIndex::new(code);
    // Within a line, a construct's end orders it: in `__import__('os').system(...)` the import
    // closes before the attribute that uses it, though both start at the same column.
    let mut keyed: Vec<(usize, u32, usize, usize)> = findings
        .iter()
        .enumerate()
        .map(|(seq, f)| (lines.line_of(f.start as usize), f.end, seq, f.rule))
        .collect();
    keyed.sort_unstable();
    let mut seen = std::collections::HashSet::new();
    let violations = keyed
        .into_iter()
        .filter(|&(line, _, _, rule)| seen.insert((rule, line)))
        .map(|(line, _, _, rule)| {
            let meta = &policy.rules[rule];
            Violation {
                rule_id: meta.id.clone(),
                name: meta.name.clone(),
                category: meta.category.to_owned(),
                line,
            }
        })
        .collect();
    Analysis {
        violations,
        imported_modules,
    }
}

/// Byte offset to line number, counting line ends the way Python does (`\n`, `\r\n`, `\r`).
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(code: &str) -> Self {
        let bytes = code.as_bytes();
        let mut starts = vec![0];
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\n' => starts.push(i + 1),
                b'\r' if bytes.get(i + 1) != Some(&b'\n') => starts.push(i + 1),
                _ => {}
            }
            i += 1;
        }
        LineIndex { starts }
    }

    fn line_of(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset)
    }
}
