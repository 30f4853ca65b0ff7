"""Structured logs: one JSON object per line, secrets never written."""

from __future__ import annotations

import io
import json
import logging
import select
import subprocess
import sys
from pathlib import Path

from shared.log import LOG_BACKLOG, JsonFormatter, LineWriter, Sampled, Scrubber, sample

ROOT = Path(__file__).resolve().parents[2]

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"


def test_scrubber_removes_tokens_and_secrets() -> None:
    """JWTs, token= query values, Bearer credentials and configured secrets are redacted."""
    scrubber = Scrubber(["super-secret-value"])
    text = (
        f"GET /api/v1/ws/x?token={JWT}&last_seq=3 Authorization: Bearer abc.def "
        f"token=opaque123 key=super-secret-value raw {JWT}"
    )
    cleaned = scrubber.scrub(text)
    for leaked in (JWT, "abc.def", "opaque123", "super-secret-value"):
        assert leaked not in cleaned
    assert "last_seq=3" in cleaned


def test_formatter_emits_json_with_extra_fields() -> None:
    """A record becomes one JSON line with level, service, message and extra fields, scrubbed."""
    formatter = JsonFormatter("gateway", Scrubber())
    record = logging.LogRecord("gw", logging.WARNING, __file__, 1, "closing %s", ("conn",), None)
    record.session_id = "s-1"
    record.token = JWT
    line = formatter.format(record)
    entry = json.loads(line)
    assert entry["level"] == "WARNING" and entry["service"] == "gateway"
    assert entry["msg"] == "closing conn" and entry["session_id"] == "s-1"
    assert JWT not in line


def test_scrubbed_line_stays_valid_json() -> None:
    """A message ending in a token query value still parses as JSON after scrubbing."""
    formatter = JsonFormatter("gateway", Scrubber())
    message = '"GET /legacy/ws?token=opaque123" 101'
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, message, None, None)
    entry = json.loads(formatter.format(record))
    assert entry["msg"] == '"GET /legacy/ws?token=[redacted]" 101'


# Every spelling of a token parameter a client or a proxy may produce.
ENCODED_TOKEN_NAMES = ("token", "TOKEN", "%74oken", "t%6Fken", "%74%6F%6B%65%6E", "%2574oken")


def test_scrubber_decodes_parameter_names_before_redacting() -> None:
    """`token=` spelled with percent-encoding (single or double) or another case is redacted;
    other parameters are kept."""
    scrubber = Scrubber()
    for name in ENCODED_TOKEN_NAMES:
        cleaned = scrubber.scrub(f"x {name}=opaque-secret-1&page=2 y")
        assert "opaque-secret-1" not in cleaned, name
        assert "page=2" in cleaned


def test_formatter_drops_the_query_of_a_path_argument() -> None:
    """uvicorn's handshake line (the path with its query as an argument) is written with the
    path only, whatever the query holds; the record itself is left as it was."""
    formatter = JsonFormatter("gateway", Scrubber())
    for name in (*ENCODED_TOKEN_NAMES, "anything"):
        path = f"/api/v1/ws/abc?{name}=opaque-secret-2&last_seq=4"
        args = ("127.0.0.1:5000", path, "[accepted]")
        record = logging.LogRecord(
            "uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s" %s', args, None
        )
        entry = json.loads(formatter.format(record))
        assert entry["msg"] == (
            '127.0.0.1:5000 - "WebSocket /api/v1/ws/abc?[query dropped]" [accepted]'
        )
        assert record.args == args


def test_formatter_drops_queries_left_in_the_text() -> None:
    """A path with a query already formatted into a message or an extra field loses its query."""
    formatter = JsonFormatter("gateway", Scrubber())
    message = 'GET "/api/v1/chat/stream/m?%74oken=opaque-secret-3" 200'
    record = logging.LogRecord("app", logging.INFO, __file__, 1, message, None, None)
    record.url = "/api/v1/ws/s?t%6Fken=opaque-secret-4"
    line = formatter.format(record)
    entry = json.loads(line)
    assert "opaque-secret" not in line
    assert entry["msg"] == 'GET "/api/v1/chat/stream/m?[query dropped]" 200'
    assert entry["url"] == "/api/v1/ws/s?[query dropped]"


def test_sampled_passes_one_in_n_matching_records_and_every_other_record() -> None:
    """Of 2001 handshake lines the 1st, 1001st and 2001st pass, marked `sampled`; a record
    with another template always passes, unmarked."""
    sampled = Sampled('%s - "WebSocket %s"', 1000)

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, ("a", "b"), None)

    handshakes = [record('%s - "WebSocket %s" [accepted]') for _ in range(2001)]
    passed = [i for i, r in enumerate(handshakes) if sampled.filter(r)]
    assert passed == [0, 1000, 2000]
    assert all(getattr(handshakes[i], "sampled", None) == 1000 for i in passed)
    other = record("Started server process [%s]")
    assert sampled.filter(other)
    assert not hasattr(other, "sampled")


def test_sample_replaces_its_filter_and_every_one_removes_it() -> None:
    """`sample()` twice leaves one filter on the logger; `every=1` leaves none."""
    logger = logging.getLogger("test.sampled")
    sample("test.sampled", "x %s", 10)
    sample("test.sampled", "x %s", 5)
    assert [f.every for f in logger.filters if isinstance(f, Sampled)] == [5]
    sample("test.sampled", "x %s", 1)
    assert not [f for f in logger.filters if isinstance(f, Sampled)]


# A process that floods its log while nobody reads its stderr, then reports how long its longest
# logging call took: a pipe holds about 64 KB, so a write of the log on the caller's thread would
# block there for good after a few hundred lines.
_FLOOD = """
import json, logging, sys, time
from prometheus_client import REGISTRY
from shared import log
log.configure("flood", "INFO")
logger = logging.getLogger("flood")
longest = 0.0
for number in range(LINES):
    started = time.perf_counter()
    logger.info("line %d %s", number, "x" * 200)
    longest = max(longest, time.perf_counter() - started)
dropped = REGISTRY.get_sample_value("log_lines_dropped_total")
print(json.dumps({"longest_call_s": longest, "dropped_total": dropped}), flush=True)
sys.stdin.readline()
"""


def test_a_log_reader_that_falls_behind_never_blocks_the_caller() -> None:
    """20,000 lines logged while nobody reads the process's stderr: every logging call returns
    at once; once the reader comes back it gets the first lines in order, then the 10,000 that
    waited, then one line saying how many were dropped — nothing else lost — and the metric
    counts them."""
    lines = 20_000
    process = subprocess.Popen(
        [sys.executable, "-c", _FLOOD.replace("LINES", str(lines))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "a logging call blocked on the full pipe"
        report = json.loads(process.stdout.readline())
        _, err = process.communicate(b"exit\n", timeout=30)
    finally:
        process.kill()
        process.wait()
    assert report["longest_call_s"] < 0.5
    entries = [json.loads(line) for line in err.decode().splitlines()]
    logged = [int(e["msg"].split()[1]) for e in entries if e["logger"] == "flood"]
    dropped = [e for e in entries if "dropped_lines" in e]
    assert len(dropped) == 1 and dropped[0]["level"] == "WARNING"
    assert logged == sorted(logged) and logged[0] == 0
    assert len(logged) + dropped[0]["dropped_lines"] == lines
    assert report["dropped_total"] == dropped[0]["dropped_lines"]  # on /metrics too
    assert LOG_BACKLOG <= len(logged) < lines


def test_the_writer_writes_in_order_and_flush_waits_for_it() -> None:
    """Lines reach the stream in the order put; `flush` returns once all are written; after
    `close` the thread has ended."""
    stream = io.StringIO()
    writer = LineWriter(stream, backlog=100, report=lambda count: f"dropped {count}")
    for number in range(50):
        writer.put(f"line {number}")
    assert writer.flush(timeout=5)
    assert stream.getvalue().splitlines() == [f"line {n}" for n in range(50)]
    writer.close()
    assert not writer._thread.is_alive()


_FORK = """
import logging, os
from shared import log
log.configure("forked", "INFO")
logging.getLogger("forked").info("before the fork")
child = os.fork()
if child == 0:
    logging.getLogger("forked").info("in the child")
    logging.shutdown()
    os._exit(0)
os.waitpid(child, 0)
logging.getLogger("forked").info("in the parent")
"""


def test_a_forked_child_writes_its_own_lines() -> None:
    """The writer's thread does not survive a fork: the child starts its own, so its lines are
    written, and the parent's are written once."""
    done = subprocess.run(
        [sys.executable, "-c", _FORK], capture_output=True, timeout=30, cwd=ROOT, check=True
    )
    messages = [json.loads(line)["msg"] for line in done.stderr.decode().splitlines()]
    assert sorted(messages) == ["before the fork", "in the child", "in the parent"]


_TO_A_FILE = """
import logging, os, sys
from shared import log
log.configure("file", "INFO")
for number in range(100):
    logging.getLogger("file").info("line %d", number)
    with open("/proc/self/fd/2") as written:
        if f'"line {number}"' not in written.read():
            sys.exit(f"line {number} was not in the file when the call returned")
"""


def test_into_a_regular_file_each_line_is_written_before_the_call_returns(
    tmp_path: Path,
) -> None:
    """A file waits for no reader: there the line is written by the logging call itself, so
    it is in the file the moment the call returns (what anyone reading a service's log file
    right after an event relies on)."""
    log_file = tmp_path / "service.log"
    with log_file.open("wb") as stderr:
        done = subprocess.run(
            [sys.executable, "-c", _TO_A_FILE], stderr=stderr, timeout=30, cwd=ROOT, check=False
        )
    assert done.returncode == 0, log_file.read_text()[-500:]
    assert len(log_file.read_text().splitlines()) == 100
