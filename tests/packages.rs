//! Packages on demand (issue 24) against the real server and sandbox, warm and cold: a real
//! package index (pypiserver, from scripts/packages-index.sh, with two wheels fetched at
//! setup) on loopback, named through `egress.hosts`. No outside network at test time.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Server;
use serde_json::{json, Value};

/// The virtualenv with pypiserver and the directory with the two wheels (scripts/test.sh
/// prepares them before the tests; here the script only prints where they are).
fn index_parts() -> (PathBuf, PathBuf) {
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/packages-index.sh"
    ))
    .stderr(Stdio::inherit())
    .output()
    .expect("scripts/packages-index.sh");
    assert!(out.status.success(), "scripts/packages-index.sh failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    (PathBuf::from(lines[0]), PathBuf::from(lines[1]))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A local index: pypiserver serving `wheels`, or any Python http.server of a directory.
struct Index {
    child: Child,
    port: u16,
}

impl Index {
    fn start(program: &Path, args: &[&str], port: u16) -> Index {
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the index");
        let up = common::wait_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "the index did not come up on port {port}");
        Index { child, port }
    }

    fn pypiserver(venv: &Path, wheels: &Path) -> Index {
        let port = free_port();
        let p = port.to_string();
        Index::start(
            &venv.join("bin/pypi-server"),
            &[
                "run",
                "--disable-fallback",
                "-i",
                "127.0.0.1",
                "-p",
                &p,
                wheels.to_str().unwrap(),
            ],
            port,
        )
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A server whose packages come from `http://index.test:<port>/simple/`, its cache in `dir`.
fn server(dir: &tempfile::TempDir, port: u16, mode: &str, extra: &str) -> Server {
    // Runs read their set as their own ids: the cache's parents must let them through.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = format!(
        "[egress]\nallow = []\nallow_ips = [\"127.0.0.1\"]\n[egress.hosts]\n\"index.test\" = \"127.0.0.1\"\n\
         [packages]\nindex_url = \"http://index.test:{port}/simple/\"\ndeny = [\"badpkg\"]\n\
         cache_dir = \"{}\"\n{extra}",
        dir.path().join("cache").display()
    );
    let path = dir.path().join("nsbox.toml");
    std::fs::write(&path, text).unwrap();
    Server::start(&[
        "--config",
        path.to_str().unwrap(),
        "--mode",
        mode,
        "--scanner",
        "off",
    ])
}

const USE_TABULATE: &str = "import tabulate\nprint(tabulate.__file__)\nprint(tabulate.tabulate([[1, 2]], headers=['a', 'b']))";

fn packages_install_once_and_are_reused_without_the_index(mode: &str) {
    let (venv, wheels) = index_parts();
    let mut index = Index::pypiserver(&venv, &wheels);
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir, index.port, mode, "");

    // Not in the tree: installed from the index, then imported from the read-only set.
    let v =
        server.run_with(json!({"code": USE_TABULATE, "lang": "python", "libraries": ["tabulate"]}));
    assert_eq!(v["exit_code"], 0, "{v}");
    let out = common::text(&v, "stdout");
    assert!(out.starts_with("/opt/tabulate/"), "{v}");
    assert!(out.contains("a    b"), "{v}");
    // Without `libraries`, the run sees no set.
    let v = server.run("import tabulate");
    assert!(
        common::text(&v, "stderr").contains("ModuleNotFoundError"),
        "{v}"
    );
    // The set is read-only for the run.
    let v = server.run_with(json!({"code": "open('/opt/tabulate/x', 'w')", "lang": "python", "libraries": ["tabulate"]}));
    assert!(
        common::text(&v, "stderr").contains("Read-only file system"),
        "{v}"
    );

    let libs: Value = server.get("/v1/tools/code/libraries").json().unwrap();
    assert_eq!(libs["cached"]["tabulate"], json!(["0.9.0"]), "{libs}");
    assert!(libs["libraries"].get("tabulate").is_none(), "{libs}");

    // Refusals name the package.
    let (status, v) =
        server.post(&json!({"code": "print(1)", "lang": "python", "libraries": ["nosuchpkg"]}));
    assert_eq!(status, 400, "{v}");
    assert!(
        v.to_string().contains("nosuchpkg: no such package"),
        "{v}\n{}",
        server.log.lock().unwrap()
    );
    let (status, v) =
        server.post(&json!({"code": "print(1)", "lang": "python", "libraries": ["BadPkg"]}));
    assert_eq!(status, 400, "{v}");
    assert!(
        v.to_string()
            .contains("badpkg is on this server's deny list"),
        "{v}"
    );
    let (status, v) = server
        .post(&json!({"code": "print(1)", "lang": "python", "libraries": ["tabulate==0.0.1"]}));
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("no version 0.0.1"), "{v}");

    // A session installs at creation; its calls import. Its one name is pinned: resolved
    // (page and wheel), then installed with --require-hashes (page and wheel again).
    // Counted by the request id the session is made under: a connection's log line may
    // follow its answer by a moment, so one of the refusals above could land late.
    let door = || {
        server
            .log
            .lock()
            .unwrap()
            .lines()
            .filter(|l| l.contains("host=index.test") && l.contains("packages-session-1"))
            .count()
    };
    let created = common::client(Duration::from_secs(120))
        .post(format!("{}/v1/sessions", server.base))
        .header("x-request-id", "packages-session-1")
        .json(&json!({"libraries": ["termcolor==2.4.0"]}))
        .send()
        .expect("request");
    let status = created.status().as_u16();
    let s: Value = created.json().expect("JSON body");
    assert_eq!(status, 201, "{s}");
    common::wait_until(Duration::from_secs(10), || door() >= 4);
    assert_eq!(door(), 4, "two passes through the door");
    let sid = s["id"].as_str().unwrap().to_string();
    let call =
        |code: &str| server.run_with(json!({"code": code, "lang": "python", "session_id": sid}));
    let v = call("import termcolor\nx = termcolor.colored('hi', 'red')");
    assert_eq!(v["exit_code"], 0, "{v}");
    let v = call("print(repr(x), termcolor.__file__)");
    assert!(
        common::text(&v, "stdout").contains("/opt/termcolor/"),
        "{v}"
    );

    // Two requests for a set nobody asked for yet: one install, the other waits for it.
    let body =
        json!({"code": USE_TABULATE, "lang": "python", "libraries": ["termcolor", "tabulate"]});
    std::thread::scope(|scope| {
        let both = [
            scope.spawn(|| server.post(&body)),
            scope.spawn(|| server.post(&body)),
        ];
        for t in both {
            let (status, v) = t.join().unwrap();
            assert_eq!((status, &v["exit_code"]), (200, &json!(0)), "{v}");
        }
    });
    let installs = server
        .log
        .lock()
        .unwrap()
        .matches("package set installed")
        .count();
    assert_eq!(
        installs, 3,
        "tabulate, termcolor==2.4.0, then the pair once"
    );

    // The index is gone: the same sets come from the cache, for a run and a session.
    index.stop();
    let v =
        server.run_with(json!({"code": USE_TABULATE, "lang": "python", "libraries": ["tabulate"]}));
    assert_eq!(v["exit_code"], 0, "{v}");
    assert!(
        common::text(&v, "stdout").starts_with("/opt/tabulate/"),
        "{v}"
    );
    // Warm runs mount their set from the zygote's view of the cache: none went cold.
    let log = server.log.lock().unwrap().clone();
    let finished: Vec<&str> = log.lines().filter(|l| l.contains("run finished")).collect();
    assert!(finished.len() >= 4, "{log}");
    let warm = format!("warm={}", mode == "warm");
    assert!(finished.iter().all(|l| l.contains(&warm)), "{log}");
    let (status, s) = server.create_session(&json!({"libraries": ["termcolor==2.4.0"]}));
    assert_eq!(status, 201, "{s}");
    // And a set the cache lacks now fails at the index, naming the package.
    let (status, v) = server
        .post(&json!({"code": "print(1)", "lang": "python", "libraries": ["tabulate==0.8.10"]}));
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("tabulate==0.8.10"), "{v}");
}

#[test]
fn packages_warm() {
    packages_install_once_and_are_reused_without_the_index("warm");
}

#[test]
fn packages_cold() {
    packages_install_once_and_are_reused_without_the_index("cold");
}

/// A static index (a directory served by Python's http.server) whose page for termcolor
/// names a wrong sha256 and whose only file for sdistonly is a source distribution, and a
/// server whose caps no set fits in (3 files).
#[test]
fn a_wrong_hash_no_wheel_and_an_install_past_its_caps_are_refused() {
    let (_venv, wheels) = index_parts();
    let root = tempfile::tempdir().unwrap();
    for (name, file, good) in [
        ("tabulate", "tabulate-0.9.0-py3-none-any.whl", true),
        ("termcolor", "termcolor-2.4.0-py3-none-any.whl", false),
    ] {
        let dir = root.path().join("simple").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = std::fs::read(wheels.join(file)).unwrap();
        std::fs::write(dir.join(file), &bytes).unwrap();
        let hash = match good {
            true => {
                use sha2::Digest;
                sha2::Sha256::digest(&bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            }
            false => "0".repeat(64),
        };
        std::fs::write(
            dir.join("index.html"),
            format!("<html><body><a href=\"{file}#sha256={hash}\">{file}</a></body></html>"),
        )
        .unwrap();
    }
    // A project with a source distribution only: nothing nsbox would install.
    let sdist = root.path().join("simple/sdistonly");
    std::fs::create_dir_all(&sdist).unwrap();
    std::fs::write(sdist.join("sdistonly-1.0.tar.gz"), b"not read").unwrap();
    std::fs::write(
        sdist.join("index.html"),
        "<html><body><a href=\"sdistonly-1.0.tar.gz\">sdistonly-1.0.tar.gz</a></body></html>",
    )
    .unwrap();
    let port = free_port();
    let p = port.to_string();
    let _index = Index::start(
        Path::new("python3"),
        &[
            "-m",
            "http.server",
            "-b",
            "127.0.0.1",
            "-d",
            root.path().to_str().unwrap(),
            &p,
        ],
        port,
    );
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir, port, "warm", "max_files = 3\n");
    let (status, v) =
        server.post(&json!({"code": "print(1)", "lang": "python", "libraries": ["termcolor"]}));
    assert_eq!(status, 400, "{v}");
    assert!(
        v.to_string()
            .contains("does not match its published sha256"),
        "{v}"
    );
    let (status, v) =
        server.post(&json!({"code": "print(1)", "lang": "python", "libraries": ["tabulate"]}));
    assert_eq!(status, 400, "{v}");
    assert!(
        v.to_string()
            .contains("installing tabulate is past this server's caps"),
        "{v}"
    );
    let (status, v) =
        server.post(&json!({"code": "print(1)", "lang": "python", "libraries": ["sdistonly"]}));
    assert_eq!(status, 400, "{v}");
    assert!(
        v.to_string()
            .contains("sdistonly: no wheel for this platform"),
        "{v}"
    );
    // Nothing refused was cached.
    let libs: Value = server.get("/v1/tools/code/libraries").json().unwrap();
    assert_eq!(libs["cached"], json!({}), "{libs}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("cache/sites"))
            .unwrap()
            .count(),
        0
    );
}
