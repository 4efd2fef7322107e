"""The README's security model, tried with real clients against the real binary: TLS and mTLS
on the gRPC port with certificates made here (a CA, the server's, a client's with a SPIFFE id,
and one from another CA), and API keys; with grpcurl, a grpcio client, and the examples/
clients in Python and TypeScript."""

import datetime
import ipaddress
import os
import pathlib
import subprocess
import sys

import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import router
from test_examples import EXPECTED, GO_CLIENT

ROOT = pathlib.Path(__file__).resolve().parents[2]
RANKER = "spiffe://cluster.local/ns/search/sa/ranker"
API_KEY = "sk-e2e-0123456789abcdef0123"


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Ca:
    def __init__(self, cn):
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    def pem(self):
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, sans, usage):
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("llm-router e2e"))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _pem(key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """PEM files: ca.pem, server.{pem,key}, client.{pem,key} (the ranker), other.{pem,key} (a
    client of another CA), and api.key (a caller's key, read by the router from the file)."""
    d = tmp_path_factory.mktemp("pki")
    ca = Ca("llm-router e2e CA")
    (d / "ca.pem").write_bytes(ca.pem())
    server = ca.issue(
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
        ExtendedKeyUsageOID.SERVER_AUTH,
    )
    client = ca.issue([x509.UniformResourceIdentifier(RANKER)], ExtendedKeyUsageOID.CLIENT_AUTH)
    other = Ca("another CA").issue(
        [x509.UniformResourceIdentifier(RANKER)], ExtendedKeyUsageOID.CLIENT_AUTH
    )
    for name, (cert, key) in {"server": server, "client": client, "other": other}.items():
        (d / f"{name}.pem").write_bytes(cert)
        (d / f"{name}.key").write_bytes(key)
    (d / "api.key").write_text(API_KEY + "\n")
    return d


@pytest.fixture(scope="module")
def secure(llm_router_bin, pki):
    """The built-in config with TLS on the gRPC port (client certificates optional, so that
    callers with a key but no certificate connect), and two callers: `ranker` by its SPIFFE
    id, `keyed` by its API key."""
    config = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    config["server"]["tls"] = {
        "cert_file": str(pki / "server.pem"),
        "key_file": str(pki / "server.key"),
        "client_ca_file": str(pki / "ca.pem"),
        "client_auth": "optional",
    }
    config["auth"] = {"required": True, "reflection": "authenticated"}
    # The examples ask for mock_timeout, a test switch each caller must be granted.
    config["callers"] = [
        {"name": "ranker", "identities": [RANKER], "allow": {"mock": True}},
        {"name": "keyed", "keys": [f"file:{pki / 'api.key'}"], "allow": {"mock": True}},
    ]
    path = pki / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc, addr = router.start(llm_router_bin, "--config", str(path))
    yield addr
    router.stop(proc)


CALL = '{"model": "chat", "messages": [{"role": "ROLE_USER", "content": "hi"}]}'


def grpcurl_call(grpcurl, addr, *flags):
    return subprocess.run(
        [grpcurl, *flags, "-d", CALL, addr, "llmrouter.v1.RouterService/Complete"],
        capture_output=True, text=True, timeout=30,
    )


def test_grpcurl_with_mtls_and_with_a_key(grpcurl, secure, pki):
    ok = grpcurl_call(
        grpcurl, secure,
        "-cacert", str(pki / "ca.pem"), "-cert", str(pki / "client.pem"), "-key", str(pki / "client.key"),
    )
    assert ok.returncode == 0, ok.stderr
    assert '"deployment": "chat-primary"' in ok.stdout

    keyed = grpcurl_call(
        grpcurl, secure, "-cacert", str(pki / "ca.pem"), "-H", f"authorization: Bearer {API_KEY}"
    )
    assert keyed.returncode == 0, keyed.stderr

    # TLS without a credential: the connection is fine, the call is not.
    none = grpcurl_call(grpcurl, secure, "-cacert", str(pki / "ca.pem"))
    assert none.returncode != 0
    assert "Unauthenticated" in none.stderr, none.stderr
    # Plaintext against the TLS port gets nowhere.
    plain = grpcurl_call(grpcurl, secure, "-plaintext")
    assert plain.returncode != 0


def test_reflection_is_for_authenticated_callers(grpcurl, secure, pki):
    listing = [grpcurl, "-cacert", str(pki / "ca.pem")]
    refused = subprocess.run([*listing, secure, "list"], capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr, refused.stderr
    keyed = subprocess.run(
        [*listing, "-H", f"authorization: Bearer {API_KEY}", secure, "list"],
        capture_output=True, text=True, timeout=30,
    )
    assert keyed.returncode == 0, keyed.stderr
    assert "llmrouter.v1.RouterService" in keyed.stdout


def channel(addr, pki, client=None):
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / f"{client}.key").read_bytes() if client else None,
        certificate_chain=(pki / f"{client}.pem").read_bytes() if client else None,
    )
    return grpc.secure_channel(addr, creds)


def test_grpcio_client_with_mtls_and_keys(secure, pki, stubs):
    pb2, pb2_grpc = stubs
    request = pb2.CompleteRequest(
        model="chat", messages=[pb2.ChatMessage(role=pb2.ROLE_USER, content="hi")]
    )
    with channel(secure, pki, "client") as ch:
        answer = pb2_grpc.RouterServiceStub(ch).Complete(request, timeout=10)
        assert answer.deployment == "chat-primary"
    with channel(secure, pki) as ch:
        stub = pb2_grpc.RouterServiceStub(ch)
        stub.Complete(request, timeout=10, metadata=[("authorization", f"Bearer {API_KEY}")])
        with pytest.raises(grpc.RpcError) as wrong:
            stub.Complete(request, timeout=10, metadata=[("authorization", f"Bearer {API_KEY}x")])
        assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
        info, _ = router.details(wrong.value, pb2)
        assert info.reason == "UNAUTHENTICATED"
        assert API_KEY not in wrong.value.details()
    # A certificate from another CA is refused at the handshake.
    with channel(secure, pki, "other") as ch:
        with pytest.raises(grpc.RpcError) as refused:
            pb2_grpc.RouterServiceStub(ch).Complete(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def run_example(cmd, cwd, env=None):
    done = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout.splitlines()


def test_python_example_over_tls_with_a_key_and_with_mtls(secure, pki):
    client = [sys.executable, "examples/python/client.py", secure, "--ca", str(pki / "ca.pem")]
    assert run_example(client, ROOT, {"LLMROUTER_API_KEY": API_KEY}) == EXPECTED
    mtls = client + ["--cert", str(pki / "client.pem"), "--key", str(pki / "client.key")]
    assert run_example(mtls, ROOT) == EXPECTED


def test_typescript_example_over_tls_with_a_key(secure, pki):
    node = ROOT / "examples" / "node"
    if not (node / "node_modules").is_dir() or not (node / "gen").is_dir():
        pytest.fail("run `npm ci && npx buf generate` in examples/node first (scripts/test.sh does)")
    cmd = ["npx", "--no-install", "tsx", "client.ts", secure, "--ca", str(pki / "ca.pem")]
    assert run_example(cmd, node, {"LLMROUTER_API_KEY": API_KEY}) == EXPECTED
    mtls = cmd + ["--cert", str(pki / "client.pem"), "--key", str(pki / "client.key")]
    assert run_example(mtls, node) == EXPECTED


def test_go_example_over_tls_with_a_key_and_with_mtls(secure, pki):
    if not GO_CLIENT.is_file():
        pytest.fail("run examples/go/build.sh first (scripts/test.sh does)")
    cmd = [str(GO_CLIENT), "-ca", str(pki / "ca.pem"), secure]
    assert run_example(cmd, ROOT, {"LLMROUTER_API_KEY": API_KEY}) == EXPECTED
    mtls = [str(GO_CLIENT), "-ca", str(pki / "ca.pem"), "-cert", str(pki / "client.pem"), "-key", str(pki / "client.key"), secure]
    assert run_example(mtls, ROOT) == EXPECTED


@pytest.fixture(scope="module")
def meshed(llm_router_bin, tmp_path_factory):
    """The built-in config behind a (pretend) sidecar on loopback: its header is trusted."""
    config = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    config["auth"] = {
        "required": True,
        "trusted_header": {"name": "x-forwarded-client-cert", "trusted_peers": ["127.0.0.1/32"]},
    }
    config["callers"] = [{"name": "ranker", "identities": [RANKER], "models": ["chat"]}]
    path = tmp_path_factory.mktemp("mesh") / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc, addr = router.start(llm_router_bin, "--config", str(path))
    yield addr
    router.stop(proc)


def test_grpcurl_with_the_mesh_header(grpcurl, meshed):
    xfcc = f"x-forwarded-client-cert: By=spiffe://cluster.local/ns/llm/sa/router;URI={RANKER}"
    ok = grpcurl_call(grpcurl, meshed, "-plaintext", "-H", xfcc)
    assert ok.returncode == 0, ok.stderr
    none = grpcurl_call(grpcurl, meshed, "-plaintext")
    assert "Unauthenticated" in none.stderr, none.stderr
    other = subprocess.run(
        [grpcurl, "-plaintext", "-H", xfcc, "-d", CALL.replace('"chat"', '"story"'), meshed,
         "llmrouter.v1.RouterService/Complete"],
        capture_output=True, text=True, timeout=30,
    )
    assert "PermissionDenied" in other.stderr, other.stderr
