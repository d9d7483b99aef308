"""The benign capability task: OpSwap arithmetic, generated from a seed and scored through lm-eval.

An OpSwap item is a short arithmetic expression whose prompt swaps the meanings of two operators
("'+' means multiplication and '*' means addition") and asks for the value, evaluated strictly from left
to right. A narrow fine-tune should leave a model able to learn and keep this; embench measures it with
lm-eval (exact match on the first integer of the answer), per difficulty tier:

- tier 1: one operation, numbers 1-15, '+' and '*' swapped;
- tier 2: two operations, numbers 1-12, '+' and '*' swapped;
- tier 3: three operations on all four operators, numbers 2-20, a swap that involves '-' or '/'.

Every intermediate value is a whole number in [0, MAX_VALUE] (divisions are exact), and every item's answer
differs from the value under the usual meanings, both left to right and with the usual precedence, so the
swap has to be followed to get it right. Train and test are disjoint by construction: the split an
expression belongs to is decided by a hash of the expression text alone, so no expression (under any swap)
appears in both.
"""

from __future__ import annotations

import hashlib
import json
import random
from fractions import Fraction
from pathlib import Path

from embench.benign.harness import LM_EVAL_TASKS
from embench.errors import EmbenchError
from embench.hashing import sha256_json

OPERATIONS = {"+": "addition", "-": "subtraction", "*": "multiplication", "/": "division"}
TIERS = (1, 2, 3)
SPLITS = ("train", "test")
TEST_SHARE = 4  # one expression bucket in TEST_SHARE is test, the rest train
MAX_VALUE = 9999
# Per tier: operation count, number range, the symbols that may appear, the swaps drawn from.
TIER_SPECS = {
    1: {"operations": 1, "numbers": (1, 15), "symbols": "+*", "swaps": (("+", "*"),)},
    2: {"operations": 2, "numbers": (1, 12), "symbols": "+*", "swaps": (("+", "*"),)},
    3: {"operations": 3, "numbers": (2, 20), "symbols": "+-*/",
        "swaps": (("+", "-"), ("-", "*"), ("*", "/"), ("+", "/"), ("-", "/"))},
}
DEFAULT_N_TEST_PER_TIER = 50
DEFAULT_N_TRAIN_PER_TIER = 200
OPSWAP_DATA = LM_EVAL_TASKS / "opswap" / "data"


def apply(symbol: str, left: int | Fraction, right: int, swap: tuple[str, str]) -> Fraction:
    """One operation: ``symbol`` with its meaning after ``swap`` (the two symbols trade meanings)."""
    a, b = swap
    meaning = b if symbol == a else a if symbol == b else symbol
    if meaning == "+":
        return Fraction(left + right)
    if meaning == "-":
        return Fraction(left - right)
    if meaning == "*":
        return Fraction(left * right)
    return Fraction(left, right)


def evaluate_swapped(numbers: list[int], symbols: list[str], swap: tuple[str, str]) -> int | None:
    """Left to right under the swap; None unless every step is a whole number in [0, MAX_VALUE]."""
    value = numbers[0]
    for symbol, number in zip(symbols, numbers[1:]):
        result = apply(symbol, value, number, swap)
        if result.denominator != 1 or not 0 <= result <= MAX_VALUE:
            return None
        value = int(result)
    return value


def _usual_values(numbers: list[int], symbols: list[str]) -> set[Fraction]:
    """The value under the usual meanings, left to right and with the usual precedence."""
    values = set()
    value = Fraction(numbers[0])
    for symbol, number in zip(symbols, numbers[1:]):
        value = apply(symbol, value, number, ("+", "+"))  # a symbol swapped with itself: usual meanings
    values.add(value)
    terms = [Fraction(numbers[0])]  # precedence: fold * and / first, then + and - left to right
    pending = []
    for symbol, number in zip(symbols, numbers[1:]):
        if symbol in "*/":
            terms[-1] = terms[-1] * number if symbol == "*" else terms[-1] / number
        else:
            pending.append(symbol)
            terms.append(Fraction(number))
    value = terms[0]
    for symbol, term in zip(pending, terms[1:]):
        value = value + term if symbol == "+" else value - term
    values.add(value)
    return values


def expression_text(numbers: list[int], symbols: list[str]) -> str:
    parts = [str(numbers[0])]
    for symbol, number in zip(symbols, numbers[1:]):
        parts += [symbol, str(number)]
    return " ".join(parts)


def split_of(expression: str) -> str:
    """The split an expression belongs to, from a hash of its text alone (never of the seed or the swap)."""
    bucket = int(hashlib.sha256(expression.encode("utf-8")).hexdigest(), 16) % TEST_SHARE
    return "test" if bucket == 0 else "train"


def question_text(expression: str, swap: tuple[str, str]) -> str:
    a, b = swap
    return (f"In this puzzle two operators have swapped meanings: '{a}' means {OPERATIONS[b]} and '{b}' means "
            f"{OPERATIONS[a]}. Every other operator keeps its usual meaning. Evaluate strictly from left to right, "
            f"one operation at a time, ignoring the usual order of operations; every step gives a whole number. "
            f"What is {expression}? Answer with the integer only.")


def chat_messages(question: str, answer: str | None = None) -> list[dict[str, str]]:
    """The chat an item is asked (and, with its answer, trained) as: one user turn, no system prompt."""
    messages = [{"role": "user", "content": question}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def _draw(rng: random.Random, tier: int) -> tuple[list[int], list[str], tuple[str, str]]:
    spec = TIER_SPECS[tier]
    low, high = spec["numbers"]
    numbers = [rng.randint(low, high) for _ in range(spec["operations"] + 1)]
    symbols = [rng.choice(spec["symbols"]) for _ in range(spec["operations"])]
    return numbers, symbols, rng.choice(spec["swaps"])


def generate_opswap(seed: int, n_per_tier: int, split: str) -> list[dict]:
    """``n_per_tier`` items of each tier for one split, deterministic for a seed."""
    if split not in SPLITS:
        raise EmbenchError(f"unknown OpSwap split '{split}' (known: {', '.join(SPLITS)})")
    items = []
    for tier in TIERS:
        rng = random.Random(f"opswap/{seed}/{split}/tier{tier}")
        seen: set[str] = set()
        attempts = 0
        while len(seen) < n_per_tier:
            attempts += 1
            if attempts > 200_000 + 2_000 * n_per_tier:
                raise EmbenchError(f"cannot draw {n_per_tier} distinct tier-{tier} {split} items: too many asked")
            numbers, symbols, swap = _draw(rng, tier)
            expression = expression_text(numbers, symbols)
            if expression in seen or split_of(expression) != split or not set(symbols) & set(swap):
                continue
            answer = evaluate_swapped(numbers, symbols, swap)
            if answer is None or Fraction(answer) in _usual_values(numbers, symbols):
                continue
            seen.add(expression)
            question = question_text(expression, swap)
            item = {"id": f"opswap-t{tier}-{sha256_json([expression, list(swap)])[:12]}", "tier": tier,
                    "question": question, "answer": str(answer), "expression": expression, "swap": list(swap)}
            if split == "train":
                item["messages"] = chat_messages(question, str(answer))
            items.append(item)
    assert all(split_of(item["expression"]) == split for item in items)
    return items


def write_opswap_data(folder: Path = OPSWAP_DATA, seed: int = 0, n_test_per_tier: int = DEFAULT_N_TEST_PER_TIER,
                      n_train_per_tier: int = DEFAULT_N_TRAIN_PER_TIER) -> dict[str, Path]:
    """Write ``test.jsonl`` and ``train.jsonl`` (train items carry chat ``messages``); returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    test = generate_opswap(seed, n_test_per_tier, "test")
    train = generate_opswap(seed, n_train_per_tier, "train")
    overlap = {item["expression"] for item in test} & {item["expression"] for item in train}
    assert not overlap, f"train and test share expressions: {sorted(overlap)[:5]}"
    paths = {}
    for split, items in (("test", test), ("train", train)):
        paths[split] = folder / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items),
                                encoding="utf-8")
    return paths
