//! Checks the read-only Python root filesystem built by `scripts/build-rootfs.sh`.
//!
//! The scientific stack (and the Excel, Parquet and model libraries beside it) imports and
//! renders at the versions in `rootfs/requirements.lock`, without the libraries' test suites;
//! the tree has no set-id file, device node, package manager or compiler; and what the
//! build prepares for the runtime (font cache, Agg backend, libraries.json) is in place.
//!
//! Standard library only, so it runs even while the crate itself does not compile:
//! `rustc --edition 2021 --test tests/rootfs.rs -o /tmp/rootfs-test && NSBOX_ROOTFS=TREE /tmp/rootfs-test`.
//! Without `NSBOX_ROOTFS` it builds (or reuses) the tree itself. Needs root for chroot.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

const LOCAL_LIB: &str = "usr/local/lib";
const NSBOX_SHARE: &str = "usr/local/share/nsbox";
const MPLCONFIG_IN_TREE: &str = "/usr/local/share/nsbox/mplconfig";

fn repo_dir() -> PathBuf {
    // option_env!: a plain `rustc --test` build has no CARGO_MANIFEST_DIR.
    let dir = option_env!("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from))
        .unwrap_or_else(|| std::env::current_dir().expect("current dir"));
    assert!(
        dir.join("scripts/build-rootfs.sh").is_file(),
        "cannot find scripts/build-rootfs.sh under {}: run from the repository root or set NSBOX_ROOTFS",
        dir.display()
    );
    dir
}

fn require_root() -> Result<(), String> {
    let status =
        fs::read_to_string("/proc/self/status").map_err(|e| format!("/proc/self/status: {e}"))?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .ok_or("no Uid line in /proc/self/status")?;
    if euid == "0" {
        Ok(())
    } else {
        Err(format!(
            "tests/rootfs.rs must run as root: it chroots into the tree (and may build it with mmdebstrap); effective uid is {euid}"
        ))
    }
}

/// The tree under test. The outcome is kept, failure included, so one failed
/// build is reported by every test instead of being retried by each.
fn rootfs() -> &'static Path {
    static TREE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let tree = TREE.get_or_init(|| {
        require_root()?;
        let tree = match std::env::var_os("NSBOX_ROOTFS") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => build_rootfs()?,
        };
        if tree.join("usr/bin/python3").exists() {
            Ok(tree)
        } else {
            Err(format!(
                "{} is not a root filesystem (no usr/bin/python3)",
                tree.display()
            ))
        }
    });
    match tree {
        Ok(tree) => tree,
        Err(e) => panic!("{e}"),
    }
}

fn build_rootfs() -> Result<PathBuf, String> {
    let repo = repo_dir();
    let out = Command::new("bash")
        .arg(repo.join("scripts/build-rootfs.sh"))
        .current_dir(&repo)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("run scripts/build-rootfs.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!("scripts/build-rootfs.sh failed: {}", out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .ok_or_else(|| "scripts/build-rootfs.sh printed no tree path".to_string())
}

/// Runs a command inside the tree with a minimal environment, so the host's
/// variables (OPENBLAS_*, MPLBACKEND, DISPLAY, ...) cannot make a broken tree pass.
/// The tree is shared by every server on the host, so the command runs in a private
/// mount namespace with a throwaway tmpfs over its /tmp (also its HOME): whatever it
/// writes there (matplotlib's cache, say) never lands in the tree.
fn in_tree(args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=64m tmpfs "$0/tmp" && exec chroot "$0" "$@""#)
        .arg(rootfs())
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("LANG", "C.UTF-8")
        .env("HOME", "/tmp")
        .envs(envs.iter().copied())
        .output()
        .expect("run chroot");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chroot {} {args:?} failed ({}):\n{stderr}",
        rootfs().display(),
        out.status
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs Python in the tree without letting it write .pyc files or a matplotlib
/// cache into the tree under test.
fn python_in_tree(code: &str, argv: &[&str]) -> String {
    let mut args = vec!["/usr/bin/python3", "-B", "-c", code];
    args.extend_from_slice(argv);
    in_tree(&args, &[("MPLCONFIGDIR", MPLCONFIG_IN_TREE)])
}

/// Where the tree keeps pip: for the installer sandbox only, outside every run's `sys.path`.
const INSTALLER_DIR: &str = "/usr/local/lib/nsbox/installer";

/// Pins from rootfs/requirements.lock that runs import (every one but pip, which the build
/// moves to [`INSTALLER_DIR`]), keyed by lower-case canonical name.
fn locked_versions() -> BTreeMap<String, String> {
    let mut pins = all_locked_versions();
    pins.remove("pip").expect("pip is pinned for the installer");
    pins
}

fn all_locked_versions() -> BTreeMap<String, String> {
    let lock = repo_dir().join("rootfs/requirements.lock");
    let text = fs::read_to_string(&lock).unwrap_or_else(|e| panic!("{}: {e}", lock.display()));
    let pins: BTreeMap<String, String> = text
        .lines()
        .map(|l| l.trim().trim_end_matches('\\').trim())
        .filter(|l| !l.starts_with('#') && !l.starts_with("--"))
        .filter_map(|l| l.split_once("=="))
        .map(|(name, version)| (canonical(name), version.trim().to_string()))
        .collect();
    for lib in CORE.iter().chain(&ADDED) {
        assert!(
            pins.contains_key(*lib),
            "{lib} is not pinned in {}",
            lock.display()
        );
    }
    pins
}

fn canonical(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace(['_', '.'], "-")
}

/// Every path in the tree, without following symlinks.
fn walk(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let meta =
                fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if meta.is_dir() {
                stack.push(path.clone());
            }
            found.push((path, meta));
        }
    }
    found
}

fn site_packages(tree: &Path) -> PathBuf {
    let lib = tree.join(LOCAL_LIB);
    let python = fs::read_dir(&lib)
        .unwrap_or_else(|e| panic!("{}: {e}", lib.display()))
        .map(|e| e.expect("directory entry").path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python3"))
        })
        .unwrap_or_else(|| panic!("no python3.* under {}", lib.display()));
    python.join("dist-packages")
}

/// The spec's five libraries.
const CORE: [&str; 5] = ["numpy", "pandas", "scipy", "matplotlib", "seaborn"];
/// Beside them (issue 18): Excel, Parquet, scikit-learn, statsmodels and what they lean on.
const ADDED: [&str; 7] = [
    "openpyxl",
    "fastparquet",
    "scikit-learn",
    "joblib",
    "threadpoolctl",
    "statsmodels",
    "patsy",
];

const STACK_SCRIPT: &str = r#"
import importlib.metadata, io, sys
import numpy, pandas, scipy, scipy.stats, matplotlib, matplotlib.pyplot as plt, seaborn
import openpyxl, fastparquet, sklearn, sklearn.linear_model, joblib, threadpoolctl
import statsmodels, statsmodels.formula.api, patsy

df = pandas.DataFrame({"x": numpy.arange(50), "y": numpy.random.default_rng(0).normal(size=50)})
assert abs(scipy.stats.norm.cdf(0.0) - 0.5) < 1e-12
fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
seaborn.lineplot(data=df, x="x", y="y", ax=ax)
buf = io.BytesIO()
fig.savefig(buf, format="png")
png = buf.getvalue()
print("png", len(png), png[:24].hex())
modules = {
    "numpy": numpy, "pandas": pandas, "scipy": scipy, "matplotlib": matplotlib,
    "seaborn": seaborn, "openpyxl": openpyxl, "fastparquet": fastparquet,
    "scikit-learn": sklearn, "joblib": joblib, "threadpoolctl": threadpoolctl,
    "statsmodels": statsmodels, "patsy": patsy,
}
for dist, mod in modules.items():
    print("module", dist, mod.__version__)
for name in sys.argv[1:]:
    print("dist", name, importlib.metadata.version(name))
"#;

#[test]
fn scientific_stack_imports_renders_and_matches_lock() {
    let pins = locked_versions();
    let names: Vec<&str> = pins.keys().map(String::as_str).collect();
    let fontlists_before = fontlists(rootfs());
    let out = python_in_tree(STACK_SCRIPT, &names);

    let mut png_seen = false;
    let mut seen = BTreeMap::new();
    for line in out.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["png", len, head] => {
                png_seen = true;
                let len: usize = len.parse().expect("png length");
                assert!(
                    len > 2_000,
                    "PNG of {len} bytes is too small to hold a plot"
                );
                assert!(
                    head.starts_with("89504e470d0a1a0a"),
                    "not a PNG signature: {head}"
                );
                // IHDR width and height: 4x3 inches at 100 dpi.
                assert_eq!(&head[32..48], "000001900000012c", "PNG is not 400x300");
            }
            ["module", name, version] | ["dist", name, version] => {
                let pin = pins
                    .get(&canonical(name))
                    .unwrap_or_else(|| panic!("{name} is not in requirements.lock"));
                assert_eq!(
                    version, pin,
                    "{line}: the tree differs from requirements.lock"
                );
                seen.insert(canonical(name), version.to_string());
            }
            _ => panic!("unexpected output line: {line}"),
        }
    }
    assert!(png_seen, "no PNG rendered:\n{out}");
    assert_eq!(seen.len(), pins.len(), "not every pin was checked:\n{out}");
    // A font cache matplotlib rejected would have been rebuilt, i.e. rewritten.
    assert_eq!(
        fontlists_before,
        fontlists(rootfs()),
        "matplotlib rebuilt its font cache: the one baked into the tree is not used"
    );
}

#[test]
fn the_added_libraries_are_pinned_and_imported_at_their_pins() {
    let pins = locked_versions();
    let out = python_in_tree(STACK_SCRIPT, &[]);
    for lib in ADDED {
        let line = format!("module {lib} {}", pins[lib]);
        assert!(
            out.lines().any(|l| l == line),
            "want {line:?} (the lock's pin) in:\n{out}"
        );
    }
}

#[test]
fn the_libraries_test_suites_are_trimmed() {
    // scripts/build-rootfs.sh drops them: a third of the tree, and they need pytest.
    let site = site_packages(rootfs());
    let packages = [
        "numpy",
        "scipy",
        "pandas",
        "matplotlib",
        "sklearn",
        "statsmodels",
        "patsy",
        "fastparquet",
        "openpyxl",
    ];
    let left: Vec<String> = packages
        .iter()
        .flat_map(|p| walk(&site.join(p)))
        .filter(|(path, meta)| meta.is_dir() && path.file_name().is_some_and(|n| n == "tests"))
        .map(|(path, _)| path.display().to_string())
        .chain(
            ["joblib/test"]
                .iter()
                .map(|p| site.join(p))
                .filter(|p| p.exists())
                .map(|p| p.display().to_string()),
        )
        .collect();
    assert!(
        left.is_empty(),
        "test suites left in the tree:\n{}",
        left.join("\n")
    );
}

#[test]
fn no_setid_files_or_device_nodes() {
    let mut bad = Vec::new();
    for (path, meta) in walk(rootfs()) {
        let ft = meta.file_type();
        if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket() {
            bad.push(format!("special file {}", path.display()));
        } else if !ft.is_symlink() && meta.permissions().mode() & 0o6000 != 0 {
            bad.push(format!(
                "set-id {:o} {}",
                meta.permissions().mode(),
                path.display()
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn usr_is_readable_by_nobody() {
    // Runs execute as nobody, so anything under /usr they cannot read or traverse
    // is a library that fails to import only inside the sandbox.
    let mut bad = Vec::new();
    for (path, meta) in walk(&rootfs().join("usr")) {
        let mode = meta.permissions().mode();
        let need = if meta.is_dir() { 0o005 } else { 0o004 };
        if !meta.file_type().is_symlink() && mode & need != need {
            bad.push(format!("{:o} {}", mode & 0o7777, path.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "not readable by others:\n{}",
        bad.join("\n")
    );
}

#[test]
fn mount_points_are_empty_and_nobody_exists() {
    let tree = rootfs();
    for dir in ["tmp", "proc", "dev"] {
        let path = tree.join(dir);
        let meta = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert!(meta.is_dir(), "/{dir} is not a directory");
        let entries: Vec<_> = fs::read_dir(&path)
            .expect("read mount point")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(entries.is_empty(), "/{dir} is not empty: {entries:?}");
    }
    let passwd = fs::read_to_string(tree.join("etc/passwd")).expect("etc/passwd");
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("nobody:") && l.split(':').nth(2) == Some("65534")),
        "no nobody (65534) in /etc/passwd"
    );
    let group = fs::read_to_string(tree.join("etc/group")).expect("etc/group");
    assert!(
        group
            .lines()
            .any(|l| l.starts_with("nogroup:") && l.split(':').nth(2) == Some("65534")),
        "no nogroup (65534) in /etc/group"
    );
}

fn fontlists(tree: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let dir = tree.join(&MPLCONFIG_IN_TREE[1..]);
    let mut found: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry"))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let meta = e.metadata().ok()?;
            (name.starts_with("fontlist-v") && name.ends_with(".json"))
                .then(|| (name, meta.len(), meta.modified().expect("mtime")))
        })
        .collect();
    found.sort();
    found
}

#[test]
fn build_time_artefacts_are_in_place() {
    let tree = rootfs();
    let lists = fontlists(tree);
    assert_eq!(
        lists.len(),
        1,
        "want one fontlist-v*.json in {MPLCONFIG_IN_TREE}: {lists:?}"
    );
    let fontlist = fs::read_to_string(tree.join(&MPLCONFIG_IN_TREE[1..]).join(&lists[0].0))
        .expect("read font cache");
    assert!(
        fontlist.contains("\"DejaVu Sans\"") && fontlist.contains("fonts/ttf/DejaVuSans.ttf"),
        "font cache lacks matplotlib's DejaVu fonts"
    );

    let rc = site_packages(tree).join("matplotlib/mpl-data/matplotlibrc");
    let rc_text = fs::read_to_string(&rc).unwrap_or_else(|e| panic!("{}: {e}", rc.display()));
    assert!(
        rc_text.lines().any(|l| l.trim() == "backend: agg"),
        "{} does not set backend: agg",
        rc.display()
    );
    // No MPLCONFIGDIR here: the default must come from the tree, not the cache dir.
    let backend = in_tree(
        &[
            "/usr/bin/python3",
            "-B",
            "-c",
            "import matplotlib; print(matplotlib.get_backend())",
        ],
        &[],
    );
    assert_eq!(backend.trim(), "agg");

    let libs = fs::read_to_string(tree.join(NSBOX_SHARE).join("libraries.json"))
        .expect("read libraries.json");
    assert!(
        libs.trim_start().starts_with('{') && libs.trim_end().ends_with('}'),
        "libraries.json is not a JSON object"
    );
    assert!(
        libs.contains("\"python\": \"3."),
        "libraries.json lacks the python version"
    );
    for (name, version) in locked_versions() {
        assert!(
            libs.contains(&format!("\"{name}\": \"{version}\"")),
            "libraries.json lacks {name} {version}"
        );
    }
}

#[test]
fn no_package_managers_or_compilers() {
    let tree = rootfs();
    let forbidden = [
        "apt",
        "apt-get",
        "apt-cache",
        "dpkg",
        "dpkg-deb",
        "dpkg-query",
        "pip",
        "pip3",
        "gcc",
        "cc",
        "c++",
        "g++",
        "cpp",
        "ld",
        "as",
        "perl",
    ];
    let mut bad: Vec<String> = walk(tree)
        .into_iter()
        .filter(|(path, meta)| {
            // Directories named after a tool are fine (e.g. gcc-12-base's copyright).
            if meta.is_dir() {
                return false;
            }
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // Versioned and target-prefixed names too: gcc-12, x86_64-linux-gnu-gcc.
            forbidden.contains(&name)
                || name.starts_with("gcc-")
                || name.starts_with("x86_64-linux-gnu-")
                || name.starts_with("pip-")
        })
        .map(|(path, _)| path.display().to_string())
        .collect();
    for path in ["var/lib/dpkg", "etc/apt", "var/lib/apt", "etc/dpkg"] {
        if fs::symlink_metadata(tree.join(path)).is_ok() {
            bad.push(format!("/{path}"));
        }
    }
    assert!(
        bad.is_empty(),
        "package tools left in the tree:\n{}",
        bad.join("\n")
    );

    let specs = python_in_tree(
        "import importlib.util as u; print([m for m in ('pip', 'setuptools', 'wheel', 'ensurepip') if u.find_spec(m)])",
        &[],
    );
    assert_eq!(specs.trim(), "[]", "importable packaging tools");

    // The installer sandbox's pip, at the lock's version, only where it puts it on the path.
    let pip = python_in_tree(
        &format!(
            "import sys; sys.path.insert(0, {INSTALLER_DIR:?}); import pip; print(pip.__version__)"
        ),
        &[],
    );
    assert_eq!(
        pip.trim(),
        all_locked_versions()["pip"],
        "the installer's pip"
    );
}
