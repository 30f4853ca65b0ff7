"""The chaos run needs Debian's nginx: the deployment tests' fixture (skip outside CI when it is
missing, fail in CI)."""

from __future__ import annotations

from tests.deploy.conftest import nginx_path

__all__ = ["nginx_path"]
