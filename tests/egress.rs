//! The egress door against the real server (warm and cold, scanner off): a local upstream
//! named through `egress.hosts` is reached with urllib and pandas, and every red-team case
//! of issue 24 that concerns the door is refused with a line on the run's stderr.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::Server;
use serde_json::{json, Value};

const CSV: &str = "a,b\n1,2\n3,4\n5,6\n";

/// A plain HTTP/1.1 server on 127.0.0.2 (a loopback address the door refuses unless the
/// operator allows it exactly): `/data.csv`, and POST bodies it counts.
struct Upstream {
    port: u16,
    received: Arc<AtomicU64>,
    smuggled: Arc<AtomicU64>,
    /// Connections whose first byte was a TLS handshake's.
    tls: Arc<AtomicU64>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.2:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(AtomicU64::new(0));
        let smuggled = Arc::new(AtomicU64::new(0));
        let tls = Arc::new(AtomicU64::new(0));
        let (r, s, t) = (received.clone(), smuggled.clone(), tls.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (r, s, t) = (r.clone(), s.clone(), t.clone());
                std::thread::spawn(move || serve(stream, &r, &s, &t));
            }
        });
        Upstream {
            port,
            received,
            smuggled,
            tls,
        }
    }
}

fn serve(stream: TcpStream, received: &AtomicU64, smuggled: &AtomicU64, tls: &AtomicU64) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    if reader.fill_buf().is_ok_and(|b| b.first() == Some(&0x16)) {
        tls.fetch_add(1, Ordering::Relaxed);
        return;
    }
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line.contains("/smuggled") {
            smuggled.fetch_add(1, Ordering::Relaxed);
        }
        let mut length = 0u64;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = Vec::new();
        let got = (&mut reader)
            .take(length)
            .read_to_end(&mut body)
            .unwrap_or(0) as u64;
        received.fetch_add(got, Ordering::Relaxed);
        let reply = if line.starts_with("POST") {
            format!("got {got}")
        } else {
            CSV.to_string()
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nContent-Length: {}\r\n\r\n",
            reply.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(reply.as_bytes()).is_err()
        {
            return;
        }
    }
}

fn config(dir: &tempfile::TempDir, up: &Upstream) -> String {
    let text = format!(
        "[egress]\n\
         allow = [\"upstream.test:{p}\", \"inside.test:{p}\", \"169.254.169.254\"]\n\
         allow_ips = [\"127.0.0.2\"]\n\
         max_connections = 40\n\
         max_upload_mib = 1\n\
         header_timeout = 2\n\
         [egress.hosts]\n\
         \"upstream.test\" = \"127.0.0.2\"\n\
         \"inside.test\" = \"10.9.9.9\"\n",
        p = up.port
    );
    config_file(dir, &text)
}

/// `text` as `nsbox.toml` in `dir`; its path.
fn config_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("nsbox.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// The run's checks, one line each (`label result`), in one run: the flood of connections
/// comes last, as it uses up the run's connection limit.
fn red_team_code(up: u16, server: u16) -> String {
    format!(
        r#"
import os, socket, time, urllib.request, urllib.error
UP = "http://upstream.test:{up}"
print("proxy", os.environ.get("HTTP_PROXY"), os.environ.get("https_proxy"))
print("urllib", urllib.request.urlopen(UP + "/data.csv", timeout=20).read().decode().count("\n"))
import pandas as pd
print("pandas", pd.read_csv(UP + "/data.csv").shape)

def status(url, data=None):
    try:
        return urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=20).status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception as e:
        return type(e).__name__

for host in ["127.0.0.1", "localhost", "[::1]", "0.0.0.0", "2130706433", "0177.0.0.1",
             "0x7f.0.0.1", "[::ffff:127.0.0.1]"]:
    print("own", host, status(f"http://{{host}}:{server}/v1/health"))
print("metadata", status("http://169.254.169.254/latest/meta-data/"))
print("private", status(f"http://inside.test:{up}/"))

def raw(data, wait=20):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=wait)
    s.sendall(data)
    out = b""
    try:
        while True:
            c = s.recv(65536)
            if not c:
                break
            out += c
    except socket.timeout:
        return "timeout"
    return out.split(b"\r\n")[0].decode()

# The same targets as CONNECT (what an HTTPS client sends).
for host in ["127.0.0.1", "localhost", "[::1]", "0.0.0.0", "2130706433", "0x7f000001",
             "[::ffff:127.0.0.1]"]:
    target = f"{{host}}:{server}".encode()
    print("own_connect", host, raw(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n"))
print("metadata_connect", raw(b"CONNECT 169.254.169.254:443 HTTP/1.1\r\nHost: 169.254.169.254:443\r\n\r\n"))
print("connect_port", raw(b"CONNECT upstream.test:22 HTTP/1.1\r\nHost: upstream.test:22\r\n\r\n"))
print("absolute_host", raw(b"GET http://evil.test:{up}/ HTTP/1.1\r\nHost: upstream.test:{up}\r\n\r\n"))
print("host_mismatch", raw(b"GET http://upstream.test:{up}/ HTTP/1.1\r\nHost: inside.test:{up}\r\n\r\n"))
import ssl
def tunnel(first):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
    s.sendall(b"CONNECT upstream.test:{up} HTTP/1.1\r\nHost: upstream.test:{up}\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        c = s.recv(1)
        if not c:
            return "closed before 200"
        head += c
    s.sendall(first)
    out = b""
    try:
        while b"\r\n" not in out:
            c = s.recv(65536)
            if not c:
                break
            out += c
    except socket.timeout:
        return "timeout"
    return out.split(b"\r\n")[0].decode() or "closed"

def client_hello(name):
    bio_in, bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    t = ssl.create_default_context().wrap_bio(bio_in, bio_out, server_hostname=name)
    try:
        t.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return bio_out.read()

print("tunnel_ok", tunnel(b"GET /data.csv HTTP/1.1\r\nHost: upstream.test:{up}\r\n\r\n"))
print("tunnel_host", tunnel(b"GET /data.csv HTTP/1.1\r\nHost: inside.test:{up}\r\n\r\n"))
print("tunnel_sni", tunnel(client_hello("evil.test")))
print("smuggle_cl_cl", raw(b"POST http://upstream.test:{up}/ HTTP/1.1\r\nHost: upstream.test:{up}\r\n"
                           b"Content-Length: 4\r\nContent-Length: 90\r\n\r\nxxxxGET http://upstream.test:{up}/smuggled HTTP/1.1\r\n\r\n"))
print("smuggle_te_obfuscated", raw(b"POST http://upstream.test:{up}/ HTTP/1.1\r\nHost: upstream.test:{up}\r\n"
                                   b"Content-Length: 4\r\nTransfer-Encoding: xchunked\r\n\r\n"
                                   b"0\r\n\r\nGET http://upstream.test:{up}/smuggled HTTP/1.1\r\n\r\n"))
print("smuggle", raw(b"POST http://upstream.test:{up}/ HTTP/1.1\r\nHost: upstream.test:{up}\r\n"
                     b"Content-Length: 60\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"0\r\n\r\nGET http://upstream.test:{up}/smuggled HTTP/1.1\r\nHost: upstream.test:{up}\r\n\r\n"))

t = time.monotonic()
s = socket.create_connection(("127.0.0.1", 3128), timeout=30)
s.sendall(b"GET http://upstream.test:{up}/ HTTP/1.1\r\n")
try:
    while True:
        s.sendall(b"X")
        time.sleep(0.25)
        if time.monotonic() - t > 20:
            print("slowloris", "still open")
            break
except OSError:
    print("slowloris", "closed")
try:
    if s.recv(1024) == b"":
        pass
except OSError:
    pass

def upload_through_tunnel():
    s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
    s.sendall(b"CONNECT upstream.test:{up} HTTP/1.1\r\nHost: upstream.test:{up}\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    try:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: upstream.test:{up}\r\nContent-Length: 3145728\r\n\r\n")
        s.sendall(b"x" * (3 << 20))
        answer = s.recv(65536)
    except OSError as e:
        return type(e).__name__
    return answer.split(b"\r\n")[0].decode() or "closed"
print("upload_tunnel", upload_through_tunnel())
print("upload", status(UP + "/upload", data=b"x" * (3 << 20)))

try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    print("raw", "opened")
except OSError as e:
    print("raw", type(e).__name__)
try:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"\x00" * 12, ("8.8.8.8", 53))
    print("udp_dns", "sent")
except OSError as e:
    print("udp_dns", type(e).__name__)

codes = {{}}
for _ in range(1000):
    c = status(UP + "/data.csv")
    codes[c] = codes.get(c, 0) + 1
print("flood", codes.get(200, 0), codes.get(403, 0))
"#
    )
}

fn lines(stdout: &str) -> std::collections::BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .fold(Default::default(), |mut m, (k, v)| {
            // `own` and `own_connect` have one line per spelling.
            let k = if k == "own" || k == "own_connect" {
                format!("{k} {}", v.split(' ').next().unwrap_or(""))
            } else {
                k
            };
            m.insert(k, v);
            m
        })
}

fn red_team(mode: &str) {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, &up);
    let server = Server::start(&["--config", &cfg, "--scanner", "off", "--mode", mode]);
    let r = server.run_with(json!({
        "code": red_team_code(up.port, server.port),
        "lang": "python",
        "timeout": 120,
    }));
    let stdout = common::text(&r, "stdout");
    let stderr = common::text(&r, "stderr");
    let got = lines(stdout);
    let say = format!("{mode}: stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(
        got["proxy"], "http://127.0.0.1:3128 http://127.0.0.1:3128",
        "{say}"
    );
    assert_eq!(got["urllib"], "4", "{say}");
    assert_eq!(got["pandas"], "(3, 2)", "{say}");
    for host in [
        "127.0.0.1",
        "localhost",
        "[::1]",
        "0.0.0.0",
        "2130706433",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "[::ffff:127.0.0.1]",
    ] {
        assert_eq!(got[&format!("own {host}")], format!("{host} 403"), "{say}");
        assert!(
            stderr.contains(&format!("nsbox: egress to {host}:{} refused", server.port)),
            "{host} has no line; {say}"
        );
    }
    for host in [
        "127.0.0.1",
        "localhost",
        "[::1]",
        "0.0.0.0",
        "2130706433",
        "0x7f000001",
        "[::ffff:127.0.0.1]",
    ] {
        assert_eq!(
            got[&format!("own_connect {host}")],
            format!("{host} HTTP/1.1 403 Forbidden"),
            "{say}"
        );
        assert!(
            stderr.contains(&format!("nsbox: egress to {host}:{} refused", server.port)),
            "{host} has no line; {say}"
        );
    }
    assert_eq!(got["metadata"], "403", "{say}");
    assert_eq!(got["metadata_connect"], "HTTP/1.1 403 Forbidden", "{say}");
    assert_eq!(got["private"], "403", "{say}");
    assert!(got["connect_port"].contains("403"), "{say}");
    assert!(got["absolute_host"].contains("403"), "{say}");
    assert!(got["host_mismatch"].contains("403"), "{say}");
    // Inside a CONNECT tunnel: the first request's Host and a ClientHello's SNI.
    assert_eq!(got["tunnel_ok"], "HTTP/1.1 200 OK", "{say}");
    assert_eq!(got["tunnel_host"], "closed", "{say}");
    assert_eq!(got["tunnel_sni"], "closed", "{say}");
    assert_eq!(up.tls.load(Ordering::Relaxed), 0, "{say}");
    // CL.TE: hyper reads the body as chunked (Transfer-Encoding wins, RFC 9112 6.3), the
    // upstream gets the request re-framed, and the connection serves one request only:
    // what follows the chunked body never reaches the upstream. CL.CL is refused.
    assert!(got["smuggle_cl_cl"].contains("400"), "{say}");
    assert!(got["smuggle"].contains("403"), "{say}");
    assert!(
        got["smuggle_te_obfuscated"].contains("400")
            || got["smuggle_te_obfuscated"].contains("403"),
        "{say}"
    );
    assert_eq!(up.smuggled.load(Ordering::Relaxed), 0, "{say}");
    assert_eq!(got["slowloris"], "closed", "{say}");
    assert_ne!(got["upload"], "200", "{say}");
    assert!(!got["upload_tunnel"].contains("200"), "{say}");
    assert!(up.received.load(Ordering::Relaxed) <= 1 << 20, "{say}");
    assert_eq!(got["raw"], "PermissionError", "{say}");
    assert_eq!(got["udp_dns"], "OSError", "{say}");
    let flood: Vec<u32> = got["flood"]
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(flood[0] <= 40, "{say}");
    assert!(flood[1] >= 960, "{say}");
    for why in [
        "egress to 127.0.0.1:",
        "egress to 169.254.169.254:80 refused: a cloud metadata address",
        "egress to 169.254.169.254:443 refused: a cloud metadata address",
        "nsbox: egress refused: a malformed request",
        "nsbox: egress refused: a request head not complete within 2 s (a slow client)",
        "refused: both Transfer-Encoding and Content-Length (a request smuggling form)",
        "egress to inside.test:",
        "a private address (10.9.9.9)",
        "egress to upstream.test:22 refused: a port",
        "does not match the target",
        "upload limit (1 MiB)",
        "the TLS server name (evil.test) does not match the target",
        "the Host header inside the tunnel (inside.test:",
        "nsbox: egress refused: the run's connection limit (40) is reached",
    ] {
        assert!(stderr.contains(why), "{why} missing; {say}");
    }
    // Every connection is accounted for.
    let metrics = server.get("/metrics").text().unwrap();
    let refused = common::metric(
        &metrics,
        "nsbox_egress_connections_total{verdict=\"refused\"}",
    );
    assert!(refused.is_some_and(|n| n >= 960.0), "{metrics}");
    let down = common::metric(&metrics, "nsbox_egress_bytes_total{direction=\"down\"}");
    assert!(down.is_some_and(|n| n > 0.0), "{metrics}");
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.lines().any(|l| l.contains("egress connection")
            && l.contains("upstream.test")
            && l.contains("verdict=ok")),
        "{log}"
    );
    // The server is healthy afterwards.
    assert!(server.get("/v1/health").status().is_success());
}

#[test]
fn the_door_lets_through_what_is_allowed_and_nothing_else_warm() {
    red_team("warm");
}

#[test]
fn the_door_lets_through_what_is_allowed_and_nothing_else_cold() {
    red_team("cold");
}

const NO_DOOR: &str = r#"
import os, socket
print("vars", sorted(k for k in os.environ if "proxy" in k.lower()))
try:
    socket.create_connection(("127.0.0.1", 3128), timeout=5)
    print("listener", "open")
except OSError as e:
    print("listener", type(e).__name__)
"#;

#[test]
fn runs_without_a_policy_have_no_door_and_requests_only_narrow() {
    let up = Upstream::start();
    let plain = Server::start(&["--scanner", "off"]);
    let r = plain.run(NO_DOOR);
    let got = lines(common::text(&r, "stdout"));
    assert_eq!(got["vars"], "[]", "{r}");
    assert_eq!(got["listener"], "ConnectionRefusedError", "{r}");
    let (status, body) = plain.post(&json!({
        "code": "print(1)", "lang": "python", "network": {"allow": ["upstream.test"]}
    }));
    assert_eq!(status, 400, "{body}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, &up);
    let server = Server::start(&["--config", &cfg, "--scanner", "off"]);
    let (status, body) = server.post(&json!({
        "code": "print(1)", "lang": "python", "network": {"allow": ["evil.test", "upstream.test"]}
    }));
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("evil.test"), "{body}");
    // Narrowed to nothing: the sealed sandbox again.
    let r: Value =
        server.run_with(json!({"code": NO_DOOR, "lang": "python", "network": {"allow": []}}));
    let got = lines(common::text(&r, "stdout"));
    assert_eq!(got["vars"], "[]", "{r}");
    assert_eq!(got["listener"], "ConnectionRefusedError", "{r}");
    // Narrowed to the upstream: inside.test, allowed by the operator, is not by the request.
    let code = format!(
        "import urllib.request\n\
         print('ok', urllib.request.urlopen('http://upstream.test:{p}/data.csv').status)\n\
         try:\n    urllib.request.urlopen('http://inside.test:{p}/')\nexcept Exception as e:\n    print('narrowed', e.code)\n",
        p = up.port
    );
    let allow = format!("upstream.test:{}", up.port);
    let r = server.run_with(json!({"code": code, "lang": "python", "network": {"allow": [allow]}}));
    let got = lines(common::text(&r, "stdout"));
    assert_eq!(got.get("ok").map(String::as_str), Some("200"), "{r}");
    assert_eq!(got.get("narrowed").map(String::as_str), Some("403"), "{r}");
    assert!(
        common::text(&r, "stderr").contains("not in the allowlist"),
        "{r}"
    );
}

#[test]
fn a_session_takes_its_door_at_creation_and_each_call_hears_of_its_own_refusals() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, &up);
    let server = Server::start(&["--config", &cfg, "--scanner", "off"]);
    let (status, body) = server.create_session(&json!({"network": {"allow": ["evil.test"]}}));
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("evil.test"), "{body}");

    let (status, s) = server.create_session(&json!({}));
    assert_eq!(status, 201, "{s}");
    let sid = s["id"].as_str().unwrap();
    let call =
        |code: String| server.run_with(json!({"code": code, "lang": "python", "session_id": sid}));
    let fetch = format!(
        "import os, urllib.request\n\
         print('proxy', os.environ.get('HTTPS_PROXY'))\n\
         print('ok', urllib.request.urlopen('http://upstream.test:{}/data.csv').status)\n",
        up.port
    );
    let first = call(fetch.clone());
    let got = lines(common::text(&first, "stdout"));
    assert_eq!(got["proxy"], "http://127.0.0.1:3128", "{first}");
    assert_eq!(got["ok"], "200", "{first}");
    assert_eq!(common::text(&first, "stderr"), "", "{first}");
    let refused = call(format!(
        "import urllib.request\n\
         try:\n    urllib.request.urlopen('http://inside.test:{}/')\n\
         except Exception as e:\n    print('refused', e.code)\n",
        up.port
    ));
    assert_eq!(
        lines(common::text(&refused, "stdout"))["refused"],
        "403",
        "{refused}"
    );
    assert!(
        common::text(&refused, "stderr").contains("egress to inside.test"),
        "{refused}"
    );
    // The next call's stderr has its own refusals only, and the door is still open.
    let again = call(fetch);
    assert_eq!(
        lines(common::text(&again, "stdout"))["ok"],
        "200",
        "{again}"
    );
    assert_eq!(common::text(&again, "stderr"), "", "{again}");
    // A call cannot change its session's door.
    let (status, body) = server.post(&json!({
        "code": "print(1)", "lang": "python", "session_id": sid, "network": {"allow": []}
    }));
    assert_eq!(status, 400, "{body}");

    // A session narrowed to nothing is sealed.
    let (status, s) = server.create_session(&json!({"network": {"allow": []}}));
    assert_eq!(status, 201, "{s}");
    let sealed = server.run_with(json!({
        "code": NO_DOOR, "lang": "python", "session_id": s["id"].as_str().unwrap()
    }));
    let got = lines(common::text(&sealed, "stdout"));
    assert_eq!(got["vars"], "[]", "{sealed}");
    assert_eq!(got["listener"], "ConnectionRefusedError", "{sealed}");
}

/// `openssl s_server` for `secure.test` on 127.0.0.2, its certificate signed by a CA made
/// for the test; killed when dropped. With `files`, it serves them (`-WWW`) rather than its
/// status page.
struct TlsUpstream {
    child: std::process::Child,
    port: u16,
    /// The test CA's certificate (PEM), and its file.
    ca: String,
    ca_file: String,
    _dir: tempfile::TempDir,
}

fn openssl(args: &[&str], dir: &std::path::Path) {
    let made = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command (Debian's openssl package) makes the test's certificates");
    assert!(made.status.success(), "openssl {args:?}: {made:?}");
}

impl TlsUpstream {
    fn start(files: &[(&str, &[u8])]) -> TlsUpstream {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=nsbox test CA"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        openssl(&ca, d);
        let mut csr = vec!["req", "-new", "-subj", "/CN=secure.test"];
        csr.extend(ec);
        csr.extend(["-keyout", "key.pem", "-out", "leaf.csr"]);
        openssl(&csr, d);
        std::fs::write(
            d.join("leaf.ext"),
            "subjectAltName=DNS:secure.test\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
                "-out",
                "cert.pem",
            ],
            d,
        );
        let www = d.join("www");
        std::fs::create_dir(&www).unwrap();
        for (name, bytes) in files {
            std::fs::write(www.join(name), bytes).unwrap();
        }
        let port = TcpListener::bind("127.0.0.2:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let serve: &[&str] = if files.is_empty() {
            &["-www"]
        } else {
            &["-WWW", "-http_server_binmode"]
        };
        let child = std::process::Command::new("openssl")
            .args([
                "s_server",
                "-quiet",
                "-accept",
                &format!("127.0.0.2:{port}"),
            ])
            .args(serve)
            .arg("-cert")
            .arg(d.join("cert.pem"))
            .arg("-key")
            .arg(d.join("key.pem"))
            .current_dir(&www)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        assert!(
            common::wait_until(std::time::Duration::from_secs(10), || {
                TcpStream::connect(("127.0.0.2", port)).is_ok()
            }),
            "openssl s_server did not start"
        );
        TlsUpstream {
            child,
            port,
            ca: std::fs::read_to_string(d.join("ca.pem")).unwrap(),
            ca_file: d.join("ca.pem").to_str().unwrap().to_string(),
            _dir: dir,
        }
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn https_goes_through_the_door_end_to_end_and_another_server_name_does_not() {
    let tls = TlsUpstream::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        &dir,
        &format!(
            "[egress]\nallow = [\"secure.test:{p}\"]\nallow_ips = [\"127.0.0.2\"]\n\
             [egress.hosts]\n\"secure.test\" = \"127.0.0.2\"\n",
            p = tls.port
        ),
    );
    let server = Server::start(&["--config", &cfg, "--scanner", "off"]);
    let code = format!(
        r#"
import socket, ssl, urllib.request
ctx = ssl.create_default_context(cafile="ca.pem")
body = urllib.request.urlopen("https://secure.test:{p}/", context=ctx, timeout=20).read()
print("https", b"s_server" in body)
s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
s.sendall(b"CONNECT secure.test:{p} HTTP/1.1\r\nHost: secure.test:{p}\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
try:
    ctx.check_hostname = False
    ctx.wrap_socket(s, server_hostname="other.test")
    print("sni", "handshake")
except (ssl.SSLError, OSError) as e:
    print("sni", "refused")
"#,
        p = tls.port
    );
    let r = server.run_with(json!({
        "code": code, "lang": "python",
        "files": [{"path": "ca.pem", "content": tls.ca}],
    }));
    let got = lines(common::text(&r, "stdout"));
    assert_eq!(got.get("https").map(String::as_str), Some("True"), "{r}");
    assert_eq!(got.get("sni").map(String::as_str), Some("refused"), "{r}");
    assert!(
        common::text(&r, "stderr").contains("the TLS server name (other.test) does not match"),
        "{r}"
    );
}

#[test]
fn a_keys_egress_allow_narrows_its_runs_and_not_other_keys() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        &dir,
        &format!(
            "[[keys]]\nkey = \"narrow-key\"\negress_allow = []\n\
             [[keys]]\nkey = \"wide-key\"\n\
             [egress]\nallow = [\"upstream.test:{p}\"]\nallow_ips = [\"127.0.0.2\"]\n\
             [egress.hosts]\n\"upstream.test\" = \"127.0.0.2\"\n",
            p = up.port
        ),
    );
    let server = Server::start(&["--config", &cfg, "--scanner", "off"]);
    let run_as = |key: &str| -> Value {
        server
            .client()
            .post(format!("{}/v1/tools/code", server.base))
            .bearer_auth(key)
            .json(&json!({"code": NO_DOOR, "lang": "python"}))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    let narrow = run_as("narrow-key");
    let got = lines(common::text(&narrow, "stdout"));
    assert_eq!(got["vars"], "[]", "{narrow}");
    assert_eq!(got["listener"], "ConnectionRefusedError", "{narrow}");
    let wide = run_as("wide-key");
    let got = lines(common::text(&wide, "stdout"));
    assert_ne!(got["vars"], "[]", "{wide}");
}

/// The HTTPS cases of issue 24 against an upstream signed by a test CA: runs trust it
/// when (and only when) the operator's `[egress] ca_file` names it, in pandas, urllib and
/// requests alike, and a 50 MB download through the tunnel arrives whole.
fn https_with_the_operators_ca(mode: &str) {
    use sha2::Digest;
    let big: Vec<u8> = (0..50u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let digest = format!("{:x}", sha2::Sha256::digest(&big));
    let tls = TlsUpstream::start(&[("data.csv", CSV.as_bytes()), ("big.bin", &big)]);
    let dir = tempfile::tempdir().unwrap();
    let policy = |extra: &str| {
        format!(
            "[egress]\nallow = [\"secure.test:{p}\"]\nallow_ips = [\"127.0.0.2\"]\n{extra}\
             [egress.hosts]\n\"secure.test\" = \"127.0.0.2\"\n",
            p = tls.port
        )
    };
    let code = format!(
        r#"
import hashlib, os, urllib.request
U = "https://secure.test:{p}"
def attempt(name, f):
    try:
        print(name, f())
    except Exception as e:
        print(name, "failed", type(e).__name__, "CERTIFICATE_VERIFY_FAILED" in repr(e))
import pandas as pd
attempt("pandas", lambda: pd.read_csv(U + "/data.csv").shape)
attempt("urllib", lambda: urllib.request.urlopen(U + "/data.csv", timeout=30).read().decode().count("\n"))
import requests
attempt("requests", lambda: (requests.get(U + "/data.csv", timeout=30).text.count("\n")))
def big():
    h, n = hashlib.sha256(), 0
    with requests.get(U + "/big.bin", stream=True, timeout=120) as r:
        for c in r.iter_content(1 << 20):
            h.update(c)
            n += len(c)
    return f"{{n}} {{h.hexdigest()}}"
attempt("big", big)
print("public", requests.certs.where() != os.environ.get("REQUESTS_CA_BUNDLE"))
"#,
        p = tls.port
    );
    let run = |config: &str| {
        let cfg = config_file(&dir, config);
        let server = Server::start(&["--config", &cfg, "--scanner", "off", "--mode", mode]);
        let r = server.run_with(json!({"code": code, "lang": "python", "timeout": 200}));
        (lines(common::text(&r, "stdout")), r)
    };
    let (got, r) = run(&policy(&format!("ca_file = \"{}\"\n", tls.ca_file)));
    assert_eq!(
        got.get("pandas").map(String::as_str),
        Some("(3, 2)"),
        "{mode}: {r}"
    );
    assert_eq!(
        got.get("urllib").map(String::as_str),
        Some("4"),
        "{mode}: {r}"
    );
    assert_eq!(
        got.get("requests").map(String::as_str),
        Some("4"),
        "{mode}: {r}"
    );
    assert_eq!(
        got.get("big"),
        Some(&format!("{} {digest}", big.len())),
        "{mode}: {r}"
    );
    assert_eq!(
        got.get("public").map(String::as_str),
        Some("True"),
        "{mode}: {r}"
    );
    // Without `ca_file`, the same upstream is a stranger to every client.
    let (got, r) = run(&policy(""));
    for client in ["pandas", "urllib", "requests", "big"] {
        assert_eq!(
            got.get(client).map(String::as_str),
            Some(if client == "requests" || client == "big" {
                "failed SSLError True"
            } else {
                "failed URLError True"
            }),
            "{mode} {client}: {r}"
        );
    }
}

#[test]
fn https_to_an_upstream_of_the_operators_ca_warm() {
    https_with_the_operators_ca("warm");
}

#[test]
fn https_to_an_upstream_of_the_operators_ca_cold() {
    https_with_the_operators_ca("cold");
}

#[test]
fn a_sessions_calls_trust_the_operators_ca_and_a_tls_tunnel_holds_the_download_cap() {
    let big = vec![7u8; 3 << 20];
    let tls = TlsUpstream::start(&[("data.csv", CSV.as_bytes()), ("big.bin", &big)]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        &dir,
        &format!(
            "[egress]\nallow = [\"secure.test:{p}\"]\nallow_ips = [\"127.0.0.2\"]\n\
             max_download_mib = 1\nca_file = \"{ca}\"\n\
             [egress.hosts]\n\"secure.test\" = \"127.0.0.2\"\n",
            p = tls.port,
            ca = tls.ca_file
        ),
    );
    let server = Server::start(&["--config", &cfg, "--scanner", "off"]);
    let (status, s) = server.create_session(&json!({}));
    assert_eq!(status, 201, "{s}");
    let sid = s["id"].as_str().unwrap();
    let call =
        |code: String| server.run_with(json!({"code": code, "lang": "python", "session_id": sid}));
    // Twice: the second call finds the trust file the first one wrote.
    for _ in 0..2 {
        let r = call(format!(
            "import pandas as pd\n\
             print('pandas', pd.read_csv('https://secure.test:{}/data.csv').shape)\n",
            tls.port
        ));
        let got = lines(common::text(&r, "stdout"));
        assert_eq!(got.get("pandas").map(String::as_str), Some("(3, 2)"), "{r}");
    }
    // Through the spliced tunnel: cut at the cap, however the client reads the end.
    let r = call(format!(
        "import requests\n\
         try:\n    print('big', len(requests.get('https://secure.test:{}/big.bin', timeout=60).content))\n\
         except Exception as e:\n    print('big', 'failed', type(e).__name__)\n",
        tls.port
    ));
    let got = lines(common::text(&r, "stdout"));
    let big_read = got.get("big").cloned().unwrap_or_default();
    assert!(
        big_read.starts_with("failed") || big_read.parse::<usize>().is_ok_and(|n| n <= 1 << 20),
        "{r}"
    );
    assert!(
        common::text(&r, "stderr").contains("the run's download limit (1 MiB) is reached"),
        "{r}"
    );
}
