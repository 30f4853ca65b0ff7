"""What a model is to the worker: something that streams one answer into an `Answer`.

Two implementations: `agent_svc.claude` (the Anthropic Messages API) and `agent_svc.offline` (no
account needed, clearly labelled). A model raises `ModelError` with a stable code for every
failure a client should hear about; the worker turns it into the answer's `error` event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from agent_svc.answer import Answer
from agent_svc.tools import ToolRegistry
from shared.settings import Settings


class ModelError(Exception):
    """The model call failed; `code` is stable (clients switch on it), `message` is for humans."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class HistoryMessage:
    role: str  # "user" or "assistant"
    content: str


@dataclass(frozen=True, slots=True)
class Turn:
    """The conversation so far (oldest first) and the user's new message."""

    history: list[HistoryMessage]
    message: str


class Model(Protocol):
    name: str

    async def answer(self, turn: Turn, out: Answer) -> None:
        """Stream the answer to `turn` into `out`, continuing what `out.transcript` already holds.

        Raises `ModelError`; cancellation stops the model call promptly."""

    async def aclose(self) -> None:
        """Release the model's clients (idempotent)."""


def create_model(settings: Settings, registry: ToolRegistry) -> Model:
    """Claude when `ANTHROPIC_API_KEY` is set, else the offline model."""
    if settings.offline_model:
        from agent_svc.offline import OfflineModel

        return OfflineModel(settings)
    from agent_svc.claude import ClaudeModel

    return ClaudeModel(settings, registry)
