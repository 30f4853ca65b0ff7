"""deploy/local_nginx.py for the load harnesses (`bench` and `chaos`): the script that renders
deploy/nginx.conf for loopback upstreams lives beside the file it renders, not in a package, so
it is loaded from its path here, once for both."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "local_nginx.py"


@functools.cache
def module() -> ModuleType:
    """The loaded script (`prepare`, `command`, `nginx_binary`)."""
    spec = importlib.util.spec_from_file_location("local_nginx", SCRIPT)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def nginx_binary() -> str | None:
    """Path of the nginx executable, None when it is not installed."""
    found: str | None = module().nginx_binary()
    return found
