"""A Python service calling llm-router through stubs generated from its proto.

It makes a streamed call with a tool and assembles the tool call from its pieces, then makes a
call that fails and reads the AttemptLog from the status details. Stubs are generated from
proto/ with grpcio-tools when it starts (see README.md). Against the built-in default config:

    python examples/python/client.py 127.0.0.1:50051

Against a router with TLS (`server.tls`) and callers: `--ca` the CA that signed the server's
certificate, `--cert`/`--key` a client certificate for mTLS, and the API key, if any, from the
environment (never the command line, where other users of the machine can read it):

    LLMROUTER_API_KEY=... python examples/python/client.py llm-router:50051 --ca ca.pem
"""

import argparse
import importlib
import os
import importlib.resources
import json
import pathlib
import sys
import tempfile

import grpc
from google.protobuf import duration_pb2
from grpc_status import rpc_status

ROOT = pathlib.Path(__file__).resolve().parents[2]


def generate_stubs():
    """llmrouter.v1's messages and stubs, generated from proto/ into a temporary folder."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="llmrouter-stubs-")
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
    if code != 0:
        sys.exit("protoc could not generate the stubs")
    sys.path.insert(0, out)
    return (
        importlib.import_module("llmrouter.v1.router_pb2"),
        importlib.import_module("llmrouter.v1.router_pb2_grpc"),
    )


def streamed_tool_call(pb2, stub):
    """A streamed call offering one tool; its pieces assembled by index, as with OpenAI's."""
    weather = pb2.Tool(name="get_weather", description="Current weather for a city")
    weather.parameters.update(
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    )
    request = pb2.StreamCompleteRequest(
        model="chat",
        messages=[pb2.ChatMessage(role=pb2.ROLE_USER, content="What's the weather in Paris?")],
        tools=[weather],
        tool_choice=pb2.ToolChoice(function="get_weather"),
    )
    calls, finish = {}, None
    for message in stub.StreamComplete(request, timeout=10):
        for piece in message.tool_calls:
            call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = piece.id or call["id"]
            call["name"] = piece.name or call["name"]
            call["arguments"] += piece.arguments
        if message.finish_reason:
            finish = pb2.FinishReason.Name(message.finish_reason)
    for index, call in sorted(calls.items()):
        arguments = json.dumps(json.loads(call["arguments"]), sort_keys=True, separators=(",", ":"))
        print(f"tool call {index}: {call['name']} {arguments}")
    print(f"finish: {finish}")


def failed_call(pb2, stub):
    """A call that cannot answer in time; the status details say what every attempt did."""
    request = pb2.CompleteRequest(
        model="story",
        messages=[pb2.ChatMessage(role=pb2.ROLE_USER, content="Tell me a story.")],
        mock_timeout=True,
        timeout=duration_pb2.Duration(seconds=1),
    )
    try:
        stub.Complete(request, timeout=10)
    except grpc.RpcError as error:
        status = rpc_status.from_call(error)
        for detail in status.details:
            if detail.Is(pb2.AttemptLog.DESCRIPTOR):
                log = pb2.AttemptLog()
                detail.Unpack(log)
                for attempt in log.attempts:
                    outcome = pb2.AttemptOutcome.Name(attempt.outcome)
                    print(f"attempt: {attempt.deployment} {outcome}")
        print(f"failed: {error.code().name}")
        return
    sys.exit("the call should have failed")


def channel(args):
    """A plaintext channel, or TLS (with a client certificate for mTLS) when --ca is given; the
    API key in LLMROUTER_API_KEY goes with every call as `authorization: Bearer`."""
    key = os.environ.get("LLMROUTER_API_KEY")
    if not args.ca:
        if key:
            sys.exit("an API key goes over TLS only: give --ca")
        return grpc.insecure_channel(args.address)
    read = lambda path: pathlib.Path(path).read_bytes() if path else None
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(args.ca),
        private_key=read(args.key),
        certificate_chain=read(args.cert),
    )
    if key:
        creds = grpc.composite_channel_credentials(
            creds, grpc.access_token_call_credentials(key)
        )
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    return grpc.secure_channel(args.address, creds, options)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", nargs="?", default="127.0.0.1:50051")
    parser.add_argument("--ca", help="PEM CA bundle that signed the server's certificate")
    parser.add_argument("--cert", help="PEM client certificate, for mTLS")
    parser.add_argument("--key", help="PEM client key, for mTLS")
    parser.add_argument("--server-name", help="the name the server's certificate is for")
    args = parser.parse_args()
    pb2, pb2_grpc = generate_stubs()
    with channel(args) as ch:
        stub = pb2_grpc.RouterServiceStub(ch)
        streamed_tool_call(pb2, stub)
        failed_call(pb2, stub)


if __name__ == "__main__":
    main()
