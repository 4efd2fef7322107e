"""Real clients against the real binary: grpcurl, and a Python client generated from proto/.
They show what a service owner in another language gets: typed responses, the AttemptLog
error detail, and deadlines that answer DEADLINE_EXCEEDED."""

import json
import subprocess
import time

import grpc
import pytest

from router import details

HI = [{"role": "ROLE_USER", "content": "Hi"}]


def run_grpcurl(grpcurl, server, *args, data=None, flags=()):
    """grpcurl [flags] [-d data] server args..."""
    cmd = [grpcurl, "-plaintext", *flags]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    cmd += [server, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def json_stream(text):
    """grpcurl prints one pretty JSON object per message."""
    decoder, pos, out = json.JSONDecoder(), 0, []
    text = text.strip()
    while pos < len(text):
        obj, end = decoder.raw_decode(text, pos)
        out.append(obj)
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


# ---- grpcurl ----


def test_grpcurl_lists_and_describes(grpcurl, server):
    listed = run_grpcurl(grpcurl, server, "list")
    assert listed.returncode == 0, listed.stderr
    assert "llmrouter.v1.RouterService" in listed.stdout.split()
    assert "grpc.health.v1.Health" in listed.stdout.split()
    described = run_grpcurl(grpcurl, server, "describe", "llmrouter.v1.RouterService")
    assert "rpc Complete ( .llmrouter.v1.CompleteRequest )" in described.stdout
    assert "returns ( stream .llmrouter.v1.StreamCompleteResponse )" in described.stdout


def test_grpcurl_complete_and_fallback(grpcurl, server):
    r = run_grpcurl(grpcurl, server, "llmrouter.v1.RouterService/Complete", data={"model": "chat", "messages": HI})
    assert r.returncode == 0, r.stderr
    resp = json.loads(r.stdout)
    assert resp["deployment"] == "chat-primary"
    assert resp["message"]["role"] == "ROLE_ASSISTANT"

    r = run_grpcurl(grpcurl, server, "llmrouter.v1.RouterService/Complete", data={"model": "hanging", "messages": HI})
    resp = json.loads(r.stdout)
    assert resp["model"] == "chat-backup"
    assert [a["outcome"] for a in resp["attempts"]] == ["ATTEMPT_OUTCOME_TIMEOUT", "ATTEMPT_OUTCOME_OK"]


def test_grpcurl_stream_complete(grpcurl, server):
    r = run_grpcurl(grpcurl, server, "llmrouter.v1.RouterService/StreamComplete", data={"model": "story", "messages": HI})
    assert r.returncode == 0, r.stderr
    messages = json_stream(r.stdout)
    assert len(messages) > 10
    assert messages[0]["attempts"][0]["outcome"] == "ATTEMPT_OUTCOME_OK"
    assert "".join(m.get("delta", "") for m in messages).startswith("Once upon a time")
    assert messages[-1]["finishReason"] == "FINISH_REASON_STOP"


WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_grpcurl_tool_call_and_json_schema_answer(grpcurl, server):
    """The README's two examples: a tool call (its schema written as plain JSON), and an answer
    in JSON matching a schema. The default config's mock makes both up."""
    r = run_grpcurl(
        grpcurl,
        server,
        "llmrouter.v1.RouterService/Complete",
        data={
            "model": "chat",
            "messages": [{"role": "ROLE_USER", "content": "Weather in Paris?"}],
            "tools": [WEATHER_TOOL],
            "toolChoice": {"function": "get_weather"},
        },
    )
    assert r.returncode == 0, r.stderr
    resp = json.loads(r.stdout)
    assert resp["finishReason"] == "FINISH_REASON_TOOL_CALLS"
    call = resp["message"]["toolCalls"][0]
    assert call["name"] == "get_weather" and call["id"]
    assert json.loads(call["arguments"]) == {"city": "mock"}

    r = run_grpcurl(
        grpcurl,
        server,
        "llmrouter.v1.RouterService/Complete",
        data={
            "model": "chat",
            "messages": [{"role": "ROLE_USER", "content": "Summarise the weather"}],
            "responseFormat": {
                "type": "RESPONSE_FORMAT_TYPE_JSON_SCHEMA",
                "name": "summary",
                "schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
            },
        },
    )
    assert r.returncode == 0, r.stderr
    answer = json.loads(json.loads(r.stdout)["message"]["content"])
    assert answer["text"].startswith("Hello from the chat group")


def test_grpcurl_max_time_shorter_than_the_chain_gives_deadline_exceeded(grpcurl, server):
    start = time.monotonic()
    r = run_grpcurl(
        grpcurl,
        server,
        "llmrouter.v1.RouterService/Complete",
        data={"model": "hanging", "messages": HI},
        flags=["-max-time", "0.5"],
    )
    elapsed = time.monotonic() - start
    assert r.returncode != 0
    assert "Code: DeadlineExceeded" in r.stderr, r.stderr
    assert "Code: Canceled" not in r.stderr
    assert elapsed < 1.0, "answered at the client's deadline, not after the 1s timeout"


def test_grpcurl_health_check(grpcurl, server):
    r = run_grpcurl(grpcurl, server, "grpc.health.v1.Health/Check", data={"service": "llmrouter.v1.RouterService"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"status": "SERVING"}


# ---- a generated Python client ----


@pytest.fixture
def client(server, stubs):
    pb2, grpc_pb2 = stubs
    channel = grpc.insecure_channel(server)
    yield pb2, grpc_pb2.RouterServiceStub(channel)
    channel.close()


def user(pb2, text="Hi"):
    return [pb2.ChatMessage(role=pb2.ROLE_USER, content=text)]


def test_python_typed_responses(client):
    pb2, stub = client
    resp = stub.Complete(pb2.CompleteRequest(model="chat", messages=user(pb2)), timeout=10)
    assert isinstance(resp, pb2.CompleteResponse)
    assert resp.deployment == "chat-primary"
    assert resp.finish_reason == pb2.FINISH_REASON_STOP
    assert resp.usage.total_tokens > 0
    assert [a.outcome for a in resp.attempts] == [pb2.ATTEMPT_OUTCOME_OK]
    assert resp.attempts[0].elapsed.ToTimedelta().total_seconds() > 0

    chunks = list(stub.StreamComplete(pb2.StreamCompleteRequest(model="story", messages=user(pb2)), timeout=10))
    assert chunks[0].attempts[0].deployment == "story-teller"
    assert chunks[-1].finish_reason == pb2.FINISH_REASON_STOP
    assert "".join(c.delta for c in chunks).startswith("Once upon a time")

    groups = stub.ListModels(pb2.ListModelsRequest(), timeout=10).groups
    hanging = next(g for g in groups if g.name == "hanging")
    assert list(hanging.fallbacks) == ["chat-backup"]
    assert hanging.deployments[0].timeout.ToTimedelta().total_seconds() == 1.0


def test_python_deadline_gives_deadline_exceeded_with_the_attempt_log(client):
    pb2, stub = client
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        stub.Complete(pb2.CompleteRequest(model="hanging", messages=user(pb2)), timeout=0.5)
    assert time.monotonic() - start < 0.9
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    info, log = details(e.value, pb2)
    assert (info.domain, info.reason) == ("llmrouter.v1", "DEADLINE_EXCEEDED")
    # The client's own deadline cut the attempt: CALLER_TIMEOUT, not held against the deployment.
    assert [(a.deployment, a.outcome) for a in log.attempts] == [("hanging-primary", pb2.ATTEMPT_OUTCOME_CALLER_TIMEOUT)]


def test_python_bad_input_and_mock_timeout(client):
    pb2, stub = client
    with pytest.raises(grpc.RpcError) as e:
        stub.Complete(pb2.CompleteRequest(model="gpt-7", messages=user(pb2)), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    info, _ = details(e.value, pb2)
    assert info.reason == "MODEL_NOT_FOUND"
    assert "chat-backup" in e.value.details()

    with pytest.raises(grpc.RpcError) as e:
        stub.Complete(pb2.CompleteRequest(model="chat", messages=[pb2.ChatMessage(content="no role")]), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "messages[0].role" in e.value.details()

    resp = stub.Complete(pb2.CompleteRequest(model="chat", mock_timeout=True, num_retries=0, messages=user(pb2)), timeout=10)
    assert resp.model == "chat-backup"
    assert [a.outcome for a in resp.attempts] == [pb2.ATTEMPT_OUTCOME_MOCK_TIMEOUT, pb2.ATTEMPT_OUTCOME_OK]


# ---- a stream that breaks after its first chunk (the default config's `stalling` group) ----

STORY = (
    "Once upon a time a request crossed a router. Its deadline was short, its fallbacks were "
    "ready, and every chunk arrived on time."
)


def assemble(chunks):
    """What a client that honours restart markers shows: a marker discards what came before."""
    text = ""
    for c in chunks:
        if c.restart:
            text = ""
        text += c.delta
    return text


def test_python_a_stream_that_falls_silent_continues_on_its_fallback(client):
    pb2, stub = client
    chunks = list(stub.StreamComplete(pb2.StreamCompleteRequest(model="stalling", messages=user(pb2)), timeout=20))
    assert "".join(c.delta for c in chunks) == STORY
    resumed = [c for c in chunks if c.resumed]
    assert len(resumed) == 1 and not resumed[0].restart
    assert (resumed[0].model, resumed[0].deployment) == ("story", "story-teller")
    log = [(a.deployment, a.outcome, a.recovery) for a in resumed[0].attempts]
    assert log == [
        ("stalling-teller", pb2.ATTEMPT_OUTCOME_IDLE_TIMEOUT, False),
        ("story-teller", pb2.ATTEMPT_OUTCOME_OK, True),
    ]
    assert chunks[-1].finish_reason == pb2.FINISH_REASON_STOP


def test_python_client_assembles_a_restarted_stream(client):
    pb2, stub = client
    req = pb2.StreamCompleteRequest(
        model="stalling", stream_recovery=pb2.STREAM_RECOVERY_RESTART, messages=user(pb2)
    )
    chunks = list(stub.StreamComplete(req, timeout=20))
    assert sum(c.restart for c in chunks) == 1
    assert assemble(chunks) == STORY
    # A client that ignored the marker would show the first word twice.
    assert "".join(c.delta for c in chunks) == "Once " + STORY


# Fields only a stream has: the slow-stream guard judges a committed stream's flow.
STREAM_ONLY = {"stream_min_tokens_per_s", "stream_min_tokens_window"}


def test_both_request_messages_carry_the_same_fields(stubs):
    """CompleteRequest and StreamCompleteRequest stay field for field identical (names, numbers
    and types, as generated clients see them), but for the fields only a stream has, which come
    after every shared one."""
    pb2, _ = stubs

    def fields(message):
        return [(f.name, f.number, f.type, f.is_repeated, getattr(f.message_type, "name", None))
                for f in message.DESCRIPTOR.fields]

    shared = [f for f in fields(pb2.StreamCompleteRequest) if f[0] not in STREAM_ONLY]
    assert fields(pb2.CompleteRequest) == shared
    only = [f for f in fields(pb2.StreamCompleteRequest) if f[0] in STREAM_ONLY]
    assert {f[0] for f in only} == STREAM_ONLY
    assert min(f[1] for f in only) > max(f[1] for f in shared)
