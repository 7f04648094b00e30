"""Smoke test of `tailbench perf`: tiny sizes, the table and JSON shapes; never timings."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from functools import partial

import pytest
import torch

from benchmark.app import perf, perf_cells, perf_grid, perf_packed, perf_precision
from benchmark.data import Dataset
from benchmark.errors import UserError


def tiny_data(n: int = 240) -> Dataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.arange(n) % 10
    return Dataset(x, y, x[:20], y[:20], tuple("abcdefghij"), "random", "")


@pytest.fixture
def ctx() -> perf.Context:
    sizes = perf.SIZES["quick"] | {"cnn": 24, "rnn": 24, "resnet50": 8, "pipeline": 200,
                                   "batch": 8}
    return perf.Context(torch.device("cpu"), tiny_data(), sizes, reps=1, workers=0)


def test_alternate_runs_a_b_then_b_a_and_drops_the_warmup():
    calls = []
    a, b = partial(calls.append, "a"), partial(calls.append, "b")
    ta, tb = perf.alternate(a, b, reps=2, device=torch.device("cpu"))
    assert calls == ["a", "b", "b", "a", "a", "b"]  # the warm-up round, then two kept
    assert len(ta) == len(tb) == 2 and all(t >= 0 for t in ta + tb)


def test_alternate_keeps_each_fns_seconds_apart_in_either_order():
    seconds = {"a": 0.0, "b": 0.02}
    a, b = partial(time.sleep, seconds["a"]), partial(time.sleep, seconds["b"])
    ta, tb = perf.alternate(a, b, reps=2, device=torch.device("cpu"), warmup=0)
    assert max(ta) < 0.02 <= min(tb)  # the reversed round's times land on the right fn


# whole cells, and the grid's shares (read from a benchmark's runs): tested on their own below
CELLS = (perf_cells.tracking_overhead, perf_cells.pruning_saving, perf_grid.shares)


@pytest.mark.slow
def test_every_comparison_returns_a_row(ctx):
    timed = [compare for compare in perf.COMPARISONS if compare not in CELLS]
    rows = [r for compare in timed for r in perf.rows_of(compare, ctx)]
    assert len(timed) == len(perf.COMPARISONS) - len(CELLS)
    # the pipeline: against the tutorial, and before/after; the workers: a row per model
    # where there are cores to split, else none
    cores = os.cpu_count() or 1
    assert len(rows) == len(timed) + 1 + (len(perf.NETWORKS) if cores > 1 else 0) - 1
    units = {r.measure: r.unit for r in rows}
    assert units["rnn epoch, bf16 / fp32"] == "img/s"
    assert "bf16 − fp32" in next(r.note for r in rows if r.unit == "acc")
    assert len({r.measure for r in rows}) == len(rows)
    for r in rows:
        assert r.tailbench > 0 and r.baseline > 0
        # timed rows have a (tailbench, baseline) pair a round; the accuracy row one a seed
        assert len(r.runs) == (perf_precision.ACCURACY["quick"]["seeds"] if r.unit == "acc"
                               else ctx.reps)
        assert r.tailbench == statistics.median(a for a, _ in r.runs)
        assert r.ratio == pytest.approx(r.tailbench / r.baseline)
        assert r.met is None if r.target is None else r.met == (r.ratio >= r.target)
    units = {r.measure: r.unit for r in rows}
    assert units["cnn training epoch"] == "img/s"
    assert units["flip+noise data pipeline"] == units["flip+noise: added rows only"] == "img/s"
    assert units["resnet50 training vs matmul"] == "GFLOP/s"
    if cores > 1:
        assert units[f"rnn epoch, {cores} one-thread workers / 1 process"] == "img/s"
    # the limit rows reuse the training rows' measured rate instead of timing again
    assert {"train/cnn", "train/rnn", "train/resnet50", "matmul/cnn"} <= set(ctx.cache)


def test_packed_rows_time_k_models_both_ways(ctx):
    row = perf_packed.speed(ctx, "cnn", 2)
    assert row.measure == "cnn x2, packed / sequential" and row.unit == "img/s"
    assert row.tailbench > 0 and row.baseline > 0 and len(row.runs) == ctx.reps
    assert row.ratio == pytest.approx(row.tailbench / row.baseline)
    packed = [c.keywords for c in perf.COMPARISONS
              if getattr(c, "func", None) is perf_packed.speed]
    assert packed == [{"name": m, "k": k} for m in ("cnn", "rnn") for k in (1, 2, 4)]


def test_only_picks_comparisons_by_name(ctx, monkeypatch):
    assert perf.comparison_name(perf.COMPARISONS[0]) == "perf.training name=cnn"
    assert perf.comparison_name(perf_packed.speed) == "perf_packed.speed"
    monkeypatch.setattr(perf, "load_images", lambda seed=0: ctx.data)
    args = argparse.Namespace(device="cpu", reps=1, out="unused.json", quick=True,
                              only="no such comparison")
    with pytest.raises(UserError, match="matches no comparison; their names: perf.training"):
        perf.run(args)


def test_table_has_a_line_per_row_with_the_columns():
    rows = [perf.Row("cnn training epoch", "img/s", 900.0, 450.0, 2.0, 1.6),
            perf.Row("rnn training vs matmul", "GFLOP/s", 40.0, 160.0, 0.25, percent=True),
            perf.Row("tracking overhead", "s/cell", 2.5, 71.0, 0.0348, 0.03, percent=True,
                     upper=True)]
    lines = perf.table(rows).splitlines()
    assert lines[0].split() == ["measure", "unit", "tailbench", "baseline", "ratio", "target",
                                "met?"]
    assert len(lines) == 2 + len(rows)
    assert lines[2].split()[-4:] == ["2.00x", ">=", "1.60x", "yes"]
    assert lines[3].split()[-3:] == ["25%", "-", "-"]
    assert lines[4].split()[-4:] == ["3.5%", "<=", "3.0%", "NO"]  # not "3% <= 3% NO"


def test_perf_command_writes_the_json(tmp_path, monkeypatch, capsys, ctx):
    monkeypatch.setattr(perf, "load_images", lambda seed=0: ctx.data)
    monkeypatch.setattr(perf, "Context", partial(perf.Context, workers=2))  # the real loader
    monkeypatch.setattr(perf, "SIZES", {"quick": ctx.sizes, "full": ctx.sizes})
    monkeypatch.setattr(perf, "COMPARISONS", [partial(perf.training, name="cnn"), perf.pipeline,
                                              partial(perf.limit, name="cnn")])
    p = argparse.ArgumentParser()
    perf.add_parser(p.add_subparsers(dest="command"))
    out = tmp_path / "perf.json"
    args = p.parse_args(["perf", "--quick", "--device", "cpu", "--out", str(out)])
    assert perf.run(args) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"machine", "rows", "seconds"}
    assert {"torch", "device", "threads", "matmul_gflops", "load_before", "cpu"} <= \
        set(result["machine"])
    assert result["machine"]["cpu"] == perf.cpu_info()  # this machine's, as read below
    assert result["machine"]["device"] == "cpu"
    assert [r["measure"] for r in result["rows"]] == [
        "cnn training epoch", "flip+noise data pipeline", "flip+noise: added rows only",
        "cnn training vs matmul"]
    assert set(result["rows"][0]) == {"measure", "unit", "tailbench", "baseline", "ratio",
                                      "target", "percent", "note", "runs", "met", "upper"}
    assert "flip+noise data pipeline" in capsys.readouterr().out


def test_bad_reps_is_an_error_a_user_can_act_on(ctx, monkeypatch):
    monkeypatch.setattr(perf, "load_images", lambda seed=0: ctx.data)
    args = argparse.Namespace(device="cpu", reps=0, out="unused.json", quick=True)
    with pytest.raises(UserError, match="--reps"):
        perf.run(args)


def test_whole_cell_comparisons_time_tracking_and_count_pruned_epochs(ctx):
    import torch

    from benchmark.app.launchers import auto_threads

    threads = torch.get_num_threads()
    overhead = perf_cells.tracking_overhead(ctx)
    assert torch.get_num_threads() == threads  # a worker's thread count only for the row
    assert overhead.upper and overhead.percent and overhead.target == 0.03
    n = auto_threads()
    assert f"{n} torch thread{'s' * (n > 1)} as a make benchmark worker" in overhead.note
    # a round: (recording = the CPU seconds outside training, tracked - untracked; the tracked
    # cell's wall seconds); without the training's scatter, recording shows in every round
    assert len(overhead.runs) == ctx.reps and all(0 < r < w for r, w in overhead.runs)
    assert "in training CPU" in overhead.note
    assert overhead.baseline == statistics.median(w for _, w in overhead.runs)
    assert overhead.ratio == statistics.median(r / w for r, w in overhead.runs) < 1
    assert overhead.met == (overhead.ratio <= 0.03)
    assert "2 trials" in overhead.note and "of 1 learned" in overhead.note
    # the recording calls timed directly: some, and less than the whole cell
    timed = float(overhead.note.split("timed directly: ")[1].split(" s")[0])
    assert 0 < timed < overhead.baseline
    saving = perf_cells.pruning_saving(ctx)
    assert 0 < saving.tailbench <= saving.baseline == 3  # 3 trials of 1 epoch in --quick
    assert saving.ratio == saving.tailbench / saving.baseline


def test_the_grid_time_shares_come_from_the_latest_runs_records(tmp_path):
    import time

    from conftest import learnable_dataset

    from benchmark.app import runner
    from benchmark.cells import Cell, GridEntry
    from studies import TuneOptions
    from tracking.store import Store

    cell = Cell("cnn", "long-tail", "none", epochs=2, batch_size=8, lr=0.05, trials=2,
                dataset="synthetic", profile="quick", imbalance_ratio=5, seeds=2)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert perf_grid.shares(perf.Context(torch.device("cpu"), None, {}, 1, tracking_uri=uri)) \
        == [] and not (tmp_path / "mlflow.db").exists()  # nothing run: no rows, no store made
    started = int(time.time() * 1000)
    invocation = runner.Invocation(about={"started_ms": str(started)})
    data = learnable_dataset(250, 60, seed=1, digest="ab" * 32, path="/tmp/synthetic")
    runner.run_grid([GridEntry(cell, {})], data, Store(uri, "tailbench/synthetic/quick"),
                    device=torch.device("cpu"), invocation=invocation,
                    tuning=TuneOptions(tmp_path / "optuna.journal"))
    wall = time.time() - started / 1000
    rows = {r.measure: r for r in perf_grid.shares(perf.Context(torch.device("cpu"), None, {},
                                                                1, tracking_uri=uri))}
    assert set(rows) == {f"grid: {n}" for n in (
        "start-up (imports, data, stores)", "Optuna trials", "final fits: epochs",
        "  of which test evaluation", "final fits: recording (metrics, figures, model)",
        "cells: statistics and figures", "wall time")}
    assert 0 < rows["grid: wall time"].tailbench <= wall + 1
    assert rows["grid: Optuna trials"].tailbench > 0
    assert rows["grid: final fits: epochs"].tailbench > 0
    assert 0 < rows["grid:   of which test evaluation"].tailbench < \
        rows["grid: final fits: epochs"].tailbench
    parts = sum(r.tailbench for m, r in rows.items() if m not in (
        "grid: wall time", "grid:   of which test evaluation"))
    assert parts <= rows["grid: wall time"].tailbench + 1  # one worker: parts within the wall


def test_cpu_info_reads_the_first_cpus_family_model_and_bf16_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu family\t: 23\nmodel\t\t: 1\n"
                       "model name\t: AMD EPYC\ncpu MHz\t\t: 1996.249\n"
                       "flags\t\t: fpu sse2 avx avx2 fma\n\n"
                       "processor\t: 1\ncpu family\t: 6\nmodel\t\t: 167\n"
                       "flags\t\t: avx2 avx512f avx512_bf16 amx_bf16\n")
    assert perf.cpu_info(cpuinfo) == {"name": "AMD EPYC", "family": "23", "model": "1",
                                      "mhz": "1996.249", "flags": ["avx2"]}  # Zen 1: no avx512
    assert perf.cpu_info(tmp_path / "none") == {}
