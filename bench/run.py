"""`make bench` / `python -m bench`: start the stack, run every scenario, write the results.

Order: the WebSocket scenarios against each server of `Scale.servers` (the gateway, then the lean
reference, each alone on the server core), then chat over SSE, then REST, topics, the reconnect
storm (two gateways behind nginx) and fairness. Results go to
`BENCH_OUT` (default `bench/results/`): `results.json` (everything measured), `report.md` (the
tables, targets met or not) and PNG plots. A scenario that fails is recorded with its error and the
run goes on, so one broken part never hides the others' numbers; the exit status is non-zero if
any scenario failed.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import redis_probe, report, sendfloor, system
from bench import scale as scales
from bench.loadside import LoadSide
from bench.profile import Profiler, hot_functions
from bench.progress import Progress
from bench.scenarios import chat, fairness, pubsub, rest, storm, topics, websocket
from bench.stack import Stack
from shared.infra import free_port

SERVER_MODULES = {"gateway": "gateway", "lean": "bench.lean_server"}
GATEWAY_ENV = {
    # Benchmark clients only answer protocol pings; they never send application frames, which
    # the gateway's idle timeout would otherwise count as inactivity during a long run.
    "WS_CONNECTION_TIMEOUT": "3600",
}


class ScenarioError(RuntimeError):
    """A scenario failed; the message carries the server's log tail."""


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    packages = {}
    names = ("uvicorn", "websockets", "starlette", "redis", "hiredis", "uvloop", "httptools")
    for name in (*names, "msgspec"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": packages,
    }


def _guarded(
    name: str, results: dict[str, Any], progress: Progress, body: Callable[[], Any]
) -> None:
    try:
        results[name] = body()
    except Exception as exc:
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        progress.step(f"{name} FAILED: {type(exc).__name__}: {exc}", count=False)


def run(out: Path) -> dict[str, Any]:
    scale = scales.from_env()
    cores = system.plan_cores()
    system.pin(0, cores.load)
    nofile = system.raise_nofile()
    prioritized = system.raise_priority(system.LOAD_PRIORITY)
    results: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "scale": asdict(scale),
        "cores": {
            "server": sorted(cores.server),
            "load": sorted(cores.load),
            "shared": cores.shared,
        },
        "nofile_limit": nofile,
        "raised_priority": prioritized,
        "websocket": {},
    }
    planned = {
        "websocket": len(scale.servers) * websocket.steps_planned(scale) + 1,
        "chat": chat.STEPS,
        "rest": rest.STEPS,
        "fairness": fairness.STEPS,
        "topics": 1,
        "storm": storm.STEPS,
        "pubsub": 1,
    }
    progress = Progress(sum(planned.get(name, 0) for name in scale.scenarios))
    reference = system.reference_loop_seconds()
    stolen, began = system.steal_seconds(), time.monotonic()
    shutil.rmtree(out / "logs", ignore_errors=True)
    shutil.rmtree(out / "profiles", ignore_errors=True)
    with Stack(cores, logs=out / "logs") as stack:
        results["redis_server"] = stack.redis_server
        progress.step("infrastructure up, migrations applied", count=False)
        _start_backends(stack, scale)
        progress.step("fake model, notifications_svc and agent_svc up", count=False)
        for name in scale.servers if "websocket" in scale.scenarios else ():
            _guarded(
                name,
                results["websocket"],
                progress,
                lambda name=name: _websocket(stack, name, scale, cores, progress),  # type: ignore[misc]
            )
        if "websocket" in scale.scenarios:
            _guarded("send_floor", results, progress, lambda: _send_floor(scale, cores, progress))
        _http_scenarios(stack, scale, results, progress)
        if "topics" in scale.scenarios:
            _guarded("topics", results, progress, lambda: _topics(stack, scale, progress))
        if "storm" in scale.scenarios:
            _guarded("storm", results, progress, lambda: _storm(stack, scale, cores, progress))
        if "pubsub" in scale.scenarios:
            _guarded("pubsub", results, progress, lambda: _pubsub(scale, progress))
        if "fairness" in scale.scenarios:
            results["fairness"] = {}
            for mode in fairness.MODES:
                _guarded(
                    mode,
                    results["fairness"],
                    progress,
                    lambda mode=mode: _fairness(stack, scale, mode, progress),  # type: ignore[misc]
                )
    results["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    wall = time.monotonic() - began
    results["steal_share"] = {
        str(core): round((seconds - stolen.get(core, 0.0)) / wall, 4)
        for core, seconds in system.steal_seconds().items()
    }
    results["reference_loop_seconds"] = [
        round(reference, 3),
        round(system.reference_loop_seconds(), 3),
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report.write(results, out)
    progress.step(f"results written to {out}/", count=False)
    return results


def _gateway_module() -> str:
    """`BENCH_GATEWAY_MODULE` (a module run with `python -m`, to try a variant of the gateway
    on the same workload), else `gateway`."""
    return os.environ.get("BENCH_GATEWAY_MODULE") or "gateway"


def _profiles(stack: Stack) -> Path | None:
    """Where py-spy profiles go when `BENCH_PROFILE=1`, else None (no profiling)."""
    return stack.logs.parent / "profiles" if os.environ.get("BENCH_PROFILE") == "1" else None


def _profiled(stack: Stack, pid: int, name: str, body: Callable[[], Any]) -> Callable[[], Any]:
    """`body`, sampled with py-spy into `profiles/<name>.txt` when profiling is on; the
    summary lands in the body's result under `profile`."""
    folder = _profiles(stack)
    if folder is None:
        return body

    def profiled() -> Any:
        path = folder / f"{name}.txt"
        with Profiler(pid, path):
            result = body()
        result["profile"] = hot_functions(path)
        return result

    return profiled


def _http_scenarios(
    stack: Stack, scale: scales.Scale, results: dict[str, Any], progress: Progress
) -> None:
    """Chat and REST, through one gateway on the server core."""
    if not {"chat", "rest"} & set(scale.scenarios):
        return
    try:
        gateway = stack.start(
            "gateway", _gateway_module(), stack.ports["gateway"], pinned=True, extra_env=GATEWAY_ENV
        )
    except Exception as exc:
        for name in ("chat", "rest"):
            results[name] = {"error": f"gateway did not start: {exc}"}
        progress.step(f"chat, rest FAILED: gateway did not start: {exc}", count=False)
        return
    pids = {"gateway": gateway.pid}
    pids |= {s.name: s.pid for s in stack.services if s.name.startswith(("agent", "notifications"))}
    everything = pids | {s.name: s.pid for s in stack.services if s.name != "gateway"}
    if stack.redis_pid is not None:
        everything["redis"] = stack.redis_pid
    ports = {"gateway": gateway.port, "notifications_svc": stack.ports["notifications_svc"]}
    bodies = {
        "chat": lambda: _chat(stack, scale, gateway.port, everything, progress),
        "rest": lambda: rest.run(scale, stack.settings, ports, pids, progress),
    }
    for name, body in bodies.items():
        if name in scale.scenarios:
            _guarded(
                name, results, progress, _profiled(stack, gateway.pid, f"gateway-{name}", body)
            )
    stack.stop(gateway)


def _chat(
    stack: Stack, scale: scales.Scale, port: int, pids: dict[str, int], progress: Progress
) -> dict[str, Any]:
    """Chat through the gateway, alone on the server core. The agent workers, which parse the
    model's stream (the anthropic SDK) and write every token to Redis, run on the load core
    with the fake model, Redis, PostgreSQL, agent_svc's HTTP API and the client — in production
    they are other pods, not the gateway's core — so the scenario can tell what the gateway
    adds per token from what the whole pipeline adds. They run behind the load side's own
    processes (`system.BACKGROUND_PRIORITY`): a client starved by them would count its own delay
    as the gateway's. One worker per stream (a worker answers
    one question at a time), all in one process: more processes only add context switches and
    smaller write batches (docs/performance-notes.md). A `bench.redis_probe` writer beside
    them gives the floor: what Redis and the client add without the gateway."""
    workers = stack.start(
        "agent_worker",
        "agent_svc.worker",
        None,
        pinned=False,
        niceness=system.BACKGROUND_PRIORITY,
        extra_env=stack.agent_env | {"AGENT_WORKERS": str(scale.chat_streams)},
    )
    probe_key = f"bench:probe:{uuid.uuid4().hex}"
    probe = stack.start(
        "redis_probe",
        "bench.redis_probe",
        None,
        pinned=False,
        niceness=system.BACKGROUND_PRIORITY,
        extra_env={redis_probe.KEY_ENV: probe_key},
    )
    try:
        return chat.run(
            scale, stack.settings, port, pids | {"agent_worker": workers.pid}, progress, probe_key
        )
    finally:
        stack.stop(probe)
        stack.stop(workers)


def _fairness(stack: Stack, scale: scales.Scale, mode: str, progress: Progress) -> dict[str, Any]:
    """One mode of the fairness scenario: a gateway and one chat worker, both started with the
    mode's per-user queue settings (every service must agree on them), then stopped."""
    env = fairness.mode_env(mode, scale)
    gateway = stack.start(
        "gateway",
        _gateway_module(),
        stack.ports["gateway"],
        pinned=True,
        extra_env=GATEWAY_ENV | env,
    )
    try:
        workers = stack.start(
            "agent_worker",
            "agent_svc.worker",
            None,
            pinned=True,
            extra_env=stack.agent_env | env | {"AGENT_WORKERS": "1"},
        )
        try:
            return fairness.run(mode, scale, stack.settings, gateway.port, progress)
        finally:
            stack.stop(workers)
    finally:
        stack.stop(gateway)


def _start_backends(stack: Stack, scale: scales.Scale) -> None:
    """The fake model, then the services the gateway calls (session claims, replay, chat)."""
    model_port = free_port()
    stack.start(
        "fake_model",
        "bench.fake_model",
        model_port,
        ready=None,
        extra_env={
            "FAKE_MODEL_PORT": str(model_port),
            "FAKE_MODEL_TOKENS": str(scale.chat_tokens),
            "FAKE_MODEL_INTERVAL": str(scale.chat_token_interval),
        },
    )
    stack.start("notifications_svc", "notifications_svc", stack.ports["notifications_svc"])
    # agent_svc serves the session claims of every scenario; the chat workers are started for
    # the chat scenario only, next to the gateway (`_chat`).
    stack.agent_env = {
        "ANTHROPIC_API_KEY": "bench-key-not-a-secret",
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{model_port}",
        "AGENT_WORKERS": "0",
    }
    stack.start("agent_svc", "agent_svc", stack.ports["agent_svc"], extra_env=stack.agent_env)


def _websocket(
    stack: Stack, name: str, scale: scales.Scale, cores: system.Cores, progress: Progress
) -> dict[str, Any]:
    if name == "gateway":
        port = stack.ports["gateway"]
        service = stack.start(
            "gateway", _gateway_module(), port, pinned=True, extra_env=GATEWAY_ENV
        )
    elif name == "lean":
        port = free_port()
        service = stack.start(
            "lean",
            SERVER_MODULES[name],
            port,
            pinned=True,
            ready=None,
            extra_env={"LEAN_PORT": str(port)},
        )
    else:
        raise ValueError(f"unknown server {name!r}: expected one of {sorted(SERVER_MODULES)}")
    try:
        with LoadSide(
            "127.0.0.1", port, stack.redis_url, scale.loadgen_workers, cores.load
        ) as load:
            metrics = f"http://127.0.0.1:{port}/metrics" if name == "gateway" else None
            server = websocket.Server(name, service.pid, stack.redis_pid, metrics)
            return websocket.run(server, load, scale, stack.settings, progress, _profiles(stack))
    except Exception as exc:
        raise ScenarioError(f"{exc}\n--- {name} log ---\n{service.log_tail()}") from exc
    finally:
        stack.stop(service)


def _topics(stack: Stack, scale: scales.Scale, progress: Progress) -> dict[str, Any]:
    port = stack.ports["gateway"]
    env = GATEWAY_ENV | topics.GATEWAY_ENV
    service = stack.start("gateway", _gateway_module(), port, pinned=True, extra_env=env)
    try:
        result = topics.run(port, stack.redis_url, stack.settings, scale)
        progress.step("topics: one big topic, many small ones")
        return result
    except Exception as exc:
        raise ScenarioError(f"{exc}\n--- gateway log ---\n{service.log_tail()}") from exc
    finally:
        stack.stop(service)


def _storm(
    stack: Stack, scale: scales.Scale, cores: system.Cores, progress: Progress
) -> dict[str, Any]:
    return storm.run(
        stack, scale, cores, progress, _gateway_module(), GATEWAY_ENV, _profiles(stack)
    )


def _send_floor(scale: scales.Scale, cores: system.Cores, progress: Progress) -> dict[str, Any]:
    """What bare writes of one frame to as many connections as a broadcast reaches cost here."""
    result = sendfloor.measure(cores, max(scale.idle_levels), scale.broadcasts)
    progress.step(
        f"send floor: {result['connections']:,} bare loopback writes cost "
        f"{result['cpu_ms_p50']:.1f} ms of CPU p50 ({result['us_per_write_p50']} us each)"
    )
    return result


def _pubsub(scale: scales.Scale, progress: Progress) -> dict[str, Any]:
    result = pubsub.run(scale.pubsub_channels, scale.pubsub_messages)
    if "skipped" in result:
        progress.step(f"pubsub: skipped ({result['skipped']})")
    else:
        progress.step(
            f"pubsub read loop: {result['single_redis_us_per_message']} us/message on one Redis, "
            f"{result['cluster_us_per_message']} us/message on a 3-primary cluster"
        )
    return result


def failed(results: dict[str, Any]) -> list[str]:
    """Names of the scenarios that raised."""
    sections = {
        **results.get("websocket", {}),
        "chat": results.get("chat"),
        **{f"fairness {m}": (results.get("fairness") or {}).get(m) for m in fairness.MODES},
        "rest": results.get("rest"),
        "topics": results.get("topics"),
        "storm": results.get("storm"),
        "pubsub": results.get("pubsub"),
        "send_floor": results.get("send_floor"),
    }
    return [name for name, body in sections.items() if isinstance(body, dict) and "error" in body]


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    # SIGTERM (a timeout, a supervisor) unwinds like Ctrl-C, so the stack's processes are stopped
    # rather than orphaned with their ports and data directories.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    out = Path(os.environ.get("BENCH_OUT", "bench/results"))
    try:
        results = run(out)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    broken = failed(results)
    if broken:
        print(
            f"bench: scenarios failed: {', '.join(broken)} (see {out}/results.json)",
            file=sys.stderr,
        )
        return 1
    return 0
