"""Publisher process: PUBLISHes timestamped frames to Redis at a given rate, as fast as Python can.

It writes the Redis protocol (RESP) itself on one blocking socket, pipelining whole batches and
reading the integer replies in bulk: a few microseconds per message, so the publisher can offer
well beyond what one gateway process delivers. A reply of `0` means no subscriber had the channel
— a targeted user nobody was subscribed to — and is reported as `unrouted`, never silently lost.

Commands over the pipe (`(name, *args)` in, one reply out):
  users(user_ids)             -> None   the user ids targeted messages go to (uniformly at random)
  probe_user(user_id)         -> None   the user whose connection receives the probe frames
  targeted(step, rate, secs)  -> dict   publish for `secs` seconds at `rate` messages/second
  broadcast(k, secs, every)   -> dict   publish broadcast `k` once, then for `secs` seconds a
                                        probe frame to the probe user every `every` seconds
  stop()                      -> None   exit
"""

from __future__ import annotations

import random
import socket
import time
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit

from bench import marks, system
from shared import keys

_TICK = 0.0005  # seconds slept when no message is due; batches absorb the scheduler's jitter
_MAX_BATCH = 2000


class RespPublisher:
    """A pipelining PUBLISH client over one socket. Not thread-safe."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self.pending = 0
        self.unrouted = 0
        self.errors = 0

    @staticmethod
    def command(channel: bytes, payload: bytes) -> bytes:
        return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            len(channel),
            channel,
            len(payload),
            payload,
        )

    def send(self, commands: list[bytes]) -> None:
        self.sock.sendall(b"".join(commands))
        self.pending += len(commands)

    def read_replies(self, *, block: bool) -> None:
        """Consume the replies that arrived; with `block`, wait until none is pending."""
        while self.pending:
            self.sock.setblocking(block)
            try:
                chunk = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            finally:
                self.sock.setblocking(True)
            if not chunk:
                raise ConnectionError("redis closed the publisher's connection")
            lines = (self._buffer + chunk).split(b"\r\n")
            self._buffer = lines.pop()
            for line in lines:
                self.pending -= 1
                if line == b":0":
                    self.unrouted += 1
                elif not line.startswith(b":"):
                    self.errors += 1


class Publisher:
    def __init__(self, redis_url: str) -> None:
        self.resp = RespPublisher(redis_url)
        self.targets: list[tuple[bytes, marks.Template]] = []
        self.broadcast_template = marks.Template(None)
        self.probe: tuple[bytes, marks.Template] | None = None

    def users(self, user_ids: list[str]) -> None:
        self.targets = [(keys.user_channel(u).encode(), marks.Template(u)) for u in user_ids]

    def probe_user(self, user_id: str) -> None:
        self.probe = (keys.user_channel(user_id).encode(), marks.Template(user_id))

    def targeted(self, step: int, rate: float, seconds: float) -> dict[str, Any]:
        """Offer `rate` messages/s for `seconds`; each message goes to one random user."""
        resp, targets, command = self.resp, self.targets, RespPublisher.command
        pick, fill, now_ns = random.randrange, marks.Template.fill, time.monotonic_ns
        resp.unrouted = resp.errors = 0
        count = len(targets)
        sent = 0
        started = time.monotonic()
        cpu0 = time.process_time()
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= seconds:
                break
            due = min(int(elapsed * rate) - sent, _MAX_BATCH)
            if due <= 0:
                resp.read_replies(block=False)
                time.sleep(_TICK)
                continue
            batch = []
            for k in range(sent, sent + due):
                channel, template = targets[pick(count)]
                batch.append(command(channel, fill(template, marks.TARGETED, step, k, now_ns())))
            resp.send(batch)
            sent += due
        wall = time.monotonic() - started
        resp.read_replies(block=True)
        return {
            "sent": sent,
            "seconds": wall,
            "achieved_rate": sent / wall,
            "unrouted": resp.unrouted,
            "errors": resp.errors,
            "cpu": (time.process_time() - cpu0) / wall,
        }

    def broadcast(self, k: int, probe_seconds: float = 0.0, every: float = 0.001) -> dict[str, Any]:
        """Publish broadcast `k`; then, with a probe user set, one targeted frame to that user
        every `every` seconds for `probe_seconds` (on the same connection, so Redis relays them
        after the broadcast: they measure how long the broadcast holds up another user's frame).
        """
        resp = self.resp
        resp.unrouted = resp.errors = 0
        sent_ns = time.monotonic_ns()
        payload = self.broadcast_template.fill(marks.BROADCAST, 0, k, sent_ns)
        resp.send([RespPublisher.command(keys.BROADCAST_CHANNEL.encode(), payload)])
        probes = 0
        if self.probe is not None and probe_seconds > 0:
            channel, template = self.probe
            started = time.monotonic()
            while time.monotonic() - started < probe_seconds:
                probe = template.fill(marks.PROBE, probes, k, time.monotonic_ns())
                resp.send([RespPublisher.command(channel, probe)])
                probes += 1
                resp.read_replies(block=False)
                time.sleep(every)
        resp.read_replies(block=True)
        return {
            "sent_ns": sent_ns,
            "probes": probes,
            "unrouted": resp.unrouted,
            "errors": resp.errors,
        }


def main(pipe: Connection, redis_url: str, cores: frozenset[int]) -> None:
    """Process entry point (multiprocessing target)."""
    system.pin(0, cores)
    publisher = Publisher(redis_url)
    while True:
        try:
            name, *args = pipe.recv()
        except EOFError:
            return
        if name == "stop":
            return
        pipe.send(getattr(publisher, name)(*args))
