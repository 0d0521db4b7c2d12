"""What the commands print on standard output: a JSON document, or its text rendering, and
the plain left-aligned tables of the listing commands."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec

__all__ = ["aligned", "write_as", "write_json"]

T = TypeVar("T")


def write_json(doc: Any, indent: int = 1) -> None:
    """``doc`` as indented JSON and a newline on standard output."""
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(doc), indent=indent) + b"\n")


def write_as(fmt: str, doc: T, render: Callable[[T], str]) -> int:
    """``doc`` as JSON when ``fmt`` is ``"json"``, else as ``render(doc)``; exit code 0."""
    if fmt == "json":
        write_json(doc)
    else:
        sys.stdout.write(render(doc))
    return 0


def aligned(rows: Sequence[Sequence[str]]) -> str:
    """Rows as left-aligned columns two spaces apart, trailing blanks cut.

    >>> print(aligned([("id", "status"), ("checkout", "running")]), end="")
    id        status
    checkout  running
    """
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows) + "\n"
