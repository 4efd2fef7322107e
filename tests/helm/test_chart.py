"""The Helm chart, with no cluster and no helm binary: helm-python-sdk lints and renders it,
kubernetes-validate checks every rendered manifest against the Kubernetes API schemas, and the
ConfigMap the chart renders is fed to `llm-router check-config`, so the chart can never ship a
config the binary rejects."""

import copy
import subprocess
import tempfile

import helm_python
import kubernetes_validate
import pytest
import yaml

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a current one.
KUBE_VERSIONS = ["1.27.0", "1.33.0"]

SCENARIOS = {
    "default": {},
    "hpa": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12}},
    "linkerd": {"mesh": {"provider": "linkerd"}},
    "istio": {"mesh": {"provider": "istio"}},
    "headless-and-networkpolicy": {
        "service": {"headless": {"enabled": True}},
        "networkPolicy": {"enabled": True, "ingressFrom": [{"namespaceSelector": {"matchLabels": {"team": "search"}}}]},
    },
    "custom-config-and-keys": {
        "config": {
            "model_list": [
                {"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o-mini", "timeout": "20s"}},
                {"model_name": "claude", "litellm_params": {"model": "anthropic/claude-sonnet-4-5"}},
            ],
            "router_settings": {"timeout": "60s", "fallbacks": [{"gpt": ["claude"]}]},
        },
        "providerKeys": {
            "envFromSecrets": ["llm-provider-keys"],
            "env": [{"name": "ANTHROPIC_API_KEY", "secretName": "anthropic", "secretKey": "key"}],
        },
        "extraEnv": [{"name": "OTEL_SERVICE_NAME", "value": "llm-router"}],
    },
    "existing-configmap": {"existingConfigMap": "my-router-config"},
    "servicemonitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}},
    "tls-and-callers": {
        "mesh": {"provider": "istio"},
        "tls": {"enabled": True, "secretName": "llm-router-tls", "clientAuth": "optional"},
        "auth": {
            "required": True,
            "reflection": "authenticated",
            "trustedHeader": {"name": "x-forwarded-client-cert", "trustedPeers": ["127.0.0.6/32"]},
            "keySecrets": ["team-keys"],
        },
        "providerTls": {"secrets": ["vllm-ca"]},
        "config": {
            "callers": [
                {"name": "ranker", "identities": ["spiffe://cluster.local/ns/search/sa/ranker"], "models": ["chat"], "rpm_limit": 600},
            ],
        },
    },
    "shared-state": {
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 10},
        "sharedState": {"redis": {
            "url": "rediss://redis.platform.svc:6380/0",
            "passwordSecret": {"name": "redis-auth", "key": "password"},
            "caSecret": {"name": "redis-ca", "key": "ca.crt"},
            "syncInterval": "50ms",
        }},
    },
}

# Custom resources have no schema in kubernetes-validate; their shape is checked by hand below.
CRDS = {"ServiceMonitor"}


def render(chart_path, values):
    chart = helm_python.Chart.load(str(chart_path))
    chart.validate_schema(values)
    out = chart.render(values or None, name="rel", namespace="prod")
    docs = {}
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def deployment(docs):
    return docs[("Deployment", "rel-llm-router")]


def container(docs):
    return deployment(docs)["spec"]["template"]["spec"]["containers"][0]


def test_chart_lints_strictly(chart_path):
    for version in KUBE_VERSIONS:
        report = helm_python.lint(str(chart_path), strict=True, kube_version=f"v{version}")
        assert report["errors"] == [], report
        assert all(m["severity"] < 2 for m in report["messages"]), report["messages"]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_manifest_is_valid_kubernetes(chart_path, scenario):
    docs = render(chart_path, SCENARIOS[scenario])
    assert docs, "something rendered"
    for version in KUBE_VERSIONS:
        for key, doc in docs.items():
            if key[0] in CRDS:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{scenario}: {key} is not a valid {version} manifest: {e.message}")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_rendered_config_passes_check_config(chart_path, scenario, llm_router_bin):
    docs = render(chart_path, SCENARIOS[scenario])
    cm = docs.get(("ConfigMap", "rel-llm-router"))
    if scenario == "existing-configmap":
        assert cm is None
        volume = deployment(docs)["spec"]["template"]["spec"]["volumes"][0]
        assert volume["configMap"]["name"] == "my-router-config"
        return
    env = {e["name"]: e.get("value") for e in container(docs)["env"]}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(cm["data"]["config.yaml"])
        f.flush()
        # The keys come from Secrets in the cluster; stand-ins let check-config resolve them.
        run_env = {"OPENAI_API_KEY": "stand-in", "ANTHROPIC_API_KEY": "stand-in"}
        run_env.update({k: v for k, v in env.items() if k.startswith("LLMROUTER__") and v is not None})
        # The TLS Secret is mounted in the cluster; stand-in files here.
        if "LLMROUTER__SERVER__TLS__CERT_FILE" in run_env:
            stand_in = _stand_in_tls(tempfile.mkdtemp())
            run_env["LLMROUTER__SERVER__TLS__CERT_FILE"] = stand_in["cert"]
            run_env["LLMROUTER__SERVER__TLS__KEY_FILE"] = stand_in["key"]
            if "LLMROUTER__SERVER__TLS__CLIENT_CA_FILE" in run_env:
                run_env["LLMROUTER__SERVER__TLS__CLIENT_CA_FILE"] = stand_in["cert"]
        # Likewise the Redis password's Secret and CA bundle.
        if "LLMROUTER__ROUTER_SETTINGS__REDIS_PASSWORD" in run_env:
            run_env["LLMROUTER_REDIS_PASSWORD"] = "stand-in"
        if "LLMROUTER__ROUTER_SETTINGS__REDIS_CA_FILE" in run_env:
            run_env["LLMROUTER__ROUTER_SETTINGS__REDIS_CA_FILE"] = _stand_in_tls(tempfile.mkdtemp())["cert"]
        result = subprocess.run(
            [str(llm_router_bin), "check-config", f.name], capture_output=True, text=True, env=run_env, timeout=30
        )
    assert result.returncode == 0, result.stderr
    if "LLMROUTER__ROUTER_SETTINGS__REDIS_URL" in run_env:
        assert "state: shared through rediss://redis.platform.svc:6380/0 (namespace `prod/rel-llm-router`" in result.stdout, result.stdout
        assert "stand-in" not in result.stdout
    assert "config OK" in result.stdout
    assert "listen 0.0.0.0:50051, admin_listen 0.0.0.0:9090" in result.stdout, "the chart's addresses apply"
    assert "drain_period 5s, shutdown_grace 25s" in result.stdout
    if scenario == "default":
        # The chart's own config is an example to copy: nothing in it should need a warning.
        assert "\nwarnings:" not in result.stdout, result.stdout


def _stand_in_tls(d):
    """A self-signed certificate (also a CA) and its key, as PEM files in `d`."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stand-in")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    paths = {"cert": f"{d}/tls.crt", "key": f"{d}/tls.key"}
    with open(paths["cert"], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["key"], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


def test_tls_secret_key_secrets_and_auth_values(chart_path):
    docs = render(chart_path, SCENARIOS["tls-and-callers"])
    c = container(docs)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["LLMROUTER__SERVER__TLS__CERT_FILE"] == "/etc/llm-router/tls/tls.crt"
    assert env["LLMROUTER__SERVER__TLS__KEY_FILE"] == "/etc/llm-router/tls/tls.key"
    assert env["LLMROUTER__SERVER__TLS__CLIENT_CA_FILE"] == "/etc/llm-router/client-ca/ca.crt"
    assert env["LLMROUTER__SERVER__TLS__CLIENT_AUTH"] == "optional"
    volumes = {v["name"]: v for v in deployment(docs)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "llm-router-tls"
    assert volumes["client-ca"]["secret"]["secretName"] == "llm-router-tls"
    assert volumes["keys-team-keys"]["secret"] == {"secretName": "team-keys"}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["keys-team-keys"] == "/etc/llm-router/keys/team-keys"
    # A provider's CA bundle (ssl_verify) or client certificate, from a Secret.
    assert volumes["provider-tls-vllm-ca"]["secret"] == {"secretName": "vllm-ca"}
    assert mounts["provider-tls-vllm-ca"] == "/etc/llm-router/provider-tls/vllm-ca"
    # The kubelet's gRPC probes are plaintext: with TLS on, the admin port answers them.
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin", "scheme": "HTTP"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin", "scheme": "HTTP"}
    # tls.admin: the admin port is HTTPS as well, and so are the probes and the scrape.
    admin = render(chart_path, {**SCENARIOS["tls-and-callers"], "tls": {**SCENARIOS["tls-and-callers"]["tls"], "admin": True},
                                "metrics": {"serviceMonitor": {"enabled": True, "tlsConfig": {"serverName": "llm-router"}}}})
    assert container(admin)["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert {"name": "LLMROUTER__SERVER__TLS__ADMIN", "value": "true"} in container(admin)["env"]
    endpoint = admin[("ServiceMonitor", "rel-llm-router")]["spec"]["endpoints"][0]
    assert (endpoint["scheme"], endpoint["tlsConfig"]) == ("https", {"serverName": "llm-router"})
    assert ("Pod", "rel-llm-router-test-health") not in docs
    assert docs[("Service", "rel-llm-router")]["spec"]["ports"][0]["appProtocol"] == "tls"
    config = yaml.safe_load(docs[("ConfigMap", "rel-llm-router")]["data"]["config.yaml"])
    assert config["auth"] == {
        "required": True,
        "reflection": "authenticated",
        "trusted_header": {"name": "x-forwarded-client-cert", "trusted_peers": ["127.0.0.6/32"]},
    }
    assert config["callers"][0]["name"] == "ranker"
    # The chart's default stays unauthenticated, over plaintext.
    default = render(chart_path, {})
    assert "auth" not in yaml.safe_load(default[("ConfigMap", "rel-llm-router")]["data"]["config.yaml"])
    assert not any(e["name"].startswith("LLMROUTER__SERVER__TLS") for e in container(default)["env"])


def test_grpc_probes_service_and_mesh_protocol(chart_path):
    docs = render(chart_path, {})
    c = container(docs)
    for probe in ("startupProbe", "readinessProbe"):
        assert c[probe]["grpc"] == {"port": 50051, "service": "llmrouter.v1.RouterService"}
    assert c["livenessProbe"]["grpc"] == {"port": 50051, "service": "liveness"}
    svc = docs[("Service", "rel-llm-router")]
    port = svc["spec"]["ports"][0]
    assert (port["name"], port["appProtocol"]) == ("grpc", "kubernetes.io/h2c")
    assert ("Service", "rel-llm-router-headless") not in docs


def test_restricted_security_context(chart_path):
    docs = render(chart_path, {})
    pod = deployment(docs)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert isinstance(pod["securityContext"]["runAsUser"], int) and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(docs)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    test_pod = docs[("Pod", "rel-llm-router-test-health")]
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert test_pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_graceful_shutdown_timing(chart_path):
    docs = render(chart_path, {"shutdown": {"preStopSleepSeconds": 7, "drainSeconds": 4, "graceSeconds": 20, "marginSeconds": 5}})
    pod = deployment(docs)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 36
    assert pod["terminationGracePeriodSeconds"] > 7 + 4 + 20
    c = container(docs)
    assert c["lifecycle"]["preStop"]["exec"]["command"][-2:] == ["sleep", "7"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["LLMROUTER__SERVER__DRAIN_PERIOD"] == "4s"
    assert env["LLMROUTER__SERVER__SHUTDOWN_GRACE"] == "20s"


def test_hpa_owns_replicas_when_enabled(chart_path):
    assert deployment(render(chart_path, {}))["spec"]["replicas"] == 2
    docs = render(chart_path, SCENARIOS["hpa"])
    assert "replicas" not in deployment(docs)["spec"]
    hpa = docs[("HorizontalPodAutoscaler", "rel-llm-router")]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)


def test_mesh_annotations(chart_path):
    linkerd = deployment(render(chart_path, SCENARIOS["linkerd"]))["spec"]["template"]["metadata"]["annotations"]
    assert linkerd["linkerd.io/inject"] == "enabled"
    assert linkerd["config.alpha.linkerd.io/proxy-wait-before-exit-seconds"] == "40"
    istio = deployment(render(chart_path, SCENARIOS["istio"]))["spec"]["template"]["metadata"]["annotations"]
    assert istio["sidecar.istio.io/inject"] == "true"
    proxy = yaml.safe_load(istio["proxy.istio.io/config"])
    assert proxy == {"holdApplicationUntilProxyStarts": True, "terminationDrainDuration": "40s"}
    default = deployment(render(chart_path, {}))["spec"]["template"]["metadata"]["annotations"]
    assert not any("linkerd" in k or "istio" in k for k in default)


def test_config_changes_roll_the_pods(chart_path):
    def checksum(values):
        return deployment(render(chart_path, values))["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    changed = {"config": copy.deepcopy(SCENARIOS["custom-config-and-keys"]["config"])}
    assert checksum({}) != checksum(changed)
    assert checksum({}) == checksum({})


def test_provider_keys_come_only_from_secrets(chart_path):
    docs = render(chart_path, SCENARIOS["custom-config-and-keys"])
    c = container(docs)
    assert c["envFrom"] == [{"secretRef": {"name": "llm-provider-keys"}}]
    key = next(e for e in c["env"] if e["name"] == "ANTHROPIC_API_KEY")
    assert key == {"name": "ANTHROPIC_API_KEY", "valueFrom": {"secretKeyRef": {"name": "anthropic", "key": "key"}}}
    assert "value" not in key


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"replicaCnt": 3}, "additional properties 'replicaCnt' not allowed"),
        ({"grpc": {"port": "grpc", "service": "x", "livenessService": "y"}}, "'/grpc/port': got string, want integer"),
        ({"mesh": {"provider": "consul"}}, "'/mesh/provider': value must be one of"),
        # An inline key is refused: keys come from Secrets.
        ({"providerKeys": {"env": [{"name": "OPENAI_API_KEY", "value": "sk-inline"}]}}, "'/providerKeys/env/0': additional properties 'value' not allowed"),
        ({"shutdown": {"preStopSleepSeconds": -1, "drainSeconds": 5, "graceSeconds": 25, "marginSeconds": 5}}, "'/shutdown/preStopSleepSeconds'"),
        ({"config": {"model_list": []}}, "'/config/model_list'"),
        ({"tls": {"enabled": True}}, "'/tls/secretName'"),
        ({"tls": {"clientAuth": "yes"}}, "'/tls/clientAuth': value must be one of"),
    ],
)
def test_bad_values_fail_the_schema_naming_the_key(chart_path, values, expected):
    chart = helm_python.Chart.load(str(chart_path))
    with pytest.raises(helm_python.HelmValuesError) as e:
        chart.validate_schema(values)
    assert expected in str(e.value), str(e.value)


def test_metrics_port_and_service_monitor(chart_path):
    docs = render(chart_path, SCENARIOS["servicemonitor"])
    c = container(docs)
    assert {"name": "admin", "containerPort": 9090, "protocol": "TCP"} in c["ports"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["LLMROUTER__SERVER__ADMIN_LISTEN"] == "0.0.0.0:9090"
    assert env["LLMROUTER_LOG_FORMAT"] == "json"
    svc_ports = {p["name"]: p for p in docs[("Service", "rel-llm-router")]["spec"]["ports"]}
    assert svc_ports["admin"]["port"] == 9090
    sm = docs[("ServiceMonitor", "rel-llm-router")]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"] == [{"port": "admin", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}]
    assert sm["spec"]["selector"]["matchLabels"] == deployment(docs)["spec"]["selector"]["matchLabels"]
    assert ("ServiceMonitor", "rel-llm-router") not in render(chart_path, {})


def test_shared_state_values_set_litellms_redis_keys_with_the_password_from_a_secret(chart_path):
    docs = render(chart_path, SCENARIOS["shared-state"])
    c = container(docs)
    env = {e["name"]: e for e in c["env"]}
    value = lambda name: env[name].get("value")
    assert value("LLMROUTER__ROUTER_SETTINGS__REDIS_URL") == "rediss://redis.platform.svc:6380/0"
    # Keys are namespaced by release, so two releases on one Redis never mix.
    assert value("LLMROUTER__ROUTER_SETTINGS__REDIS_NAMESPACE") == "prod/rel-llm-router"
    assert value("LLMROUTER__ROUTER_SETTINGS__REDIS_SYNC_INTERVAL") == "50ms"
    assert "LLMROUTER__ROUTER_SETTINGS__REDIS_TIMEOUT" not in env
    assert env["LLMROUTER_REDIS_PASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": "redis-auth", "key": "password"}}
    assert value("LLMROUTER__ROUTER_SETTINGS__REDIS_PASSWORD") == "os.environ/LLMROUTER_REDIS_PASSWORD"
    assert value("LLMROUTER__ROUTER_SETTINGS__REDIS_CA_FILE") == "/etc/llm-router/redis-ca/ca.crt"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["redis-ca"] == "/etc/llm-router/redis-ca"
    volumes = {v["name"]: v for v in deployment(docs)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["redis-ca"]["secret"]["secretName"] == "redis-ca"
    # Off by default: nothing of it is rendered.
    default = container(render(chart_path, {}))
    assert not any("REDIS" in e["name"] for e in default["env"])


def test_a_redis_url_with_a_password_is_refused_by_the_schema(chart_path):
    with pytest.raises(Exception) as e:
        render(chart_path, {"sharedState": {"redis": {"url": "redis://:hunter2@redis:6379"}}})
    assert "sharedState" in str(e.value) or "url" in str(e.value)
