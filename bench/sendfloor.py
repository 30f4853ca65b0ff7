"""The floor under a broadcast on this machine: what bare socket writes of one frame to every
connection cost one process, with nothing of a server around them.

A broadcast to N WebSocket clients is, whatever the server does besides, N socket writes of one
small frame. On loopback each write also runs the receiver's TCP input and wakes its reader inside
the sender's system call, so that floor is a property of the machine, not of the code: this probe
measures it in the run that judges the broadcast target. A process pinned to the server's cores
at the server's priority writes one frame of a broadcast's size to each of N loopback
connections, whose peers a process on the load cores reads (as the generator workers do), round
after round; its CPU time per round is the least a server on this machine spends on a broadcast
to N, its wall time the least until the last write is out.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import selectors
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

from bench import stats, system

# A broadcast frame's size on the wire: a text frame's 4-byte header and the benchmark's payload.
FRAME = b"\x81\x7e\x00\x78" + b"x" * 120
ROUND_PAUSE = 0.2  # seconds between rounds: the reader drains, the sender's core cools
_CTX = multiprocessing.get_context("spawn")


def measure(cores: system.Cores, connections: int, rounds: int) -> dict[str, Any]:
    """`rounds` rounds of one `FRAME` written to each of `connections` loopback connections by a
    process on `cores.server`, read by one on `cores.load`; CPU and wall milliseconds per round."""
    parent, child = _CTX.Pipe()
    sender = _CTX.Process(
        target=_send, args=(child, cores.server, connections, rounds), name="sendfloor"
    )
    sender.start()
    child.close()
    reader = None
    read_end, read_child = _CTX.Pipe()
    try:
        port = _receive(parent, 60.0)
        reader = _CTX.Process(
            target=_read, args=(read_child, port, cores.load, connections), name="sendfloor-reader"
        )
        reader.start()
        read_child.close()
        cpu_ms, wall_ms = _receive(parent, 120.0 + rounds * (ROUND_PAUSE + 1.0))
        received = _receive(read_end, 60.0)
    finally:
        for process in (sender, reader):
            if process is not None:
                process.join(10.0)
                if process.is_alive():
                    process.kill()
    cpu = sorted(int(ms * 1e6) for ms in cpu_ms)
    wall = sorted(int(ms * 1e6) for ms in wall_ms)
    return {
        "connections": connections,
        "frame_bytes": len(FRAME),
        "rounds": len(cpu_ms),
        "bytes_received": received,  # by the reader: every write of every round, or less
        "cpu_ms_p50": stats.percentile(cpu, 50),
        "cpu_ms_min": stats.percentile(cpu, 0),
        "cpu_ms_max": stats.percentile(cpu, 100),
        "wall_ms_p50": stats.percentile(wall, 50),
        "wall_ms_p99": stats.percentile(wall, 99),
        "us_per_write_p50": round(stats.percentile(cpu, 50) * 1000 / connections, 2),
    }


def _receive(pipe: Connection, timeout: float) -> Any:
    if not pipe.poll(timeout):
        raise TimeoutError(f"the send-floor probe did not answer within {timeout:.0f} s")
    try:
        answer = pipe.recv()
    except EOFError:
        raise RuntimeError("the send-floor probe's sender died") from None
    if isinstance(answer, BaseException):
        raise answer
    return answer


def _send(pipe: Connection, cores: frozenset[int], connections: int, rounds: int) -> None:
    """The sender: listen, report the port, accept every connection, then time the rounds."""
    try:
        system.pin(0, cores)
        system.raise_priority(system.SERVER_PRIORITY)
        system.raise_nofile()
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(4096)
            pipe.send(listener.getsockname()[1])
            accepted: list[socket.socket] = []
            while len(accepted) < connections:
                sock, _ = listener.accept()
                # As an asyncio transport's socket: Nagle off, non-blocking.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(False)
                accepted.append(sock)
        time.sleep(ROUND_PAUSE)
        cpu_ms, wall_ms = [], []
        for _ in range(rounds):
            wall, cpu = time.perf_counter(), time.thread_time()
            for sock in accepted:
                sock.send(FRAME)
            cpu_ms.append((time.thread_time() - cpu) * 1000)
            wall_ms.append((time.perf_counter() - wall) * 1000)
            time.sleep(ROUND_PAUSE)
        pipe.send((cpu_ms, wall_ms))
        for sock in accepted:
            sock.close()
    except Exception as exc:  # the orchestrator reports it
        pipe.send(exc)


def _read(pipe: Connection, port: int, cores: frozenset[int], connections: int) -> None:
    """The reader: open the connections, read until the sender closes them all, report the
    bytes read."""
    system.pin(0, cores)
    system.raise_priority(system.LOAD_PRIORITY)
    system.raise_nofile()
    selector = selectors.EpollSelector()
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, sock)
    remaining, received = connections, 0
    while remaining:
        events = selector.select(timeout=30.0)
        if not events:
            break  # the sender is gone
        for key, _ in events:
            peer: socket.socket = key.data
            with contextlib.suppress(BlockingIOError):
                data = peer.recv(65536)
                received += len(data)
                if not data:
                    selector.unregister(peer)
                    peer.close()
                    remaining -= 1
    pipe.send(received)
