"""The Docker files, checked without a Docker engine: `docker-compose config` validates the compose files,
every service command is a real entry point of this project, the Dockerfile has the shape the README
promises, and every setting is listed in .env.example. (tests/test_compose_smoke.py runs the services.)"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from cli.main import build_parser
from common.settings import Settings
from tests.services import ROOT

FILES = [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]]


def compose_config(*files: str) -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is missing: apt-get install docker-compose (.ci/run does)")
    args = [exe]
    for f in files:
        args += ["-f", str(ROOT / f)]
    env = {"PATH": "/usr/bin:/bin"}  # the defaults, whatever this shell has set
    p = subprocess.run([*args, "config"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    return yaml.safe_load(p.stdout)


@pytest.mark.parametrize("files", FILES, ids=["cpu", "gpu"])
def test_compose_files_are_valid(files):
    cfg = compose_config(*files)
    services = cfg["services"]
    assert {"redis", "postgres", "init", "api", "control", "worker-train", "worker-neighbors"} <= set(services)
    assert services["redis"]["command"][1:5] == ["--appendonly", "yes", "--maxmemory-policy", "noeviction"]
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["redis"]
    assert any("/var/lib/postgresql/data" in str(v) for v in services["postgres"]["volumes"])
    api = services["api"]
    assert api["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert any(str(p.get("target", p) if isinstance(p, dict) else p).endswith("8000") for p in api["ports"])
    assert services["init"]["restart"] == "no"
    for name in ("worker-train", "worker-neighbors"):
        assert "container_name" not in services[name]  # --scale needs that
        assert "ports" not in services[name]
    if len(files) == 2:
        for name in ("worker-train", "worker-neighbors"):
            dev = services[name]["deploy"]["resources"]["reservations"]["devices"][0]
            assert dev["driver"] == "nvidia" and services[name]["environment"]["AEKNN_DEVICE"] == "cuda"
            assert "cu1" in services[name]["build"]["args"]["TORCH_INDEX"]


def test_flower_sits_behind_a_profile():
    flower = compose_config("docker-compose.yml")["services"]["flower"]
    assert flower["profiles"] == ["monitor"] and "redis://redis:6379/0" in " ".join(flower["command"])


def test_every_service_command_is_a_real_entry_point():
    parser = build_parser()
    services = compose_config("docker-compose.yml")["services"]
    ours = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("aeknn")}
    assert set(ours) == {"init", "api", "control", "worker-train", "worker-neighbors", "encoder"}
    for name, s in ours.items():
        cmd = s["command"]
        assert cmd[0] == "aeknn", name  # the console script of pyproject.toml
        args = parser.parse_args(cmd[1:])  # exits (fails the test) on an unknown command or option
        assert callable(args.func), name
    queues = sorted(q for s in ours.values() if s["command"][1] == "worker"
                    for q in s["command"][s["command"].index("--queues") + 1].split(","))
    assert queues == ["control", "neighbors", "train"]  # each queue served, exactly once
    assert sum("--beat" in s["command"] for s in ours.values()) == 1  # one sweeper


def test_dockerfile_shape():
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms == ["${BUILD_IMAGE}", "${BASE_IMAGE}"]  # base images as build arguments
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)  # the default a user gets
    assert "download.pytorch.org/whl/cpu" in text  # CPU wheels by default
    deps = text.index("COPY pyproject.toml")
    code = text.index("COPY common")
    assert deps < text.index("pip install ${PIP_ARGS} --extra-index-url") < code  # dependency layer first
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text and "/health" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "*.db"} <= set(ignored)
    assert re.search(r"^ARG EXTRAS=maps$", text, re.M)  # the reference maps umap and tsne fit in the image


def image_requirements(extras: str) -> subprocess.CompletedProcess:
    return subprocess.run(["python3", "docker/requirements.py", extras], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)


def test_image_requirements_are_pyprojects():
    """What the Dockerfile and docker/wheelhouse.sh install: the dependencies, plus the extras asked for."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert image_requirements("").stdout.split() == project["dependencies"]
    assert image_requirements("maps").stdout.split() == project["dependencies"] + project["optional-dependencies"][
        "maps"]
    for wrong in ("dev", "mapz"):  # the test tools are no part of the image; a misspelling is named
        p = image_requirements(wrong)
        assert p.returncode == 1 and f"EXTRAS: {wrong!r} is not an extra the image takes" in p.stderr, p.stderr


def test_every_setting_is_documented():
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    for field in Settings.model_fields:
        var = f"AEKNN_{field.upper()}"
        assert re.search(rf"^{var}=", example, re.M), f"{var} missing from .env.example"
        assert var in readme, f"{var} missing from the README"
    compose = (ROOT / "docker-compose.yml").read_text()
    for var in set(re.findall(r"(?<!\$)\$\{(\w+)", compose)):
        assert re.search(rf"^{var}=", example, re.M), f"{var} (docker-compose.yml) missing from .env.example"


def test_env_example_values_are_the_defaults(monkeypatch):
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.startswith("AEKNN_") and "=" in line:
            k, v = line.split("=", 1)
            monkeypatch.setenv(k, v)
    from_file = Settings()
    for k in list(__import__("os").environ):
        if k.startswith("AEKNN_"):
            monkeypatch.delenv(k)
    assert from_file == Settings()
