"""Rendering of a result document for terminals: plain text (:func:`render`: pipes, files,
tests) or ``rich`` tables (:func:`renderable`, used when standard output is a terminal)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from estimators.document import Comparison, ResultDocument, Slice, Srm, parse

Block = str | list[tuple[str, ...]]  # a line, or the rows of an estimator table

COLUMNS = ("estimator", "effect", "95% CI", "rel", "p", "anytime CI", "seq p", "var.red.")


def _num(x: Any, pct: bool = False) -> str:
    if x is None:
        return "—"
    if pct:
        return f"{100 * x:+.2f}%"
    return f"{x:.4g}"


def _share(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _ci(lo: Any, hi: Any) -> str:
    return "—" if lo is None or hi is None else f"[{lo:.4g}, {hi:.4g}]"


def _doc_blocks(doc: ResultDocument) -> list[Block]:
    blocks: list[Block] = [f"warning [{w.code}]: {w.detail}" for w in doc.warnings]
    dec = doc.decision
    if dec:
        blocks += [f"decision: {dec.recommendation}", *(f"  - {r}" for r in dec.reasons), ""]
    for sl in doc.slices:
        blocks.extend(slice_blocks(sl))
        blocks.append("")
    return blocks


def _plain(blocks: list[Block]) -> list[str]:
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, str):
            lines.append(b)
            continue
        rows = [COLUMNS, *b]
        widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
        for r in rows:
            lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    return lines


def render(doc: Mapping[str, Any] | ResultDocument) -> str:
    """The document as plain text."""
    return "\n".join(_plain(_doc_blocks(parse(doc)))).rstrip() + "\n"


def renderable(doc: Mapping[str, Any] | ResultDocument) -> Any:
    """The document as ``rich`` renderables: text lines and one table per comparison."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = []
    for b in _doc_blocks(parse(doc)):
        if isinstance(b, str):
            parts.append(Text(b))
            continue
        table = Table(*COLUMNS, show_edge=False, pad_edge=False)
        for r in b:
            table.add_row(*r)
        parts.append(table)
    return Group(*parts)


def slice_blocks(sl: Slice) -> list[Block]:
    lines: list[Block] = []
    if sl.by:
        lines.append("== " + ", ".join(f"{k}={v}" for k, v in sl.by.items()) + " ==")
    lines.append("variations: " + ", ".join(
        f"{v.name}{' (control)' if v.is_control else ''} n={v.n}" for v in sl.variations))
    srm = sl.srm or Srm()
    lines.append(f"SRM: p={_num(srm.p_value)} sequential p={_num(srm.sequential_p_value)}"
                 f"{'  ** MISMATCH **' if srm.flagged else '  ok'}")
    for m in sl.metrics:
        for c in m.comparisons:
            lines.append("")
            lines.append(f"{m.metric} ({m.kind}): {c.treatment} vs {c.control}")
            lines.extend(_comparison_blocks(c))
    return lines


def _comparison_blocks(c: Comparison) -> list[Block]:
    lines: list[Block] = [[
        (name, _num(e.effect), _ci(e.ci_low, e.ci_high), _num(e.rel_effect, pct=True),
         _num(e.p_value), _ci(e.seq_ci_low, e.seq_ci_high), _num(e.seq_p_value),
         _num(e.variance_reduction, pct=True))
        for name, e in c.estimators.items()]]
    lines += [f"  note [{name}]: {e.note}" for name, e in c.estimators.items() if e.note]
    lines += [f"  in-experiment {cs.name}: balance p={_num(cs.p_value)} "
              f"{'used' if cs.selected else 'NOT used'}" for cs in c.covariate_selection]
    corr = (c.diagnostics or {}).get("prediction_outcome_correlation")
    if corr is not None:
        lines.append(f"  prediction–outcome correlation {corr:.3f}")
    b = c.bayes
    if b is not None and b.treatment_posterior_mean is not None:
        lines.append(f"  bayes ({b.model}, {b.estimator}): posterior "
                     f"{_num(b.treatment_posterior_mean)} vs {_num(b.control_posterior_mean)}"
                     f", chance to beat control {_share(b.chance_to_beat_control)}"
                     f", expected loss {_num(b.expected_loss)}")
    pw = c.power
    if pw is not None and pw.mde is not None:
        eta = pw.projected_units
        lines.append(f"  power 80% ({pw.estimator}): MDE {_num(pw.mde)}, anytime "
                     f"MDE {_num(pw.mde_sequential)}" + (
                         f"; target {_num(pw.target_rel_mde, pct=True)} needs "
                         f"{eta} units" if eta is not None else ""))
    return lines
