"""Shared fixtures for the chart tests: the chart path and the llm-router binary."""

import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def chart_path():
    return ROOT / "helm" / "llm-router"


@pytest.fixture(scope="session")
def llm_router_bin():
    """The binary `cargo test` built; scripts/test.sh builds it before running pytest."""
    path = pathlib.Path(os.environ.get("LLMROUTER_BIN", ROOT / "target" / "debug" / "llm-router"))
    if not path.exists():
        pytest.fail(f"{path} does not exist: run `cargo build` first (scripts/test.sh does)")
    return path
