"""The client library's own checks, run from the suite so `make test` covers them: its node unit
tests, its strict JSDoc type check, and the freshness of the types generated from the contract.

They need the client's dev dependencies (`cd client && npm ci`): outside CI they skip with the
reason when those are missing; in CI (`.ci/run` installs them) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[2] / "client"


def run_in_client(*command: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("node") is None or not (CLIENT / "node_modules").is_dir():
        if os.environ.get("CI"):
            pytest.fail("node or client/node_modules is missing: .ci/run installs them (npm ci)")
        pytest.skip("node or client/node_modules is missing (cd client && npm ci)")
    return subprocess.run(command, cwd=CLIENT, capture_output=True, text=True, timeout=300)


def test_node_unit_tests_pass() -> None:
    """`node --test`: backoff, close codes, dedupe, SSE parser, token refresh, chat resume."""
    done = run_in_client("npm", "test", "--silent")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# fail 0" in done.stdout


def test_types_check_strictly() -> None:
    """`tsc --checkJs --noEmit --strict` over the library and the console is clean."""
    done = run_in_client("npx", "--no-install", "tsc", "-p", "tsconfig.json")
    assert done.returncode == 0, done.stdout + done.stderr


def test_generated_types_match_the_contract() -> None:
    """client/src/types.d.ts is what scripts/gen-types.js makes of docs/api/*.json today."""
    done = run_in_client("node", "scripts/gen-types.js", "--check")
    assert done.returncode == 0, done.stdout + done.stderr
