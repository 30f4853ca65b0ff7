"""How big a benchmark run is: `BENCH_SCALE=full` (the published numbers, about five minutes on
two cores) or `BENCH_SCALE=small` (seconds: a smoke run that exercises every scenario at toy size).

Individual knobs can be overridden by environment variables named after the fields, upper-cased
with a `BENCH_` prefix (`BENCH_IDLE_LEVELS=1000,2000`, `BENCH_STEP_SECONDS=2`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Scale:
    name: str
    idle_levels: tuple[int, ...]  # connection counts measured in turn (the last one stays up)
    loadgen_workers: int  # generator processes sharing the connections
    connect_concurrency: int  # handshakes in flight per generator process
    rate_start: int  # targeted fan-out: first offered rate (messages/s)
    rate_factor: float  # each step offers this much more than the previous one
    rate_steps: int  # upper bound on steps (the ramp stops earlier at the first failure)
    step_seconds: float  # how long each rate is offered
    broadcasts: int  # broadcast repetitions
    chat_streams: int  # concurrent SSE chat streams
    chat_tokens: int  # tokens per fake-model answer
    chat_token_interval: float  # seconds between the fake model's tokens
    rest_users: int  # users owning the bulk-loaded notifications
    rest_rows: int  # notifications bulk-loaded for the REST scenario
    rest_requests: int  # requests per REST endpoint measured
    rest_concurrency: tuple[int, ...]  # REST requests in flight, one level after another
    fair_flood: int  # questions the flooding user asks at once in the fairness scenario
    servers: tuple[str, ...]  # which servers the WebSocket scenarios measure
    scenarios: tuple[str, ...]  # which of SCENARIOS run
    topic_subscribers: int = 10_000  # subscribers of the one big topic
    topic_publications: int = 20  # publications to it, one at a time
    topic_groups: int = 1000  # small topics...
    topic_group_size: int = 10  # ...of this many subscribers each
    topic_rates: tuple[int, ...] = (500, 1000, 2000, 4000)  # publications/s over the small topics
    storm_clients: int = 10_000  # clients of the gateway killed in the reconnect storm
    storm_rate: int = 1000  # notifications/s created during the storm
    storm_warm_seconds: float = 2.0  # steady traffic before the kill (and after everyone is back)
    pubsub_channels: int = 1000  # fan-out read loop alone: channels subscribed...
    pubsub_messages: int = 20_000  # ...and messages published per run (best of 3 runs)
    disconnect_window: float = 5.0  # seconds watched after every client disconnected at once
    held_seconds: float = 3.0  # probe window with an idle level's connections up, nothing sent


SERVERS = ("gateway", "lean")
SCENARIOS = ("websocket", "chat", "rest", "fairness", "topics", "storm", "pubsub")

SCALES = {
    "full": Scale(
        name="full",
        idle_levels=(1000, 5000, 10000),
        loadgen_workers=2,
        connect_concurrency=100,
        rate_start=2000,
        rate_factor=1.4,
        rate_steps=16,
        step_seconds=3.0,
        broadcasts=20,
        chat_streams=200,
        chat_tokens=40,
        chat_token_interval=0.02,
        rest_users=10_000,
        rest_rows=1_000_000,
        rest_requests=3000,
        rest_concurrency=(1, 8),
        fair_flood=8,
        servers=("gateway", "lean"),
        scenarios=("websocket", "chat", "rest", "fairness", "topics", "storm", "pubsub"),
    ),
    "small": Scale(
        name="small",
        idle_levels=(50, 200),
        loadgen_workers=2,
        connect_concurrency=50,
        rate_start=200,
        rate_factor=2.0,
        rate_steps=3,
        step_seconds=0.5,
        broadcasts=3,
        chat_streams=5,
        chat_tokens=5,
        chat_token_interval=0.01,
        rest_users=100,
        rest_rows=5_000,
        rest_requests=100,
        rest_concurrency=(1, 4),
        fair_flood=4,
        servers=("gateway", "lean"),
        scenarios=("websocket", "chat", "rest", "fairness", "topics", "storm", "pubsub"),
        topic_subscribers=300,
        topic_publications=5,
        topic_groups=30,
        topic_group_size=10,
        topic_rates=(50, 200),
        storm_clients=200,
        storm_rate=100,
        storm_warm_seconds=0.5,
        pubsub_channels=100,
        pubsub_messages=2000,
    ),
}


def _parse(kind: object, raw: str) -> object:
    if kind == "tuple[int, ...]":
        return tuple(int(part) for part in raw.split(",") if part.strip())
    if kind == "tuple[str, ...]":
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return raw


def from_env(environ: Mapping[str, str] | None = None) -> Scale:
    """The preset named by `BENCH_SCALE` (default `full`) with `BENCH_<FIELD>` overrides.
    Raises `ValueError` naming the variable on an unknown preset or a malformed value."""
    env = os.environ if environ is None else environ
    name = env.get("BENCH_SCALE", "full") or "full"
    if name not in SCALES:
        raise ValueError(f"BENCH_SCALE must be one of {sorted(SCALES)}, got {name!r}")
    scale = SCALES[name]
    overrides: dict[str, object] = {}
    for field in fields(Scale):
        variable = f"BENCH_{field.name.upper()}"
        if field.name != "name" and env.get(variable):
            try:
                overrides[field.name] = _parse(field.type, env[variable])
            except ValueError as exc:
                raise ValueError(f"{variable}: {exc}") from None
    chosen = replace(scale, **overrides)  # type: ignore[arg-type]
    for variable, values, known in (
        ("BENCH_SERVERS", chosen.servers, SERVERS),
        ("BENCH_SCENARIOS", chosen.scenarios, SCENARIOS),
    ):
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{variable}: unknown {unknown}, expected some of {list(known)}")
    return chosen
