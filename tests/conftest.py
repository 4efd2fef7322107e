"""Fixtures shared by the pytest suites (tests/helm, tests/e2e)."""

import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def llm_router_bin():
    """The binary `cargo test` built; scripts/test.sh builds it before running pytest."""
    path = pathlib.Path(os.environ.get("LLMROUTER_BIN", ROOT / "target" / "debug" / "llm-router"))
    if not path.exists():
        pytest.fail(f"{path} does not exist: run `cargo build` first (scripts/test.sh does)")
    return path
