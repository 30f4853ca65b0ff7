"""A started local Redis Cluster for tests (`shared.local_cluster`), or the reason there is none."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.local_cluster import LocalRedisCluster, redis_server_7


def started_or_skip(root: Path) -> LocalRedisCluster:
    """A started three-primary cluster under `root`; skips the test (fails it under CI, where
    `.ci/run` installs it) when no redis-server 7 is installed. The caller stops it."""
    binary = redis_server_7()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server 7 is not installed: .ci/run should have installed it")
        pytest.skip("needs Debian's redis-server 7+ (apt-get install redis-server)")
    return LocalRedisCluster(root, binary).start()
