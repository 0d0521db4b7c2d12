"""The one window predicate: when an experiment takes in data (ingest, results, alerter).

An experiment's window is **half-open**, ``[start, end)``: a timestamp equal to ``end`` is
outside, so two back-to-back experiments ``[a, b)`` and ``[b, c)`` never both take the same
event. ``None`` means unbounded on that side.

* :func:`in_window` — event time only (``start <= ts < end``). An exposure counts when its
  time is in the window; an event counts when its time is at or after its unit's exposure and
  before ``end``. Late data dated inside the window still counts after ``end`` has passed:
  an ended experiment's numbers are those of its window, whatever the lag.
* :func:`accepts` — :func:`in_window` **and** ``status == "running"``. A stopped experiment
  takes nothing, whatever the timestamps: from the moment a worker sees the stop, no
  exposure, tagged, untagged or held event changes its statistics (processing time: the
  freeze is immediate and does not depend on event clocks).
* :func:`phase` — what a result document and the alerter call the experiment at a time.

>>> in_window(10.0, 20.0, 20.0), in_window(10.0, 20.0, 10.0), in_window(None, None, 0.0)
(False, True, True)
>>> phase("running", 10.0, 20.0, 20.0), phase("stopped", None, None, 0.0)
('ended', 'stopped')
"""

from __future__ import annotations

from typing import Literal

__all__ = ["Phase", "accepts", "in_window", "phase"]

Phase = Literal["scheduled", "running", "ended", "stopped"]


def in_window(start: float | None, end: float | None, ts: float) -> bool:
    """``start <= ts < end`` (half-open; ``None`` = unbounded)."""
    return (start is None or ts >= start) and (end is None or ts < end)


def accepts(status: str, start: float | None, end: float | None, ts: float) -> bool:
    """Whether data at ``ts`` may change the statistics: running and inside the window."""
    return status == "running" and in_window(start, end, ts)


def phase(status: str, start: float | None, end: float | None, now: float) -> Phase:
    """``stopped`` (by an operator), ``scheduled`` (before start), ``ended`` (at or after
    end) or ``running``."""
    if status != "running":
        return "stopped"
    if start is not None and now < start:
        return "scheduled"
    if end is not None and now >= end:
        return "ended"
    return "running"
