"""Argument types several verbs share: comma-separated lists."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def comma_list(text: str) -> list[str]:
    """`a, b,c` -> ["a", "b", "c"] (empty items dropped)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _converted(text: str, convert: Callable[[str], T], what: str) -> list[T]:
    try:
        return [convert(t) for t in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got '{text}'") from None


def int_list(text: str) -> list[int]:
    return _converted(text, int, "integers")


def float_list(text: str) -> list[float]:
    return _converted(text, float, "numbers")
