"""Assertions on the rendered chart (called by helm/test.sh with the directory of renderings,
one <values-name>.yaml per file in helm/bellhop/ci/). What operators rely on: probes on the
paths and port the node serves, a grace period longer than the drain, the restrictive security
context, the TLS Secret mounted so rotation reaches the node, environment names that
docs/CONFIGURATION.md documents, and the PrometheusRule carrying deploy/prometheus/alerts.yml.

Prints one line per check and a closing "N passed, N failed"."""

import pathlib
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
RENDERS = pathlib.Path(sys.argv[1])
VALUES = yaml.safe_load((ROOT / "helm/bellhop/values.yaml").read_text())
DOCUMENTED = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", (ROOT / "docs/CONFIGURATION.md").read_text(), re.M))
# The node's own deadline past DRAIN_SECONDS (crates/bellhop-gateway: drain + write timeout
# + close linger; docs/CONFIGURATION.md "Lifecycle": "at most DRAIN_SECONDS + 20 s later").
NODE_DEADLINE_PAST_DRAIN = 20

passed, failed = 0, 0


def check(name, fn):
    global passed, failed
    try:
        fn()
        passed += 1
        print(f"  ok   {name}")
    except AssertionError as e:
        failed += 1
        print(f"  FAIL {name}: {e}")


def objects(name):
    docs = [d for d in yaml.safe_load_all((RENDERS / f"{name}.yaml").read_text()) if d]
    return docs


def one(docs, kind, component="gateway"):
    found = [
        d
        for d in docs
        if d["kind"] == kind and d["metadata"].get("labels", {}).get("app.kubernetes.io/component", "gateway") == component
    ]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def gateway(docs):
    dep = one(docs, "Deployment")
    (container,) = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "bellhop"]
    return dep, dep["spec"]["template"]["spec"], container


def port_number(container, name):
    for p in container["ports"]:
        if p["name"] == name:
            return p["containerPort"]
    raise AssertionError(f"no container port named {name}")


def probes_hit_the_admin_port(docs):
    _, _, c = gateway(docs)
    env = env_of(c)
    admin = port_number(c, "metrics")
    assert str(admin) == env["METRICS_PORT"]["value"], "the metrics port is METRICS_PORT"
    assert str(port_number(c, "ws")) == env["WS_PORT"]["value"], "the ws port is WS_PORT"
    for probe, path in [("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        get = c[probe]["httpGet"]
        assert get["path"] == path, f"{probe} path {get['path']}"
        assert get["port"] in ("metrics", admin), f"{probe} port {get['port']}"
        assert get.get("scheme", "HTTP") == "HTTP", "the admin port is always plain HTTP"
    # Liveness must not kill a node that is only slow to start: the startup probe guards it.
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 10


def grace_period_covers_the_drain(docs):
    _, spec, c = gateway(docs)
    drain = int(env_of(c)["DRAIN_SECONDS"]["value"])
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = spec["terminationGracePeriodSeconds"]
    assert grace > pre_stop + drain + NODE_DEADLINE_PAST_DRAIN, (
        f"terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + DRAIN_SECONDS {drain} + {NODE_DEADLINE_PAST_DRAIN}"
    )
    assert pre_stop > 0, "a preStop pause lets endpoints go before the drain starts"


def rolling_update_never_cuts_capacity(docs):
    dep, spec, _ = gateway(docs)
    strategy = dep["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0, "no pod removed before its replacement is ready"
    assert dep["spec"]["minReadySeconds"] > 0, "steps are spaced so reconnects spread"
    keys = {t["topologyKey"] for t in spec.get("topologySpreadConstraints", [])}
    assert {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= keys, keys


def security_context_is_restrictive(docs):
    _, spec, c = gateway(docs)
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc.get("privileged", False) is False
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    assert spec["automountServiceAccountToken"] is False
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]


def env_names_are_documented(docs):
    _, _, c = gateway(docs)
    unknown = sorted(set(env_of(c)) - DOCUMENTED)
    assert not unknown, f"not in docs/CONFIGURATION.md: {unknown}"
    env = env_of(c)
    assert env["BELLHOP_ENV"]["value"] == "production"
    assert env["NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", "each pod names itself"
    assert "secretKeyRef" in env["JWT_SECRET"]["valueFrom"], "the JWT secret comes from a Secret"
    assert "REDIS_PASSWORD" not in env or "REDIS_URL" not in env, "the node refuses both"


def redis_settings(name):
    def run(docs):
        _, _, c = gateway(docs)
        env = env_of(c)
        if name == "redis-cluster":
            assert "secretKeyRef" in env["REDIS_URL"]["valueFrom"]
            assert env["REDIS_CLUSTER"]["value"] == "true"
            assert env["REDIS_TLS_ENABLED"]["value"] == "true"
            ca = env["REDIS_TLS_CA_PATH"]["value"]
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            assert any(ca.startswith(p + "/") for p in mounts), f"{ca} is mounted"
        elif name == "production":
            assert env["REDIS_HOST"]["value"] and "secretKeyRef" in env["REDIS_PASSWORD"]["valueFrom"]
        elif name == "trial":
            sts = one(docs, "StatefulSet", component="redis")
            assert sts["spec"]["replicas"] == 1
            assert env["REDIS_HOST"]["value"] == sts["spec"]["serviceName"]
        elif name == "embedded":
            assert not {k for k in env if k.startswith("REDIS_")}, "no Redis"
            assert gateway(docs)[0]["spec"]["replicas"] == 1
        else:
            assert env["REDIS_HOST"]["value"]

    return run


def tls_secret_mount_follows_rotation(docs):
    _, spec, c = gateway(docs)
    env = env_of(c)
    assert env["SSL_ENABLED"]["value"] == "true"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "tls")
    assert "subPath" not in mount, "a subPath mount never sees the Secret's updates"
    for var, file in [("SSL_CERT_PATH", "tls.crt"), ("SSL_KEY_PATH", "tls.key")]:
        assert env[var]["value"] == f"{mount['mountPath']}/{file}", env[var]
    volume = next(v for v in spec["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == "bellhop-tls"
    assert "items" not in volume["secret"], "items would still be fine, but keep the whole Secret"
    assert int(env["SSL_RELOAD_INTERVAL_SECONDS"]["value"]) > 0, "the node re-reads the files"
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "bellhop")
    assert service["spec"]["ports"][0]["appProtocol"] == "https"


def services_and_policies(docs):
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    _, _, c = gateway(docs)
    services = [d for d in docs if d["kind"] == "Service" and d["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"]
    ports = {p["targetPort"] for s in services for p in s["spec"]["ports"]}
    assert ports == {"ws", "metrics"}, f"one Service for the main port, one for metrics: {ports}"
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "bellhop")
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {"ws", "metrics"}, allowed
    assert ("ServiceAccount", "bellhop") in names


def production_objects(docs):
    hpa = one(docs, "HorizontalPodAutoscaler")
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "bellhop_connections"
    assert hpa["spec"]["behavior"]["scaleDown"]["policies"][0]["value"] == 1, "scale down one pod at a time"
    dep, _, _ = gateway(docs)
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    metrics_service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-metrics"))
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert all(metrics_service["metadata"]["labels"].get(k) == v for k, v in selected.items()), "selects the metrics Service"
    main = next(d for d in docs if d["kind"] == "Service" and not d["metadata"]["name"].endswith("-metrics"))
    assert not all(main["metadata"]["labels"].get(k) == v for k, v in selected.items()), "and not the main one"
    assert not any(d["kind"] == "Secret" for d in docs), "an existing Secret: the chart makes none"


def prometheus_rule_is_alerts_yml(docs):
    rule = one(docs, "PrometheusRule")
    source = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    assert rule["spec"]["groups"] == source["groups"], "the PrometheusRule differs from deploy/prometheus/alerts.yml"
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        yaml.safe_dump({"groups": rule["spec"]["groups"]}, f)
        f.flush()
        out = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


def generated_secret(docs):
    secret = one(docs, "Secret")
    import base64

    value = base64.b64decode(secret["data"]["jwt-secret"])
    assert len(value) >= 32, "production refuses a shorter secret"
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


renders = sorted(p.stem for p in RENDERS.glob("*.yaml") if not p.stem.endswith(".err") and p.stem != "last")
assert {"minimal", "production", "redis-cluster", "tls"} <= set(renders), renders
for name in renders:
    docs = objects(name)
    print(name)
    check("probes hit /healthz and /readyz on the admin port", lambda: probes_hit_the_admin_port(docs))
    check("terminationGracePeriodSeconds > preStop + DRAIN_SECONDS + node deadline", lambda: grace_period_covers_the_drain(docs))
    check("rolling update keeps capacity, spreads pods", lambda: rolling_update_never_cuts_capacity(docs))
    check("restrictive securityContext and resources", lambda: security_context_is_restrictive(docs))
    check("every env name is in docs/CONFIGURATION.md", lambda: env_names_are_documented(docs))
    check("Redis settings", lambda: redis_settings(name)(docs))
    check("Services and NetworkPolicy", lambda: services_and_policies(docs))
    if name == "tls":
        check("TLS Secret mounted as a directory, paths match", lambda: tls_secret_mount_follows_rotation(docs))
    if name == "production":
        check("HPA, PDB, ServiceMonitor", lambda: production_objects(docs))
        check("PrometheusRule == deploy/prometheus/alerts.yml, promtool-valid", lambda: prometheus_rule_is_alerts_yml(docs))
    if name == "minimal":
        check("a generated JWT secret of 48 characters, kept", lambda: generated_secret(docs))

print(f"chart: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
