"""Prompts: chat conversations to generate from, read from JSONL files or built from task questions."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from embench.errors import EmbenchError
from embench.files import first_error, read_jsonl


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class Prompt(BaseModel):
    """One conversation to continue, with a stable id (``question/paraphrase`` for tasks)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    messages: tuple[Message, ...] = Field(min_length=1)
    metadata: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ends_with_user(self) -> "Prompt":
        if self.messages[-1].role != "user":
            raise ValueError("the last message must be from the user")
        return self


class _PromptLine(BaseModel):
    """A JSONL line: either ``messages`` or a plain ``prompt`` with an optional ``system``."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    messages: list[Message] | None = None
    prompt: str | None = None
    system: str | None = None
    metadata: dict = Field(default_factory=dict)

    def to_prompt(self, default_id: str) -> Prompt:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' or 'prompt'")
        if self.messages is not None:
            if self.system is not None:
                raise ValueError("'system' goes with 'prompt'; put a system message into 'messages' instead")
            messages = tuple(self.messages)
        else:
            system = (Message(role="system", content=self.system),) if self.system is not None else ()
            messages = (*system, Message(role="user", content=self.prompt))
        return Prompt(id=self.id or default_id, messages=messages, metadata=self.metadata)


def load_prompts(path: Path) -> list[Prompt]:
    """Read a prompts JSONL file; a malformed line is reported with its line number."""
    if not path.is_file():
        raise EmbenchError(f"prompts file {path} does not exist")
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for number, data in read_jsonl(path, "a prompts file: one {id, messages} or {id, prompt, system} per line"):
        try:
            prompt = _PromptLine.model_validate(data).to_prompt(default_id=f"line-{number}")
        except ValidationError as exc:
            field, message = first_error(exc)
            raise EmbenchError(f"{path}:{number}: {field + ': ' if field else ''}{message}") from None
        except ValueError as exc:
            raise EmbenchError(f"{path}:{number}: {exc}") from None
        if prompt.id in seen:
            raise EmbenchError(f"{path}:{number}: duplicate prompt id '{prompt.id}'")
        seen.add(prompt.id)
        prompts.append(prompt)
    if not prompts:
        raise EmbenchError(f"prompts file {path} holds no prompts")
    return prompts
