"""The demo's live summary: one table of truth vs estimates, redrawn in place on a terminal
(a ``rich`` Live view), printed as plain text blocks otherwise (pipes, logs, tests)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self, TextIO

from estimators.document import Estimator, ResultDocument, parse

__all__ = ["SUMMARY_COLUMNS", "SummaryView", "summary_parts", "summary_text"]

SUMMARY_COLUMNS = ("metric", "treatment", "truth", "diff", "adjusted", "anytime CI (adj.)",
                   "VR")
_WIDTHS = (-22, -13, 9, 20, 20, 24, 7)  # plain text: negative = left-aligned

Parts = tuple[list[str], list[tuple[str, ...]], list[str]]


def _eff(x: Estimator) -> str:
    if x.effect is None or x.ci_low is None or x.ci_high is None:
        return "—"
    return f"{x.effect:+.4f}±{(x.ci_high - x.ci_low) / 2:.4f}"


def summary_parts(doc: Mapping[str, Any] | ResultDocument, truth: dict[str, dict[str, float]],
                  applied: int, rate: float, elapsed: float, url: str) -> Parts:
    """Header lines, one row per metric × treatment (:data:`SUMMARY_COLUMNS`), footer."""
    typed = parse(doc)
    sl = typed.first
    head = [f"liftstream demo — dashboard: {url}",
            f"t={elapsed:5.0f}s  messages applied {applied:,}  ({rate:,.0f}/s)  "
            f"dead letters {int((sl.counters or {}).get('dead_letters', 0)):,}",
            "units: " + ", ".join(f"{v.name}={v.n:,}" for v in sl.variations)
            + f"   SRM {'MISMATCH' if sl.srm is not None and sl.srm.flagged else 'ok'}"]
    rows: list[tuple[str, ...]] = []
    for m in sl.metrics:
        for c in m.comparisons:
            d = c.estimators["diff"]
            a = c.primary_estimate() or d
            t = truth.get(m.metric, {}).get(c.treatment)
            seq = "—" if a.seq_ci_low is None or a.seq_ci_high is None else \
                f"[{a.seq_ci_low:+.4f}, {a.seq_ci_high:+.4f}]"
            vr = a.variance_reduction
            rows.append((m.metric, c.treatment, "" if t is None else f"{t:+.4f}",
                         _eff(d), _eff(a), seq, "" if vr is None else f"{100 * vr:.0f}%"))
    dec = typed.decision
    foot = [f"decision: {dec.recommendation} — {'; '.join(dec.reasons)}"] if dec else []
    return head, rows, foot


def _plain_row(cells: tuple[str, ...]) -> str:
    return "".join(f"{v:<{-w}}" if w < 0 else f"{v:>{w}}"
                   for v, w in zip(cells, _WIDTHS, strict=True))


def summary_text(parts: Parts) -> str:
    """The summary as plain text (fixed-width columns)."""
    head, rows, foot = parts
    return "\n".join([*head, _plain_row(SUMMARY_COLUMNS), *map(_plain_row, rows), *foot])


def _renderable(parts: Parts) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head, rows, foot = parts
    table = Table(show_edge=False, pad_edge=False)
    for name, w in zip(SUMMARY_COLUMNS, _WIDTHS, strict=True):
        table.add_column(name, justify="left" if w < 0 else "right", no_wrap=True)
    for r in rows:
        table.add_row(*r)
    return Group(*(Text(h) for h in head), table, *(Text(f) for f in foot))


class SummaryView:
    """``show(parts)`` every refresh: redrawn in place on a TTY, appended otherwise;
    ``width`` overrides the terminal's."""

    def __init__(self, stream: TextIO | None = None, width: int | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self._live: Any = None
        if self.stream.isatty():
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(file=self.stream, width=width), auto_refresh=False)

    def __enter__(self) -> Self:
        if self._live is not None:
            self._live.start()
        return self

    def show(self, parts: Parts) -> None:
        if self._live is not None:
            self._live.update(_renderable(parts), refresh=True)
        else:
            self.stream.write(summary_text(parts) + "\n\n")
            self.stream.flush()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.stop()
