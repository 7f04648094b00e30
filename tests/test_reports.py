"""tracking.metrics, tracking.plots and tracking.report: numbers by hand, real PNGs, and the
cross-cell report built from runs logged to a throwaway SQLite MLflow store."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest

from tracking import plots
from tracking.metrics import cell_metrics, class_metric_names, metric_name, normalize_rows
from tracking.report import build_report, write_cell_artifacts

CIFAR = ["airplane", "automobile", "bird", "cat", "deer",
         "dog", "frog", "horse", "ship", "truck"]
TAIL = [0, 1, 2, 3, 4]

# 3 classes, 10 test images. Rows true, columns predicted:
#        a  b  c
#   a  [ 2, 1, 1 ]   recall 2/4
#   b  [ 1, 2, 0 ]   recall 2/3
#   c  [ 0, 1, 2 ]   recall 2/3
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
Y_PRED = np.array([0, 0, 1, 2, 1, 1, 0, 2, 2, 1])


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def assert_readable_png(data: bytes) -> None:
    w, h = png_size(data)
    assert 400 <= w <= 3000 and 250 <= h <= 3000, (w, h)
    assert len(data) > 5000  # an empty canvas compresses to far less


# ---------------------------------------------------------------- metrics

def test_cell_metrics_by_hand():
    m = cell_metrics(Y_TRUE, Y_PRED, ["a", "b", "c"], tail_classes=[0])
    np.testing.assert_array_equal(m.confusion, [[2, 1, 1], [1, 2, 0], [0, 1, 2]])
    s = m.scalars
    assert s["tail_acc"] == pytest.approx(2 / 4)  # class a: 2 of its 4 images
    assert s["head_acc"] == pytest.approx(4 / 6)  # classes b, c pooled: (2 + 2) / (3 + 3)
    assert s["tail_gap"] == pytest.approx(4 / 6 - 2 / 4)
    assert s["balanced_acc"] == pytest.approx((1 / 2 + 2 / 3 + 2 / 3) / 3)
    # precision = diagonal / column total: a 2/3, b 2/4, c 2/3
    # F1 = 2pr/(p+r): a 2(2/3)(1/2)/(7/6) = 4/7; b 2(1/2)(2/3)/(7/6) = 4/7; c = 2/3
    # macro F1 = (4/7 + 4/7 + 2/3) / 3 = 38/63
    assert s["macro_f1"] == pytest.approx(38 / 63)
    assert (s["acc_a"], s["acc_b"], s["acc_c"]) == pytest.approx((1 / 2, 2 / 3, 2 / 3))
    assert m.report_dict["b"]["precision"] == pytest.approx(0.5)
    assert m.report_dict["accuracy"] == pytest.approx(0.6)
    assert "macro avg" in m.report_text and "0.603" in m.report_text
    assert m["scalars"] is m.scalars  # dict-style access works too


def test_pooled_head_acc_weights_images_not_classes():
    # head classes 1 (1 image, right) and 2 (3 images, all wrong): pooled 1/4, mean recall 1/2
    m = cell_metrics([1, 2, 2, 2, 0], [1, 0, 0, 0, 0], ["a", "b", "c"], [0])
    assert m.scalars["head_acc"] == pytest.approx(1 / 4)


def test_class_without_test_images_has_no_accuracy_and_empty_tail_is_nan():
    m = cell_metrics([0, 0, 1], [0, 1, 1], ["a", "b", "c"], [])
    assert "acc_c" not in m.scalars and m.confusion.shape == (3, 3)
    assert math.isnan(m.scalars["tail_acc"]) and m.scalars["head_acc"] == pytest.approx(2 / 3)


def test_metric_names_are_valid_mlflow_names():
    from mlflow.utils.validation import _validate_metric_name

    fashion = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    names = class_metric_names(fashion)
    assert names[0] == "acc_T-shirt_top" and names[-1] == "acc_Ankle_boot"
    for n in names + [metric_name("../x"), metric_name("é")]:
        _validate_metric_name(n)
    assert class_metric_names(["a b", "a/b"]) == ["acc_a_b_0", "acc_a_b_1"]  # no clash


def test_bad_labels_are_explained():
    with pytest.raises(ValueError, match="outside 0..2"):
        cell_metrics([0, 3], [0, 1], ["a", "b", "c"], [0])
    with pytest.raises(ValueError, match="tail classes"):
        cell_metrics([0, 1], [0, 1], ["a", "b", "c"], [5])


def test_normalize_rows_keeps_empty_rows_zero():
    out = normalize_rows(np.array([[2, 2], [0, 0]]))
    np.testing.assert_allclose(out, [[0.5, 0.5], [0, 0]])


# ---------------------------------------------------------------- figures

def history(n: int = 5) -> list[dict]:
    return [{"train_loss": 2 / (e + 1), "test_loss": 2.2 / (e + 1) + 0.1,
             "train_acc": 0.3 + 0.1 * e, "test_acc": 0.25 + 0.08 * e} for e in range(n)]


def predictions(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(10), 50)
    # tail classes right 30% of the time, head 70%
    right = rng.random(y.size) < np.where(y < 5, 0.3, 0.7)
    return y, np.where(right, y, rng.integers(0, 10, y.size))


def test_every_single_cell_figure_renders():
    y, p = predictions()
    m = cell_metrics(y, p, CIFAR, TAIL)
    title = "cnn · long-tail · flip+noise"
    figs = [plots.loss_curve(history(), title), plots.accuracy_curve(history(), title),
            plots.confusion_figure(m.confusion, CIFAR, title),
            plots.confusion_figure(m.confusion, CIFAR, title, normalized=True),
            plots.per_class_accuracy_figure([m.scalars[n] for n in class_metric_names(CIFAR)],
                                            CIFAR, TAIL, title)]
    for fig in figs:
        assert title in fig.axes[0].get_title()
        assert fig.axes[0].get_xlabel() and fig.axes[0].get_ylabel()
        assert_readable_png(plots.png_bytes(fig))


def test_cross_cell_figures_render():
    cells = ["cnn · balanced · none", "rnn · long-tail · none (missing)"]
    values = np.array([np.linspace(40, 90, 10), np.full(10, np.nan)])
    assert_readable_png(plots.png_bytes(plots.per_class_heatmap(cells, CIFAR, values, "t", TAIL)))
    bars = plots.cell_accuracy_bars(cells, [70.0, None], [71.9, 42.0], "t", ["measured", "missing"])
    assert_readable_png(plots.png_bytes(bars))


def test_write_cell_artifacts(tmp_path):
    y, p = predictions()
    scalars = write_cell_artifacts(tmp_path, "cnn · long-tail · none", history(), y, p,
                                   CIFAR, TAIL)
    for name in ["loss", "accuracy", "confusion", "confusion_normalized", "per_class_accuracy"]:
        assert_readable_png((tmp_path / "figures" / f"{name}.png").read_bytes())
    report = json.loads((tmp_path / "reports" / "classification_report.json").read_text())
    assert report["airplane"]["support"] == 50
    assert "macro avg" in (tmp_path / "reports" / "classification_report.txt").read_text()
    lines = (tmp_path / "reports" / "confusion_matrix.csv").read_text().splitlines()
    assert len(lines) == 11 and lines[1].startswith("airplane,")
    assert sum(map(int, lines[1].split(",")[1:])) == 50
    assert scalars["tail_acc"] < scalars["head_acc"] and "acc_truck" in scalars


# ---------------------------------------------------------------- the cross-cell report

def spec(model, variant, augment, table=None, ref=None):
    name = f"{model} · {variant} · {augment}"
    return {"key": name.replace(" · ", "-"), "name": name, "model": model, "variant": variant,
            "augment": augment, "table": table, "reference": ref or {}}


EXPECTED = [
    spec("cnn", "balanced", "none", 1, {"train_acc": 86.4, "test_acc": 71.9}),
    spec("rnn", "balanced", "none", 2, {"train_acc": 100.0, "test_acc": 52.8}),
    spec("cnn", "long-tail", "none", 3, {"train_acc": 100.0, "test_acc": 53.4}),
    spec("rnn", "long-tail", "none", 3, {"train_acc": 97.3, "test_acc": 42.0}),
    spec("resnet50", "long-tail", "flip+noise", 4, {"train_acc": 98.2, "test_acc": 67.4}),
    spec("cnn", "long-tail", "flip+noise"),
]


def log_run(client, exp_id, cell, status, start, final=None, scalars=None, kind="cell",
            error=None, profile="quick"):
    from mlflow.entities import Metric, Param

    tags = {"tailbench_kind": kind, "cell_key": cell["key"], "cell_name": cell["name"],
            "model": cell["model"], "variant": cell["variant"], "augment": cell["augment"],
            "dataset": "cifar10", "profile": profile, "classes": json.dumps(CIFAR),
            "tail_classes": json.dumps(TAIL)}
    if error:
        tags["error"] = error
    run = client.create_run(exp_id, start_time=start, tags=tags, run_name=cell["name"])
    metrics = [Metric(k, v, start, 0) for k, v in {**(final or {}), **(scalars or {})}.items()]
    metrics += [Metric(k, 0.5, start, e) for e in range(1, 4) for k in ("train_acc", "test_acc")]
    client.log_batch(run.info.run_id, metrics=metrics,
                     params=[Param("epochs", "6"), Param("profile", profile)])
    client.set_terminated(run.info.run_id, status=status, end_time=start + 1)


def finished(client, exp_id, cell, start, train, test, seed, profile="quick"):
    y, p = predictions(seed)
    s = cell_metrics(y, p, CIFAR, TAIL).scalars
    log_run(client, exp_id, cell, "FINISHED", start, {"final_train_acc": train,
            "final_test_acc": test}, s, profile=profile)
    return s


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("cifar10/quick", artifact_location=(tmp / "a").as_uri())
    cnn_b, rnn_b, cnn_lt, _rnn_lt, res_fn, cnn_fn = EXPECTED
    finished(client, exp_id, cnn_b, 1000, 0.90, 0.70, seed=1, profile="paper")
    log_run(client, exp_id, rnn_b, "FAILED", 1100,
            error="RuntimeError: CUDA out of memory. Tried to allocate 2 GiB")
    # cnn long-tail: an old finished run, the newest finished one, then a newer failure,
    # and a trial run with the same key: the report must show the middle one
    finished(client, exp_id, cnn_lt, 1200, 0.99, 0.30, seed=2)
    lt = finished(client, exp_id, cnn_lt, 1300, 0.99, 0.50, seed=3)
    log_run(client, exp_id, cnn_lt, "FAILED", 1400, error="KeyboardInterrupt")
    log_run(client, exp_id, cnn_lt, "FINISHED", 1500, {"final_test_acc": 0.99}, kind="trial")
    finished(client, exp_id, res_fn, 1600, 0.95, 0.55, seed=4)
    finished(client, exp_id, spec("cnn", "balanced", "none") | {"key": "stale"}, 900, .1, .1, 5)
    # cnn flip+noise: a narrower gap than cnn long-tail's
    fn = {**lt, "tail_acc": lt["tail_acc"] + lt["tail_gap"] / 2, "tail_gap": lt["tail_gap"] / 2}
    log_run(client, exp_id, cnn_fn, "FINISHED", 1700,
            {"final_train_acc": 0.97, "final_test_acc": 0.52}, fn)
    md = build_report(uri, "cifar10/quick", EXPECTED, out_root=tmp / "reports")
    return md, lt, uri


def section(text: str, heading: str) -> str:
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


def test_report_files(report):
    md, _, _ = report
    assert md == md.parent / "report.md" and md.parent.name == "cifar10_quick"
    html = (md.parent / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<table>" in html
    assert "src=\"figures/" not in html  # self-contained: nothing outside the file
    for name in ["per_class_heatmap.png", "test_accuracy.png"]:
        assert_readable_png((md.parent / "figures" / name).read_bytes())
        assert f"(figures/{name})" in md.read_text()


def test_report_tables(report):
    md, lt, _ = report
    text = md.read_text()
    t1 = section(text, "### Table 1")
    # cnn balanced: train 90.0 vs 86.4 (+3.6), test 70.0 vs 71.9 (-1.9)
    assert "| 90.0 | 86.4 | +3.6 | 70.0 | 71.9 | -1.9 | cifar10 · paper |" in t1
    t2 = section(text, "### Table 2")
    assert "failed: RuntimeError: CUDA out of memory" in t2 and "| 100.0 | — |" in t2
    t3 = section(text, "### Table 3")
    assert "| rnn · long-tail · none | missing |" in t3
    assert "| 50.0 | 53.4 | -3.4 |" in t3  # the newest finished run, not the newer failure
    assert "not comparable in absolute terms" in t3
    extra = section(text, "## Cells the reference did not run")
    assert "cnn · long-tail · flip+noise | measured" in extra
    ht = section(text, "## Head and tail")
    head, tail = 100 * lt["head_acc"], 100 * lt["tail_acc"]
    assert f"| cnn · long-tail · none | measured | {head:.1f} | {tail:.1f} |" in ht
    assert "| rnn · long-tail · none | missing | — |" in ht
    assert "CUDA out of memory. Tried to allocate 2 GiB" in section(text, "## Errors")
    assert "6 cells expected; 4 measured, 1 failed, 1 missing; 1 other cells have runs" in text


def test_report_findings(report):
    md, lt, _ = report
    f = section(md.read_text(), "## Findings")
    assert "| cnn: long-tail test accuracy below balanced | holds | balanced 70.0% vs " \
           "long-tail 50.0% (-20.0 pts) |" in f
    assert "| rnn: long-tail test accuracy below balanced | cannot tell | rnn · balanced · " \
           "none is failed; rnn · long-tail · none is missing |" in f
    assert "| cnn · long-tail · none: tail accuracy below head | holds |" in f
    assert "| cnn: flip+noise narrows the long-tail gap | holds |" in f
    assert "resnet50 · long-tail · none is not in the grid" in f
    html = (md.parent / "report.html").read_text()
    assert '<td class="yes">holds</td>' in html and '<td class="missing">missing</td>' in html


def test_findings_that_do_not_hold():
    from tracking.report import Row, findings_table

    def row(s, test, head, tail):
        m = {"final_test_acc": test, "head_acc": head, "tail_acc": tail, "tail_gap": head - tail}
        return Row(s, status="measured", metrics=m)

    # long-tail above balanced, tail above head, and flip+noise widening the gap
    rows = [row(spec("rnn", "balanced", "none"), 0.40, 0.5, 0.5),
            row(spec("rnn", "long-tail", "none"), 0.45, 0.4, 0.45),
            row(spec("rnn", "long-tail", "flip+noise"), 0.45, 0.6, 0.3)]
    verdicts = [r[1][0] for r in findings_table(rows).rows]
    # below-balanced, tail-below-head (x2), narrows-gap
    assert verdicts == ["does not hold", "does not hold", "holds", "does not hold"]


def test_report_needs_the_experiment(report):
    _, _, uri = report
    with pytest.raises(ValueError, match="no MLflow experiment 'nope'"):
        build_report(uri, "nope", EXPECTED)
