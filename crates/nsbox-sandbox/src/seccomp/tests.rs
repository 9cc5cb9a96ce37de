//! Tests of the seccomp policy: its text, the BPF it compiles to, and what it denies and allows once installed (in a filtered thread or a re-executed test process).

use super::*;

use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use nix::errno::Errno;

const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const ENOSYS: u32 = RET_ENOSYS;
const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;

/// Issues a raw syscall, bypassing libc wrappers (which may refuse arguments or pick
/// another syscall, e.g. clone3 for fork).
#[allow(unsafe_code)]
fn raw(nr: i64, args: [u64; 6]) -> Result<i64, Errno> {
    let [a, b, c, d, e, f] = args;
    // SAFETY: test-only contract: every caller passes scalars, null, pointers to buffers
    // it owns and keeps alive across the call, or fds it owns; the probes are chosen so
    // the kernel writes nothing outside those buffers and creates nothing but fds, which
    // the callers close.
    let ret = unsafe { libc::syscall(nr, a, b, c, d, e, f) };
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// Issues an i386 syscall through `int 0x80` (no arguments).
#[allow(unsafe_code)]
fn int80(nr: u32) -> i64 {
    let ret: u32;
    // SAFETY: only used with i386 getpid, which takes no arguments and touches no memory;
    // the 64-bit kernel's int 0x80 path may clobber r8-r11, declared here; `int` from
    // ring 3 switches to the kernel stack, so the user stack is not touched.
    unsafe {
        std::arch::asm!(
            "int 0x80",
            inlateout("eax") nr => ret,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            options(nostack),
        );
    }
    i64::from(ret as i32)
}

fn policy_json() -> serde_json::Value {
    serde_json::from_str(DEFAULT_POLICY).expect("default.json is JSON")
}

fn rules(policy: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for (name, filter) in policy.as_object().unwrap() {
        for rule in filter["filter"].as_array().unwrap() {
            out.push((name.clone(), rule.clone()));
        }
    }
    out
}

// --- the policy file ---

#[test]
fn builtin_policy_compiles_within_the_kernel_limit() {
    let program = builtin().expect("builtin policy compiles");
    assert!(
        program.len() < MAX_INSTRUCTIONS,
        "{} instructions",
        program.len()
    );
    assert_eq!(program.instructions()[..PREFIX_LEN], prefix()[..]);
    eprintln!("builtin program: {} instructions", program.len());
}

#[test]
fn every_rule_has_a_comment() {
    let policy = policy_json();
    let rules = rules(&policy);
    assert!(rules.len() > 50, "only {} rules", rules.len());
    for (filter, rule) in rules {
        let comment = rule.get("comment").and_then(|c| c.as_str()).unwrap_or("");
        assert!(
            comment.trim().len() > 10,
            "filter `{filter}`: rule {rule} has no comment saying why"
        );
    }
}

/// Guards against a rule being dropped by accident: the syscalls the design requires
/// the policy to deny outright.
#[test]
fn policy_denies_the_required_syscalls() {
    let policy = policy_json();
    let unconditional: BTreeSet<String> = rules(&policy)
        .into_iter()
        .filter(|(_, rule)| rule.get("args").is_none())
        .map(|(_, rule)| rule["syscall"].as_str().unwrap().to_owned())
        .collect();
    let required = "mount umount2 pivot_root chroot move_mount open_tree fsopen fsconfig \
        fsmount fspick mount_setattr ptrace process_vm_readv process_vm_writev \
        process_madvise pidfd_getfd kcmp bpf perf_event_open keyctl add_key request_key \
        userfaultfd io_uring_setup io_uring_enter io_uring_register kexec_load \
        kexec_file_load reboot init_module finit_module delete_module swapon swapoff \
        unshare setns acct quotactl quotactl_fd syslog settimeofday clock_settime \
        clock_adjtime adjtimex sethostname setdomainname iopl ioperm open_by_handle_at \
        name_to_handle_at lookup_dcookie nfsservctl uselib vhangup fanotify_init clone3";
    for syscall in required.split_whitespace() {
        assert!(
            unconditional.contains(syscall),
            "{syscall} is not denied outright"
        );
    }
}

#[test]
fn every_filter_is_a_deny_list_with_errno() {
    for (name, filter) in policy_json().as_object().unwrap() {
        assert_eq!(filter["mismatch_action"], "allow", "filter `{name}`");
        assert!(
            filter["match_action"]["errno"].is_u64(),
            "filter `{name}` must answer an errno"
        );
    }
}

// --- the compiler's checks ---

fn one_filter(rules: &str) -> String {
    format!(
        r#"{{"run": {{"mismatch_action": "allow", "match_action": {{"errno": 1}}, "filter": [{rules}]}}}}"#
    )
}

#[test]
fn compile_names_the_failing_step() {
    assert!(matches!(compile("{"), Err(SeccompError::Parse(_))));
    assert!(matches!(compile("[]"), Err(SeccompError::Check(_))));
    assert!(matches!(compile("{}"), Err(SeccompError::Check(_))));
    let unknown = one_filter(r#"{"syscall": "no_such_syscall"}"#);
    assert!(matches!(compile(&unknown), Err(SeccompError::Compile(_))));
    let kill_default =
        r#"{"run": {"mismatch_action": "kill_process", "match_action": "allow", "filter": []}}"#;
    assert!(matches!(compile(kill_default), Err(SeccompError::Check(_))));
}

#[test]
fn compile_rejects_a_syscall_both_unconditional_and_conditional() {
    let mixed = one_filter(
        r#"{"syscall": "personality"},
           {"syscall": "personality", "args": [{"index": 0, "type": "dword", "op": "eq", "val": 8}]}"#,
    );
    let err = compile(&mixed).unwrap_err();
    assert!(
        matches!(err, SeccompError::Check(ref m) if m.contains("personality")),
        "{err}"
    );
}

#[test]
fn compile_rejects_a_syscall_in_two_filters() {
    let json = r#"{
        "a": {"mismatch_action": "allow", "match_action": {"errno": 1}, "filter": [{"syscall": "mount"}]},
        "b": {"mismatch_action": "allow", "match_action": {"errno": 38}, "filter": [{"syscall": "mount"}]}
    }"#;
    assert!(matches!(compile(json), Err(SeccompError::Check(_))));
}

#[test]
fn compile_rejects_programs_over_the_kernel_limit() {
    // Two filters that seccompiler accepts one by one (~2,100 instructions each) but that
    // exceed the limit once chained behind the prefix.
    let filter = |syscall: &str| {
        let rule = format!(
            r#"{{"syscall": "{syscall}", "args": [{{"index": 1, "type": "qword", "op": "eq", "val": 1}}]}}"#
        );
        format!(
            r#"{{"mismatch_action": "allow", "match_action": {{"errno": 1}}, "filter": [{}]}}"#,
            vec![rule; 300].join(",")
        )
    };
    let json = format!(r#"{{"a": {}, "b": {}}}"#, filter("ioctl"), filter("fcntl"));
    let err = compile(&json).unwrap_err();
    assert!(
        matches!(err, SeccompError::TooLong(n) if n >= MAX_INSTRUCTIONS),
        "{err}"
    );
}

// --- the program, evaluated by a classic-BPF interpreter ---

/// Runs `program` on a `seccomp_data` the way the kernel does, for the opcodes seccompiler
/// and the prefix emit. Panics on anything else or on a jump out of the program.
fn eval(program: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    eval_counted(program, arch, nr, args).0
}

/// [`eval`]'s answer, and how many instructions it ran to get it.
fn eval_counted(program: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> (u32, usize) {
    let mut data = [0u32; 16];
    data[0] = nr;
    data[1] = arch;
    for (i, arg) in args.iter().enumerate() {
        data[4 + 2 * i] = *arg as u32;
        data[5 + 2 * i] = (*arg >> 32) as u32;
    }
    let (mut acc, mut pc) = (0u32, 0usize);
    for steps in 1.. {
        let insn = program
            .get(pc)
            .unwrap_or_else(|| panic!("pc {pc} left the program"));
        let code = insn.code;
        let next = pc + 1;
        pc = match code {
            c if c == BPF_LD | BPF_W | BPF_ABS => {
                assert!(insn.k % 4 == 0 && insn.k < 64, "load at {}", insn.k);
                acc = data[insn.k as usize / 4];
                next
            }
            0x54 => {
                // BPF_ALU | BPF_AND | BPF_K
                acc &= insn.k;
                next
            }
            c if c == BPF_JMP | BPF_JA => next + insn.k as usize,
            c if c & 0x07 == BPF_JMP => {
                let taken = match c & 0xf0 {
                    BPF_JEQ => acc == insn.k,
                    BPF_JGT => acc > insn.k,
                    BPF_JGE => acc >= insn.k,
                    BPF_JSET => acc & insn.k != 0,
                    op => panic!("jump op {op:#x}"),
                };
                next + usize::from(if taken { insn.jt } else { insn.jf })
            }
            c if c == BPF_RET | BPF_K => return (insn.k, steps),
            c => panic!("opcode {c:#x} at {pc}"),
        };
    }
    unreachable!("the loop only ends at a `ret`")
}

/// A syscall number from seccompiler's own table, read back from a one-rule program.
fn nr(name: &str) -> u32 {
    let json = one_filter(&format!(r#"{{"syscall": "{name}"}}"#));
    let map = seccompiler::compile_from_json(json.as_bytes(), TargetArch::x86_64).unwrap();
    // arch load, arch check, kill, nr load, then `jeq nr`.
    map["run"][4].k
}

fn run(program: &SeccompProgram, name: &str, args: [u64; 6]) -> u32 {
    eval(program.instructions(), AUDIT_ARCH_X86_64, nr(name), args)
}

#[test]
fn bpf_kills_other_arches_and_x32() {
    let p = builtin().unwrap();
    let getpid = nr("getpid");
    assert_eq!(eval(&p.0, AUDIT_ARCH_I386, 20, [0; 6]), RET_KILL_PROCESS);
    assert_eq!(eval(&p.0, 0xc000_00b7, getpid, [0; 6]), RET_KILL_PROCESS); // aarch64
    assert_eq!(
        eval(&p.0, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | getpid, [0; 6]),
        RET_KILL_PROCESS
    );
    // The x32 ABI's own numbers (512..547) with the bit set, and the bit with a denied number.
    assert_eq!(
        eval(&p.0, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 520, [0; 6]),
        RET_KILL_PROCESS
    );
    assert_eq!(
        eval(
            &p.0,
            AUDIT_ARCH_X86_64,
            X32_SYSCALL_BIT | nr("mount"),
            [0; 6]
        ),
        RET_KILL_PROCESS
    );
}

#[test]
fn bpf_answers_enosys_above_the_reviewed_table() {
    let p = builtin().unwrap();
    for n in [LAST_REVIEWED_SYSCALL + 1, 467, 469, 511, 520, 0x3fff_ffff] {
        assert_eq!(
            eval(&p.0, AUDIT_ARCH_X86_64, n, [0; 6]),
            RET_ENOSYS,
            "nr {n}"
        );
    }
    assert_eq!(
        eval(&p.0, AUDIT_ARCH_X86_64, LAST_REVIEWED_SYSCALL, [0; 6]),
        RET_ALLOW
    );
}

#[test]
fn bpf_applies_every_rule_as_documented() {
    let p = builtin().unwrap();
    let cases: &[(&str, [u64; 6], u32)] = &[
        ("mount", [0; 6], EPERM),
        ("ptrace", [0; 6], EPERM),
        ("clone3", [0; 6], ENOSYS),
        ("clone", [0x0120_0011, 0, 0, 0, 0, 0], RET_ALLOW), // glibc fork's flags
        ("clone", [0x3d0f00, 0, 0, 0, 0, 0], RET_ALLOW),    // pthread_create's flags
        (
            "clone",
            [libc::CLONE_NEWUSER as u64 | 17, 0, 0, 0, 0, 0],
            EPERM,
        ),
        (
            "clone",
            [0x8000_0000_0000_0000 | 0x11, 0, 0, 0, 0, 0],
            RET_ALLOW,
        ),
        ("ioctl", [1, 0x5412, 0, 0, 0, 0], EPERM),
        ("ioctl", [1, 0x1_0000_5412, 0, 0, 0, 0], EPERM),
        ("ioctl", [1, 0xffff_ffff_0000_541c, 0, 0, 0, 0], EPERM),
        ("ioctl", [1, 0x5413, 0, 0, 0, 0], RET_ALLOW), // TIOCGWINSZ
        ("ioctl", [1, 0x541b, 0, 0, 0, 0], RET_ALLOW), // FIONREAD
        ("socket", [0, 1, 0, 0, 0, 0], EPERM),
        ("socket", [1, 1, 0, 0, 0, 0], RET_ALLOW),
        ("socket", [2, 1, 0, 0, 0, 0], RET_ALLOW),
        ("socket", [2, 2 | 0x80000, 0, 0, 0, 0], RET_ALLOW),
        ("socket", [3, 1, 0, 0, 0, 0], EPERM),
        ("socket", [9, 1, 0, 0, 0, 0], EPERM),
        ("socket", [10, 1, 0, 0, 0, 0], RET_ALLOW),
        ("socket", [11, 1, 0, 0, 0, 0], EPERM),
        ("socket", [16, 3, 0, 0, 0, 0], EPERM), // AF_NETLINK
        ("socket", [17, 3, 0, 0, 0, 0], EPERM), // AF_PACKET
        ("socket", [0xffff_ffff, 1, 0, 0, 0, 0], EPERM),
        ("socket", [0x1_0000_0002, 1, 0, 0, 0, 0], RET_ALLOW), // kernel reads an int: AF_INET
        ("socket", [2, 3, 1, 0, 0, 0], EPERM),                 // SOCK_RAW
        ("socket", [2, 3 | 0x800 | 0x80000, 1, 0, 0, 0], EPERM),
        ("socket", [10, 10, 0, 0, 0, 0], EPERM), // SOCK_PACKET
        ("socketpair", [1, 1, 0, 0, 0, 0], RET_ALLOW),
        ("socketpair", [30, 5, 0, 0, 0, 0], EPERM), // AF_TIPC
        ("personality", [0xffff_ffff, 0, 0, 0, 0, 0], RET_ALLOW),
        ("personality", [0, 0, 0, 0, 0, 0], RET_ALLOW),
        ("personality", [0x0040000, 0, 0, 0, 0, 0], EPERM), // ADDR_NO_RANDOMIZE
        ("personality", [0x0400000, 0, 0, 0, 0, 0], EPERM), // READ_IMPLIES_EXEC
        ("move_pages", [0, 1, 0, 0, 0, 0], RET_ALLOW),
        ("move_pages", [1234, 1, 0, 0, 0, 0], EPERM),
        ("read", [0; 6], RET_ALLOW),
        ("execve", [0; 6], RET_ALLOW),
    ];
    for (name, args, want) in cases {
        assert_eq!(run(&p, name, *args), *want, "{name}({args:x?})");
    }
    let flags = [
        0x20000u64,
        0x0200_0000,
        0x0400_0000,
        0x0800_0000,
        0x1000_0000,
        0x2000_0000,
        0x4000_0000,
        0x80,
    ];
    for flag in flags {
        assert_eq!(
            run(&p, "clone", [flag | 17, 0, 0, 0, 0, 0]),
            EPERM,
            "clone {flag:#x}"
        );
    }
}

#[test]
fn bpf_denies_unconditional_rules_and_allows_everything_else() {
    let p = builtin().unwrap();
    let policy = policy_json();
    let mut named = BTreeSet::new();
    for (filter, rule) in rules(&policy) {
        let name = rule["syscall"].as_str().unwrap().to_owned();
        named.insert(nr(&name));
        if rule.get("args").is_none() {
            let errno = policy[&filter]["match_action"]["errno"].as_u64().unwrap() as u32;
            let want = libc::SECCOMP_RET_ERRNO | errno;
            assert_eq!(run(&p, &name, [0; 6]), want, "{name}");
            assert_eq!(run(&p, &name, [u64::MAX; 6]), want, "{name}");
        }
    }
    for n in (0..=LAST_REVIEWED_SYSCALL).filter(|n| !named.contains(n)) {
        assert_eq!(
            eval(&p.0, AUDIT_ARCH_X86_64, n, [0; 6]),
            RET_ALLOW,
            "nr {n}"
        );
    }
}

/// The policy's meaning without the search: each filter's program as seccompiler compiled
/// it, and the first that does not allow answers (each syscall is in one filter only).
fn reference(filters: &seccompiler::BpfMap, nr: u32, args: [u64; 6]) -> u32 {
    filters
        .values()
        .map(|program| eval(program, AUDIT_ARCH_X86_64, nr, args))
        .find(|&ret| ret != RET_ALLOW)
        .unwrap_or(RET_ALLOW)
}

fn seccompiler_programs() -> seccompiler::BpfMap {
    seccompiler::compile_from_json(DEFAULT_POLICY.as_bytes(), TargetArch::x86_64)
        .expect("the policy compiles")
}

#[test]
fn the_search_answers_every_syscall_as_each_filter_compiled_by_seccompiler_does() {
    let policy = policy_json();
    let p = builtin().unwrap();
    let filters = seccompiler_programs();
    // Every value a rule compares with, at every argument, with bits around it set too
    // (masked rules), plus the extremes.
    let mut values = BTreeSet::from([0u64, 1, 17, u64::MAX, 0x8000_0000_0000_0000]);
    for (_, rule) in rules(&policy) {
        for arg in rule["args"].as_array().into_iter().flatten() {
            let v = arg["val"].as_u64().unwrap();
            values.extend([v, v | 17, v ^ 1, v | 0x1_0000_0000, !v]);
        }
    }
    let mut checked = 0;
    for n in 0..=LAST_REVIEWED_SYSCALL {
        for index in 0..6 {
            for &v in &values {
                let mut args = [0; 6];
                args[index] = v;
                assert_eq!(
                    eval(&p.0, AUDIT_ARCH_X86_64, n, args),
                    reference(&filters, n, args),
                    "nr {n}, args {args:x?}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 10_000, "{checked} cases");
}

#[test]
fn every_syscall_number_without_rules_meets_a_short_search() {
    // The kernel runs the filter for every syscall number as it installs it (the cache of
    // always-allowed syscalls, with interrupts off), once per run. seccompiler's own layout
    // tests the numbers with rules one after another; the search halves them first.
    let p = builtin().unwrap();
    let named: BTreeSet<u32> = rules(&policy_json())
        .iter()
        .map(|(_, rule)| nr(rule["syscall"].as_str().unwrap()))
        .collect();
    let worst = (0..=LAST_REVIEWED_SYSCALL)
        .filter(|n| !named.contains(n))
        .map(|n| eval_counted(&p.0, AUDIT_ARCH_X86_64, n, [0; 6]))
        .inspect(|&(ret, _)| assert_eq!(ret, RET_ALLOW))
        .map(|(_, steps)| steps)
        .max()
        .unwrap();
    // The same numbers through seccompiler's programs, chained one after the other as they
    // were before the search.
    let filters = seccompiler_programs();
    let linear = (0..=LAST_REVIEWED_SYSCALL)
        .filter(|n| !named.contains(n))
        .map(|n| {
            filters
                .values()
                .map(|program| eval_counted(program, AUDIT_ARCH_X86_64, n, [0; 6]).1)
                .sum::<usize>()
        })
        .max()
        .unwrap();
    eprintln!(
        "a number without rules: at most {worst} steps, {linear} through seccompiler's programs"
    );
    assert!(worst * 4 <= linear, "{worst} steps against {linear}");
}

#[test]
fn compile_refuses_a_program_whose_layout_it_does_not_know() {
    let json = one_filter(r#"{"syscall": "mount"}"#);
    let map = seccompiler::compile_from_json(json.as_bytes(), TargetArch::x86_64).unwrap();
    let good = &map["run"];
    assert_eq!(syscall_blocks(good).unwrap().len(), 1);
    // Without the arch check; with a block whose `ja <rest>` runs past the program's end.
    assert!(syscall_blocks(&good[1..]).is_err());
    let mut long = good.clone();
    long[6].k += 10;
    assert!(syscall_blocks(&long).is_err());
    // A rule's jump that leaves its block.
    let json = one_filter(
        r#"{"syscall": "personality", "args": [{"index": 0, "type": "dword", "op": "eq", "val": 8}]}"#,
    );
    let map = seccompiler::compile_from_json(json.as_bytes(), TargetArch::x86_64).unwrap();
    let mut leaving = map["run"].clone();
    assert_eq!(syscall_blocks(&leaving).unwrap().len(), 1);
    let rule_jump = (7..leaving.len())
        .find(|&i| leaving[i].code & 0x07 == BPF_JMP && leaving[i].code != BPF_JMP | BPF_JA)
        .expect("the rule compares its argument");
    leaving[rule_jump].jf = 200;
    let err = syscall_blocks(&leaving).unwrap_err();
    assert!(err.contains("leaves"), "{err}");
}

// --- the kernel, with the filter installed on one spawned thread ---

/// Runs `f` on a new thread with the builtin filter installed on that thread only, so the
/// rest of the test process stays unfiltered.
fn in_filtered_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let program = builtin().unwrap();
    std::thread::spawn(move || {
        program.apply().expect("install filter");
        f()
    })
    .join()
    .expect("filtered thread panicked")
}

fn close_if_fd(r: Result<i64, Errno>) -> Result<i64, Errno> {
    if let Ok(fd) = r {
        nix::unistd::close(fd as i32).unwrap();
    }
    r
}

/// A path whose lookup fails with ENOENT, as a syscall argument.
fn missing() -> u64 {
    c"/nonexistent/nsbox-seccomp-test".as_ptr() as u64
}

/// A probe issues one denied syscall with arguments that, without the filter, make the
/// kernel fail with another errno (or succeed harmlessly, e.g. create a socket that is
/// closed at once) even as root: nothing on the host changes if the filter is broken.
struct Probe {
    name: String,
    filtered: Errno,
    call: Box<dyn Fn() -> Result<i64, Errno>>,
}

fn probe(
    name: impl Into<String>,
    filtered: Errno,
    call: impl Fn() -> Result<i64, Errno> + 'static,
) -> Probe {
    Probe {
        name: name.into(),
        filtered,
        call: Box::new(call),
    }
}

/// `nr(arg0, arg1, arg2)`, answered EPERM by the filter.
fn denied(name: &str, nr: i64, args: [u64; 3]) -> Probe {
    let [a, b, c] = args;
    probe(name, Errno::EPERM, move || raw(nr, [a, b, c, 0, 0, 0]))
}

/// `ioctl(pipe, request)`: ENOTTY without the filter, and no terminal is ever involved.
fn denied_ioctl(name: &str, request: u64) -> Probe {
    probe(name, Errno::EPERM, move || {
        let (r, _w) = nix::unistd::pipe().unwrap();
        raw(libc::SYS_ioctl, [r.as_raw_fd() as u64, request, 0, 0, 0, 0])
    })
}

fn denied_socket(name: &str, domain: i32, ty: i32, protocol: i32) -> Probe {
    probe(name, Errno::EPERM, move || {
        close_if_fd(raw(
            libc::SYS_socket,
            [domain as u64, ty as u64, protocol as u64, 0, 0, 0],
        ))
    })
}

fn probes() -> Vec<Probe> {
    use libc::*;
    // No pid reaches 0x7fffffff (pid_max <= 2^22): ESRCH without the filter.
    const NO_PID: u64 = 0x7fff_ffff;
    const BAD_FD: u64 = u64::MAX;
    let mut probes = vec![
        // In a multi-threaded process unshare(CLONE_NEWUSER) is EINVAL.
        denied(
            "unshare(NEWUSER)",
            SYS_unshare,
            [CLONE_NEWUSER as u64, 0, 0],
        ),
        denied("setns(-1)", SYS_setns, [BAD_FD, 0, 0]),
        probe("clone3(NULL, 0)", Errno::ENOSYS, || raw(SYS_clone3, [0; 6])),
        // The missing path makes these fail with ENOENT without the filter.
        denied(
            "mount",
            SYS_mount,
            [c"none".as_ptr() as u64, missing(), c"tmpfs".as_ptr() as u64],
        ),
        denied("umount2", SYS_umount2, [missing(), 0, 0]),
        denied("pivot_root", SYS_pivot_root, [missing(), missing(), 0]),
        denied("chroot", SYS_chroot, [missing(), 0, 0]),
        denied("open_tree", SYS_open_tree, [AT_FDCWD as u64, missing(), 0]),
        denied("swapon", SYS_swapon, [missing(), 0, 0]),
        denied("acct", SYS_acct, [missing(), 0, 0]),
        // Invalid flags fail before a filesystem type is looked up (no module request).
        denied(
            "fsopen(bad flags)",
            SYS_fsopen,
            [c"tmpfs".as_ptr() as u64, 0xffff_ffff, 0],
        ),
        denied("fsmount(-1)", SYS_fsmount, [BAD_FD, 0, 0]),
        denied(
            "ptrace(ATTACH)",
            SYS_ptrace,
            [PTRACE_ATTACH as u64, NO_PID, 0],
        ),
        denied("process_vm_readv", SYS_process_vm_readv, [NO_PID, 0, 0]),
        denied("process_vm_writev", SYS_process_vm_writev, [NO_PID, 0, 0]),
        denied("kcmp", SYS_kcmp, [NO_PID, NO_PID, 0]),
        denied("pidfd_getfd(-1)", SYS_pidfd_getfd, [BAD_FD, 0, 0]),
        denied("process_madvise(-1)", SYS_process_madvise, [BAD_FD, 0, 0]),
        denied("move_pages(other pid)", SYS_move_pages, [NO_PID, 0, 0]),
        denied("migrate_pages", SYS_migrate_pages, [NO_PID, 0, 0]),
        denied("bpf(bad cmd)", SYS_bpf, [0x7fff_ffff, 0, 0]),
        denied(
            "perf_event_open(NULL)",
            SYS_perf_event_open,
            [0, 0, u64::MAX],
        ),
        denied(
            "userfaultfd(bad flags)",
            SYS_userfaultfd,
            [0xffff_ffff, 0, 0],
        ),
        denied("io_uring_setup(0, NULL)", SYS_io_uring_setup, [0, 0, 0]),
        denied("io_uring_enter(-1)", SYS_io_uring_enter, [BAD_FD, 0, 0]),
        denied(
            "io_uring_register(-1)",
            SYS_io_uring_register,
            [BAD_FD, 0, 0],
        ),
        denied("keyctl(bad op)", SYS_keyctl, [0x7fff_ffff, 0, 0]),
        denied("add_key(NULL)", SYS_add_key, [0, 0, 0]),
        denied("request_key(NULL)", SYS_request_key, [0, 0, 0]),
        denied(
            "fanotify_init(bad flags)",
            SYS_fanotify_init,
            [0xffff_ffff, 0, 0],
        ),
        denied(
            "open_by_handle_at(-1)",
            SYS_open_by_handle_at,
            [BAD_FD, 0, 0],
        ),
        denied(
            "name_to_handle_at(-1)",
            SYS_name_to_handle_at,
            [BAD_FD, 0, 0],
        ),
        denied("modify_ldt(bad func)", SYS_modify_ldt, [0x7fff, 0, 0]),
        denied("iopl(99)", SYS_iopl, [99, 0, 0]),
        denied("ioperm(out of range)", SYS_ioperm, [0xffff_ffff, 1, 1]),
        denied("syslog(SIZE_BUFFER)", SYS_syslog, [10, 0, 0]),
        denied(
            "clock_settime(bad clock)",
            SYS_clock_settime,
            [0x7fff_ffff, 0, 0],
        ),
        denied("adjtimex(NULL)", SYS_adjtimex, [0, 0, 0]),
        // A NULL name longer than __NEW_UTS_LEN: EINVAL, never a rename.
        denied("sethostname(NULL, 1000)", SYS_sethostname, [0, 1000, 0]),
        denied_ioctl("ioctl(TIOCSTI)", 0x5412),
        denied_ioctl("ioctl(1 << 32 | TIOCSTI)", 0x1_0000_5412),
        denied_ioctl("ioctl(TIOCLINUX)", 0x541c),
        // Families that may be kernel modules (AF_ALG, ...) are left to the BPF tests:
        // asking for them unfiltered could load a module on the host.
        denied_socket("socket(AF_NETLINK)", AF_NETLINK, SOCK_RAW, 0),
        denied_socket("socket(AF_PACKET)", AF_PACKET, SOCK_RAW, 0),
        denied_socket(
            "socket(AF_INET, SOCK_RAW)",
            AF_INET,
            SOCK_RAW | SOCK_CLOEXEC,
            IPPROTO_ICMP,
        ),
        denied(
            "socketpair(AF_INET)",
            SYS_socketpair,
            [AF_INET as u64, SOCK_STREAM as u64, 0],
        ),
    ];
    // CLONE_THREAD without CLONE_SIGHAND makes clone fail with EINVAL before it creates
    // anything, so a broken filter cannot fork the test process.
    let clone_new = [
        ("NEWNS", CLONE_NEWNS as u64),
        ("NEWCGROUP", CLONE_NEWCGROUP as u64),
        ("NEWUTS", CLONE_NEWUTS as u64),
        ("NEWIPC", CLONE_NEWIPC as u64),
        ("NEWUSER|SIGCHLD", (CLONE_NEWUSER | SIGCHLD) as u64),
        ("NEWPID", CLONE_NEWPID as u64),
        ("NEWNET", CLONE_NEWNET as u64),
        ("0x80 (NEWTIME)", 0x80),
    ];
    for (name, flags) in clone_new {
        let flags = flags | CLONE_THREAD as u64;
        probes.push(denied(&format!("clone({name})"), SYS_clone, [flags, 0, 0]));
    }
    probes
}

#[test]
fn filtered_thread_gets_the_policy_errno_from_every_probe() {
    let failures = in_filtered_thread(|| {
        probes()
            .into_iter()
            .filter_map(|p| {
                let got = (p.call)();
                (got != Err(p.filtered))
                    .then(|| format!("{}: got {got:?}, want {:?}", p.name, p.filtered))
            })
            .collect::<Vec<_>>()
    });
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Proves the errnos above come from the filter, not from missing privileges: as root and
/// unfiltered, no probe fails with the errno the filter gives.
#[test]
fn probes_fail_differently_without_the_filter() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the control needs root, where the kernel itself rarely says EPERM");
        return;
    }
    let failures = std::thread::spawn(|| {
        probes()
            .into_iter()
            .filter_map(|p| {
                let got = (p.call)();
                eprintln!("unfiltered {}: {got:?}", p.name);
                (got == Err(p.filtered))
                    .then(|| format!("{}: {got:?} even without the filter", p.name))
            })
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn allowed_sockets_still_work() {
    let results = in_filtered_thread(|| {
        use libc::*;
        [
            (AF_UNIX, SOCK_STREAM),
            (AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC),
            (AF_INET, SOCK_STREAM),
            (AF_INET, SOCK_DGRAM | SOCK_NONBLOCK),
            (AF_INET6, SOCK_STREAM),
        ]
        .map(|(domain, ty)| {
            (
                domain,
                ty,
                close_if_fd(raw(SYS_socket, [domain as u64, ty as u64, 0, 0, 0, 0])),
            )
        })
    });
    for (domain, ty, got) in results {
        // IPv6 may be off on the host (EAFNOSUPPORT); only the filter answers EPERM.
        let ok = got.is_ok() || (domain == libc::AF_INET6 && got != Err(Errno::EPERM));
        assert!(ok, "socket({domain}, {ty:#x}) = {got:?}");
    }
    let pair = in_filtered_thread(|| {
        nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map(|_| ())
    });
    assert_eq!(pair, Ok(()));
}

#[test]
fn ordinary_syscalls_still_work() {
    in_filtered_thread(|| {
        assert_eq!(
            raw(libc::SYS_getpid, [0; 6]),
            Ok(i64::from(std::process::id()))
        );
        let (r, w) = nix::unistd::pipe().unwrap();
        assert_eq!(nix::unistd::write(&w, b"ping"), Ok(4));
        let mut buf = [0u8; 4];
        assert_eq!(nix::unistd::read(r.as_raw_fd(), &mut buf), Ok(4));
        assert_eq!(&buf, b"ping");
        // Large enough for malloc to use mmap.
        let mut big = vec![0u8; 64 << 20];
        big[(64 << 20) - 1] = 1;
        assert_eq!(big.iter().map(|&b| u64::from(b)).sum::<u64>(), 1);
        assert_eq!(
            raw(libc::SYS_personality, [0xffff_ffff, 0, 0, 0, 0, 0]).map(|_| ()),
            Ok(())
        );
        assert_eq!(
            raw(libc::SYS_personality, [0x0040000, 0, 0, 0, 0, 0]),
            Err(Errno::EPERM)
        );
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        assert!(status.lines().any(|l| l == "Seccomp:\t2"), "{status}");
    });
}

/// glibc's pthread_create and posix_spawn try clone3 first; they must fall back to clone.
#[test]
fn threads_and_subprocesses_fall_back_from_clone3() {
    in_filtered_thread(|| {
        let inner = std::thread::spawn(|| {
            raw(
                libc::SYS_unshare,
                [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0],
            )
        });
        // Filters are inherited by new threads.
        assert_eq!(inner.join().unwrap(), Err(Errno::EPERM));
        let status = Command::new("/bin/sh")
            .args(["-c", "exit 7"])
            .status()
            .expect("spawn under the filter");
        assert_eq!(status.code(), Some(7));
    });
}

// --- whole-process checks, in a re-executed copy of this test binary ---

const CHILD_ENV: &str = "NSBOX_SECCOMP_TEST_CHILD";

/// Runs `reexec_child_entry` in a fresh copy of the test binary, where the filter may be
/// installed on every thread and the process may be killed.
fn run_child(mode: &str) -> std::process::Output {
    let module = module_path!()
        .split_once("::")
        .map_or(module_path!(), |(_, rest)| rest);
    Command::new(std::env::current_exe().unwrap())
        .args([
            &format!("{module}::reexec_child_entry"),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, mode)
        .output()
        .unwrap()
}

fn describe(out: &std::process::Output) -> String {
    format!(
        "{:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Entry point of the re-executed child; does nothing in a normal test run.
#[test]
fn reexec_child_entry() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    // A seccomp kill dumps core like SIGSYS; keep core files out of the work tree.
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0).unwrap();
    match mode.as_str() {
        "x32" => {
            builtin().unwrap().apply_all_threads().unwrap();
            let got = raw(i64::from(X32_SYSCALL_BIT) | libc::SYS_getpid, [0; 6]);
            panic!("x32 getpid returned {got:?} instead of killing the process");
        }
        "int80-unfiltered" => println!("int80 getpid = {}", int80(20)),
        "int80" => {
            builtin().unwrap().apply_all_threads().unwrap();
            let got = int80(20);
            panic!("i386 getpid returned {got} instead of killing the process");
        }
        "tsync" => {
            let (go, wait) = std::sync::mpsc::channel::<()>();
            let helper = std::thread::spawn(move || {
                wait.recv().unwrap();
                raw(
                    libc::SYS_unshare,
                    [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0],
                )
            });
            assert!(!all_threads_filtered().unwrap());
            builtin().unwrap().apply_all_threads().unwrap();
            assert!(all_threads_filtered().unwrap());
            go.send(()).unwrap();
            assert_eq!(helper.join().unwrap(), Err(Errno::EPERM));
            println!("tsync ok");
        }
        other => panic!("unknown child mode {other}"),
    }
}

#[test]
fn x32_syscall_kills_the_process() {
    let out = run_child("x32");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "{}",
        describe(&out)
    );
}

#[test]
fn i386_int80_syscall_kills_the_process() {
    let control = run_child("int80-unfiltered");
    if control.status.signal() == Some(libc::SIGSEGV) {
        eprintln!("skipped: the kernel runs without IA32 emulation, int 0x80 faults by itself");
        return;
    }
    assert!(control.status.success(), "{}", describe(&control));
    let out = run_child("int80");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "{}",
        describe(&out)
    );
}

#[test]
fn apply_all_threads_reaches_existing_threads() {
    let out = run_child("tsync");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("tsync ok"),
        "{}",
        describe(&out)
    );
}
