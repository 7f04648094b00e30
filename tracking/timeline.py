"""Where a `tailbench run`'s time went, read back from its runs: the trial runs, the
repetition runs (their epochs, and the evaluation in them), the cell runs around them, and
the start-up before the first cell. Plain numbers; `make perf` turns them into shares."""

from __future__ import annotations

from dataclasses import dataclass

from tracking.store import KIND, Store


@dataclass(frozen=True)
class Timeline:
    """Seconds of one invocation (with several workers, busy seconds add up past the wall)."""

    wall: float  # from the command's start to the last cell run's end
    startup: float  # from the command's start to its first cell run
    trials: float  # in trial runs
    fits: float  # in repetition runs' epochs (training and evaluation), rejected attempts too
    evaluation: float  # of those, evaluating on the test set after each epoch
    recording: float  # in repetition runs around their epochs: metrics, figures, the model
    cells: float  # in cell runs around their trials and repetitions: statistics, figures
    n_cells: int  # cells this invocation trained (not the ones it skipped)


def _seconds(run) -> float:
    return max(0.0, ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000)


def timeline(store: Store, invocation: str) -> Timeline | None:
    """The Timeline of `invocation`, or None when it trained no cell (or predates timing)."""
    tag = f"invocation.{invocation}"
    cells = [r for r in store.search(f"tags.{KIND} = 'cell'") if tag in r.data.tags]
    started = [int(r.data.tags["invocation_started_ms"]) for r in cells
               if "invocation_started_ms" in r.data.tags]
    if not started:
        return None
    t0 = min(started)
    trials = fits = evaluation = recording = cell_time = 0.0
    trained, first, last = 0, None, t0
    for cell in cells:
        kids = [k for k in store.search(f"tags.mlflow.parentRunId = '{cell.info.run_id}'")
                if k.info.start_time >= t0]  # this invocation's, not an earlier one's
        if not kids:
            continue  # skipped: finished before
        trained += 1
        first = min(first or cell.info.start_time, *(k.info.start_time for k in kids))
        last = max(last, cell.info.end_time or 0, *(k.info.end_time or 0 for k in kids))
        busy = 0.0
        for k in kids:
            busy += _seconds(k)
            if k.data.tags.get(KIND) == "trial":
                trials += _seconds(k)
            elif k.data.tags.get(KIND) == "repetition":
                epochs = store.metric_histories(k.info.run_id, ["epoch_seconds",
                                                                "eval_seconds"])
                spent = sum(e.get("epoch_seconds", 0.0) for e in epochs)
                # final fits rejected before it (diverged, did not learn): trained, no curves
                spent += k.data.metrics.get("rejected_fit_seconds", 0.0)
                fits += spent
                evaluation += sum(e.get("eval_seconds", 0.0) for e in epochs)
                recording += max(0.0, _seconds(k) - spent)
        # a cell run spans its invocations: only what came after this one started counts
        cell_time += max(0.0, ((cell.info.end_time or last) - max(cell.info.start_time, t0))
                         / 1000 - busy)
    if not trained:
        return None
    return Timeline((last - t0) / 1000, ((first or t0) - t0) / 1000, trials, fits, evaluation,
                    recording, cell_time, trained)
