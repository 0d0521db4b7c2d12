"""``workers.dev.replay`` and ``workers.dev.simulate`` without a broker: messages, truth, faults."""

from __future__ import annotations

import argparse
import io
import math
from collections import Counter, defaultdict
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest

from state.definition import parse_definition
from state.layout import ExperimentLayout
from stream.messages import Event, Exposure, Rejected, parse_event, parse_exposure
from tests.support.data import DATA, HILLSTROM
from workers.dev import replay, simulate
from workers.dev.progress import Progress
from workers.dev.replay import ReplayError, ReplayReport, replay_messages
from workers.dev.simulate import (
    SimulationConfig,
    control_means,
    simulate_messages,
    simulation_definition,
    true_candidate_effects,
    true_effects,
)

HILL = HILLSTROM
CATS = DATA / "cookie_cats.csv"

Message = tuple[str, bytes, bytes]


def parse(msg: Message) -> Exposure | Event:
    kind, _, value = msg
    out = parse_exposure(value) if kind == "exposures" else parse_event(value)
    assert not isinstance(out, Rejected), out
    return out


def small_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "user": ["a", "b", "c", "d"],
        "arm": ["control", "treatment", "control", "treatment"],
        "clicked": ["TRUE", "FALSE", "true", "False"],
        "spend": [0.0, 12.5, 3.0, 0.0],
        "age": [30, 41, 25, 52],
    })


# --------------------------------------------------------------------------- replay


def test_replay_counts_ids_keys_and_timestamps() -> None:
    msgs = replay_messages(small_frame(), "exp1", "user", "arm", ["clicked", "spend"], ["age"],
                           start_ts=1_700_000_000.0)
    kinds = Counter(kind for kind, _, _ in msgs)
    assert kinds == {"exposures": 4, "events": 4}  # clicked: a, c; spend: b, c
    parsed = [parse(m) for m in msgs]
    exposures = {p.unit: p for p in parsed if isinstance(p, Exposure)}
    assert exposures["b"].variation == "treatment"
    assert exposures["b"].covariates == {"age": 41.0}
    assert exposures["c"].ts == pytest.approx(1_700_000_000.002)
    events = [p for p in parsed if isinstance(p, Event)]
    assert {(e.unit, e.event, e.value) for e in events} == {
        ("a", "clicked", 1.0), ("c", "clicked", 1.0), ("b", "spend", 12.5), ("c", "spend", 3.0)}
    for e in events:
        assert e.id == f"{e.unit}:{e.event}"
        assert e.experiment == "exp1"
        assert e.ts == pytest.approx(exposures[e.unit].ts + 1.0)
    for (_, key, _), p in zip(msgs, parsed, strict=True):
        assert key == p.unit.encode()
    # unshuffled order: each unit's exposure, then its events
    assert [m[0] for m in msgs[:3]] == ["exposures", "events", "exposures"]


def test_replay_without_unit_column_uses_row_numbers() -> None:
    msgs = replay_messages(small_frame(), "exp1", None, "arm", ["spend"], [])
    units = [parse(m).unit for m in msgs if m[0] == "exposures"]
    assert units == ["u0", "u1", "u2", "u3"]
    assert [parse(m).unit for m in msgs if m[0] == "events"] == ["u1", "u2"]


def test_replay_hillstrom_slice() -> None:
    frame = pd.read_csv(HILL, nrows=3000)
    metrics = ["visit", "conversion", "spend"]
    msgs = replay_messages(frame, "hill", None, "segment", metrics, ["recency", "history"])
    expected_events = int((frame[metrics] != 0).to_numpy().sum())
    assert Counter(m[0] for m in msgs) == {"exposures": 3000, "events": expected_events}
    spend = sum(p.value for p in map(parse, msgs) if isinstance(p, Event) and p.event == "spend")
    assert spend == pytest.approx(frame.spend.sum())


def test_replay_cookie_cats_booleans() -> None:
    frame = pd.read_csv(CATS, nrows=500, dtype={"userid": str})
    msgs = replay_messages(frame, "cats", "userid", "version", ["retention_1", "retention_7"],
                           ["sum_gamerounds"])
    retained = [p for p in map(parse, msgs) if isinstance(p, Event)]
    assert len(retained) == int(frame.retention_1.sum() + frame.retention_7.sum())
    assert {e.value for e in retained} == {1.0}


def test_shuffle_keeps_the_multiset() -> None:
    frame = pd.read_csv(HILL, nrows=500)
    plain = replay_messages(frame, "hill", None, "segment", ["visit", "spend"], [])
    mixed = replay_messages(frame, "hill", None, "segment", ["visit", "spend"], [],
                            shuffle=True, seed=3)
    assert Counter(plain) == Counter(mixed)
    assert plain != mixed
    assert mixed == replay_messages(frame, "hill", None, "segment", ["visit", "spend"], [],
                                    shuffle=True, seed=3)


@pytest.mark.parametrize("shuffle", [False, True])
def test_duplicate_fraction_resends_later(shuffle: bool) -> None:
    frame = pd.read_csv(HILL, nrows=1000)
    args = (frame, "hill", None, "segment", ["visit", "conversion", "spend"], ["recency"])
    plain = replay_messages(*args)
    dup = replay_messages(*args, shuffle=shuffle, duplicate=0.2, seed=7)
    n = len(plain)
    assert len(dup) == n + round(0.2 * n)
    counts = Counter(dup)
    assert set(counts) == set(plain)  # every message is sent, none is invented
    assert max(counts.values()) == 2
    assert sum(c - 1 for c in counts.values()) == round(0.2 * n)
    kinds = Counter(m[0] for m, c in counts.items() if c == 2)
    assert kinds["exposures"] > 0 and kinds["events"] > 0  # both kinds get re-sent
    if not shuffle:
        # the first copy of every message stays in the original order
        firsts = list(dict.fromkeys(dup))
        assert firsts == plain


def test_duplicate_zero_and_bounds() -> None:
    frame = small_frame()
    assert replay_messages(frame, "e", "user", "arm", ["spend"], [], duplicate=0.0) == \
        replay_messages(frame, "e", "user", "arm", ["spend"], [])
    with pytest.raises(ReplayError, match="--duplicate"):
        replay_messages(frame, "e", "user", "arm", ["spend"], [], duplicate=1.5)


@pytest.mark.parametrize(("kwargs", "column"), [
    ({"metrics": ["spend", "revenue"]}, "revenue"),
    ({"covariates": ["height"]}, "height"),
    ({"variation": "group"}, "group"),
    ({"unit": "customer"}, "customer"),
])
def test_missing_column_is_named(kwargs: dict, column: str) -> None:
    call: dict = {"unit": "user", "variation": "arm", "metrics": ["spend"], "covariates": []}
    call.update(kwargs)
    with pytest.raises(ReplayError, match=f"column '{column}'"):
        replay_messages(small_frame(), "e", **call)


def test_non_numeric_and_empty_values_are_named() -> None:
    frame = small_frame()
    frame["spend"] = ["0", "12.5", "lots", "0"]
    with pytest.raises(ReplayError, match=r"column 'spend' is not numeric.*'lots'.*row 3"):
        replay_messages(frame, "e", "user", "arm", ["spend"], [])
    frame = small_frame()
    frame.loc[1, "age"] = math.nan
    with pytest.raises(ReplayError, match="column 'age'"):
        replay_messages(frame, "e", "user", "arm", ["spend"], ["age"])
    frame = small_frame()
    frame.loc[0, "arm"] = None
    with pytest.raises(ReplayError, match="column 'arm': empty value in data row 1"):
        replay_messages(frame, "e", "user", "arm", ["spend"], [])


def test_repeated_unit_ids_are_refused() -> None:
    frame = small_frame()
    frame.loc[3, "user"] = "a"
    with pytest.raises(ReplayError, match="column 'user': unit ids must be unique"):
        replay_messages(frame, "e", "user", "arm", ["spend"], [])


def test_replay_cli_exits_2_naming_the_column(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.csv"
    small_frame().to_csv(path, index=False)
    parser = argparse.ArgumentParser(prog="liftstream")
    sub = parser.add_subparsers(dest="command", required=True)
    replay.add_replay_parser(sub)
    args = parser.parse_args(["replay", str(path), "--experiment", "e", "--variation", "arm",
                              "--metric", "spend", "--metric", "refunds", "--duplicate", "0.1"])
    assert args.duplicate == 0.1 and args.unit is None and args.metric == ["spend", "refunds"]
    assert args.handler(args) == 2
    assert "column 'refunds'" in capsys.readouterr().err
    args = parser.parse_args(["replay", str(tmp_path / "nope.csv"), "--experiment", "e",
                              "--variation", "arm", "--metric", "spend"])
    assert args.handler(args) == 2
    assert "file not found" in capsys.readouterr().err


def test_progress_bar_only_on_a_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    bar = Progress("replay", 200, True, out)
    bar.update(100)
    bar.close(200)
    shown = out.getvalue()
    assert "replay" in shown and "100%" in shown and "200/200" in shown
    assert "msg/s" in shown and "ETA" in shown  # rate and time remaining
    quiet = io.StringIO()
    bar = Progress("replay", 200, True, quiet)  # not a TTY
    bar.update(100)
    bar.close(200)
    assert quiet.getvalue() == ""


def test_report_text() -> None:
    text = str(ReplayReport(exposures=10, events=5, duplicates=2, seconds=0.5))
    assert "10 exposures" in text and "5 events" in text and "17 messages" in text


# --------------------------------------------------------------------------- simulate


def collect(cfg: SimulationConfig) -> pd.DataFrame:
    """Per unit: variation, pre_revenue, and every metric/candidate, from the messages."""
    arm: dict[str, str] = {}
    pre: dict[str, float] = {}
    acc: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for msg in simulate_messages(cfg):
        p = parse(msg)
        if isinstance(p, Exposure):
            arm[p.unit] = p.variation
            pre[p.unit] = p.covariates["pre_revenue"]
        else:
            a = acc[p.unit]
            name = {"purchase": "revenue", "session": "sessions", "pageview": "pageviews",
                    "ticket": "support_tickets"}[p.event]
            a[name] += p.value
            if p.event == "purchase":
                a["converted"] = 1.0
    cols = ["converted", "revenue", "sessions", "pageviews", "support_tickets"]
    rows = [{"unit": u, "arm": v, "pre_revenue": pre[u], **{c: acc[u].get(c, 0.0) for c in cols}}
            for u, v in arm.items()]
    return pd.DataFrame(rows)


def test_simulation_is_deterministic_per_seed() -> None:
    cfg = SimulationConfig(units=1500, malformed_fraction=0.1, late_fraction=0.2)
    first = list(simulate_messages(cfg))
    assert first == list(simulate_messages(cfg))
    other = list(simulate_messages(SimulationConfig(units=1500, malformed_fraction=0.1,
                                                    late_fraction=0.2, seed=1)))
    assert first != other


def test_truth_sign_and_size() -> None:
    means = control_means()
    truth = true_effects(SimulationConfig(arms=3, effect=0.05))
    assert set(truth) == {"converted", "revenue", "sessions", "revenue_per_session"}
    assert truth["revenue"]["treatment_1"] == pytest.approx(0.05 * means["revenue"])
    assert truth["revenue"]["treatment_2"] == pytest.approx(0.10 * means["revenue"])
    assert truth["converted"]["treatment_1"] == pytest.approx(0.05 * means["converted"])
    assert truth["sessions"] == {"treatment_1": 0.0, "treatment_2": 0.0}
    assert truth["revenue_per_session"]["treatment_1"] == pytest.approx(
        0.05 * means["revenue"] / means["sessions"])
    negative = true_effects(SimulationConfig(effect=-0.2))
    assert negative["revenue"]["treatment_1"] < 0 < -negative["converted"]["treatment_1"]
    assert all(v == 0 for m in true_effects(SimulationConfig(effect=0.0)).values()
               for v in m.values())
    # the closed form: E[p(x)] = 0.3·(1 − 1.5^−2) for x ~ Gamma(2, 1), p = 0.3(1 − e^{−x/2})
    assert means["converted"] == pytest.approx(0.3 * (1 - 1.5**-2), rel=1e-12)
    shifted = true_candidate_effects(SimulationConfig(affected_candidate_shift=0.5))
    assert shifted["support_tickets"]["treatment_1"] == pytest.approx(0.5 * math.sqrt(0.42))
    assert shifted["pageviews"]["treatment_1"] == 0.0


def test_simulated_data_match_the_truth() -> None:
    cfg = SimulationConfig(units=40000, effect=0.3, affected_candidate_shift=0.5,
                           covariate_strength=0.6, seed=11)
    df = collect(cfg)
    assert len(df) == cfg.units
    truth = {**true_effects(cfg), **true_candidate_effects(cfg)}
    c, t = df[df.arm == "control"], df[df.arm == "treatment_1"]
    for name in ("converted", "revenue", "sessions", "pageviews", "support_tickets"):
        se = math.sqrt(t[name].var() / len(t) + c[name].var() / len(c))
        diff = t[name].mean() - c[name].mean()
        assert abs(diff - truth[name]["treatment_1"]) < 4.5 * se, name
    means = control_means()
    assert c.revenue.mean() == pytest.approx(means["revenue"], rel=0.05)
    assert c.revenue.var() == pytest.approx(means["revenue_variance"], rel=0.1)
    r = np.corrcoef(c.pre_revenue, c.revenue)[0, 1]
    assert r == pytest.approx(0.6, abs=0.03)


def test_srm_fault_changes_arm_counts() -> None:
    def arms(cfg: SimulationConfig) -> Counter[str]:
        return Counter(p.variation for p in map(parse, simulate_messages(cfg))
                       if isinstance(p, Exposure))

    fair = arms(SimulationConfig(units=6000, seed=2))
    faulty = arms(SimulationConfig(units=6000, seed=2, srm_fault=0.2))
    assert faulty["control"] == fair["control"]  # same draws, only treatment exposures go
    assert faulty["treatment_1"] / fair["treatment_1"] == pytest.approx(0.8, abs=0.03)
    chi2 = (faulty["control"] - faulty["treatment_1"]) ** 2 / sum(faulty.values())
    assert chi2 > 10.83  # flagged at p < 0.001
    # events of dropped units are still sent (the worker holds them)
    events = [m for m in simulate_messages(SimulationConfig(units=6000, seed=2,
                                                            srm_fault=0.2)) if m[0] == "events"]
    assert len(events) == sum(1 for m in simulate_messages(SimulationConfig(units=6000, seed=2))
                              if m[0] == "events")


def test_malformed_messages_are_all_rejected() -> None:
    cfg = SimulationConfig(units=3000, malformed_fraction=0.1, seed=4)
    counts = simulate._Counts()
    msgs = list(simulate._generate(cfg, counts))
    rejected = [m for m in msgs if isinstance(
        parse_exposure(m[2]) if m[0] == "exposures" else parse_event(m[2]), Rejected)]
    assert len(rejected) == counts.malformed > 0
    assert counts.malformed / len(msgs) == pytest.approx(0.1, abs=0.02)
    assert {m[0] for m in rejected} == {"exposures", "events"}
    assert counts.exposures == cfg.units
    assert counts.events + counts.exposures + counts.malformed == len(msgs)
    # every garbage template is rejected by the parser of its topic
    rng = np.random.default_rng(0)
    for kind, parser in (("exposures", parse_exposure), ("events", parse_event)):
        for _ in range(200):
            raw = simulate._garbage(rng, kind, "sim", "s0-u1", 1_700_000_000.0)
            assert isinstance(parser(raw), Rejected), raw


def test_late_exposures_arrive_after_their_events() -> None:
    cfg = SimulationConfig(units=2500, late_fraction=1.0)
    msgs = list(simulate_messages(cfg))
    first_event: dict[str, int] = {}
    exposure_at: dict[str, int] = {}
    for i, m in enumerate(msgs):
        p = parse(m)
        if isinstance(p, Exposure):
            exposure_at[p.unit] = i
        else:
            first_event.setdefault(p.unit, i)
    assert len(exposure_at) == cfg.units
    assert all(exposure_at[u] > i for u, i in first_event.items())
    assert sorted(msgs) == sorted(simulate_messages(SimulationConfig(units=2500)))


def test_stream_invariants() -> None:
    cfg = SimulationConfig(units=3000, arms=3, effect=0.2)
    exposed: dict[str, float] = {}
    ids: set[str] = set()
    for kind, key, value in simulate_messages(cfg):
        p = parse((kind, key, value))
        assert key == p.unit.encode()
        if isinstance(p, Exposure):
            assert p.experiment == "sim" and p.variation in cfg.variations
            assert set(p.covariates) == {"pre_revenue"} and p.covariates["pre_revenue"] >= 0
            exposed[p.unit] = p.ts
        else:
            assert p.experiment == "sim" and p.id is not None
            assert p.id not in ids  # distinct events never share an id
            ids.add(p.id)
            assert p.ts > exposed[p.unit]
    assert len(exposed) == cfg.units


def test_definition_parses() -> None:
    cfg = SimulationConfig(experiment="sim-3", arms=3)
    d = parse_definition(simulation_definition(cfg))
    assert d.variations == ("control", "treatment_1", "treatment_2")
    assert d.metric_names() == ("converted", "revenue", "sessions", "revenue_per_session")
    assert d.covariates == ("pre_revenue",)
    assert [c.name for c in d.in_experiment] == ["pageviews", "support_tickets"]
    assert {m.event for m in d.metrics} | {c.event for c in d.in_experiment} == \
        {"purchase", "session", "pageview", "ticket"}
    assert ExperimentLayout.of(d).width == 6
    assert parse_definition(msgspec.json.decode(d.to_json())) == d


@pytest.mark.parametrize("kwargs", [
    {"arms": 1}, {"effect": 3.0}, {"effect": -1.5}, {"covariate_strength": 1.2},
    {"srm_fault": -0.1}, {"malformed_fraction": 0.6}, {"late_fraction": 2.0},
    {"rate": 0.0}, {"affected_candidate_shift": -5.0}, {"start_ts": 1.7e12},
])
def test_invalid_config(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SimulationConfig(**kwargs)


def test_rate_paces_timestamps() -> None:
    cfg = SimulationConfig(units=2000, rate=100.0)
    ts = [p.ts for p in map(parse, simulate_messages(cfg)) if isinstance(p, Exposure)]
    per_unit = simulate.expected_messages_per_unit(cfg)
    assert ts[-1] - ts[0] == pytest.approx(1999 * per_unit / 100.0)


def test_simulate_cli_parser() -> None:
    parser = argparse.ArgumentParser(prog="liftstream")
    sub = parser.add_subparsers(dest="command", required=True)
    simulate.add_simulate_parser(sub)
    args = parser.parse_args(["simulate", "--units", "50", "--arms", "3", "--srm-fault", "0.1",
                              "--affected-candidate-shift", "0.5", "--late-fraction", "0.2",
                              "--malformed-fraction", "0.01", "--covariate-strength", "0.5"])
    assert (args.units, args.arms, args.srm_fault, args.affected_candidate_shift) == \
        (50, 3, 0.1, 0.5)
    assert args.experiment == "sim" and args.rate is None and callable(args.handler)


def test_simulate_cli_rejects_bad_config(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="liftstream")
    sub = parser.add_subparsers(dest="command", required=True)
    simulate.add_simulate_parser(sub)
    args = parser.parse_args(["simulate", "--arms", "1"])
    assert args.handler(args) == 2
    assert "arms" in capsys.readouterr().err
