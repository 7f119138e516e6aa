"""Kubernetes manifests: they parse, have the fields their kind requires, and
reference each other consistently (selectors, probes, volumes, config, secret).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from common.urls import STORE_URL_ENV
from serving.settings import Settings, deprecated_env, env_names
from tests.deploy import _deploy as d

ROUTES = {"/healthz", "/readyz"}
API_VERSIONS = {
    "Namespace": "v1",
    "ServiceAccount": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "PersistentVolumeClaim": "v1",
    "Service": "v1",
    "Deployment": "apps/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "PodDisruptionBudget": "policy/v1",
    "CronJob": "batch/v1",
    "Job": "batch/v1",
    "TFJob": "kubeflow.org/v1",
}


def one(kind: str) -> dict:
    found = [doc for _p, doc in d.k8s_objects(kind)]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def test_every_document_parses_with_apiversion_kind_and_name():
    docs = d.k8s_objects()
    assert len(docs) >= 10
    for path, doc in docs:
        kind = doc.get("kind")
        assert kind in API_VERSIONS, f"{path.name}: unexpected kind {kind}"
        assert doc.get("apiVersion") == API_VERSIONS[kind], f"{path.name}: {kind} apiVersion"
        assert doc.get("metadata", {}).get("name"), f"{path.name}: {kind} without metadata.name"
        assert "namespace" not in doc["metadata"] or kind == "Namespace", (
            "namespaces come from kustomize"
        )


def test_kustomizations_list_every_manifest_and_nothing_missing():
    listed = set()
    for kfile in sorted(d.K8S.rglob("kustomization.yaml")):
        k = yaml.safe_load(kfile.read_text())
        assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
        assert k["namespace"] == "twotower"
        for res in k["resources"]:
            path = (kfile.parent / res).resolve()
            assert path.is_file(), f"{kfile}: resource {res} does not exist"
            listed.add(path)
        assert {i["name"] for i in k["images"]} == {"twotower"}
    manifests = {p.resolve() for p, _ in d.k8s_objects()}
    # Only the example Secret stays out (applying it would overwrite the real one).
    assert manifests - listed == {(d.K8S / "secret.example.yaml").resolve()}


def test_kubectl_kustomize_builds_when_kubectl_is_installed():
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed; the kustomization structure is checked above")
    for kdir in (d.K8S, d.K8S / "multiworker", d.K8S / "multiworker" / "snapshot"):
        out = subprocess.run(
            ["kubectl", "kustomize", str(kdir)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        built = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
        assert all(
            doc["metadata"].get("namespace") == "twotower"
            for doc in built
            if doc["kind"] != "Namespace"
        )
        images = {c["image"] for doc in built for _w, _p, c in d.containers(doc)}
        assert images <= {"registry.example.com/twotower:0.1.0"}, images


def test_deployment_selector_probes_and_security():
    dep = one("Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items(), "selector must match the template labels"
    # The HPA owns the replica count: a `replicas` here resets it on every apply.
    assert "replicas" not in dep["spec"]
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe, route in (
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ):
        http = c[probe]["httpGet"]
        assert http["path"].split("?")[0] == route, probe
        assert http["port"] in port_names or http["port"] in port_names.values(), probe
    assert port_names["http"] == 8000
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 120
    assert (
        pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    )
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert {"configMapRef": {"name": "twotower-config"}} in c["envFrom"]


def test_probe_routes_exist_in_the_api():
    """/healthz and /readyz are real routes of the app the Deployment runs."""
    from serving.app import create_app

    app = create_app(Settings(artifacts="."))
    paths = {path for path, ops in app.openapi()["paths"].items() if "get" in ops}
    assert ROUTES | {"/metrics"} <= paths, paths


def test_pod_volumes_resolve_and_artifacts_are_read_only_only_for_the_api():
    pvc = one("PersistentVolumeClaim")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    configmaps = {doc["metadata"]["name"] for _p, doc in d.k8s_objects("ConfigMap")}
    for path, doc in d.k8s_objects():
        for where, template in d.pod_templates(doc):
            pod = template["spec"]
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for c in pod["containers"]:
                for m in c.get("volumeMounts", []):
                    assert m["name"] in volumes, (
                        f"{path.name} {where}: mount of undeclared volume {m['name']}"
                    )
                    vol = volumes[m["name"]]
                    if "persistentVolumeClaim" in vol:
                        assert vol["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
                        read_only = m.get("readOnly", False)
                        # Writers: the pipeline (CronJob, freeze Job, TFJob chief). The API
                        # and the TFJob workers only read (versions, snapshot, checkpoints).
                        readers = doc["kind"] == "Deployment" or where == "TFJob/Worker"
                        assert read_only == readers, f"{path.name} {where}: readOnly={read_only}"
                        assert vol["persistentVolumeClaim"].get("readOnly", False) == read_only
                    if "configMap" in vol:
                        assert vol["configMap"]["name"] in configmaps
                assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), (
                    f"{where}: read-only root needs /tmp"
                )


def _generated_configmaps() -> dict[str, dict[str, str]]:
    """ConfigMaps that kustomizations generate (name -> literal data)."""
    out = {}
    for kfile in d.K8S.rglob("kustomization.yaml"):
        for gen in yaml.safe_load(kfile.read_text()).get("configMapGenerator", []):
            out[gen["name"]] = dict(lit.split("=", 1) for lit in gen.get("literals", []))
    return out


def test_env_sources_exist_and_names_are_known():
    secret = one("Secret")
    secret_keys = set(secret["stringData"])
    generated = _generated_configmaps()
    config = next(
        doc
        for _p, doc in d.k8s_objects("ConfigMap")
        if doc["metadata"]["name"] == "twotower-config"
    )
    for name in config["data"]:
        assert name not in deprecated_env(), f"ConfigMap: {name} is an old name"
        if name.startswith("TWOTOWER_SERVE_"):
            assert name in env_names(), f"ConfigMap: {name} is not a serving setting"
        else:
            assert name in {"TWOTOWER_DEPLOY__ENVIRONMENT", "HOME", "MPLCONFIGDIR"}, (
                f"ConfigMap: unexpected {name}"
            )
    for _path, doc in d.k8s_objects():
        for where, _pod, c in d.containers(doc):
            for src in c.get("envFrom", []):
                ref = src.get("configMapRef") or src.get("secretRef")
                assert ref["name"] in {"twotower-config", secret["metadata"]["name"]}, where
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert (
                        ref["name"] == secret["metadata"]["name"] and ref["key"] in secret_keys
                    ), f"{where}: {e}"
                cm_ref = e.get("valueFrom", {}).get("configMapKeyRef")
                if cm_ref:
                    assert cm_ref["key"] in generated.get(cm_ref["name"], {}), f"{where}: {e}"


def _api_literal_env() -> dict[str, str]:
    """The API container's env entries with a literal value."""
    (c,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def _api_env() -> dict[str, str]:
    """The API container's environment as the kubelet builds it: the ConfigMap, then its env
    entries (literal values, and the example Secret's keys under the names they are given)."""
    config = next(
        doc
        for _p, doc in d.k8s_objects("ConfigMap")
        if doc["metadata"]["name"] == "twotower-config"
    )
    secret = one("Secret")["stringData"]
    (c,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    env = dict(config["data"])
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        env[e["name"]] = secret[ref["key"]] if ref else e["value"]
    return env


def test_configmap_settings_are_valid_production_serving_settings(monkeypatch):
    config = next(
        doc
        for _p, doc in d.k8s_objects("ConfigMap")
        if doc["metadata"]["name"] == "twotower-config"
    )
    secret = one("Secret")["stringData"]
    for name, value in {**config["data"], **_api_literal_env()}.items():
        if name in env_names():
            monkeypatch.setenv(name, value)
    settings = Settings(artifacts="/artifacts", store_url=secret["TWOTOWER_STORE_URL"])
    assert settings.environment == "production"
    assert config["data"]["TWOTOWER_DEPLOY__ENVIRONMENT"] == "production"
    assert settings.auth_mode == "writes"


def test_api_keys_come_from_the_secret_as_a_file_that_rotates(tmp_path):
    """Mounted as a directory (a subPath mount never sees an update), read-only, at the
    path TWOTOWER_SERVE__API_KEYS_FILE names; the example's placeholder is refused by
    serving and a real key is accepted."""
    from serving.api_keys import KeyConfigError, KeyRing

    dep = one("Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    path = _api_literal_env()["TWOTOWER_SERVE__API_KEYS_FILE"]
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
    assert "subPath" not in mount and mount["readOnly"] is True
    secret = one("Secret")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    (item,) = volume["secret"]["items"]
    assert f"{mount['mountPath']}/{item['path']}" == path
    assert item["key"] in secret["stringData"]
    assert volume["secret"]["defaultMode"] & 0o007 == 0, "not readable by other users"

    keys = tmp_path / "api-keys"
    base = {"artifacts": tmp_path, "store_url": "rediss://r:6380/0", "environment": "production"}
    keys.write_text(secret["stringData"][item["key"]])
    with pytest.raises(KeyConfigError, match="placeholder"):
        KeyRing.from_settings(Settings(**base, api_keys_file=keys))
    keys.write_text(secret["stringData"][item["key"]].replace("CHANGE-ME-", "9f" * 8))
    assert len(KeyRing.from_settings(Settings(**base, api_keys_file=keys))) == 1


def test_example_secret_is_refused_by_the_preflight_as_is():
    """Deploying the placeholders must fail loudly, not run with them."""
    preflight = d.load_script("preflight")
    env = _api_env()
    assert env[STORE_URL_ENV] == one("Secret")["stringData"]["TWOTOWER_STORE_URL"]
    verdict = preflight.check(env, ["twotower", "serve", "--artifacts", "/artifacts"])
    assert not verdict.ok
    assert any("placeholder" in p for p in verdict.problems)
    env_real = {k: v.replace("CHANGE-ME-openssl-rand-hex-32", "9f" * 16) for k, v in env.items()}
    assert preflight.check(env_real, ["twotower", "serve", "--artifacts", "/artifacts"]).ok


def test_service_targets_the_api_pods():
    svc, dep = one("Service"), one("Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert svc["spec"]["ports"][0]["targetPort"] in {p["name"] for p in c["ports"]}


def test_hpa_targets_the_deployment():
    hpa, dep = one("HorizontalPodAutoscaler"), one("Deployment")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
        "apps/v1",
        "Deployment",
        dep["metadata"]["name"],
    )
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["requests"]["cpu"], "CPU utilisation needs a CPU request"


def test_pdb_selects_the_api_pods_and_leaves_room_to_drain():
    pdb, dep, hpa = one("PodDisruptionBudget"), one("Deployment"), one("HorizontalPodAutoscaler")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], (
        "a drain must be able to evict one pod"
    )


def test_cronjob_schedule_concurrency_and_retries():
    from croniter import croniter

    cron = one("CronJob")
    spec = cron["spec"]
    assert croniter.is_valid(spec["schedule"])
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 0 < spec["startingDeadlineSeconds"] <= 3600
    job = spec["jobTemplate"]["spec"]
    # Exit 1 is also a gate refusal: no immediate retry (the next schedule retries).
    assert job["backoffLimit"] == 0
    assert job["activeDeadlineSeconds"] > 0
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # required by podFailurePolicy
    names = {c["name"] for c in job["template"]["spec"]["containers"]}
    rules = job["podFailurePolicy"]["rules"]
    for rule in rules:
        if "onExitCodes" in rule:
            assert rule["onExitCodes"]["containerName"] in names
    assert any(
        r["action"] == "FailJob" and 2 in r.get("onExitCodes", {}).get("values", []) for r in rules
    )
    assert any(
        r["action"] == "Ignore" and {"type": "DisruptionTarget"} in r.get("onPodConditions", [])
        for r in rules
    ), "an evicted pod must be replaced, not failed"
    selector = job["template"]["metadata"]["labels"]
    assert selector["app.kubernetes.io/component"] == "trainer"


def test_pipeline_configmap_matches_the_compose_config_file():
    cm = next(
        doc
        for _p, doc in d.k8s_objects("ConfigMap")
        if doc["metadata"]["name"] == "twotower-pipeline"
    )
    assert yaml.safe_load(cm["data"]["pipeline.yaml"]) == yaml.safe_load(
        d.PIPELINE_CONFIG.read_text()
    )
    cron = one("CronJob")
    c = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "pipeline-config")
    args = c["args"]
    assert args[args.index("--config") + 1] == f"{mount['mountPath']}/pipeline.yaml"


def test_tfjob_multiworker_trains_every_replica_on_one_frozen_snapshot():
    tfjob = one("TFJob")
    assert tfjob["spec"]["runPolicy"]["activeDeadlineSeconds"] > 0
    replicas = tfjob["spec"]["tfReplicaSpecs"]
    assert replicas["Chief"]["replicas"] == 1 and replicas["Worker"]["replicas"] >= 1
    argvs = {}
    for role, rspec in replicas.items():
        # 1-127 (refused, bad config) are final; 128+ (killed) restart and resume.
        assert rspec["restartPolicy"] == "ExitCode", role
        (c,) = rspec["template"]["spec"]["containers"]
        assert c["name"] == "tensorflow", "the training-operator finds the container by this name"
        assert "TF_CONFIG" not in d.container_env_names(c), "TF_CONFIG is injected by the operator"
        args = c["args"]
        assert args[0] == "pipeline" and "--checkpoint-dir" not in args
        assert args[args.index("--strategy") + 1] == "multiworker"
        assert args[args.index("--snapshot") + 1].startswith("/artifacts/snapshots/$(")
        assert "--store" not in args and STORE_URL_ENV not in d.container_env_names(c)
        argvs[role] = c["command"] + args
    # Workers run the chief's command line: the same data, config and checkpoint key.
    assert argvs["Worker"] == argvs["Chief"]


def test_the_snapshot_placeholder_is_refused_until_set():
    preflight = d.load_script("preflight")
    config = next(
        doc
        for _p, doc in d.k8s_objects("ConfigMap")
        if doc["metadata"]["name"] == "twotower-config"
    )
    env = {**config["data"], **_generated_configmaps()["twotower-multiworker"]}
    c = one("TFJob")["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]
    argv = d.strip_preflight(c["command"] + c["args"])
    verdict = preflight.check(env, argv)
    assert any("TWOTOWER_SNAPSHOT" in p for p in verdict.problems), verdict.problems
    env["TWOTOWER_SNAPSHOT"] = "r00000042-20261122T051500.123456Z-3f2a"
    assert preflight.check(env, argv).ok


def test_freeze_job_writes_the_snapshot_with_the_store_from_the_secret():
    (job,) = [doc for _p, doc in d.k8s_objects("Job")]
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["args"][:2] == ["pipeline", "--freeze"] and "--store" not in c["args"]
    assert STORE_URL_ENV in d.container_env_names(c)
    assert job["spec"]["activeDeadlineSeconds"] > 0


def test_every_pod_runs_non_root_with_a_read_only_root():
    for path, doc in d.k8s_objects():
        for where, pod, c in d.containers(doc):
            assert pod["securityContext"]["runAsNonRoot"] is True, f"{path.name} {where}"
            assert pod["securityContext"]["runAsUser"] == 10001, (
                f"{path.name} {where}: the image's uid"
            )
            assert pod.get("automountServiceAccountToken") is False, f"{path.name} {where}"
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, f"{path.name} {where}"
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], f"{path.name} {where}"
            assert c["image"] == "twotower", f"{path.name} {where}: set by kustomize images"
