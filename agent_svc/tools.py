"""The tool registry: what the model may call, with JSON schemas derived from msgspec structs.

A tool is a name, a description, a msgspec `Struct` describing its input (its JSON schema is what
the model sees) and an async function. `ToolRegistry.run` never raises: unknown tools, invalid
input and failing tools all become an error result the model can read and recover from.
Deployers add their own tools with `register()` or the `@registry.tool(...)` decorator, from a
module named in `AGENT_TOOL_MODULES` that defines `register(registry)`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from uuid import UUID

import httpx
import msgspec

from shared.redis_client import RedisClient
from shared.settings import Settings

log = logging.getLogger(__name__)

P = TypeVar("P", bound=msgspec.Struct)


class ToolError(Exception):
    """Raised by a tool to report a failure to the model in its own words."""


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Who the tool acts for, and the clients it may use. Tools act only for `user_id`."""

    user_id: UUID
    session_id: UUID
    message_id: UUID
    settings: Settings
    redis: RedisClient
    http: httpx.AsyncClient
    call_id: str = ""  # the model's tool_use id: stable across a reclaimed answer's retries


ToolFunc = Callable[[ToolContext, P], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    content: str
    is_error: bool = False


@dataclass(frozen=True, slots=True)
class Tool(Generic[P]):
    name: str
    description: str
    params: type[P]
    func: ToolFunc[P]

    def input_schema(self) -> dict[str, Any]:
        """The params struct as a self-contained JSON schema object (nested types in `$defs`)."""
        schema = msgspec.json.schema(self.params)
        defs: dict[str, Any] = dict(schema.get("$defs", {}))
        ref = schema.get("$ref", "")
        root = defs.pop(ref.rsplit("/", 1)[-1], schema) if ref else schema
        root = {k: v for k, v in root.items() if k != "title"}
        if defs:
            root["$defs"] = defs
        return root


@dataclass
class ToolRegistry:
    """Tools by name. Registration happens at start-up; lookups and runs are read-only."""

    _tools: dict[str, Tool[Any]] = field(default_factory=dict)

    def register(self, tool: Tool[Any]) -> None:
        """Add `tool`; raises `ValueError` if its name is taken."""
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is already registered")
        self._tools[tool.name] = tool

    def tool(
        self, name: str, description: str, params: type[P]
    ) -> Callable[[ToolFunc[P]], ToolFunc[P]]:
        """Decorator form of `register`: `@registry.tool("name", "what it does", Params)`."""

        def decorate(func: ToolFunc[P]) -> ToolFunc[P]:
            self.register(Tool(name, description, params, func))
            return func

        return decorate

    def names(self) -> list[str]:
        return sorted(self._tools)

    def specs(self) -> list[dict[str, Any]]:
        """The tools in the Messages API's `tools` format."""
        return [
            {"name": t.name, "description": t.description, "input_schema": t.input_schema()}
            for t in self._tools.values()
        ]

    async def run(self, name: str, raw_input: Any, ctx: ToolContext) -> ToolOutcome:
        """Run a tool for the model. Never raises (except cancellation): every failure is an
        error outcome whose text the model sees."""
        tool = self._tools.get(name)
        if tool is None:
            return ToolOutcome(f"unknown tool {name!r}", is_error=True)
        try:
            params = msgspec.convert(raw_input, tool.params, strict=False)
        except msgspec.ValidationError as exc:
            return ToolOutcome(f"invalid input: {exc}", is_error=True)
        try:
            result = await tool.func(ctx, params)
        except ToolError as exc:
            return ToolOutcome(str(exc), is_error=True)
        except Exception as exc:
            log.warning("tool failed", exc_info=True, extra={"tool": name})
            return ToolOutcome(f"tool failed: {type(exc).__name__}", is_error=True)
        if isinstance(result, str):
            return ToolOutcome(result)
        return ToolOutcome(msgspec.json.encode(result).decode())


def load_modules(registry: ToolRegistry, modules: str) -> None:
    """Import each comma-separated module and call its `register(registry)`.

    Raises `ImportError`/`AttributeError` so a misconfigured deployment fails at start-up."""
    for name in filter(None, (m.strip() for m in modules.split(","))):
        module = importlib.import_module(name)
        module.register(registry)
