"""Property-based fuzz of the public REST API from the OpenAPI document (schemathesis), against
real processes: gateway, notifications_svc, agent_svc with an offline-model worker, PostgreSQL
and a Redis of the module's own.

Each operation gets valid (positive) and schema-violating (negative) requests, authenticated as a
fresh user A. Every answer must be no 5xx, have a documented status and content type, and match
its schema strictly (no undocumented field); and no answer may carry anything of user B, who has
a notification and a session of their own. Then A's token is tried on B's ids directly: 404.

Bounded in `make test` (`FUZZ_EXAMPLES`, default 4 per operation and mode, derandomized so a
run is repeatable); `make fuzz` runs many more, randomized, and prints every request it tried.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import schemathesis
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.contract import public_openapi
from tests.agent_svc.stack import ChatStack, stack_fixture
from tests.conftest import TEST_INTERNAL_TOKEN
from tests.support.contract import Checker
from tests.support.push_service import b64url

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "4"))
LONG = EXAMPLES > 20  # `make fuzz`: random examples, and say what was tried
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


stack = stack_fixture(
    "fuzz", offline=True, notifications=True, AGENT_OFFLINE_DELAY="0.001", AGENT_WORKERS="1"
)


def _foreign_data(stack: ChatStack, token: str, user: uuid.UUID) -> dict[str, str]:
    """User B's notification, session and push subscription (registered after the
    notification, so nothing is ever sent to its endpoint); the ids by name."""
    notifications = stack.extra[0].url
    created = httpx.post(
        notifications + "/internal/v1/notifications",
        json={"user_id": str(user), "title": "B's secret", "content": "b", "type": "secret"},
        headers={"Authorization": f"Bearer {TEST_INTERNAL_TOKEN}"},
    )
    session = httpx.post(
        stack.gateway.url + "/api/v1/sessions",
        json={"title": "B's session"},
        headers={"Authorization": f"Bearer {token}"},
    )
    endpoint = f"https://fcm.googleapis.com/fcm/send/{uuid.uuid4()}"
    subscription = httpx.post(
        stack.gateway.url + "/api/v1/push/subscriptions",
        json={"endpoint": endpoint, "keys": _browser_keys()},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert created.status_code == 201 and session.status_code == 201
    assert subscription.status_code == 201, subscription.text
    return {
        "user": str(user),
        "notification": created.json()["id"],
        "session": session.json()["id"],
        "subscription": subscription.json()["id"],
        "endpoint": endpoint,
    }


def _browser_keys() -> dict[str, str]:
    """A browser's push subscription keys: a real P-256 public key and a 16-byte secret."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return {"p256dh": b64url(point), "auth": b64url(os.urandom(16))}


def _strict(checker: Checker, response: Any, case: Any) -> None:
    """The suite's strict contract check (undocumented fields fail) on a schemathesis call."""
    request = httpx.Request(case.method, response.request.url, headers={})
    answer = httpx.Response(
        response.status_code,
        headers=[(k, v) for k, values in response.headers.items() for v in values],
        content=response.content,
        request=request,
    )
    expected = checker.expected(request, answer)
    media = answer.headers.get("content-type", "").split(";")[0]
    if expected is not None and media == "application/json":
        checker.check_body(request, answer, *expected)


def _fuzz(
    operation: Any,
    mode: GenerationMode,
    base_url: str,
    token: str,
    foreign: dict[str, str],
    checker: Checker,
    tried: Counter[str],
    statuses: Counter[str],
) -> None:
    """Up to `EXAMPLES` requests to one operation in one generation mode, each checked."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=not LONG,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=15
        )
        tried[f"{operation.label} [{mode.value}]"] += 1
        statuses[f"{operation.label} -> {response.status_code}"] += 1
        if LONG:
            print(f"{response.status_code} {case.method} {response.request.url}")
        case.validate_response(response, checks=CHECKS)
        _strict(checker, response, case)
        leaked = [name for name, value in foreign.items() if value in response.text]
        assert not leaked, f"user A saw user B's {leaked}: {response.text[:300]}"

    try:
        run()
    except Unsatisfiable:
        # No parameter and no body: there is nothing a negative case could violate.
        assert mode is GenerationMode.NEGATIVE, operation.label


def test_public_rest_api_fuzz(
    stack: ChatStack, token_for: Callable[..., str], contract_checker: Checker
) -> None:
    user_a, user_b = uuid.uuid4(), uuid.uuid4()
    token_a = token_for(user_a)
    foreign = _foreign_data(stack, token_for(user_b), user_b)
    schema = schemathesis.openapi.from_dict(public_openapi())
    tried: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an Err raises here, failing the test
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, stack.gateway.url, token_a, foreign, contract_checker, tried,
                  statuses)  # fmt: skip
    print(f"\nREST fuzz: {sum(tried.values())} requests over {len(tried)} operation/mode pairs")
    for label, count in sorted(statuses.items()):
        print(f"  {count:5d}  {label}")
    assert len({label.split(" [")[0] for label in tried}) == sum(
        len(ops) for ops in public_openapi()["paths"].values()
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PATCH", "/api/v1/notifications/{notification}/read"),
        ("DELETE", "/api/v1/notifications/{notification}"),
        ("GET", "/api/v1/sessions/{session}/messages"),
        ("DELETE", "/api/v1/push/subscriptions/{subscription}"),
    ],
)
def test_another_users_ids_answer_404(
    stack: ChatStack, token_for: Callable[..., str], method: str, path: str
) -> None:
    user_b = uuid.uuid4()
    foreign = _foreign_data(stack, token_for(user_b), user_b)
    url = stack.gateway.url + path.format(**foreign)
    response = httpx.request(
        method, url, headers={"Authorization": f"Bearer {token_for(uuid.uuid4())}"}
    )
    assert response.status_code == 404
    assert foreign["user"] not in response.text
