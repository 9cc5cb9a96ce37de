//! The spec's examples through the real server, field for field (timings and random numbers aside).

mod common;

use base64::Engine;
use common::Server;
use serde_json::json;

/// The spec's examples, shared with the scanner corpus, the SDK suite and the benchmark.
const PANDAS: &str = include_str!("fixtures/spec/pandas.py");

const PLOT: &str = include_str!("fixtures/spec/plot.py");

const SCIPY: &str = include_str!("fixtures/spec/scipy.py");

fn assert_clean_success(r: &serde_json::Value) {
    assert_eq!(r["success"], true, "{r:#}");
    assert_eq!(r["stderr"], "", "{r:#}");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["security_checked"], true);
    assert_eq!(r["violations"], json!([]));
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&png[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes(png[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

fn decode(plot: &serde_json::Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(plot["content_base64"].as_str().unwrap())
        .unwrap()
}

#[test]
fn pandas_example() {
    let server = Server::start(&[]);
    let r = server.run(PANDAS);
    assert_clean_success(&r);
    assert_eq!(
        r["stdout"],
        "Average age: 29.5\nAverage score: 86.25\n\nTop scorer: David\n"
    );
    assert_eq!(r["plots"], json!([]));
}

#[test]
fn plot_example_returns_one_png_of_the_figure_size() {
    let server = Server::start(&[]);
    let r = server.run(PLOT);
    assert_clean_success(&r);
    assert_eq!(r["stdout"], "Plot generated successfully!\n");
    let plots = r["plots"].as_array().unwrap();
    assert_eq!(plots.len(), 1);
    assert_eq!(plots[0]["format"], "png");
    assert_eq!(plots[0]["filename"], "plot_1.png");
    // figsize (10, 6) at the default 100 dpi.
    assert_eq!(png_size(&decode(&plots[0])), (1000, 600));
}

/// Defines png_facts(png): for one PNG, as JSON, what two encodings of the same figure
/// must share, as a run's Pillow reads them (every chunk's CRC checked on the way): the
/// chunks in order (a run of IDATs as one), the colour mode, the size, a digest of the
/// pixels as RGBA, the resolution and matplotlib's Software text.
const PNG_FACTS: &str = "import hashlib, io, json, struct, zlib\n\
from PIL import Image\n\
def png_facts(png):\n    \
    kinds, at = [], 8\n    \
    while at < len(png):\n        \
        (size,) = struct.unpack('>I', png[at:at + 4])\n        \
        body = png[at + 4:at + 8 + size]\n        \
        assert struct.unpack('>I', png[at + 8 + size:at + 12 + size])[0] == zlib.crc32(body), body[:4]\n        \
        if kinds[-1:] != [body[:4].decode()]:\n            \
            kinds.append(body[:4].decode())\n        \
        at += 12 + size\n    \
    im = Image.open(io.BytesIO(png))\n    \
    im.load()\n    \
    return json.dumps({'chunks': kinds, 'mode': im.mode, 'size': im.size,\n        \
        'pixels': hashlib.sha256(im.convert('RGBA').tobytes()).hexdigest(),\n        \
        'dpi': im.info.get('dpi'), 'software': im.info.get('Software')})\n";

#[test]
fn a_shown_figure_has_the_pixels_resolution_and_text_of_matplotlibs_own_png() {
    // The spec's plot (opaque, 600 rows: 37 strips of the writer's 16 and a part) and a
    // transparent figure shorter than one strip, each first saved in the run by
    // matplotlib's own PNG writer (Pillow's), then shown.
    let server = Server::start(&[]);
    let figure = PLOT.replace("plt.show()\n", "");
    let shown = server.run(&format!(
        "{PNG_FACTS}{figure}\
         transparent = plt.figure(figsize=(3, 0.13))\n\
         transparent.patch.set_alpha(0.0)\n\
         plt.plot([1, 3, 2])\n\
         for fig in (plt.figure(1), transparent):\n    \
             buf = io.BytesIO()\n    \
             fig.savefig(buf, format='png')\n    \
             print(png_facts(buf.getvalue()))\n\
         plt.show()\n"
    ));
    assert_clean_success(&shown);
    let facts = |stdout: &serde_json::Value| -> Vec<serde_json::Value> {
        let lines = stdout.as_str().unwrap().lines();
        let json = lines.filter(|l| l.starts_with('{'));
        json.map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let own = facts(&shown["stdout"]);
    let plots = shown["plots"].as_array().unwrap();
    assert_eq!((own.len(), plots.len()), (2, 2), "{shown:#}");

    // Each shown PNG read back by Pillow in a second run.
    let files: Vec<_> = plots
        .iter()
        .enumerate()
        .map(|(i, p)| json!({"path": format!("shown{i}.png"), "content_base64": p["content_base64"]}))
        .collect();
    let read = server.run_with(json!({
        "code": format!("{PNG_FACTS}for i in range(2):\n    print(png_facts(open(f'shown{{i}}.png', 'rb').read()))\n"),
        "lang": "python",
        "files": files,
    }));
    assert_clean_success(&read);
    let back = facts(&read["stdout"]);
    assert_eq!(back.len(), 2, "{read:#}");

    // Matplotlib writes RGBA; the opaque figure comes back as RGB, the transparent one
    // keeps its alpha, and both have matplotlib's chunks, pixels, resolution and text.
    for (mine, theirs) in back.iter().zip(&own) {
        assert_eq!(theirs["mode"], "RGBA");
        for same in ["chunks", "size", "pixels", "dpi", "software"] {
            assert_eq!(mine[same], theirs[same], "{same}: {mine} against {theirs}");
        }
    }
    assert_eq!(back[0]["mode"], "RGB");
    assert_eq!(back[0]["size"], json!([1000, 600]));
    assert_eq!(back[1]["mode"], "RGBA");
    assert_eq!(back[1]["size"], json!([300, 13]));
    assert_eq!(
        back[0]["chunks"],
        json!(["IHDR", "tEXt", "pHYs", "IDAT", "IEND"])
    );
    assert!(back[0]["software"]
        .as_str()
        .unwrap()
        .starts_with("Matplotlib version"));
}

#[test]
fn scipy_example() {
    let server = Server::start(&[]);
    let r = server.run(SCIPY);
    assert_clean_success(&r);
    let stdout = r["stdout"].as_str().unwrap();
    let labels: Vec<&str> = stdout
        .lines()
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(
        labels,
        ["Mean", "Std Dev", "Median", "T-statistic", "P-value"]
    );
    let value = |i: usize| -> f64 {
        stdout
            .lines()
            .nth(i)
            .unwrap()
            .split(": ")
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!((90.0..110.0).contains(&value(0)), "{stdout}");
    assert!((12.0..18.0).contains(&value(1)), "{stdout}");
    assert!((0.0..=1.0).contains(&value(4)), "{stdout}");
}

#[test]
fn figures_are_returned_once_each_in_creation_order() {
    let server = Server::start(&[]);
    let r = server.run(
        "import matplotlib.pyplot as plt\n\
         plt.figure(figsize=(2, 1)); plt.plot([1, 2])\n\
         plt.figure(figsize=(3, 1)); plt.plot([2, 1])\n\
         plt.show()\n\
         plt.figure(figsize=(4, 1)); plt.bar(['a'], [1])\n\
         plt.savefig('/tmp/mine.png')\n\
         from pathlib import Path; print(Path('/tmp/mine.png').stat().st_size > 0)",
    );
    assert_clean_success(&r);
    assert_eq!(r["stdout"], "True\n");
    let sizes: Vec<(u32, u32)> = r["plots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| png_size(&decode(p)))
        .collect();
    assert_eq!(sizes, [(200, 100), (300, 100), (400, 100)]);
    let names: Vec<&str> = r["plots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["filename"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["plot_1.png", "plot_2.png", "plot_3.png"]);
}

#[test]
fn seaborn_figure_is_returned() {
    let server = Server::start(&[]);
    let r = server.run(
        "import seaborn as sns, pandas as pd\n\
         df = pd.DataFrame({'x': [1, 2, 3, 4], 'y': [2, 4, 1, 3]})\n\
         sns.scatterplot(data=df, x='x', y='y')",
    );
    assert_clean_success(&r);
    assert_eq!(r["plots"].as_array().unwrap().len(), 1);
}

#[test]
fn security_violation_example_is_refused_exactly_as_the_spec_shows() {
    let server = Server::start(&[]);
    let r = server.run("import os\nos.system('ls -la')");
    assert_eq!(r["success"], false);
    assert_eq!(r["stdout"], "");
    assert_eq!(r["stderr"], "Security violations detected");
    assert_eq!(r["exit_code"], -1);
    assert_eq!(r["security_checked"], true);
    assert_eq!(
        r["violations"],
        json!(["Operating system interface", "os.system line execution"])
    );
    assert_eq!(r["plots"], json!([]));
}

#[test]
fn report_mode_runs_the_code_and_lists_the_violations() {
    let server = Server::start(&["--scanner", "report"]);
    let r = server.run("import os\nprint(os.getuid())");
    assert_eq!(r["success"], true, "{r:#}");
    assert_eq!(r["stdout"], "65534\n");
    assert_eq!(r["violations"], json!(["Operating system interface"]));
}

#[test]
fn libraries_are_listed_from_the_root_filesystem_and_checked() {
    let server = Server::start(&[]);
    let listing: serde_json::Value = server.get("/v1/tools/code/libraries").json().unwrap();
    let lock = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/rootfs/requirements.lock"
    ))
    .unwrap();
    for pin in lock
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|l| l.contains("=="))
    {
        let (name, version) = pin.split_once("==").unwrap();
        if name == "pip" {
            // The installer sandbox's, outside every run's sys.path: not a library of runs.
            assert!(listing["libraries"].get("pip").is_none(), "{listing}");
            continue;
        }
        assert_eq!(listing["libraries"][name.to_lowercase()], version, "{name}");
    }
    assert!(listing["standard_library"]
        .as_array()
        .unwrap()
        .contains(&json!("json")));
    let ok = server
        .run_with(json!({"code": "print(1)", "lang": "python", "libraries": ["numpy", "json"]}));
    assert_eq!(ok["stdout"], "1\n");
    let (status, err) = server
        .post(&json!({"code": "print(1)", "lang": "python", "libraries": ["numpy", "left-pad"]}));
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown libraries: left-pad"),
        "{err}"
    );
}

#[test]
fn a_public_listener_without_keys_refuses_to_start() {
    common::require_root();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nsbox"))
        .args(["serve", "--listen", "0.0.0.0:0", "--rootfs"])
        .arg(common::rootfs())
        .env_remove("NSBOX_API_KEYS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without API keys"));
}

#[test]
fn guard_rails_explain_what_the_sandbox_blocks_and_spare_library_internals() {
    // Report mode: the scanner lets the code run, the guard rails are on.
    let server = Server::start(&["--scanner", "report"]);
    let r = server.run("import subprocess\nsubprocess.run(['ls'])");
    assert_eq!(r["exit_code"], 1, "{r:#}");
    let stderr = r["stderr"].as_str().unwrap();
    assert!(
        stderr.contains(
            "PermissionError: nsbox: starting other programs is not allowed in this sandbox"
        ),
        "{stderr}"
    );
    let r = server.run("import socket\nsocket.create_connection(('192.0.2.1', 80), timeout=1)");
    assert!(
        r["stderr"]
            .as_str()
            .unwrap()
            .contains("nsbox: network access is not allowed"),
        "{r:#}"
    );
    let r = server.run("import ctypes\nctypes.CDLL(None)");
    assert!(
        r["stderr"]
            .as_str()
            .unwrap()
            .contains("loading native libraries"),
        "{r:#}"
    );
    // pandas and matplotlib use os and ctypes internally and must keep working.
    let r = server.run(
        "import pandas as pd, matplotlib.pyplot as plt, numpy as np\n\
         print(pd.DataFrame({'a': [1, 2]})['a'].sum())\nplt.plot(np.arange(3))",
    );
    assert_eq!(r["stdout"], "3\n", "{r:#}");
    assert_eq!(r["plots"].as_array().unwrap().len(), 1);
}
