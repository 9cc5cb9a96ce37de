"""api/openapi.yaml checked against a running nsbox with schemathesis: generated requests
(valid and invalid) must get documented statuses and responses that match the schema.

The generated code really runs in the sandbox. So that no run can take long, schemathesis
talks to a server of its own started with `--max-timeout 3 --default-timeout 3`, and the
copy of the schema it gets says 3 s is the largest timeout (otherwise the negative checks
would rightly complain that 4 s is accepted).

`POST /v1/tools/code` is fuzzed with `files` and `session_id` too (a random `session_id`
gets 404, and the schema's example, which names node nsbox1, 421: both positive and
negative checks accept those, see schemathesis.toml). The `/v1/sessions` operations
are not fuzzed: they are stateful (each creation forks a sandbox that lives for minutes,
and the session limits answer 429 once a few are open), and random ids only ever reach
their 404. tests/sessions.rs covers them against the real server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import jsonschema_rs
import pytest
import yaml

from nsbox_server import nsbox

HERE = Path(__file__).resolve().parent
SCHEMA = HERE.parents[1] / "api" / "openapi.yaml"
MAX_TIMEOUT_S = 3
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "unsupported_method",
    "allow_header_conformance",
]
# Checks that only hold when the server requires a key.
AUTH_CHECKS = ["ignored_auth", "missing_required_header"]


def load_schema() -> dict:
    with SCHEMA.open() as f:
        return yaml.safe_load(f)


def schema_for_short_runs(path: Path, libraries: list[str] | None = None) -> Path:
    """Writes a copy of the schema whose `timeout` (and its examples) stay within
    MAX_TIMEOUT_S, whose `files` hold at most one file, without `network`, and, given the server's library
    list, whose `libraries` are those (the document itself cannot list them: they come
    from the root filesystem)."""
    doc = load_schema()
    request = doc["components"]["schemas"]["ToolRequest"]["properties"]
    if libraries is not None:
        request["libraries"]["items"]["enum"] = libraries
    # Two files with the same path, or one inside the other (`a` and `a/b`), are refused
    # with 400, a rule across items that JSON Schema cannot say; hypothesis draws such
    # pairs often, and positive_data_acceptance would fail on them. One file cannot clash.
    request["files"]["maxItems"] = 1
    # `network` depends on the server's `[egress]` (this one has none: any host is refused
    # with 400) and is refused beside `session_id` (a session takes its hosts when it is
    # created): rules JSON Schema cannot say. tests/egress.rs covers it; unknown fields
    # are ignored, so leaving it out of the fuzzed schema loses nothing else.
    del request["network"]
    timeout = request["timeout"]
    timeout["maximum"] = MAX_TIMEOUT_S
    timeout["example"] = min(timeout["example"], MAX_TIMEOUT_S)
    body = doc["paths"]["/v1/tools/code"]["post"]["requestBody"]["content"]["application/json"]
    for example in body["examples"].values():
        if "timeout" in example["value"]:
            example["value"]["timeout"] = min(example["value"]["timeout"], MAX_TIMEOUT_S)
    path.write_text(json.dumps(doc))
    return path


def run_schemathesis(schema: Path, url: str, checks: list[str], workdir: Path) -> None:
    seed = os.environ.get("NSBOX_SDK_SEED", "1")
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "--no-color",
        "run",
        str(schema),
        "--url",
        url,
        "--header",
        "Authorization: Bearer nsbox-test-key-1",
        "--checks",
        ",".join(checks),
        "--phases",
        "examples,coverage,fuzzing",
        # Sessions are stateful and limited (see the module's docstring); tests/sessions.rs
        # covers them.
        "--exclude-path-regex",
        "^/v1/sessions",
        "--max-examples",
        os.environ.get("NSBOX_SDK_MAX_EXAMPLES", "30"),
        "--seed",
        seed,
        "--generation-database",
        "none",
        "--workers",
        "2",
        "--request-timeout",
        "20",
        # A run is limited to 3 s; anything much slower is a hang.
        "--max-response-time",
        "10",
    ]
    try:
        out = subprocess.run(
            cmd, cwd=workdir, capture_output=True, text=True, timeout=150, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"schemathesis ran for more than {e.timeout} s:\n{e.stdout or ''}")
    assert out.returncode == 0, f"schemathesis failed (seed {seed}):\n{out.stdout}\n{out.stderr}"


def server_libraries(url: str, headers: dict | None = None) -> list[str]:
    listing = httpx.get(url + "/v1/tools/code/libraries", headers=headers or {}, timeout=10).json()
    return sorted(listing["libraries"]) + sorted(listing["standard_library"])


def test_schemathesis_against_nsbox(tmp_path: Path) -> None:
    with nsbox("--max-timeout", str(MAX_TIMEOUT_S), "--default-timeout", str(MAX_TIMEOUT_S)) as url:
        schema = schema_for_short_runs(tmp_path / "openapi.json", server_libraries(url))
        run_schemathesis(schema, url, CHECKS, tmp_path)


def test_schemathesis_against_nsbox_with_a_key(tmp_path: Path) -> None:
    with nsbox(
        "--max-timeout",
        str(MAX_TIMEOUT_S),
        "--default-timeout",
        str(MAX_TIMEOUT_S),
        "--api-key",
        "nsbox-test-key-1",
    ) as url:
        libraries = server_libraries(url, {"Authorization": "Bearer nsbox-test-key-1"})
        schema = schema_for_short_runs(tmp_path / "openapi.json", libraries)
        run_schemathesis(schema, url, CHECKS + AUTH_CHECKS, tmp_path)


def test_the_response_examples_match_the_response_schema() -> None:
    doc = load_schema()
    op = doc["paths"]["/v1/tools/code"]["post"]
    media = op["responses"]["200"]["content"]["application/json"]
    schemas = doc["components"]["schemas"]
    # ToolResponse refers to other components (Plot, OutputFile, ...); carry them along as
    # definitions so the validator resolves them.
    tool_response = json.loads(
        json.dumps({**schemas["ToolResponse"], "definitions": schemas}).replace(
            '"#/components/schemas/', '"#/definitions/'
        )
    )
    validator = jsonschema_rs.Draft4Validator(tool_response)
    assert len(media["examples"]) >= 4
    for name, example in media["examples"].items():
        errors = [e.message for e in validator.iter_errors(example["value"])]
        assert not errors, f"example {name}: {errors}"


def test_nsbox_serves_this_document(base_url: str) -> None:
    r = httpx.get(base_url + "/openapi.yaml", timeout=10)
    assert r.status_code == 200
    assert r.text == SCHEMA.read_text()
