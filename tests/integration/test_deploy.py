"""The deployment artefacts -- Dockerfile, k8s/, k8s/monitoring/ -- checked with no Docker engine
and no cluster.

* The image: the Dockerfile's structure (stages, numeric non-root USER, no demo extra,
  ENTRYPOINT/CMD, HEALTHCHECK, ports, labels) and .dockerignore; then its ENTRYPOINT + CMD run
  as a subprocess the way ``docker run`` would, the exact HEALTHCHECK command run against it
  (exit 0, and non-zero once veil is gone), SIGTERM and a clean exit.
* Kubernetes: every manifest as rendered by ``kustomize build`` / ``kubectl kustomize`` (or,
  without either, by the small resolver here), validated strictly -- unknown fields are errors
  -- against the JSON schemas kubernetes-validate ships, for 1.29 (native sidecars on by
  default) and the newest version it knows. Then the Deployment against veil's own config
  loader: probes, ports, loopback listeners, writable paths, Secret keys, image, security.
* A pod, simulated: the volumes the manifests declare are laid out in a temporary directory
  (ConfigMap and Secret files, emptyDirs), the env is resolved from a test Secret, and the
  keys-init Job's command and the sidecar's command run with them. The kubelet's probes run as
  the kubelet would, /metrics is scraped as the Prometheus job would (token, CA, server name),
  and SIGTERM ends it.
* Monitoring: every metric and label used by the alert rules and the dashboard exists in veil's
  registry (PromQL parsed by promql-parser), and the alert thresholds match the config.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import importlib.util
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate.utils as kv  # type: ignore[import-untyped]
import promql_parser as pq
import pytest
import yaml  # type: ignore[import-untyped]

from proxy.config import KEYS, Settings, load_settings, parse_duration
from proxy.metrics import Metrics
from tests.servers import RedisServer, free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
MONITORING = K8S / "monitoring"
# 1.29: the first release with native sidecars (restartPolicy: Always) enabled by default
KUBE_VERSIONS = ("1.29", kv.latest_version())
VEIL = "veil"  # the sidecar's container name
Doc = dict[str, Any]


# --------------------------------------------------------------------------- helpers


def project_version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def load_yaml(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@dataclass
class Instruction:
    op: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    body: list[Instruction] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [i.args for i in self.body if i.op == op]

    def last(self, op: str) -> str:
        found = self.all(op)
        assert found, f"no {op} in stage {self.name}"
        return found[-1]


def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, continuation lines joined, comments dropped."""
    logical, buf = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        s = raw.strip()
        if s.startswith("#") or (not s and not buf):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        logical.append(buf + s)
        buf = ""
    assert not buf, "the Dockerfile ends inside a continuation line"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            assert op == "ARG", f"{op} before the first FROM"
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            stages[-1].body.append(Instruction(op, rest))
    return args, stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def healthcheck() -> tuple[dict[str, str], list[str]]:
    """HEALTHCHECK's options and its exec-form command."""
    _, stages = dockerfile()
    text = stages[-1].last("HEALTHCHECK")
    options = dict(re.findall(r"--([a-z-]+)=(\S+)", text))
    command = text[text.index("CMD") + 3 :].strip()
    return options, exec_form(command)


def image_command() -> list[str]:
    runtime = dockerfile()[1][-1]
    return exec_form(runtime.last("ENTRYPOINT")) + exec_form(runtime.last("CMD"))


def image_env() -> dict[str, str]:
    """The runtime stage's ENV (``K=V`` pairs), without PATH (the test's own stays)."""
    env: dict[str, str] = {}
    for args in dockerfile()[1][-1].all("ENV"):
        for key, value in re.findall(r"(\w+)=(\S+)", args):
            env[key] = value
    env.pop("PATH", None)
    return env


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            pattern = line.lstrip("!").strip("/")
            rx_text = ""
            i = 0
            while i < len(pattern):
                if pattern.startswith("**/", i):
                    rx_text, i = rx_text + "(?:.*/)?", i + 3
                elif pattern.startswith("**", i):
                    rx_text, i = rx_text + ".*", i + 2
                elif pattern[i] == "*":
                    rx_text, i = rx_text + "[^/]*", i + 1
                elif pattern[i] == "?":
                    rx_text, i = rx_text + "[^/]", i + 1
                elif pattern[i] == "[":
                    end = pattern.index("]", i)
                    rx_text, i = rx_text + pattern[i : end + 1], end + 1
                else:
                    rx_text, i = rx_text + re.escape(pattern[i]), i + 1
            patterns.append((re.compile(rx_text), negate))
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for rx, negate in patterns:
        if any(rx.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


# --- rendering -----------------------------------------------------------------------------


def renderer() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def _image_rewrite(docs: list[Doc], images: list[Doc]) -> None:
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            for img in images:
                if c["image"].split(":")[0] == img["name"]:
                    c["image"] = f"{img.get('newName', img['name'])}:{img['newTag']}"


def resolve_kustomization(directory: Path) -> list[Doc]:
    """A small kustomize for machines without one: resources (files and directories),
    components, configMapGenerator (no hash suffix), images and labels -- what k8s/ uses."""
    kz = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[Doc] = []
    for ref in kz.get("resources", []):
        target = directory / ref
        docs += resolve_kustomization(target) if target.is_dir() else load_yaml(target)
    for gen in kz.get("configMapGenerator", []):
        data = {Path(f).name: (directory / f).read_text() for f in gen.get("files", [])}
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}}
        docs.append({**cm, "data": data})
    for label in kz.get("labels", []):
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(label["pairs"])
    _image_rewrite(docs, kz.get("images", []))
    for ref in kz.get("components", []):
        docs += resolve_kustomization(directory / ref)
    _image_rewrite(docs, kz.get("images", []))
    return docs


@cache
def rendered(target: str) -> tuple[Doc, ...]:
    cmd = renderer()
    if cmd is None:
        return tuple(resolve_kustomization(K8S / target))
    out = subprocess.run(
        [*cmd, str(K8S / target)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, f"{' '.join(cmd)} {target}: {out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def pod_spec(doc: Doc) -> Doc | None:
    if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        spec: Doc = doc["spec"]["template"]["spec"]
        return spec
    return None


def one(docs: tuple[Doc, ...] | list[Doc], kind: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} documents"
    return found[0]


def container(spec: Doc, name: str) -> Doc:
    for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no container {name!r}")


def sidecar(docs: tuple[Doc, ...]) -> tuple[Doc, Doc]:
    spec = pod_spec(one(docs, "Deployment"))
    assert spec is not None
    return spec, container(spec, VEIL)


def secret_example() -> dict[str, str]:
    (secret,) = load_yaml(K8S / "secret-example.yaml")
    assert "data" not in secret, "the example carries placeholders in stringData, never data"
    values: dict[str, str] = secret["stringData"]
    return values


def quantity(text: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    assert m, text
    return float(m[1]) * units.get(m[2], 1)


# --- the pod simulation --------------------------------------------------------------------


@dataclass
class Pki:
    """A test CA and the admin listener's certificate, for the name Prometheus verifies."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def make(cls, server_name: str) -> Pki:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.UTC)

        def cert(subject: str, key: Any, issuer: str, signer: Any, ca: bool, san: list[Any]) -> Any:
            b = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=1))
                .not_valid_after(now + datetime.timedelta(hours=1))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            )
            if san:
                b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
            return b.sign(signer, hashes.SHA256())

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = cert("veil test CA", ca_key, "veil test CA", ca_key, True, [])
        key = ec.generate_private_key(ec.SECP256R1())
        san = [x509.DNSName(server_name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        leaf = cert(server_name, key, "veil test CA", ca_key, False, san)
        pem = serialization.Encoding.PEM
        return cls(
            ca.public_bytes(pem),
            leaf.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        )


@dataclass
class Pod:
    """One container of a rendered pod spec, laid out under ``root`` as the kubelet would:
    ConfigMap and Secret volumes as files, emptyDirs as directories, env resolved."""

    root: Path
    spec: Doc
    container: Doc
    configmaps: dict[str, dict[str, str]]
    secrets: dict[str, dict[str, bytes]]
    env: dict[str, str] = field(default_factory=dict)
    read_only: list[Path] = field(default_factory=list)

    def path(self, inside: str) -> str:
        """A path inside the container -> the path on this machine (mounts only)."""
        mounts = sorted(
            (m["mountPath"] for m in self.container.get("volumeMounts", [])), key=len, reverse=True
        )
        for mount in mounts:
            if inside == mount or inside.startswith(mount.rstrip("/") + "/"):
                return str(self.root / inside.lstrip("/"))
        return inside

    def remap(self, text: str) -> str:
        """Every mounted path in ``text`` (a config file, an env value) -> this machine's."""
        mounts = sorted(
            (m["mountPath"] for m in self.container.get("volumeMounts", [])), key=len, reverse=True
        )
        if not mounts:
            return text
        rx = r"(?<![\w./])(" + "|".join(map(re.escape, mounts)) + r")(?=/|\b|$)"
        return re.sub(rx, lambda m: str(self.root / m[1].lstrip("/")), text)

    def lay_out(self) -> Pod:
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        for mount in self.container.get("volumeMounts", []):
            target = Path(self.path(mount["mountPath"]))
            target.mkdir(parents=True, exist_ok=True)
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                for key, text in self.configmaps[volume["configMap"]["name"]].items():
                    (target / key).write_text(self.remap(text))
            elif "secret" in volume:
                mode = volume["secret"].get("defaultMode", 0o644)
                for key, data in self.secrets[volume["secret"]["secretName"]].items():
                    (target / key).write_bytes(data)
                    os.chmod(target / key, mode)
            else:
                assert "emptyDir" in volume, f"volume {volume['name']}: unexpected kind"
            if mount.get("readOnly"):
                self.read_only.append(target)
        for var in self.container.get("env", []):
            if "value" in var:
                self.env[var["name"]] = self.remap(var["value"])
            else:
                ref = var["valueFrom"]["secretKeyRef"]
                self.env[var["name"]] = self.secrets[ref["name"]][ref["key"]].decode()
        return self

    def snapshot(self) -> dict[str, bytes]:
        return {
            str(p): p.read_bytes()
            for d in self.read_only
            for p in sorted(d.rglob("*"))
            if p.is_file()
        }


def base_env(extra: dict[str, str]) -> dict[str, str]:
    """The test's environment without any VEIL_* of its own, plus the image's ENV and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    return {**env, **image_env(), **extra}


def run_image(argv: list[str], env: dict[str, str], cwd: str, timeout: float = 60) -> str:
    out = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert out.returncode == 0, f"{argv}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def logs(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()

    def stop(self, grace: float) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"no exit within {grace}s of SIGTERM\n{self.logs()}") from None


def start(argv: list[str], env: dict[str, str], cwd: str, logs: Path) -> Running:
    out, err = logs / "stdout", logs / "stderr"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=o, stderr=e)
    return Running(proc, out, err)


@pytest.fixture
def launched() -> Iterator[list[Running]]:
    procs: list[Running] = []
    yield procs
    for r in procs:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()


def wait_http(check: Callable[[], bool], running: Running, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert running.proc.poll() is None, (
            f"veil exited: {running.proc.returncode}\n{running.logs()}"
        )
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what} did not pass within {timeout}s\n{running.logs()}")


def unverified_get(url: str, headers: dict[str, str] | None = None) -> int:
    """An HTTP(S) GET as the kubelet makes it: certificates are not verified."""
    req = urllib.request.Request(url, headers=headers or {})
    ctx = ssl._create_unverified_context()
    try:
        with urllib.request.urlopen(req, timeout=3, context=ctx) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def interpreter(argv: list[str]) -> list[str]:
    """The image's ``python`` is the interpreter veil runs under: here, this one."""
    return [sys.executable, *argv[1:]] if argv[0] == "python" else argv


def listener_env(pod_settings: Settings) -> dict[str, str]:
    """Free ports instead of the fixed ones (same hosts), and listeners whose module is not
    there yet switched off, so the test runs anywhere and at every stage of the project."""
    env = {}
    for section, module in (("redis", "proxy.redis.server"), ("s3", "proxy.s3.server")):
        listen = getattr(pod_settings, section).listen
        if listen is None:
            continue
        if importlib.util.find_spec(module) is None:
            env[KEYS[f"{section}.listen"].env] = "off"
        else:
            env[KEYS[f"{section}.listen"].env] = f"{listen.host}:{free_port()}"
    admin = pod_settings.admin.listen
    assert admin is not None
    env["VEIL_ADMIN_LISTEN"] = f"{admin.host}:{free_port()}"
    return env


# --------------------------------------------------------------------------- the image


def test_dockerfile_stages_user_and_no_demo_extra() -> None:
    args, stages = dockerfile()
    assert len(stages) >= 2, "multi-stage: a builder and a runtime"
    builder, runtime = stages[0], stages[-1]
    assert builder.name == "builder" and runtime.name == "runtime"
    # the same slim CPython 3.11 in both stages: the virtualenv's interpreter link stays valid
    assert builder.base == runtime.base and re.fullmatch(r"python:3\.11-slim(-\w+)?", runtime.base)
    run = " ".join(builder.all("RUN"))
    assert "pip wheel" in run and "/dist/veil-*.whl" in run
    text = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"\[[^\]\n]*\bdemo\b", text), "the demo extra in the Dockerfile"
    assert not re.search(r"pip[^\n]*install[^\n]*(fakeredis|moto)", text)
    # the runtime stage gets only the virtualenv from the builder, and installs nothing
    assert runtime.all("COPY") == ["--from=builder /opt/veil /opt/veil"]
    assert not any("pip install" in r for r in runtime.all("RUN"))
    user = runtime.last("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or gid.isdigit()), f"USER {user}"
    assert runtime.last("WORKDIR") == "/var/lib/veil"
    assert exec_form(runtime.last("VOLUME")) == ["/var/lib/veil"]
    assert exec_form(runtime.last("ENTRYPOINT")) == ["veil"]
    assert exec_form(runtime.last("CMD")) == ["serve"]
    assert runtime.last("STOPSIGNAL") == "SIGTERM"
    assert image_env().get("PYTHONDONTWRITEBYTECODE") == "1", "read-only root: no .pyc writes"
    ports = {int(p) for p in runtime.last("EXPOSE").split()}
    defaults = {
        int(str(KEYS[f"{s}.listen"].default).rsplit(":", 1)[1]) for s in ("redis", "s3", "admin")
    }
    assert ports == defaults
    labels = " ".join(runtime.all("LABEL"))
    for name in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{name}=" in labels
    versions = [a for a in runtime.all("ARG") if a.startswith("VERSION=")]
    assert versions == [f"VERSION={project_version()}"]
    assert "PYTHON_IMAGE" in args


def test_dockerfile_healthcheck_is_urllib_on_healthz() -> None:
    options, command = healthcheck()
    assert set(options) >= {"interval", "timeout", "start-period", "retries"}
    assert command[:2] == ["python", "-c"] and len(command) == 3
    code = command[2]
    assert "urllib.request" in code and "/healthz" in code and "curl" not in code
    compile(code, "HEALTHCHECK", "exec")


def test_dockerignore_keeps_keys_and_clutter_out_of_the_context() -> None:
    _, stages = dockerfile()
    sources = []
    for stage in stages:
        for args in stage.all("COPY"):
            words = [w for w in args.split() if not w.startswith("--")]
            if "--from=" not in args:
                sources += words[:-1]
    assert sources, "no COPY from the build context"
    for source in sources:
        path = ROOT / source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            built_here = "__pycache__" in rel or rel.endswith((".so", "_fastc.c"))
            if not built_here:  # byte-code and the local build of _fastc.pyx: rebuilt inside
                assert not dockerignore_excludes(rel), f"{rel} is needed but ignored"
    for secret_or_clutter in (
        "veil-root.key",
        "veil-keyring.json",
        ".veil-keyring.sealed",
        "veil-audit.jsonl",
        "veil.toml",
        ".veil-demo/veil-root.key",
        "proxy/veil-root.key",
        "proxy/__pycache__/app.cpython-311.pyc",
        "proxy/redis/_fastc.cpython-311-x86_64-linux-gnu.so",
        "proxy/redis/_fastc.c",
        ".git/config",
        "tests/conftest.py",
        "k8s/secret-example.yaml",
        "veil.egg-info/PKG-INFO",
        "Dockerfile",
    ):
        assert dockerignore_excludes(secret_or_clutter), f"{secret_or_clutter} is in the context"


def test_image_entrypoint_serves_healthcheck_passes_and_sigterm_stops(
    tmp_path: Path, launched: list[Running]
) -> None:
    """``docker run IMAGE`` with env only, as docs/DEPLOY.md shows it, minus Docker."""
    runtime = dockerfile()[1][-1]
    volume = tmp_path / runtime.last("WORKDIR").lstrip("/")  # the image's one writable path
    volume.mkdir(parents=True)
    admin = free_port()
    env = base_env(
        {
            "VEIL_KEYS_ROOT_KEY": base64.b64encode(os.urandom(32)).decode(),
            "VEIL_AUDIT_PATH": "stdout",
            "VEIL_REDIS_LISTEN": "off",
            "VEIL_S3_LISTEN": "off",
            "VEIL_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        }
    )
    run_image(["veil", "keys", "init"], env, str(volume))
    veil = start(image_command(), env, str(volume), tmp_path)
    launched.append(veil)
    wait_port(admin, 20)
    options, check = healthcheck()
    timeout = parse_duration(options["timeout"])
    result = subprocess.run(
        interpreter(check), env=env, cwd=str(volume), capture_output=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr.decode()
    assert veil.stop(grace=20) == 0, veil.logs()
    # the check checks: with veil gone it fails
    result = subprocess.run(
        interpreter(check), env=env, cwd=str(volume), capture_output=True, timeout=timeout
    )
    assert result.returncode != 0
    events = [json.loads(line)["event"] for line in veil.stdout.read_text().splitlines()]
    assert events[0] == "sidecar.started" and events[-1] == "sidecar.stopping"
    # the keyring and its sealed copy are in the volume; the root key (from the environment)
    # was never written anywhere
    names = {p.name for p in volume.iterdir()}
    assert {"veil-keyring.json", ".veil-keyring.sealed"} <= names
    assert not any(name.endswith(".key") for name in names)


# --------------------------------------------------------------------------- Kubernetes schemas


@pytest.mark.parametrize("target", ["", "bootstrap"])
def test_kustomizations_render_and_validate_against_kubernetes_schemas(target: str) -> None:
    docs = rendered(target)
    kinds = sorted(d["kind"] for d in docs)
    expected = ["ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "ServiceAccount"]
    assert kinds == sorted(expected + (["Job"] if target == "bootstrap" else []))
    for doc in docs:
        for version in KUBE_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as e:
                where = ".".join(map(str, e.path))
                pytest.fail(
                    f"{doc['kind']}/{doc['metadata']['name']} on {version}: {where}: {e.message}"
                )


def test_standalone_manifests_validate() -> None:
    """The files outside the kustomizations: the Secret example and the Job as written."""
    for path in (K8S / "secret-example.yaml", K8S / "jobs" / "keys-init.yaml"):
        for doc in load_yaml(path):
            for version in KUBE_VERSIONS:
                kv.validate(doc, version, strict=True)


def test_native_sidecars_need_1_29_schemas() -> None:
    """The schemas see the field that makes veil a sidecar: 1.27's reject it."""
    deployment = one(rendered(""), "Deployment")
    with pytest.raises(kv.ValidationError, match="restartPolicy"):
        kv.validate(deployment, "1.27", strict=True)


def test_fallback_resolver_agrees_with_the_renderer() -> None:
    if renderer() is None:
        pytest.skip("no kustomize renderer on PATH: the fallback is what rendered() used")
    for target in ("", "bootstrap"):
        real = rendered(target)
        ours = resolve_kustomization(K8S / target)

        def shape(docs: tuple[Doc, ...] | list[Doc]) -> list[tuple[str, str, list[str]]]:
            out = []
            for d in docs:
                spec = pod_spec(d)
                images = (
                    []
                    if spec is None
                    else [
                        c["image"] for c in [*spec.get("initContainers", []), *spec["containers"]]
                    ]
                )
                out.append(
                    (d["kind"], re.sub(r"-[a-z0-9]{10}$", "", d["metadata"]["name"]), images)
                )
            return sorted(out)

        assert shape(real) == shape(ours)


# --------------------------------------------------------------------------- the Deployment


def test_sidecar_is_native_hardened_and_sized() -> None:
    spec, veil = sidecar(rendered(""))
    assert veil["restartPolicy"] == "Always", "a native sidecar (Kubernetes >= 1.29)"
    assert "command" not in veil and "args" not in veil, "runs the image's ENTRYPOINT and CMD"
    uid = int(dockerfile()[1][-1].last("USER").split(":")[0])
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == uid
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for c in [*spec["initContainers"], *spec["containers"]]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
    res = veil["resources"]
    # SPEC 7: RSS under 150 MiB; the limit leaves headroom above it
    assert quantity(res["limits"]["memory"]) >= 150 * 2**20 + 64 * 2**20
    assert quantity(res["requests"]["memory"]) <= quantity(res["limits"]["memory"])
    assert "cpu" in res["requests"]
    assert spec["terminationGracePeriodSeconds"] > 10, "veil's own drain takes up to 10 s"
    images = {
        container(s, VEIL)["image"]
        for target in ("", "bootstrap")
        for d in rendered(target)
        if (s := pod_spec(d)) is not None
    }
    assert images == {f"registry.example.com/veil:{project_version()}"}


@pytest.fixture
def pod_secrets(redis_url: str) -> dict[str, dict[str, bytes]]:
    """What the operator's ``kubectl create secret`` commands would hold -- for a test."""
    values = {
        "root-key": base64.b64encode(os.urandom(32)).decode(),
        "keyring-store-url": redis_url,
        "admin-token": secrets.token_urlsafe(24),
        "admin-tokens": "prometheus=" + secrets.token_urlsafe(24),
        "s3-access-key": "example-app",
        "s3-secret-key": secrets.token_urlsafe(30),
    }
    assert set(values) == set(secret_example()), "k8s/secret-example.yaml's keys changed"
    (scrape,) = load_yaml(MONITORING / "prometheus-scrape-config.yaml")
    pki = Pki.make(scrape["scrape_configs"][0]["tls_config"]["server_name"])
    return {
        "veil-secrets": {k: v.encode() for k, v in values.items()},
        "veil-admin-tls": {"tls.crt": pki.cert_pem, "tls.key": pki.key_pem, "ca.crt": pki.ca_pem},
    }


def make_pod(
    tmp: Path, docs: tuple[Doc, ...], kind: str, name: str, sec: dict[str, dict[str, bytes]]
) -> Pod:
    spec = pod_spec(one(docs, kind))
    assert spec is not None
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    return Pod(tmp, spec, container(spec, name), configmaps, sec).lay_out()


def pod_settings(pod: Pod) -> Settings:
    return load_settings(None, pod.env)


def test_probes_ports_and_paths_match_the_config(
    tmp_path: Path, pod_secrets: dict[str, dict[str, bytes]]
) -> None:
    docs = rendered("")
    pod = make_pod(tmp_path, docs, "Deployment", VEIL, pod_secrets)
    s = pod_settings(pod)
    assert s.admin.listen is not None and s.redis.listen is not None and s.s3.listen is not None
    tls = s.admin.tls_cert is not None
    ports = {p["name"]: p["containerPort"] for p in pod.container["ports"]}
    assert ports == {"admin": s.admin.listen.port}, "only the admin port leaves the pod"
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        get = pod.container[probe]["httpGet"]
        assert get["path"] == path and ports[get["port"]] == s.admin.listen.port
        assert get["scheme"] == ("HTTPS" if tls else "HTTP")
    # the root key comes from the Secret, never a file in the image
    assert s.keys.root_key is not None
    assert s.keys.store.__class__.__name__ != "FileStore", "several replicas: a redis:// store"
    assert one(docs, "Deployment")["spec"]["replicas"] > 1
    # every file veil writes lies on a writable emptyDir
    volumes = {v["name"]: v for v in pod.spec["volumes"]}
    writable = [
        m["mountPath"]
        for m in pod.container["volumeMounts"]
        if "emptyDir" in volumes[m["name"]] and not m.get("readOnly")
    ]
    inside = {v: k for k, v in ((m, pod.path(m)) for m in writable)}
    for path in (s.keys.local_copy, s.audit.path):
        if path != "stdout":
            assert any(str(path).startswith(p + "/") for p in inside), f"{path} not writable"
    assert s.audit.path == "stdout", "the audit log goes to the container log"
    # the app reaches veil on loopback, at the ports veil listens on
    app = {e["name"]: e.get("value") for e in container(pod.spec, "app")["env"]}
    assert s.redis.listen.is_loopback and s.s3.listen.is_loopback
    assert urlsplit(app["REDIS_URL"]).netloc == str(s.redis.listen)
    assert urlsplit(app["AWS_ENDPOINT_URL_S3"]).netloc == str(s.s3.listen)


def test_every_secret_reference_exists_and_the_example_holds_placeholders_only() -> None:
    example = secret_example()
    (secret,) = load_yaml(K8S / "secret-example.yaml")
    for target in ("", "bootstrap"):
        for doc in rendered(target):
            spec = pod_spec(doc)
            for c in [] if spec is None else [*spec.get("initContainers", []), *spec["containers"]]:
                for var in c.get("env", []):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    if ref and ref["name"] == secret["metadata"]["name"]:
                        assert ref["key"] in example, f"{c['name']}: {ref['key']} not in example"
    for key, value in example.items():
        assert "REPLACE_WITH" in value, f"{key}: not an obvious placeholder"
        for word in re.findall(r"[A-Za-z0-9+/=_-]{16,}", value):
            assert word.startswith("REPLACE_WITH") or not re.search(r"\d", word), (key, word)
        try:
            assert len(base64.b64decode(value, validate=True)) != 32, f"{key} looks like a key"
        except ValueError:
            pass
    text = (K8S / "secret-example.yaml").read_text()
    assert "EXAMPLE" in text and "kubectl create secret generic" in text


def test_network_policy_opens_admin_to_monitoring_only() -> None:
    docs = rendered("")
    policy = one(docs, "NetworkPolicy")
    toml = tomllib.loads(one(docs, "ConfigMap")["data"]["veil.toml"])

    def port(listen: str) -> int:
        return int(listen.rsplit(":", 1)[1])

    admin = port(toml["admin"]["listen"])
    assert policy["spec"]["podSelector"] == one(docs, "Deployment")["spec"]["selector"]
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    for rule in policy["spec"]["ingress"]:
        opened = {p["port"] for p in rule["ports"]}
        assert not opened & {port(toml["redis"]["listen"]), port(toml["s3"]["listen"])}
        if admin in opened:
            assert "tls_cert" in toml["admin"], "the admin port leaves the pod only with TLS"
            (peer,) = rule["from"]
            assert peer["namespaceSelector"]["matchLabels"] == {
                "kubernetes.io/metadata.name": "monitoring"
            }
    egress = {
        (p["port"], p.get("protocol", "TCP")) for r in policy["spec"]["egress"] for p in r["ports"]
    }
    store = urlsplit(secret_example()["keyring-store-url"])
    needed = {
        (53, "UDP"),
        (urlsplit(toml["redis"]["upstream"]).port or 6379, "TCP"),
        (store.port or 6379, "TCP"),
        (urlsplit(toml["s3"]["upstream"]).port or 443, "TCP"),
    }
    assert needed <= egress, needed - egress


# --------------------------------------------------------------------------- the pod, running


def test_pod_keys_init_job_then_sidecar_probes_scrape_and_sigterm(
    tmp_path: Path,
    pod_secrets: dict[str, dict[str, bytes]],
    redis_server: RedisServer,
    launched: list[Running],
    request: pytest.FixtureRequest,
) -> None:
    docs = rendered("bootstrap")
    runtime = dockerfile()[1][-1]
    # the Job: `veil keys init` with the Job's env and volumes; idempotent on a second run
    job = make_pod(tmp_path / "job", docs, "Job", VEIL, pod_secrets)
    job_cwd = job.path(runtime.last("WORKDIR"))
    job_argv = exec_form(runtime.last("ENTRYPOINT")) + job.container["args"]
    job_env = base_env(job.env)
    list_argv = [*exec_form(runtime.last("ENTRYPOINT")), "keys", "list", "--json"]
    run_image(job_argv, job_env, job_cwd)
    keyring = json.loads(run_image(list_argv, job_env, job_cwd))
    assert [v["state"] for v in keyring["versions"]] == ["active"]
    run_image(job_argv, job_env, job_cwd)
    assert json.loads(run_image(list_argv, job_env, job_cwd)) == keyring, "init is idempotent"

    # the sidecar: ENTRYPOINT + CMD with the Deployment's env and volumes
    pod = make_pod(tmp_path / "pod", docs, "Deployment", VEIL, pod_secrets)
    s = pod_settings(pod)
    overrides = listener_env(s)
    overrides[KEYS["redis.upstream"].env] = redis_server.url.replace("/0", "/1")
    if overrides.get(KEYS["s3.listen"].env, "off") != "off":
        overrides[KEYS["s3.upstream"].env] = request.getfixturevalue("moto_server").url
    env = base_env({**pod.env, **overrides})
    admin = int(overrides["VEIL_ADMIN_LISTEN"].rsplit(":", 1)[1])
    before = pod.snapshot()
    veil = start(image_command(), env, pod.path(runtime.last("WORKDIR")), tmp_path)
    launched.append(veil)

    def kubelet_get(probe: str) -> bool:
        get = pod.container[probe]["httpGet"]
        url = f"{get['scheme'].lower()}://127.0.0.1:{admin}{get['path']}"
        return 200 <= unverified_get(url) < 400

    startup = pod.container["startupProbe"]
    budget = min(startup["periodSeconds"] * startup["failureThreshold"], 20)
    wait_http(lambda: kubelet_get("startupProbe"), veil, budget, "startupProbe")
    assert kubelet_get("livenessProbe")

    assert kubelet_get("readinessProbe")  # probes carry no token, off loopback too
    # ...while the rest of the admin API does
    assert unverified_get(f"https://127.0.0.1:{admin}/metrics") == 401

    # the image's HEALTHCHECK works with this config too (it reads veil's config)
    options, check = healthcheck()
    result = subprocess.run(
        interpreter(check), env=env, capture_output=True, timeout=parse_duration(options["timeout"])
    )
    assert result.returncode == 0, result.stderr.decode()

    # Prometheus' scrape: its token, its CA, its server name
    (scrape,) = load_yaml(MONITORING / "prometheus-scrape-config.yaml")
    job_cfg = scrape["scrape_configs"][0]
    assert job_cfg["scheme"] == "https"
    ctx = ssl.create_default_context(cadata=pod_secrets["veil-admin-tls"]["ca.crt"].decode())
    token = pod_secrets["veil-secrets"]["admin-tokens"].decode().partition("=")[2]
    with socket.create_connection(("127.0.0.1", admin), 5) as raw:
        with ctx.wrap_socket(raw, server_hostname=job_cfg["tls_config"]["server_name"]) as tls:
            tls.sendall(
                f"GET {job_cfg['metrics_path']} HTTP/1.1\r\nHost: veil-admin\r\n"
                f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode()
            )
            response = http.client.HTTPResponse(tls)
            response.begin()
            body = response.read().decode()
    assert response.status == 200, body
    assert "veil_keyring_revision 1.0" in body

    # pod deletion: SIGTERM, a clean exit within the grace period
    grace = min(pod.spec["terminationGracePeriodSeconds"], 20)
    assert veil.stop(grace) == 0, veil.logs()
    events = [json.loads(line) for line in veil.stdout.read_text().splitlines()]
    assert events[0]["event"] == "sidecar.started" and events[-1]["event"] == "sidecar.stopping"
    assert pod.snapshot() == before, "veil wrote into a read-only mount"
    assert Path(s.keys.local_copy).is_file(), "the sealed local copy, on the emptyDir"


# --------------------------------------------------------------------------- monitoring


@cache
def registry() -> tuple[dict[str, frozenset[str]], dict[str, frozenset[str]]]:
    """veil's own registry as Prometheus sees it: sample name -> label names, and family ->
    its sample names (without ``_created``). Every labelled series gets one child first, so
    that it shows up at all."""
    from prometheus_client.metrics import MetricWrapperBase
    from prometheus_client.parser import text_string_to_metric_families

    m = Metrics()
    for value in vars(m).values():
        if isinstance(value, MetricWrapperBase) and value._labelnames:
            value.labels(*["1"] * len(value._labelnames))
    m.hot.requests[("resp", "other", "ok")] += 1
    m.hot.encrypts[("redis", "1")] += 1
    m.hot.decrypts[("redis", "1")] += 1
    samples: dict[str, set[str]] = {}
    fams: dict[str, frozenset[str]] = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        assert fam.samples, f"{fam.name}: no sample -- give it one above"
        for sample in fam.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
        names = frozenset(x.name for x in fam.samples if not x.name.endswith("_created"))
        if names:  # the text format shows a counter's ``_created`` as a family of its own
            fams[fam.name] = names
    return {k: frozenset(v) for k, v in samples.items()}, fams


def exposed() -> dict[str, frozenset[str]]:
    return registry()[0]


def families() -> dict[str, frozenset[str]]:
    return registry()[1]


def target_labels() -> frozenset[str]:
    """Labels the scrape job attaches: job, instance and its relabelling targets."""
    (scrape,) = load_yaml(MONITORING / "prometheus-scrape-config.yaml")
    relabel = scrape["scrape_configs"][0]["relabel_configs"]
    return frozenset(
        {"job", "instance"} | {r["target_label"] for r in relabel if "target_label" in r}
    )


@dataclass
class PromQL:
    """Walks a parsed expression: metric names used, problems found, output labels."""

    metrics: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def check(self, text: str) -> frozenset[str] | None:
        try:
            node = pq.parse(text)
        except Exception as e:  # the parser's own error type
            self.problems.append(f"does not parse: {e}: {text}")
            return None
        return self.visit(node)

    def need(self, labels: set[str] | list[str], have: frozenset[str] | None, where: str) -> None:
        missing = set(labels) - (have or frozenset())
        if missing:
            self.problems.append(f"{where}: labels {sorted(missing)} not on {sorted(have or [])}")

    def visit(self, node: Any) -> frozenset[str] | None:
        if isinstance(node, pq.VectorSelector):
            matchers = node.matchers.matchers
            name = node.name or next(m.value for m in matchers if m.name == "__name__")
            self.metrics.add(name)
            if name not in exposed():
                self.problems.append(f"metric {name} is not in veil's registry")
                return None
            have = exposed()[name] | target_labels()
            self.need([m.name for m in matchers if m.name != "__name__"], have, name)
            return have
        if isinstance(node, pq.MatrixSelector):
            return self.visit(node.vector_selector)
        if isinstance(node, pq.ParenExpr | pq.UnaryExpr | pq.SubqueryExpr):
            return self.visit(node.expr)
        if isinstance(node, pq.NumberLiteral | pq.StringLiteral):
            return None
        if isinstance(node, pq.Call):
            outs = [self.visit(a) for a in node.args]
            vectors = [o for o in outs if o is not None]
            if node.func.name == "histogram_quantile":
                assert vectors, "histogram_quantile of nothing"
                self.need(["le"], vectors[0], "histogram_quantile")
                return vectors[0] - {"le"}
            if node.func.name in ("time", "scalar", "pi"):
                return None  # scalars
            if node.func.name in ("absent", "absent_over_time", "vector"):
                return frozenset()
            return vectors[0] if vectors else None
        if isinstance(node, pq.AggregateExpr):
            inner = self.visit(node.expr)
            if node.param is not None:
                self.visit(node.param)
            mod = node.modifier
            if mod is None:
                return frozenset()
            if mod.type == pq.AggModifierType.By:
                self.need(mod.labels, inner, f"by ({', '.join(mod.labels)})")
                return frozenset(mod.labels)
            return (inner or frozenset()) - set(mod.labels)
        if isinstance(node, pq.BinaryExpr):
            lhs, rhs = self.visit(node.lhs), self.visit(node.rhs)
            if lhs is None or rhs is None:
                return lhs if rhs is None else rhs
            bmod = node.modifier
            if bmod is not None and bmod.matching is not None:
                self.need(bmod.matching.labels, lhs, "on/ignoring (left)")
                self.need(bmod.matching.labels, rhs, "on/ignoring (right)")
            if str(node.op) == "or":
                return lhs & rhs
            return lhs
        self.problems.append(f"unhandled PromQL node {type(node).__name__}")
        return None


def grafana_to_promql(expr: str) -> str:
    """What Grafana sends Prometheus: its variables replaced."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


def alert_rules() -> list[Doc]:
    (doc,) = load_yaml(MONITORING / "alerts.yaml")
    return [r for g in doc["groups"] for r in g["rules"]]


def literal(node: Any) -> float:
    """A constant PromQL sub-expression's value (``90 * 86400``)."""
    if isinstance(node, pq.NumberLiteral):
        return float(node.val) if hasattr(node, "val") else float(str(node))
    if isinstance(node, pq.ParenExpr):
        return literal(node.expr)
    assert isinstance(node, pq.BinaryExpr), type(node)
    a, b = literal(node.lhs), literal(node.rhs)
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[str(node.op)]


def test_metric_registry_exposes_spec_10() -> None:
    fams = families()
    assert len(fams) == 20, sorted(fams)
    assert "le" in exposed()["veil_request_duration_seconds_bucket"]
    assert "veil_requests_total" in exposed() and "veil_lazy_queue_dropped_total" in exposed()


def test_alert_rules_use_veil_metrics_and_labels() -> None:
    rules = alert_rules()
    q = PromQL()
    for rule in rules:
        where = rule.get("alert", "?")
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, where
        assert re.fullmatch(r"Veil[A-Za-z0-9]+", where)
        if "for" in rule:
            assert re.fullmatch(r"[0-9]+[smhdwy]", rule["for"]), where
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), where
        assert {"summary", "description"} <= set(rule["annotations"]), where
        before = len(q.problems)
        out = q.check(rule["expr"])
        used = set()
        for text in rule["annotations"].values():
            used |= set(re.findall(r"\$labels\.(\w+)", text))
        q.need(used, out, f"{where} annotations")
        for problem in q.problems[before:]:
            q.problems[q.problems.index(problem)] = f"{where}: {problem}"
    assert not q.problems, "\n".join(q.problems)
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    # the ones operators were promised
    required = {
        "veil_circuit_breaker_open",
        "veil_decrypt_failures_total",
        "veil_nonce_budget_used_ratio",
        "veil_oldest_key_version_in_use_age_seconds",
        "veil_keyring_last_reload_timestamp_seconds",
        "veil_lazy_queue_dropped_total",
        "veil_sidecars_live",
    }
    assert required <= q.metrics, required - q.metrics


def threshold(rule: Doc) -> float:
    node = pq.parse(rule["expr"])
    assert isinstance(node, pq.BinaryExpr) and str(node.op) == ">", rule["alert"]
    return literal(node.rhs)


def test_alert_thresholds_match_the_config() -> None:
    toml = tomllib.loads((K8S / "base" / "veil.toml").read_text())
    keys = toml["keys"]
    rotation, grace = parse_duration(keys["rotation_period"]), parse_duration(keys["grace_period"])
    max_age = parse_duration(keys["max_keyring_age"])
    by_name = {r["alert"]: r for r in alert_rules()}
    assert threshold(by_name["VeilKeyVersionPastRotationPeriod"]) == rotation
    assert threshold(by_name["VeilKeyVersionPastGracePeriod"]) == rotation + grace
    assert threshold(by_name["VeilNonceBudgetHigh"]) == 0.8
    stale = threshold(by_name["VeilKeyringStale"]) + parse_duration(
        by_name["VeilKeyringStale"]["for"]
    )
    assert stale < max_age, "warn before a sidecar stops encrypting"


def test_grafana_dashboard_uses_veil_metrics_and_labels() -> None:
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    q = PromQL()
    for name, var in variables.items():
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"]["query"])
            assert m, f"variable {name}: {var['query']}"
            q.need([m[2]], q.check(grafana_to_promql(m[1])), f"variable {name}")
    ids: set[int] = set()
    boxes: list[tuple[int, int, int, int, str]] = []
    for panel in dash["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, panel["title"]
        for x, y, w, h, t in boxes:
            overlap = (
                g["x"] < x + w and x < g["x"] + g["w"] and g["y"] < y + h and y < g["y"] + g["h"]
            )
            assert not overlap, f"{panel['title']} overlaps {t}"
        boxes.append((g["x"], g["y"], g["w"], g["h"], panel["title"]))
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and panel.get("description"), panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            for var in re.findall(r"\$\{?(\w+)\}?", target["expr"]):
                assert var.startswith("__") or var in variables, f"{panel['title']}: ${var}"
            before = len(q.problems)
            out = q.check(grafana_to_promql(target["expr"]))
            q.need(set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target["legendFormat"])), out, "legend")
            for problem in q.problems[before:]:
                q.problems[q.problems.index(problem)] = f"{panel['title']}: {problem}"
    assert not q.problems, "\n".join(q.problems)
    unused = {f for f, samples in families().items() if not samples & q.metrics}
    assert not unused, f"SPEC 10 metrics without a panel: {sorted(unused)}"
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    for quantile in ("0.5", "0.99"):
        latency = f"histogram_quantile({quantile}, sum by (le, protocol) (rate(veil_request_dur"
        assert latency in exprs, f"no p{quantile} latency panel"


def test_scrape_config_finds_the_sidecar() -> None:
    (scrape,) = load_yaml(MONITORING / "prometheus-scrape-config.yaml")
    (job,) = scrape["scrape_configs"]
    _, veil = sidecar(rendered(""))
    keep = next(r for r in job["relabel_configs"] if r.get("action") == "keep")
    assert keep["source_labels"] == [
        "__meta_kubernetes_pod_container_name",
        "__meta_kubernetes_pod_container_port_name",
    ]
    (port,) = veil["ports"]
    assert re.fullmatch(keep["regex"], f"{veil['name']};{port['name']}")
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    assert job["authorization"]["type"] == "Bearer" and "credentials_file" in job["authorization"]
    assert not any("init" in str(r.get("source_labels")) for r in job["relabel_configs"]), (
        "native sidecars are init containers: do not drop them"
    )
    # the certificate docs/DEPLOY.md tells operators to make carries the name Prometheus checks
    san = f"subjectAltName=DNS:{job['tls_config']['server_name']}"
    assert san in (ROOT / "docs" / "DEPLOY.md").read_text()
