"""Run deploy/nginx.conf with a local nginx in front of gateways on this machine (no Docker).

    python3 deploy/local_nginx.py [--listen 8080] 8000 8010

starts nginx in the foreground, listening on 127.0.0.1:<listen>, balancing over the gateways on
127.0.0.1:<port> for every port given; Ctrl-C (or SIGTERM) stops it. The configuration is the
deployed file itself with only what must differ on a workstation substituted: the `listen` line,
the upstream's `server gateway:8000` line (one line per gateway, same parameters) and the temp
paths (nginx's compiled defaults may not be writable). tests/deploy uses the same `render`, so
the procedure in the README is the tested one. Needs nginx (Debian: `apt-get install nginx`);
runs as any user (as root, workers drop to nobody).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

NGINX_CONF = Path(__file__).resolve().parent / "nginx.conf"
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_binary() -> str | None:
    """Path of the nginx executable (Debian installs it in /usr/sbin, not always on PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def _replace_once(pattern: str, replacement: str, text: str) -> str:
    result, count = re.subn(pattern, lambda _: replacement, text, flags=re.MULTILINE)
    if count != 1:
        raise ValueError(f"deploy/nginx.conf: expected one match of {pattern!r}, got {count}")
    return result


def render(source: str, *, port: int, upstreams: list[int], workdir: Path) -> str:
    """`source` (deploy/nginx.conf) listening on 127.0.0.1:`port`, balancing over the gateways
    on 127.0.0.1:`upstreams`, with temp files under `workdir`. Raises `ValueError` when the file
    no longer has exactly one line to substitute for each."""
    text = _replace_once(r"^(\s*)listen 8080;$", f"        listen 127.0.0.1:{port};", source)
    match = re.search(r"^(\s*)server gateway:8000( [^;]*)?;$", text, flags=re.MULTILINE)
    if match is None:
        raise ValueError("deploy/nginx.conf: no `server gateway:8000 ...;` line in the upstream")
    indent, params = match[1], match[2] or ""
    servers = "\n".join(f"{indent}server 127.0.0.1:{p}{params};" for p in upstreams)
    text = text[: match.start()] + servers + text[match.end() :]
    temp = "\n".join(f"    {name}_temp_path {workdir / name};" for name in TEMP_DIRS)
    return _replace_once(r"^http \{$", "http {\n" + temp, text)


def command(binary: str, workdir: Path) -> list[str]:
    """The nginx command line for a rendered `workdir/nginx.conf`, in the foreground."""
    directives = f"daemon off; pid {workdir / 'nginx.pid'};"
    if os.geteuid() == 0:
        # Workers drop to an unprivileged user; Debian has no group named "nobody".
        directives += " user nobody nogroup;"
    conf = workdir / "nginx.conf"
    return [binary, "-e", "stderr", "-p", str(workdir), "-c", str(conf), "-g", directives]


def prepare(workdir: Path, *, port: int, upstreams: list[int]) -> None:
    """Write the rendered configuration and its temp folders into `workdir`."""
    workdir.chmod(0o755)  # workers running as nobody reach their temp folders
    for name in TEMP_DIRS:
        (workdir / name).mkdir(exist_ok=True)
    rendered = render(NGINX_CONF.read_text(), port=port, upstreams=upstreams, workdir=workdir)
    (workdir / "nginx.conf").write_text(rendered)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gateways", nargs="+", type=int, help="gateway ports on 127.0.0.1")
    parser.add_argument("--listen", type=int, default=8080, help="port nginx listens on")
    args = parser.parse_args(argv)
    binary = nginx_binary()
    if binary is None:
        print("nginx is not installed (Debian: apt-get install nginx)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="nginx-") as folder:
        workdir = Path(folder)
        prepare(workdir, port=args.listen, upstreams=args.gateways)
        print(
            f"nginx on http://127.0.0.1:{args.listen} -> gateways "
            + ", ".join(f"127.0.0.1:{p}" for p in args.gateways),
            file=sys.stderr,
            flush=True,
        )
        process = subprocess.Popen(command(binary, workdir), stdin=subprocess.DEVNULL)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: process.terminate())
        return process.wait()


if __name__ == "__main__":
    sys.exit(main())
