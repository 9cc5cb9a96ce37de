# nsbox's package installer: the code of an installer run (src/packages/mod.rs puts ARGS
# above). It runs in a sandbox like any run, as nobody, with a door to the index only. The
# installed tree is written to ./site and comes back as the run's output files; the last
# line of stdout is a JSON report the server reads.
import contextlib
import io
import json
import os
import sys

TARGET = "site"
REPORT = "/tmp/nsbox-pip-report.json"
LOCKED = "/tmp/nsbox-locked.txt"


def finish(report):
    print(json.dumps(report))
    sys.exit(0)


def refused(package, reason):
    finish({"outcome": "refused", "package": package, "reason": reason})


def links(name):
    """The file names the index lists for `name`, or None when it has no such project."""
    import re
    import urllib.error
    import urllib.request

    url = ARGS["index"].rstrip("/") + "/" + name + "/"
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            page = r.read(4 << 20).decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise
    return [m.split("#")[0].rsplit("/", 1)[-1] for m in re.findall(r'href="([^"]+)"', page)]


def explain(requirements, log):
    """Why pip failed, naming the package."""
    text = log.lower()
    if "no space left on device" in text or "disk quota" in text:
        refused(", ".join(requirements), "the install is past its size cap")
    if "do not match the hashes" in text or "hash mismatch" in text:
        for req in requirements:
            if req.split("==")[0] in text:
                refused(req, "a downloaded wheel does not match its published sha256 hash")
        refused(", ".join(requirements), "a downloaded wheel does not match its published sha256 hash")
    for req in requirements:
        name, _, version = req.partition("==")
        try:
            files = links(name)
        except Exception as e:  # the index itself failed: say so, whatever the package
            refused(req, f"the package index could not be read ({e})")
        if files is None:
            refused(req, "no such package on the package index")
        wheels = [f for f in files if f.endswith(".whl")]
        if version and not any(f"-{version}-" in f or f"-{version}." in f for f in files):
            refused(req, f"the package index has no version {version}")
        if not wheels:
            refused(req, "no wheel for this platform (only source distributions, which nsbox does not build)")
    last = [line for line in log.splitlines() if line.strip()]
    refused(", ".join(requirements), "pip could not install it: " + (last[-1].strip() if last else "no reason given"))


def pip(pip_main, argv):
    """Runs pip in this interpreter; on failure, says why (naming the package) and ends."""
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            status = pip_main(argv)
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 1
        except OSError as e:
            print(f"{e}")
            status = 1
    if status != 0:
        # For the operator's log; the client gets the reason only.
        sys.stderr.write(log.getvalue()[-4000:])
        explain(ARGS["requirements"], log.getvalue())


def resolved(path):
    """The distributions a pip report lists: name, version, sha256."""
    with open(path) as f:
        report = json.load(f)
    out = []
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        hashes = (item.get("download_info", {}).get("archive_info", {}) or {}).get("hashes", {}) or {}
        out.append({"name": meta.get("name", "?"), "version": meta.get("version", "?"), "sha256": hashes.get("sha256")})
    return out


def main():
    sys.path.insert(0, ARGS["pip"])
    from pip._internal.cli.main import main as pip_main

    common = [
        "--isolated", "--no-input", "--disable-pip-version-check", "--no-cache-dir",
        "--progress-bar", "off", "--only-binary=:all:", "--index-url", ARGS["index"],
    ]
    proxy = os.environ.get("HTTPS_PROXY", "")
    if proxy:
        common += ["--proxy", proxy]
    if os.environ.get("SSL_CERT_FILE"):
        # The door's trust (certifi's roots and the operator's `ca_file`), set by the harness.
        common += ["--cert", os.environ["SSL_CERT_FILE"]]
    if ARGS["index"].startswith("http://"):
        # The operator chose a plain-HTTP index (a mirror on its own network); pip ignores
        # one unless told. The wheels' hashes on its pages are still checked.
        common += ["--trusted-host", ARGS["trusted_host"]]
    requirements = ARGS["requirements"]
    if all("==" in r for r in requirements):
        # Every name pinned: resolve first, then install exactly that set in pip's
        # hash-checking mode (--require-hashes), each wheel held to the sha256 it was
        # resolved with, dependencies included and none added.
        pip(pip_main, ["install", "--dry-run", "--ignore-installed", *common, "--report", REPORT, *requirements])
        locked = []
        items = resolved(REPORT)
        if len(items) > ARGS["max_packages"]:
            refused(", ".join(ARGS["requirements"]), f"the install needs {len(items)} packages; this server's cap is {ARGS['max_packages']}")
        for item in items:
            if not item["sha256"]:
                refused(item["name"], "no sha256 for its wheel; a pinned install needs every wheel's hash")
            locked.append(f"{item['name']}=={item['version']} --hash=sha256:{item['sha256']}")
        with open(LOCKED, "w") as f:
            f.write("\n".join(locked) + "\n")
        requirements = ["--require-hashes", "--no-deps", "-r", LOCKED]
    pip(pip_main, ["install", *common, "--no-compile", "--target", TARGET, "--report", REPORT, *requirements])
    installed = resolved(REPORT)
    if len(installed) > ARGS["max_packages"]:
        refused(", ".join(ARGS["requirements"]), f"the install needs {len(installed)} packages; this server's cap is {ARGS['max_packages']}")
    # Compiled once here, checked by nothing at import: the set is read-only and keyed by
    # its content, so a run imports it without compiling or writing anything.
    import compileall
    import py_compile

    with contextlib.redirect_stdout(io.StringIO()):
        compileall.compile_dir(TARGET, quiet=2, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    finish({"outcome": "installed", "packages": installed})


main()
