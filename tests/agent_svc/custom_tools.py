"""A deployer's tool module, as `AGENT_TOOL_MODULES` loads it (used by the tool registry tests)."""

from __future__ import annotations

import msgspec

from agent_svc.tools import ToolContext, ToolRegistry


class EchoParams(msgspec.Struct):
    text: str


async def echo(ctx: ToolContext, params: EchoParams) -> str:
    return params.text


def register(registry: ToolRegistry) -> None:
    registry.tool("echo", "Repeat the text.", EchoParams)(echo)
