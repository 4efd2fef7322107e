#!/usr/bin/env bash
# Builds examples/go/client with Debian's Go toolchain and packaged Go libraries, offline:
# no Go module proxy. Installs the packages when they are missing (apt-get, as root), then
# generates the stubs from ../../proto with protoc, protoc-gen-go and protoc-gen-go-grpc, and
# builds in GOPATH mode against /usr/share/gocode. Writes examples/go/client (ignored by git).
set -euo pipefail
cd "$(dirname "$0")"
# golang-github-golang-protobuf-1-5-dev: grpc-go 1.33 marshals through github.com/golang/protobuf, whose
# 1.3 (the default) cannot marshal messages protoc-gen-go 1.28 generates; 1.5 wraps them.
PACKAGES="golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev golang-google-protobuf-dev golang-google-genproto-dev golang-github-golang-protobuf-1-5-dev"
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "examples/go: installing Debian packages:$missing"
  if [ "$(id -u)" -ne 0 ]; then
    echo "examples/go needs root to apt-get install:$missing" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src="$work/src/llmrouter.example/client"
mkdir -p "$src/gen"
go_path="llmrouter.example/client/gen/llmrouter/v1;llmrouterv1"
protoc -I ../../proto -I /usr/include \
  --go_out="$src/gen" --go_opt=paths=source_relative --go_opt="Mllmrouter/v1/router.proto=$go_path" \
  --go-grpc_out="$src/gen" --go-grpc_opt=paths=source_relative --go-grpc_opt="Mllmrouter/v1/router.proto=$go_path" \
  ../../proto/llmrouter/v1/router.proto
cp client.go "$src/"
GO111MODULE=off GOPATH="$work:/usr/share/gocode" GOCACHE="${GOCACHE:-$work/cache}" GOFLAGS= \
  go build -o "$PWD/client" llmrouter.example/client
echo "examples/go: built $(go version | cut -d' ' -f3), grpc-go $(dpkg-query -W -f='${Version}' golang-google-grpc-dev), protobuf-go $(dpkg-query -W -f='${Version}' golang-google-protobuf-dev)"
