//! Seccomp for a run: compiles the JSON deny-list in `seccomp/*.json` (seccompiler 0.5 format)
//! into one classic-BPF program, behind a hand-written prefix that no JSON rule can express.
//!
//! The policy is a deny-list with default allow: the scientific stack uses a wide and
//! version-dependent set of syscalls, and the namespaces, the `nobody` uid and the empty
//! capability sets are the primary walls. The filter removes kernel attack surface those
//! walls leave reachable and closes the known seccomp pitfalls (see the design brief's
//! "Security lessons"):
//!
//! * The prefix kills the process unless `seccomp_data.arch` is x86_64 (this rejects i386
//!   `int 0x80`, whose numbers mean other syscalls), kills it for x32 syscall numbers (bit
//!   30; x32 reports the x86_64 arch, so without this check `0x40000000 | nr` would reach the
//!   same kernel code as a denied `nr` without matching its rule), and answers ENOSYS for
//!   numbers above [`LAST_REVIEWED_SYSCALL`]: syscalls newer than the review of this policy
//!   are denied rather than allowed by default, and ENOSYS is what libc expects from an
//!   older kernel, so it falls back.
//! * seccompiler gives a whole filter one match action, so a policy may hold several filters
//!   (one per errno: `run` answers EPERM, `run_enosys` answers ENOSYS for `clone3`). Every
//!   filter must have `mismatch_action: "allow"` and a syscall may appear in one filter only,
//!   so a syscall's answer is its own filter's: the program is one set of per-syscall blocks
//!   (seccompiler's code for each syscall's rules, unchanged) reached by a binary search on
//!   the syscall number. seccompiler tests the numbers one after another, and the kernel
//!   walks that test for every syscall number when the filter is installed (its cache of
//!   always-allowed syscalls, built with interrupts off), once per run: the search makes
//!   that walk at most 29 steps instead of about 150 (`seccomp/tests.rs` counts them).

#![deny(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};

use seccompiler::{sock_filter, BpfProgram, TargetArch};

/// The built-in policy's text (seccompiler JSON).
pub const DEFAULT_POLICY: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../seccomp/default.json"
));

/// Highest x86_64 syscall number this policy was reviewed against: `mseal`, Linux 6.12, the
/// newest syscall seccompiler 0.5's table knows. Raise it only after deciding, for every
/// syscall in between, whether the policy must deny it (e.g. `open_tree_attr`, 467, is a
/// mount call).
pub const LAST_REVIEWED_SYSCALL: u32 = 462;

/// The kernel's `BPF_MAXINSNS`; [`compile`] keeps programs strictly below it.
pub const MAX_INSTRUCTIONS: usize = 4096;

// Classic BPF opcodes (linux/bpf_common.h). Own u16 constants because `sock_filter.code` is
// u16 while libc exports them as u32.
const BPF_LD: u16 = 0x00;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_JMP: u16 = 0x05;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_JGT: u16 = 0x20;
const BPF_JGE: u16 = 0x30;
const BPF_JSET: u16 = 0x40;
const BPF_K: u16 = 0x00;
const BPF_RET: u16 = 0x06;

// Offsets into `struct seccomp_data` (linux/seccomp.h).
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;

/// EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE (linux/audit.h); libc does not export it.
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// `__X32_SYSCALL_BIT`.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const RET_KILL_PROCESS: u32 = libc::SECCOMP_RET_KILL_PROCESS;
const RET_ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | (libc::ENOSYS as u32 & libc::SECCOMP_RET_DATA);

/// Number of hand-written instructions in front of the compiled policy.
pub const PREFIX_LEN: usize = 8;

/// A compiled filter, ready to install. Compile it before forking the run's processes so the
/// child only installs it: [`SeccompProgram::apply`] does not allocate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeccompProgram(BpfProgram);

/// Each variant names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp policy: only x86_64 is supported, this build is for {0}")]
    UnsupportedArch(&'static str),
    #[error("seccomp policy: parsing the JSON: {0}")]
    Parse(#[source] serde_json::Error),
    #[error("seccomp policy: checking the rules: {0}")]
    Check(String),
    #[error("seccomp policy: compiling with seccompiler: {0}")]
    Compile(#[source] seccompiler::Error),
    #[error("seccomp policy: reading seccompiler's program for filter `{filter}`: {what}")]
    Layout { filter: String, what: String },
    #[error(
        "seccomp policy: the program has {0} instructions, it must stay below {MAX_INSTRUCTIONS}"
    )]
    TooLong(usize),
    #[error("seccomp: installing the filter: {0}")]
    Install(#[source] seccompiler::Error),
}

/// Compiles `policy_json` (seccompiler 0.5 JSON, one or more filters) for x86_64.
pub fn compile(policy_json: &str) -> Result<SeccompProgram, SeccompError> {
    if !cfg!(target_arch = "x86_64") {
        // The prefix and the policy's syscall names are x86_64's; aarch64 would need its own
        // policy file (it lacks e.g. `iopl`, `uselib`, `modify_ldt`).
        return Err(SeccompError::UnsupportedArch(std::env::consts::ARCH));
    }
    let order = check_policy(policy_json)?;
    let filters = seccompiler::compile_from_json(policy_json.as_bytes(), TargetArch::x86_64)
        .map_err(SeccompError::Compile)?;

    // Each syscall's block, whichever filter it comes from (check_policy: one filter each).
    let mut blocks: BTreeMap<u32, &[sock_filter]> = BTreeMap::new();
    for name in &order {
        let program = filters.get(name).ok_or_else(|| {
            SeccompError::Check(format!(
                "seccompiler produced no program for filter `{name}`"
            ))
        })?;
        for (nr, block) in syscall_blocks(program).map_err(|what| SeccompError::Layout {
            filter: name.clone(),
            what,
        })? {
            if blocks.insert(nr, block).is_some() {
                return Err(SeccompError::Check(format!(
                    "syscall number {nr} has rules in two filters; keep each syscall in one filter"
                )));
            }
        }
    }
    let program = dispatch(&blocks);
    if program.len() >= MAX_INSTRUCTIONS {
        return Err(SeccompError::TooLong(program.len()));
    }
    Ok(SeccompProgram(program))
}

/// The policy shipped with nsbox (`seccomp/default.json`).
pub fn builtin() -> Result<SeccompProgram, SeccompError> {
    compile(DEFAULT_POLICY)
}

impl SeccompProgram {
    /// Installs the filter on the calling thread only (and sets no_new_privs). For the run's
    /// single-threaded child just before `execve`.
    pub fn apply(&self) -> Result<(), SeccompError> {
        seccompiler::apply_filter(&self.0).map_err(SeccompError::Install)
    }

    /// Installs the filter on every thread of the process (`SECCOMP_FILTER_FLAG_TSYNC`), for a
    /// process that may already have threads; fails if any thread cannot be synchronised.
    pub fn apply_all_threads(&self) -> Result<(), SeccompError> {
        seccompiler::apply_filter_all_threads(&self.0).map_err(SeccompError::Install)
    }

    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for a program from [`compile`]; here because clippy pairs it with `len`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The instructions, for callers that install the filter themselves.
    pub fn instructions(&self) -> &[sock_filter] {
        &self.0
    }
}

/// Whether every thread of this process reports `Seccomp: 2` (filter mode) in
/// `/proc/self/task/*/status`: the check that TSYNC really reached all threads.
pub fn all_threads_filtered() -> std::io::Result<bool> {
    for entry in std::fs::read_dir("/proc/self/task")? {
        let status = match std::fs::read_to_string(entry?.path().join("status")) {
            Ok(status) => status,
            // The thread exited after the directory was listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mode = status
            .lines()
            .find_map(|line| line.strip_prefix("Seccomp:"))
            .map(str::trim);
        if mode != Some("2") {
            return Ok(false);
        }
    }
    Ok(true)
}

const fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Falls through to its last instruction's successor for reviewed x86_64 syscalls, so the
/// compiled policy appended after it runs unchanged (its jumps are relative).
fn prefix() -> BpfProgram {
    let prefix = vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_ARCH),
        jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET | BPF_K, RET_KILL_PROCESS),
        stmt(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_NR),
        // Every x32 number is above the limit, so one comparison keeps the common path short.
        jump(BPF_JMP | BPF_JGT | BPF_K, LAST_REVIEWED_SYSCALL, 0, 3),
        jump(BPF_JMP | BPF_JSET | BPF_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET | BPF_K, RET_KILL_PROCESS),
        stmt(BPF_RET | BPF_K, RET_ENOSYS),
    ];
    debug_assert_eq!(prefix.len(), PREFIX_LEN);
    prefix
}

/// The syscall blocks of seccompiler's program for one filter (seccompiler 0.5's layout,
/// checked here: a version that changed it fails to compile the policy rather than
/// compiling it wrong). The program is the arch check, the load of the syscall number, one
/// block per syscall in number order, then `ret allow`. A block is `jeq nr, 0, 1`, its rules
/// (each `ja 1; ja <next rule>;` then its comparisons and `ret <match>`; a syscall without
/// rules has one empty one), then `ret allow`. With its own number loaded a block ends in one
/// of its own `ret`s; with another, the `jeq` skips to the first rule's `ja <next rule>`, and
/// those hops lead just past the block. No jump of a block goes further.
fn syscall_blocks(program: &[sock_filter]) -> Result<Vec<(u32, &[sock_filter])>, String> {
    let arch_check = [
        stmt(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_ARCH),
        jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET | BPF_K, RET_KILL_PROCESS),
    ];
    let allow = stmt(BPF_RET | BPF_K, RET_ALLOW);
    if !program.starts_with(&arch_check) || program.last() != Some(&allow) {
        return Err("it does not start with the arch check and end with `ret allow`".into());
    }
    if program.len() == arch_check.len() + 1 {
        // A filter without rules.
        return Ok(Vec::new());
    }
    if program[arch_check.len()] != stmt(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_NR) {
        return Err("the syscall number is not loaded after the arch check".into());
    }
    let is_ja = |insn: &sock_filter| insn.code == BPF_JMP | BPF_JA;
    let last = program.len() - 1;
    let mut blocks = Vec::new();
    let mut pc = arch_check.len() + 1;
    while pc < last {
        let at = |what: &str| format!("the block at instruction {pc}: {what}");
        let jeq = &program[pc];
        if jeq.code != BPF_JMP | BPF_JEQ | BPF_K || (jeq.jt, jeq.jf) != (0, 1) {
            return Err(at("it does not start with `jeq nr, 0, 1`"));
        }
        // The way a number that is not this block's goes: hop over each rule.
        let mut end = pc + 2;
        while end < last && is_ja(&program[end]) {
            end += 1 + program[end].k as usize;
        }
        if end == pc + 2 || end > last || program[end - 1] != allow {
            return Err(at("its rules do not lead past a final `ret allow`"));
        }
        for (i, insn) in program.iter().enumerate().take(end).skip(pc) {
            let target = match insn.code {
                c if c == BPF_JMP | BPF_JA => i + 1 + insn.k as usize,
                c if c & 0x07 == BPF_JMP => i + 1 + usize::from(insn.jt.max(insn.jf)),
                _ => continue,
            };
            if target > end {
                return Err(at("a jump leaves it"));
            }
        }
        blocks.push((jeq.k, &program[pc..end]));
        pc = end;
    }
    Ok(blocks)
}

/// How many blocks a leaf of the search holds, one after another. One block per leaf costs
/// three instructions of search per syscall with rules (a bigger program for the kernel to
/// check and compile at every install); four cost under one, for a few more steps.
const BLOCKS_PER_LEAF: usize = 4;

/// The whole program: the prefix, then a binary search on the syscall number whose leaves
/// are the blocks themselves, in number order, each leaf followed by `ret allow` (where a
/// number that is none of the leaf's goes, hopping past each block in turn).
fn dispatch(blocks: &BTreeMap<u32, &[sock_filter]>) -> BpfProgram {
    let mut program = prefix();
    let blocks: Vec<(u32, &[sock_filter])> = blocks.iter().map(|(nr, b)| (*nr, *b)).collect();
    if blocks.is_empty() {
        program.push(stmt(BPF_RET | BPF_K, RET_ALLOW));
    } else {
        search(&blocks, &mut program);
    }
    program
}

/// Emits the search over `blocks` (sorted by number, not empty) with the number loaded: a
/// node is `jge <middle>, 0, 1; ja <right half>` followed by its left half (`ja` carries
/// the long jump: `jt` and `jf` reach 255 instructions); a leaf is its blocks, then `ret
/// allow`. Every jump is forward, as classic BPF requires.
fn search(blocks: &[(u32, &[sock_filter])], program: &mut BpfProgram) {
    if blocks.len() <= BLOCKS_PER_LEAF {
        for (_, block) in blocks {
            program.extend_from_slice(block);
        }
        program.push(stmt(BPF_RET | BPF_K, RET_ALLOW));
        return;
    }
    let (left, right) = blocks.split_at(blocks.len() / 2);
    program.push(jump(BPF_JMP | BPF_JGE | BPF_K, right[0].0, 0, 1));
    let to_right = program.len();
    program.push(stmt(BPF_JMP | BPF_JA, 0));
    search(left, program);
    program[to_right].k = (program.len() - to_right - 1) as u32;
    search(right, program);
}

/// Checks what seccompiler accepts but this compiler cannot merge safely, and returns the
/// filter names in name order.
fn check_policy(policy_json: &str) -> Result<Vec<String>, SeccompError> {
    let policy: serde_json::Value =
        serde_json::from_str(policy_json).map_err(SeccompError::Parse)?;
    let filters = policy.as_object().ok_or_else(|| {
        SeccompError::Check("the top level must be an object of named filters".into())
    })?;
    if filters.is_empty() {
        return Err(SeccompError::Check("the policy has no filter".into()));
    }
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    let names: BTreeSet<&String> = filters.keys().collect();
    for name in &names {
        let filter = &filters[name.as_str()];
        // seccompiler also accepts the alias `default_action`.
        let mismatch = filter
            .get("mismatch_action")
            .or_else(|| filter.get("default_action"));
        if mismatch.and_then(|m| m.as_str()) != Some("allow") {
            return Err(SeccompError::Check(format!(
                "filter `{name}`: mismatch_action must be \"allow\": filters are merged into one deny-list"
            )));
        }
        // (unconditional rule seen, conditional rule seen) per syscall.
        let mut kinds: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
        for rule in filter
            .get("filter")
            .and_then(|f| f.as_array())
            .into_iter()
            .flatten()
        {
            // Malformed rules are left for seccompiler to report.
            let Some(syscall) = rule.get("syscall").and_then(|s| s.as_str()) else {
                continue;
            };
            let kind = kinds.entry(syscall).or_default();
            if rule.get("args").is_some_and(|a| !a.is_null()) {
                kind.1 = true;
            } else {
                kind.0 = true;
            }
        }
        for (syscall, kind) in kinds {
            if kind == (true, true) {
                // seccompiler would keep only the conditional rules, silently narrowing the deny.
                return Err(SeccompError::Check(format!(
                    "filter `{name}`: `{syscall}` has both a rule without args and rules with args; drop the conditional rules to deny it always"
                )));
            }
            if let Some(other) = owner.insert(syscall, name) {
                // One filter's rules would have to win, which nobody reading the other sees.
                return Err(SeccompError::Check(format!(
                    "`{syscall}` appears in filters `{other}` and `{name}`; keep each syscall in one filter"
                )));
            }
        }
    }
    Ok(names.into_iter().cloned().collect())
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests;
