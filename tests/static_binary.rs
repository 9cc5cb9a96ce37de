//! The single static binary (scripts/build-static.sh): no dynamic dependencies, read from its own ELF headers, and a warm server from that one file alone.

mod common;

use std::path::PathBuf;

use common::Server;
use nsbox::sandbox::warm::Template;
use serde_json::Value;

/// The static build: `NSBOX_STATIC_BIN` (scripts/test.sh builds it before the tests), or
/// built here by scripts/build-static.sh. A build that fails fails the test; it never skips.
fn static_binary() -> PathBuf {
    if let Ok(path) = std::env::var("NSBOX_STATIC_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "NSBOX_STATIC_BIN={} is not a file",
            path.display()
        );
        return path;
    }
    common::built_by("build-static.sh")
}

/// What an ELF executable asks of the dynamic loader before its first instruction: the
/// program interpreter it names and the shared libraries it needs. A static executable asks
/// for neither (a static-pie still has a PT_DYNAMIC segment, for relocating itself, but no
/// DT_NEEDED entry in it).
#[derive(Debug)]
struct LoaderNeeds {
    interpreter: Option<String>,
    needed: Vec<String>,
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;

struct Segment {
    kind: u32,
    offset: usize,
    vaddr: u64,
    file_size: usize,
}

/// Reads the program headers of a 64-bit little-endian x86_64 ELF file (the only kind the
/// static build produces), and the dynamic section they point to.
fn loader_needs(elf: &[u8]) -> LoaderNeeds {
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    let c_str = |at: usize| {
        let len = elf[at..]
            .iter()
            .position(|&b| b == 0)
            .expect("unterminated string");
        String::from_utf8_lossy(&elf[at..at + len]).into_owned()
    };
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF file (EI_CLASS)");
    assert_eq!(elf[5], 1, "not a little-endian ELF file (EI_DATA)");
    assert_eq!(u16_at(0x12), 62, "not an x86_64 ELF file (e_machine)");
    let (phoff, phentsize, phnum) = (
        u64_at(0x20) as usize,
        u16_at(0x36) as usize,
        u16_at(0x38) as usize,
    );
    let segments: Vec<Segment> = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .map(|ph| Segment {
            kind: u32_at(ph),
            offset: u64_at(ph + 8) as usize,
            vaddr: u64_at(ph + 16),
            file_size: u64_at(ph + 32) as usize,
        })
        .collect();
    let interpreter = segments
        .iter()
        .find(|s| s.kind == PT_INTERP)
        .map(|s| c_str(s.offset));

    let mut name_offsets = Vec::new();
    let mut strtab = None;
    if let Some(dynamic) = segments.iter().find(|s| s.kind == PT_DYNAMIC) {
        for entry in elf[dynamic.offset..dynamic.offset + dynamic.file_size].chunks_exact(16) {
            let (tag, value) = (
                u64::from_le_bytes(entry[..8].try_into().unwrap()),
                u64::from_le_bytes(entry[8..].try_into().unwrap()),
            );
            match tag {
                DT_NULL => break,
                DT_NEEDED => name_offsets.push(value as usize),
                DT_STRTAB => strtab = Some(value),
                _ => {}
            }
        }
    }
    // DT_NEEDED names are offsets into the string table, whose DT_STRTAB entry is a virtual
    // address: the PT_LOAD segment that maps it gives its place in the file.
    let needed = name_offsets
        .into_iter()
        .map(|name| {
            let strtab = strtab.expect("DT_NEEDED without DT_STRTAB");
            let load = segments
                .iter()
                .find(|s| {
                    s.kind == PT_LOAD && (s.vaddr..s.vaddr + s.file_size as u64).contains(&strtab)
                })
                .expect("DT_STRTAB outside every PT_LOAD segment");
            c_str(load.offset + (strtab - load.vaddr) as usize + name)
        })
        .collect();
    LoaderNeeds {
        interpreter,
        needed,
    }
}

/// The reader is only worth something if it sees dependencies where they exist: the normal
/// build is dynamically linked against glibc.
#[test]
fn the_elf_reader_sees_the_normal_builds_dependencies() {
    let elf = std::fs::read(env!("CARGO_BIN_EXE_nsbox")).unwrap();
    let needs = loader_needs(&elf);
    assert!(
        needs
            .interpreter
            .as_deref()
            .is_some_and(|i| i.ends_with("/ld-linux-x86-64.so.2")),
        "{needs:?}"
    );
    assert!(needs.needed.iter().any(|n| n == "libc.so.6"), "{needs:?}");
}

#[test]
fn the_static_binary_needs_no_shared_library_and_serves_warm_alone() {
    common::require_root();
    let built = static_binary();
    let elf = std::fs::read(&built)
        .unwrap_or_else(|e| panic!("reading the static binary {}: {e}", built.display()));
    let needs = loader_needs(&elf);
    assert_eq!(
        needs.interpreter,
        None,
        "{} names a program interpreter",
        built.display()
    );
    assert_eq!(
        needs.needed,
        Vec::<String>::new(),
        "{} needs shared libraries",
        built.display()
    );

    // Alone in a directory and without --warm-library, the warm path can only come from
    // the copy of libnsbox_sandbox.so inside the binary: a single-file deploy.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let alone = dir.path().join("nsbox");
    std::fs::copy(&built, &alone).unwrap();
    let server = Server::start_program(&alone, &[], &[]);

    let r = server.run("print('Hello, World!')");
    assert_eq!(r["stdout"], "Hello, World!\n", "{r:#}");
    assert_eq!(r["stderr"], "", "{r:#}");
    assert_eq!(r["exit_code"], 0, "{r:#}");
    assert_eq!(r["success"], true, "{r:#}");

    let status: Value = server.get("/v1/status").json().unwrap();
    let log = server.log.lock().unwrap().clone();
    assert_eq!(status["isolation"]["warm"], true, "{status:#}\n{log}");
    assert_eq!(status["ready"], true, "{status:#}\n{log}");
    assert_eq!(
        status["warm_templates"].as_array().map(Vec::len),
        Some(Template::ALL.len()),
        "every template's zygote loaded the embedded library: {status:#}\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("run finished") && l.contains("warm=true")),
        "the run was not forked from a zygote:\n{log}"
    );
}
