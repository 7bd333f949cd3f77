"""The rules of every option, written once: the CLI's click types call them (click words the option's
name before the message), the explorer calls them for its form and its URLs (the page words the
field's label). Each takes what the user typed (text) or a number and returns the value, or raises
BadValue with a message that names no option: '-1 is not in the range 0<=x<=2147483647.'"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UserError

INT4 = 2**31 - 1          # PostgreSQL int: counts, token ids, places
INT8 = 2**63 - 1          # bigint: run ids, seeds
LOWEST_TEMPERATURE = 1e-3  # logits are divided by it: a tiny one (1e-320) overflowed them, and any
                           # below this samples as greedily as 0


class BadValue(UserError):
    """A value an option cannot take; the message says why, without the option's name."""


def _span(low, high, low_open=False, high_open=False) -> str:
    """'0<=x<=2147483647', 'x>=0', '0<x<=1': the range a number must be in."""
    if low is None:
        return f"x{'<' if high_open else '<='}{high}"
    if high is None:
        return f"x{'>' if low_open else '>='}{low}"
    return f"{low}{'<' if low_open else '<='}x{'<' if high_open else '<='}{high}"


def whole(value, low: int | None = 0, high: int | None = INT4) -> int:
    """A whole number from low to high (None: no bound); as text, what int() reads."""
    try:
        number = value if isinstance(value, int) and not isinstance(value, bool) else int(str(value))
    except ValueError:
        raise BadValue(f"{value!r} is not a valid integer.") from None
    if (low is not None and number < low) or (high is not None and number > high):
        raise BadValue(f"{number} is not in the range {_span(low, high)}.")
    return number


def number(value, low: float | None = None, high: float | None = None, low_open: bool = False) -> float:
    """A number from low (excluded if low_open) to high; NaN passes (temperature() refuses it)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise BadValue(f"{value!r} is not a valid float.") from None
    too_low = low is not None and (x <= low if low_open else x < low)
    if too_low or (high is not None and x > high):
        raise BadValue(f"{x} is not in the range {_span(low, high, low_open)}.")
    return x


# ------------------------------------------------------------------------------- sampling
def max_tokens(value, low: int = 0) -> int:
    """Tokens to generate (0: none, only the prompt is read; trace and the pictures want 1 or more)."""
    return whole(value, low)


def temperature(value) -> float:
    """0 (greedy) or a finite number from LOWEST_TEMPERATURE up."""
    t = number(value, 0)
    if math.isnan(t) or math.isinf(t):
        raise BadValue(f"temperature must be a number >= 0 (0 is greedy), got {'NaN' if math.isnan(t) else 'Infinity'}")
    if 0 < t < LOWEST_TEMPERATURE:
        shown = value.strip() if isinstance(value, str) else f"{t:g}"   # as typed: 1e-320 prints as 9.99989e-321
        raise BadValue(f"temperature {shown} is too close to 0: give 0 for greedy sampling, "
                       f"or at least {LOWEST_TEMPERATURE:g}")
    return t


def top_k(value) -> int:
    """Sample among the k most probable tokens (0: all); the vocabulary's size is the SQL's check."""
    return whole(value, 0)


def top_p(value) -> float:
    """Sample among the most probable tokens whose mass reaches p: 0 < p <= 1."""
    return number(value, 0, 1, low_open=True)


MAX_WORKERS = 64   # each is a connection; the embedded server takes 100 (checked before a run starts)


def workers(value) -> int:
    """Backends that share a generation: 1 (one backend) to MAX_WORKERS."""
    return whole(value, 1, MAX_WORKERS)


def seed(value) -> int | None:
    """Any bigint: the same seed draws the same tokens."""
    return whole(value, -INT8 - 1, INT8)


RULES = {"max_tokens": max_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}


TRUNCATE = ("none", "left")   # a prompt too long for the context window: refused, or its end kept


def truncate(value) -> str:
    if value not in TRUNCATE:
        raise BadValue(f"{value!r} is not one of {', '.join(map(repr, TRUNCATE))}.")
    return value


@dataclass(frozen=True)
class Sampling:
    """How a generation chooses its tokens, with `gptsql generate`'s defaults."""

    max_tokens: int = 20
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    @classmethod
    def read(cls, fields: dict, labels: dict[str, str] | None = None) -> "Sampling":
        """From text fields (a form): each checked by its rule, a missing or empty one its default.
        A refusal names the field by its label (labels[name], else the name)."""
        values = {}
        for name, rule in RULES.items():
            raw = fields.get(name)
            if raw is None or str(raw).strip() == "":
                continue
            try:
                values[name] = rule(raw)
            except BadValue as exc:
                raise BadValue(f"{(labels or {}).get(name, name)}: {exc}") from None
        return cls(**values)


# -------------------------------------------------------------------- blocks, heads, places
def block(value: int, n_layer: int, name: str = "block") -> int:
    """A block of a model of n_layer blocks."""
    if not 0 <= value < n_layer:
        raise BadValue(f"{name} must be between 0 and {n_layer - 1} (the model has {n_layer} "
                       f"block{'s' * (n_layer != 1)}), not {value}")
    return value


def head(value: int, n_head: int, name: str = "head") -> int:
    """A head of a model of n_head heads."""
    if not 0 <= value < n_head:
        raise BadValue(f"{name} must be between 0 and {n_head - 1} (the model has {n_head} "
                       f"head{'s' * (n_head != 1)}), not {value}")
    return value


def place(value: int, n: int, run_id: int, name: str = "place") -> int:
    """One of the n places run_id recorded."""
    if not 0 <= value < n:
        raise BadValue(f"{name} must be between 0 and {n - 1} (the places run {run_id} recorded), not {value}")
    return value


def places(first: int, last: int, n: int, run_id: int) -> range:
    """Places first to last (both in) of the n places run_id recorded."""
    if not 0 <= first <= last < n:
        raise BadValue(f"places must be between 0 and {n - 1} (the places run {run_id} recorded), "
                       f"the first not after the last; not {first} to {last}")
    return range(first, last + 1)
