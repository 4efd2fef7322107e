// A Node.js/TypeScript service calling llm-router through stubs generated from its proto
// (`npx buf generate`, with buf.gen.yaml here), over Connect's gRPC transport.
//
// It makes a streamed call with a tool and assembles the tool call from its pieces, then makes
// a call that fails and reads the AttemptLog from the status details. Against the built-in
// default config:
//
//     npx tsx client.ts 127.0.0.1:50051
//
// Against a router with TLS (`server.tls`) and callers: `--ca` the CA that signed the server's
// certificate, `--cert`/`--key` a client certificate for mTLS, and the API key, if any, from
// the environment (never the command line, where other users of the machine can read it):
//
//     LLMROUTER_API_KEY=... npx tsx client.ts llm-router:50051 --ca ca.pem

import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { ConnectError, createClient } from "@connectrpc/connect";
import type { Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import {
  AttemptLogSchema,
  AttemptOutcome,
  FinishReason,
  Role,
  RouterService,
} from "./gen/llmrouter/v1/router_pb.js";

const { values: flags, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    ca: { type: "string" },
    cert: { type: "string" },
    key: { type: "string" },
    "server-name": { type: "string" },
  },
});
const address = positionals[0] ?? "127.0.0.1:50051";
const apiKey = process.env.LLMROUTER_API_KEY;
if (apiKey && !flags.ca) {
  throw new Error("an API key goes over TLS only: give --ca");
}
// The key goes with every call as `authorization: Bearer`.
const withKey: Interceptor = (next) => async (req) => {
  if (apiKey) {
    req.header.set("authorization", `Bearer ${apiKey}`);
  }
  return next(req);
};
const read = (path?: string) => (path ? readFileSync(path) : undefined);
const client = createClient(
  RouterService,
  createGrpcTransport({
    baseUrl: flags.ca ? `https://${address}` : `http://${address}`,
    nodeOptions: flags.ca
      ? {
          ca: read(flags.ca),
          cert: read(flags.cert),
          key: read(flags.key),
          servername: flags["server-name"],
        }
      : undefined,
    interceptors: [withKey],
  }),
);

interface Call {
  id: string;
  name: string;
  arguments: string;
}

// A streamed call offering one tool; its pieces assembled by index, as with OpenAI's. The
// tool's JSON Schema is plain JSON: google.protobuf.Struct fields take a JSON object.
async function streamedToolCall(): Promise<void> {
  const calls: Call[] = [];
  let finish = FinishReason.UNSPECIFIED;
  const stream = client.streamComplete(
    {
      model: "chat",
      messages: [{ role: Role.USER, content: "What's the weather in Paris?" }],
      tools: [
        {
          name: "get_weather",
          description: "Current weather for a city",
          parameters: {
            type: "object",
            properties: { city: { type: "string" } },
            required: ["city"],
          },
        },
      ],
      toolChoice: { choice: { case: "function", value: "get_weather" } },
    },
    { timeoutMs: 10_000 },
  );
  for await (const message of stream) {
    for (const piece of message.toolCalls) {
      const call = (calls[piece.index] ??= { id: "", name: "", arguments: "" });
      call.id = piece.id || call.id;
      call.name = piece.name || call.name;
      call.arguments += piece.arguments;
    }
    if (message.finishReason !== FinishReason.UNSPECIFIED) {
      finish = message.finishReason;
    }
  }
  calls.forEach((call, index) => {
    const args = JSON.parse(call.arguments) as Record<string, unknown>;
    const sorted = Object.fromEntries(Object.entries(args).sort());
    console.log(`tool call ${index}: ${call.name} ${JSON.stringify(sorted)}`);
  });
  console.log(`finish: FINISH_REASON_${FinishReason[finish]}`);
}

// A call that cannot answer in time; the status details say what every attempt did.
async function failedCall(): Promise<void> {
  try {
    await client.complete(
      {
        model: "story",
        messages: [{ role: Role.USER, content: "Tell me a story." }],
        mockTimeout: true,
        timeout: durationFromMs(1000),
      },
      { timeoutMs: 10_000 },
    );
  } catch (e) {
    const error = ConnectError.from(e);
    for (const log of error.findDetails(AttemptLogSchema)) {
      for (const attempt of log.attempts) {
        console.log(
          `attempt: ${attempt.deployment} ATTEMPT_OUTCOME_${AttemptOutcome[attempt.outcome]}`,
        );
      }
    }
    console.log(`failed: ${grpcCodeName(error.code)}`);
    return;
  }
  throw new Error("the call should have failed");
}

// gRPC's canonical name of a Connect code, as the Python example prints it.
function grpcCodeName(code: number): string {
  const names = [
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
  ];
  return names[code] ?? `CODE_${code}`;
}

// `create` is re-exported for callers that build messages ahead of a call.
export { create };

await streamedToolCall();
await failedCall();
