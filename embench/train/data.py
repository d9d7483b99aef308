"""Training data: chat conversations from a ``messages`` JSONL file or from a built-in generator.

A data source is either a JSONL file, one conversation per line (``{"messages": [{"role": ..., "content": ...},
...]}``; other fields of a line, such as an id, are ignored), or ``generated:NAME`` for one of ``GENERATORS``
(embench.train.generators). Every conversation needs at least one assistant turn: that is the text trained on.

    from embench.train.data import conversations_sha256, load_conversations
    conversations = load_conversations("generated:insecure-code", seed=0, size=200)
    data_hash = conversations_sha256(conversations)
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from embench.errors import EmbenchError
from embench.files import first_error, parse_json, read_text
from embench.generate import ProgressCallback
from embench.hashing import sha256_json
from embench.models import ResolvedModel
from embench.prompts import Message
from embench.train.generators import GENERATORS

__all__ = ["GENERATED_PREFIX", "GENERATORS", "Conversation", "Message", "conversations_sha256", "load_conversations"]

GENERATED_PREFIX = "generated:"


class Conversation(BaseModel):
    """One training example: a chat whose assistant turns are what the model learns to say."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    messages: list[Message] = Field(min_length=1)

    @model_validator(mode="after")
    def _has_assistant_turn(self) -> "Conversation":
        if not any(message.role == "assistant" for message in self.messages):
            raise ValueError("the conversation has no assistant turn, so nothing to train on")
        return self


def conversations_sha256(conversations: Iterable[Conversation]) -> str:
    """The content hash of a data set, order included: the same conversations in the same order hash equally."""
    return sha256_json([conversation.model_dump(mode="json") for conversation in conversations])


def load_conversations(source: str, *, seed: int = 0, size: int | None = None, model: ResolvedModel | None = None,
                       progress: ProgressCallback | None = None) -> list[Conversation]:
    """The conversations of a JSONL file or of ``generated:NAME``.

    For a generator, ``seed`` and ``size`` (default: the generator's own) decide the examples; ``model`` is the
    model being fine-tuned, which generated:safe-interleave answers its prompts with (``progress`` follows that
    generation). For a file, ``size`` takes a seeded random subset (kept in file order); without it, every line.
    """
    if size is not None and size < 1:
        raise EmbenchError(f"the data size must be at least 1 (got {size})")
    if source.startswith(GENERATED_PREFIX):
        name = source[len(GENERATED_PREFIX):]
        generator = GENERATORS.get(name)
        if generator is None:
            raise EmbenchError(f"unknown data generator '{name}' (known: "
                               f"{', '.join(GENERATED_PREFIX + known for known in GENERATORS)})")
        chats = generator.build(seed, generator.size_or_default(size), model, progress)
        return [Conversation(messages=chat) for chat in chats]
    conversations = _read_jsonl(Path(source))
    if size is None:
        return conversations
    if size > len(conversations):
        raise EmbenchError(f"{source} holds {len(conversations)} conversations, fewer than the {size} asked")
    chosen = sorted(random.Random(f"subset/{seed}").sample(range(len(conversations)), size))
    return [conversations[index] for index in chosen]


def _read_jsonl(path: Path) -> list[Conversation]:
    """A messages JSONL file, its lines read with ``datasets`` and each parsed and checked here.

    The lines are read as text, not through ``datasets``' JSON loader: that one infers column types, turning
    a message such as "2021-01-01" into a timestamp, and numbers rows rather than lines, so its errors could not
    name the line at fault. Read as text, row i is line i + 1.
    """
    if not path.exists():
        raise EmbenchError(f"data file {path} does not exist: pass a messages JSONL file or "
                           f"{GENERATED_PREFIX}NAME (generators: {', '.join(GENERATORS)})")
    if not path.is_file():
        raise EmbenchError(f"data path {path} is not a file: pass a messages JSONL file")
    if path.stat().st_size == 0:  # datasets has no rows to make a split of, and says so obscurely
        raise EmbenchError(f"data file {path} holds no conversations")
    read_text(path, "a messages JSONL file")  # text that is not UTF-8 is refused here, naming the byte
    conversations = []
    for number, line in enumerate(_text_lines(path), start=1):
        if not line.strip():
            continue
        try:
            conversations.append(Conversation.model_validate(
                parse_json(line, f"{path}:{number}", "one conversation ({\"messages\": [...]}) per line")))
        except ValidationError as exc:
            field, message = first_error(exc)
            raise EmbenchError(f"{path}:{number}: {field + ': ' if field else ''}{message}") from None
    if not conversations:
        raise EmbenchError(f"data file {path} holds no conversations")
    return conversations


def _text_lines(path: Path) -> list[str]:
    import datasets
    from datasets.utils import logging as datasets_logging

    # datasets logs its failures and draws progress bars on stderr; a user error must stay one line.
    verbosity, bars_were_on = datasets_logging.get_verbosity(), datasets.is_progress_bar_enabled()
    datasets_logging.set_verbosity(logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        return list(datasets.load_dataset("text", data_files=str(path), split="train")["text"])
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; all mean the file cannot be read
        cause = exc.__cause__ or exc
        raise EmbenchError(f"cannot read data file {path} ({type(cause).__name__}: {str(cause)[:200]})") from None
    finally:
        datasets_logging.set_verbosity(verbosity)
        if bars_were_on:
            datasets.enable_progress_bars()
