"""agent_svc.tools: schemas from msgspec structs, and failures that become error results."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import msgspec
import pytest
import redis.asyncio as redis

from agent_svc import builtin_tools
from agent_svc.tools import Tool, ToolContext, ToolError, ToolRegistry, load_modules
from shared.settings import Settings


class Params(msgspec.Struct, forbid_unknown_fields=True):
    city: Annotated[str, msgspec.Meta(description="Where")]
    days: Annotated[int, msgspec.Meta(ge=1, le=7)] = 1


async def forecast(ctx: ToolContext, params: Params) -> dict[str, object]:
    if params.city == "boom":
        raise RuntimeError("internal detail")
    if params.city == "nowhere":
        raise ToolError("no such city")
    return {"city": params.city, "days": params.days}


@pytest.fixture
def registry() -> ToolRegistry:
    reg = ToolRegistry()
    reg.register(Tool("forecast", "Weather forecast.", Params, forecast))
    return reg


@pytest.fixture
async def ctx(settings: Settings) -> AsyncIterator[ToolContext]:
    http = httpx.AsyncClient()
    client = redis.Redis.from_url(settings.redis_url)
    context = ToolContext(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), settings, client, http)
    yield context
    await http.aclose()
    await client.aclose()


def test_schema_is_derived_from_the_struct(registry: ToolRegistry) -> None:
    """The Messages API tool spec carries an inline object schema from the params struct."""
    assert registry.specs() == [
        {
            "name": "forecast",
            "description": "Weather forecast.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "city": {"description": "Where", "type": "string"},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7, "default": 1},
                },
                "required": ["city"],
                "additionalProperties": False,
            },
        }
    ]


def test_duplicate_names_are_refused(registry: ToolRegistry) -> None:
    """Registering a second tool under a taken name raises."""
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Tool("forecast", "again", Params, forecast))


@pytest.mark.parametrize(
    ("name", "raw", "content", "is_error"),
    [
        ("forecast", {"city": "Paris"}, '{"city":"Paris","days":1}', False),
        ("forecast", {"city": "Paris", "days": 9}, "invalid input", True),
        ("forecast", {"town": "Paris"}, "invalid input", True),
        ("forecast", "not an object", "invalid input", True),
        ("forecast", {"city": "nowhere"}, "no such city", True),
        ("forecast", {"city": "boom"}, "tool failed: RuntimeError", True),
        ("missing", {}, "unknown tool 'missing'", True),
    ],
    ids=["ok", "out-of-range", "unknown-field", "not-object", "tool-error", "crash", "unknown"],
)
async def test_run_never_raises(
    registry: ToolRegistry, ctx: ToolContext, name: str, raw: object, content: str, is_error: bool
) -> None:
    """Bad input, unknown tools and failing tools become error outcomes for the model."""
    outcome = await registry.run(name, raw, ctx)
    assert outcome.is_error is is_error
    assert outcome.content.startswith(content)
    assert "internal detail" not in outcome.content


def test_deployer_modules_register_tools() -> None:
    """`AGENT_TOOL_MODULES` modules add their tools through `register(registry)`."""
    reg = ToolRegistry()
    load_modules(reg, " tests.agent_svc.custom_tools , ")
    assert reg.names() == ["echo"]
    with pytest.raises(ModuleNotFoundError):
        load_modules(ToolRegistry(), "no_such_module_here")


def test_builtin_tools() -> None:
    """The built-ins are registered with schemas."""
    reg = ToolRegistry()
    builtin_tools.register(reg)
    assert reg.names() == [
        "count_unread_notifications",
        "current_time",
        "list_notifications",
        "mark_notifications_read",
        "notify_user",
    ]
    notify = next(s for s in reg.specs() if s["name"] == "notify_user")
    assert notify["input_schema"]["required"] == ["title", "content"]


async def test_current_time_and_schedule(ctx: ToolContext) -> None:
    """current_time answers for a zone; notify_user with a delay lands in the scheduled set,
    and contradictory or naive times are refused."""
    reg = ToolRegistry()
    builtin_tools.register(reg)
    now = await reg.run("current_time", {"timezone": "Asia/Tokyo"}, ctx)
    assert not now.is_error and "+09:00" in now.content
    scheduled = await reg.run(
        "notify_user", {"title": "t", "content": "c", "delay_seconds": 3600}, ctx
    )
    assert not scheduled.is_error and '"status":"scheduled"' in scheduled.content
    both = await reg.run(
        "notify_user",
        {"title": "t", "content": "c", "delay_seconds": 5, "at": "2030-01-01T00:00:00+00:00"},
        ctx,
    )
    assert both.is_error
    naive = await reg.run(
        "notify_user", {"title": "t", "content": "c", "at": "2030-01-01T00:00:00"}, ctx
    )
    assert naive.is_error and "offset" in naive.content
