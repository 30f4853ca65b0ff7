"""Debian's redis-server 7 for tests that need it (a local Redis Cluster, ACLs, the server the
deployment runs), or the reason there is none."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.local_cluster import LocalRedisCluster, redis_server_7


def redis_server_7_or_skip() -> str:
    """The path of a redis-server 7 or newer; skips the test (fails it under CI, where `.ci/run`
    installs it) when there is none."""
    binary = redis_server_7()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server 7 is not installed: .ci/run should have installed it")
        pytest.skip("needs Debian's redis-server 7+ (apt-get install redis-server)")
    return binary


def started_or_skip(root: Path) -> LocalRedisCluster:
    """A started three-primary cluster under `root` (`redis_server_7_or_skip`). The caller stops
    it."""
    return LocalRedisCluster(root, redis_server_7_or_skip()).start()
