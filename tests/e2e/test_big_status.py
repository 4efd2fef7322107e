"""A failed call with a long chain, every upstream answering a verbose HTML 503 page, read by a
grpcio client with default options: the router's status (its code, ErrorInfo and AttemptLog)
reaches the client, not the library's own RESOURCE_EXHAUSTED for trailers over its 8 KiB limit."""

import http.server
import threading

import grpc
import pytest

import router as binary

GROUPS = 6
RETRIES = 10  # 11 attempts a group (no retry budget): 66 in all


class VerboseOutage(http.server.BaseHTTPRequestHandler):
    """Every request: 503 with a 4 KB HTML page, as a load balancer in front of a dead backend."""

    page = ("<html><head><title>503 Service Unavailable</title></head><body>"
            + "<p>The server is temporarily unable to service your request.</p>" * 60
            + "</body></html>").encode()
    requests = 0

    def do_POST(self):
        VerboseOutage.requests += 1
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(503)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args):
        pass


@pytest.fixture
def outage():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), VerboseOutage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.fixture
def router(llm_router_bin, outage, tmp_path):
    deployments = "\n".join(
        f"  - {{ model_name: g{i}, litellm_params: {{ model: openai/m{i}, api_base: \"{outage}\", "
        f"api_key: k, max_retries: {RETRIES}, timeout: 5s }} }}"
        for i in range(GROUPS)
    )
    chain = ", ".join(f"g{i}" for i in range(1, GROUPS))
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model_list:\n{deployments}\n"
        "router_settings:\n"
        "  timeout: 60s\n"
        "  retry_backoff_initial: 1ms\n"
        "  retry_backoff_max: 2ms\n"
        "  retry_budget: { max_tokens: 0 }\n"
        f"  fallbacks:\n    - g0: [{chain}]\n"
    )
    proc, addr = binary.start(llm_router_bin, "--config", str(config))
    yield addr
    binary.stop(proc)


def test_a_default_grpcio_client_reads_the_status_of_a_long_failed_chain(router, stubs):
    pb2, grpc_pb2 = stubs
    with grpc.insecure_channel(router) as channel:  # default options: 8 KiB metadata soft limit
        stub = grpc_pb2.RouterServiceStub(channel)
        request = pb2.CompleteRequest(
            model="g0", messages=[pb2.ChatMessage(role=pb2.ROLE_USER, content="Hi")])
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as e:
                stub.Complete(request, timeout=30)
            err = e.value
            assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
            info, log = binary.details(err, pb2)
            assert info.reason == "FALLBACKS_EXHAUSTED"
            # The whole count, though the log may leave some out.
            assert info.metadata["attempts"] == str(GROUPS * (RETRIES + 1))
            assert len(log.attempts) + log.omitted == GROUPS * (RETRIES + 1)
            assert log.attempts[0].deployment.startswith("g0")
            assert log.attempts[-1].deployment.startswith(f"g{GROUPS - 1}")
            assert log.attempts[-1].upstream_status == 503
    assert VerboseOutage.requests == 5 * GROUPS * (RETRIES + 1)
