"""The polyglot examples (examples/), each run as a service owner would run it, against the real
binary on its built-in default config: a streamed call with a tool, then a failed call whose
AttemptLog is read from the status details. Both print the same lines."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

EXPECTED = [
    'tool call 0: get_weather {"city":"mock"}',
    "finish: FINISH_REASON_TOOL_CALLS",
    "attempt: story-teller ATTEMPT_OUTCOME_MOCK_TIMEOUT",
    "failed: DEADLINE_EXCEEDED",
]


def run(cmd, cwd):
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout.splitlines()


def test_python_client(server):
    assert run([sys.executable, "examples/python/client.py", server], ROOT) == EXPECTED


GO_CLIENT = ROOT / "examples" / "go" / "client"


def test_go_client(server):
    if not GO_CLIENT.is_file():
        pytest.fail("run examples/go/build.sh first (scripts/test.sh does)")
    assert run([str(GO_CLIENT), server], ROOT) == EXPECTED


def test_typescript_client(server):
    node = ROOT / "examples" / "node"
    if not (node / "node_modules").is_dir() or not (node / "gen").is_dir():
        pytest.fail("run `npm ci && npx buf generate` in examples/node first (scripts/test.sh does)")
    # Type-checked first: the generated stubs and the client agree.
    run(["npx", "--no-install", "tsc", "--noEmit"], node)
    assert run(["npx", "--no-install", "tsx", "client.ts", server], node) == EXPECTED
