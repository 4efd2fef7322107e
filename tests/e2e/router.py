"""Helpers the e2e tests share: the real binary started on ephemeral ports, and a failed call's
rich error details read as a client in Python reads them."""

import os
import re
import subprocess
import threading

from google.rpc import error_details_pb2
from grpc_status import rpc_status


def start(llm_router_bin, *args):
    """Starts llm-router with `args` on ephemeral ports; returns the process and its gRPC address."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMROUTER")}
    env["RUST_LOG"] = "info"
    env["LLMROUTER_LOG_FORMAT"] = "text"
    proc = subprocess.Popen(
        [str(llm_router_bin), *args, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
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
    return proc, addr


def stop(proc):
    """SIGTERM, and the clean exit the server owes it."""
    proc.terminate()
    assert proc.wait(timeout=20) == 0, "the server exits 0 on SIGTERM"


def details(err, pb2):
    """The ErrorInfo and AttemptLog details of a failed call."""
    status = rpc_status.from_call(err)
    assert status is not None, "the error carries grpc-status-details-bin"
    info, log = error_details_pb2.ErrorInfo(), pb2.AttemptLog()
    for d in status.details:
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            d.Unpack(info)
        elif d.Is(pb2.AttemptLog.DESCRIPTOR):
            d.Unpack(log)
    return info, log
