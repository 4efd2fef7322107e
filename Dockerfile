# syntax=docker/dockerfile:1
# llm-router container image: a static-ish Rust binary on distroless (glibc, CA certificates,
# no shell), running as a non-root numeric user.
#
#   docker build -t llm-router:0.1.0 .
#   docker run --rm -p 50051:50051 llm-router:0.1.0
#
# The image serves the built-in default config on 0.0.0.0:50051; mount a config and pass
# `--config /etc/llm-router/config.yaml` (the Helm chart does this).

FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY config config
COPY src src
# Cache mounts keep the registry and build directory between builds; protos compile with protox,
# so no protoc is needed.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin llm-router \
    && strip --strip-debug target/release/llm-router \
    && cp target/release/llm-router /llm-router

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /llm-router /usr/local/bin/llm-router
USER 65532:65532
ENV LLMROUTER__SERVER__LISTEN=0.0.0.0:50051
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=3s CMD ["/usr/local/bin/llm-router", "health-check", "--service", "liveness"]
ENTRYPOINT ["/usr/local/bin/llm-router"]
CMD ["serve"]
