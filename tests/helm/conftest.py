"""Fixtures for the chart tests; the binary fixture is shared (tests/conftest.py)."""

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def chart_path():
    return ROOT / "helm" / "llm-router"
