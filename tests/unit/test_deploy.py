"""The definitions in deploy/ are valid: Kubernetes objects against the API schemas, the
commands against `tollgate run --help`, the embedded policy against the loader."""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tollgate.policy.loader import parse_policy

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S_VERSION = "1.30.0"


def run_options() -> set[str]:
    text = subprocess.run([sys.executable, "-m", "tollgate.cli", "run", "--help"], capture_output=True, text=True,
                          check=True, cwd=REPO).stdout
    return set(re.findall(r"(--[a-z-]+)", text))


def manifests() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "kubernetes").rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@pytest.mark.parametrize("doc", manifests(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_kubernetes_objects_match_the_api_schema(doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_broken_manifest_is_caught():
    deployment = next(d for d in manifests() if d["kind"] == "Deployment")
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest():
    listed = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())["resources"]
    present = sorted(p.name for p in (DEPLOY / "kubernetes").glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == present


def test_the_deployment_is_locked_down_and_probed():
    deployment = next(d for d in manifests() if d["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] >= 2 and spec["securityContext"]["runAsNonRoot"] is True
    for c in spec["containers"] + spec["initContainers"]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    proxy = spec["containers"][0]
    assert proxy["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert set(proxy["args"][::2]) <= run_options()


def test_network_policies_make_the_proxy_the_only_way_out():
    policies = {d["metadata"]["name"]: d for d in manifests() if d["kind"] == "NetworkPolicy"}
    app = policies["egress-only-via-tollgate"]["spec"]
    assert app["podSelector"] == {} and app["policyTypes"] == ["Egress"]
    ports = sorted(p["port"] for rule in app["egress"] for p in rule["ports"])
    assert ports == [53, 53, 3128]  # DNS and the proxy, nothing else
    # Applied with `kubectl -n <namespace>` in each application namespace: it names none.
    assert "namespace" not in policies["egress-only-via-tollgate"]["metadata"]
    proxy = policies["tollgate-egress"]["spec"]["egress"][0]["to"][0]["ipBlock"]
    assert proxy["cidr"] == "0.0.0.0/0" and "169.254.0.0/16" in proxy["except"] and "10.0.0.0/8" in proxy["except"]
    # Prometheus can scrape every worker's ops listener.
    ingress_ports = {p["port"] for rule in policies["tollgate-egress"]["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == {3128, 9180, 9181}


def test_apply_k_never_overwrites_the_ca_secret():
    listed = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())["resources"]
    kinds = {d["kind"] for name in listed for d in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if d}
    assert "Secret" not in kinds
    deployment = next(d for d in manifests() if d["kind"] == "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["ca-secret"]["secret"]["secretName"] == "tollgate-ca"


def test_the_init_container_changes_only_what_it_copied():
    # The CA volume's directory belongs to root; chmod on it as uid 10001 fails and the pod
    # never starts. Only the copied files may be touched.
    deployment = next(d for d in manifests() if d["kind"] == "Deployment")
    script = deployment["spec"]["template"]["spec"]["initContainers"][0]["command"][-1]
    assert not re.search(r"chmod \S+ /ca(\s|$|\")", script), script


def test_the_configmap_policy_loads():
    configmap = next(d for d in manifests() if d["kind"] == "ConfigMap")
    policy = parse_policy(configmap["data"]["policy.yaml"].encode(), "configmap-policy.yaml")
    assert policy.destinations and policy.audit.path.startswith("/var/log/tollgate/")


@pytest.mark.parametrize("unit", ["tollgate.service", "tollgate@.service"])
def test_systemd_units_are_hardened_and_use_real_options(unit):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(DEPLOY / "systemd" / unit)
    service = parser["Service"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "CapabilityBoundingSet": "",
                       "ExecReload": "/bin/kill -HUP $MAINPID", "Restart": "on-failure"}.items():
        assert service[key] == value, key
    assert set(service["ReadWritePaths"].split()) == {"/var/lib/tollgate", "/var/log/tollgate"}
    argv = shlex.split(service["ExecStart"])
    assert argv[1] == "run" and {a for a in argv if a.startswith("--")} <= run_options()
    assert service["User"] != "root"


def test_container_runs_as_a_user_with_real_options():
    text = (DEPLOY / "container" / "Containerfile").read_text()
    user = re.search(r"^USER (\S+)", text, re.M).group(1)
    assert user not in ("root", "0")
    entrypoint = re.search(r"ENTRYPOINT (\[.*?\])\n", text, re.S).group(1).replace("\\\n", "")
    argv = yaml.safe_load(entrypoint)
    assert argv[:2] == ["tollgate", "run"] and {a for a in argv if a.startswith("--")} <= run_options()


def test_haproxy_balances_the_template_instances():
    text = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    assert re.search(r"^defaults\n(?:\s+.*\n)*?\s+mode tcp", text, re.M)
    servers = re.findall(r"server \S+ 127\.0\.0\.1:(\d+)", text)
    assert servers == ["3129", "3130"] and re.search(r"bind :3128", text)
