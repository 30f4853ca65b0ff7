"""The offline model: runs with no API key so the whole pipeline works without an account.

It is labelled in every reply (`[offline model]`) and in the logs. It streams its reply word by
word with `AGENT_OFFLINE_DELAY` between deltas, and on a message starting with "notify me" or
"remind me" it calls the `notify_user` tool ("remind me in 5 minutes to stretch" schedules it).
Its replies are a pure function of the message and the tool result, so an answer reclaimed from a
crashed worker continues exactly where the stream stopped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

from agent_svc.answer import Answer
from agent_svc.model import Turn
from shared.settings import Settings

log = logging.getLogger(__name__)

LABEL = "[offline model]"
_TRIGGER = re.compile(
    r"^\s*(?P<verb>notify|remind) me\b[\s,:]*"
    r"(?:in (?P<n>\d{1,6}) ?(?P<unit>seconds?|secs?|minutes?|mins?|hours?)\b[\s,]*)?"
    r"(?:(?:to|that|about)\s+)?(?P<rest>.*)$",
    re.IGNORECASE | re.DOTALL,
)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


def plan_tool(message: str) -> dict[str, Any] | None:
    """The `notify_user` input the offline model sends for `message`, or None (pure)."""
    match = _TRIGGER.match(message)
    if match is None:
        return None
    rest = match["rest"].strip() or message.strip()
    tool_input: dict[str, Any] = {
        "title": "Reminder" if match["verb"].lower() == "remind" else "Notification",
        "content": rest[:4000],
    }
    if match["n"]:
        tool_input["delay_seconds"] = int(match["n"]) * _UNIT_SECONDS[match["unit"][0].lower()]
    return tool_input


def compose(message: str, tool_result: tuple[str, bool] | None) -> str:
    """The reply text (pure)."""
    if tool_result is None:
        return (
            f"{LABEL} You said: {message.strip()!r}. I am the offline stand-in, so I can only "
            "echo you and set notifications (start with 'notify me' or 'remind me'). "
            "Set ANTHROPIC_API_KEY to talk to Claude."
        )
    content, is_error = tool_result
    if is_error:
        return f"{LABEL} I could not create that notification: {content}"
    try:
        deliver_at = json.loads(content).get("deliver_at")
    except (ValueError, AttributeError):
        deliver_at = None
    if deliver_at:
        return f"{LABEL} Done: I will notify you at {deliver_at}."
    return f"{LABEL} Done: I sent you a notification."


def _words(text: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", text)


class OfflineModel:
    name = "offline"

    def __init__(self, settings: Settings) -> None:
        self._delay = settings.agent_offline_delay
        log.warning("offline model in use: ANTHROPIC_API_KEY is not set")

    async def aclose(self) -> None:
        return None

    async def answer(self, turn: Turn, out: Answer) -> None:
        tool_input = plan_tool(turn.message)
        tool_result: tuple[str, bool] | None = None
        if tool_input is not None:
            tool_result = await self._notify(out, tool_input)
        text = compose(turn.message, tool_result)
        already = out.transcript.reply
        if not text.startswith(already):
            already = ""
        for word in _words(text[len(already) :]):
            await asyncio.sleep(self._delay)
            await out.token(word)
        out.tokens_used = len(turn.message.split()) + len(text.split())

    async def _notify(self, out: Answer, tool_input: dict[str, Any]) -> tuple[str, bool]:
        call_id = f"offline_{out.request.message_id.replace('-', '')[:24]}"
        for r in out.transcript.rounds:
            for call in r.calls:
                if call.id == call_id:
                    done = r.results.get(call_id)
                    if done is not None:
                        return done.content, done.is_error
                    outcome = await out.finish_tool(call)
                    return outcome.content, outcome.is_error
        outcome = await out.call_tool(call_id, "notify_user", tool_input)
        return outcome.content, outcome.is_error
