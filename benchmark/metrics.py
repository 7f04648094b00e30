"""Per-cell evaluation numbers from predictions, with scikit-learn: pure, no I/O, no plotting.

Head/tail accuracy is *pooled*: the share of correctly classified test images among those
whose true class is a head (or tail) class. On the balanced test set the reference uses,
that equals the mean recall of those classes; on an unbalanced test set it weights classes
by their test images, which is what "accuracy on the head" reads as.

Many/medium/few-shot accuracy is pooled the same way over classes grouped by their *training*
counts n_c (`shot_groups`). The literature's thresholds (> 100, 20-100, < 20 images: Liu et
al. 2019, for ImageNet-LT) would put every class of a CIFAR-10 subset in one group, so the
groups here are thirds of the log-count range: with t_c = log(n_c / n_min) / log(n_max /
n_min), a class is many-shot when t_c >= 2/3, medium-shot when 1/3 <= t_c < 2/3 and few-shot
when t_c < 1/3. Edges as counts: e_k = n_min * (n_max / n_min)^(k/3); a class reaches an edge
when n_c >= floor(e_k), so that a protocol's count rounded from exactly the edge (exp, rho
100, 10 classes: classes 3 and 6 sit on the edges) lands on the side it was drawn for. On
CIFAR-10's exp rho=100 cut (5000 ... 50) that is classes 0-3 many, 4-6 medium, 7-9 few; a
step cut has two counts (head many, tail few, no medium); equal counts (balanced) have no
split and log none of the three.

Expected calibration error (Guo et al. 2017), on the final softmax's top confidence: the
confidences in 15 equal-width bins (b/15, (b+1)/15], ECE = sum_b |B_b| / N * |acc(B_b) -
conf(B_b)|, in fractions (0 = calibrated).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix, f1_score, recall_score

# MLflow accepts letters, digits, _ - . / space (and : off Windows) in metric names. We keep
# only [A-Za-z0-9_.-]: a "/" makes the MLflow UI file the chart under a section of its own,
# and a space forces backticks in search filters ("metrics.`acc_Ankle boot`").
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


@dataclass(frozen=True)
class CellMetrics:
    scalars: dict[str, float]  # metric name -> fraction 0..1 (tail_gap: head minus tail)
    report_dict: dict  # sklearn classification_report(output_dict=True)
    report_text: str  # the same report as sklearn's text table
    confusion: np.ndarray  # (C, C) int counts; rows = true class, columns = predicted
    # reliability bins of the test set (calibration_bins), or None without confidences
    calibration: dict[str, list[float]] | None = None

    def __getitem__(self, name: str):
        # dict-style access too, so callers may treat the result as the dict the brief names
        return getattr(self, name)


def metric_name(class_name: str) -> str:
    """The MLflow metric name of one class's accuracy: 'T-shirt/top' -> 'acc_T-shirt_top'."""
    return "acc_" + (_UNSAFE.sub("_", class_name).strip("_") or "class")


def class_metric_names(classes: list[str]) -> list[str]:
    """One unique metric name per class, in class order (a clash gets the class index)."""
    names = [metric_name(c) for c in classes]
    return [f"{n}_{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def normalize_rows(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its total: row i is the distribution of predictions for class i.

    A class with no test images keeps a row of zeros rather than NaN, so plots stay drawable.
    """
    totals = cm.sum(axis=1, keepdims=True).astype(float)
    return np.divide(cm, totals, out=np.zeros(cm.shape, dtype=float), where=totals > 0)


def _pooled_accuracy(cm: np.ndarray, rows: list[int]) -> float:
    """Correct / total over the test images whose true class is in `rows`; NaN if none."""
    total = int(cm[rows].sum()) if rows else 0
    if not total:
        return float("nan")
    return float(sum(int(cm[r, r]) for r in rows)) / total


def _check(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str],
           tail_classes: list[int]) -> None:
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D and the same length, got shapes "
                         f"{y_true.shape} and {y_pred.shape}")
    if not y_true.size:
        raise ValueError("no test predictions to score: y_true and y_pred are empty; "
                         "check the test split (test_limit) of the cell")
    n = len(classes)
    for label, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if arr.size and (arr.min() < 0 or arr.max() >= n):
            raise ValueError(f"{label} holds labels outside 0..{n - 1} for {n} classes; "
                             f"pass the dataset's full class list")
    bad = [c for c in tail_classes if not 0 <= c < n]
    if bad:
        raise ValueError(f"tail classes {bad} are not class indices 0..{n - 1}")


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean recall over the classes present in `y_true` (scikit-learn's balanced accuracy,
    without its warning when a class is predicted that `y_true` lacks); 0 for no images.
    The one definition, used by training's evaluation (so by the tuning objective), the
    final fits and the report alike."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    if not y_true.size:
        return 0.0
    return float(recall_score(y_true, y_pred, labels=np.unique(y_true), average="macro",
                              zero_division=0))


ECE_BINS = 15  # equal-width confidence bins of the expected calibration error (Guo et al.)
SHOTS = ("many", "medium", "few")


def calibration_bins(correct, confidence, bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Per equal-width confidence bin b = (b/bins, (b+1)/bins] (a confidence of 0 in the first):
    how many predictions fall in it ("count"), how many of them are right ("correct") and
    their summed confidence ("confidence"). Sums, so bins of several repetitions add up."""
    correct = np.asarray(correct, dtype=float).ravel()
    confidence = np.asarray(confidence, dtype=float).ravel()
    if correct.shape != confidence.shape:
        raise ValueError(f"{correct.size} correctness flags but {confidence.size} confidences")
    if confidence.size and (confidence.min() < 0 or confidence.max() > 1):
        raise ValueError("confidences must lie in [0, 1] (softmax probabilities)")
    idx = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    return {"count": np.bincount(idx, minlength=bins).astype(float).tolist(),
            "correct": np.bincount(idx, weights=correct, minlength=bins).tolist(),
            "confidence": np.bincount(idx, weights=confidence, minlength=bins).tolist()}


def expected_calibration_error(bins: dict[str, list[float]]) -> float:
    """sum_b |B_b| / N * |acc(B_b) - conf(B_b)| = sum_b |correct_b - confidence_b| / N, from
    calibration_bins (summed over repetitions: the pooled ECE); NaN for no predictions."""
    n = float(sum(bins["count"]))
    if not n:
        return float("nan")
    return float(np.abs(np.subtract(bins["correct"], bins["confidence"])).sum() / n)


def shot_groups(train_counts) -> dict[str, list[int]]:
    """{many, medium, few: the classes in it} by training counts (n_c, C), as the module
    docstring defines it; {} when every class has the same count (no split). A class with no
    training image counts as one. A group without classes is left out."""
    n = np.maximum(np.asarray(train_counts, dtype=float).ravel(), 1)
    if not n.size or n.min() == n.max():
        return {}
    lo, hi = n.min(), n.max()
    edges = [np.floor(lo * (hi / lo) ** (k / 3)) for k in (1, 2)]
    group = np.where(n >= edges[1], 0, np.where(n >= edges[0], 1, 2))
    out = {name: [int(c) for c in np.flatnonzero(group == i)] for i, name in enumerate(SHOTS)}
    return {k: v for k, v in out.items() if v}


def cell_metrics(y_true, y_pred, classes: list[str], tail_classes: list[int],
                 train_counts=None, confidence=None) -> CellMetrics:
    """Confusion matrix, classification report, balanced accuracy, macro F1, head/tail split;
    with the training counts also many/medium/few-shot accuracy, with the top softmax
    confidences (N,) also the expected calibration error and its bins.

    `scalars` holds head_acc, tail_acc, tail_gap, balanced_acc, macro_f1 and one acc_<class>
    (that class's recall) for every class with test images; many_acc, medium_acc, few_acc
    for the groups `shot_groups` finds; ece. All are fractions 0..1.
    """
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    classes, tail = list(classes), sorted({int(c) for c in tail_classes})
    _check(y_true, y_pred, classes, tail)
    labels = list(range(len(classes)))
    # labels= fixes the matrix to every class, even one absent from both arrays
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    head = [c for c in labels if c not in tail]
    head_acc, tail_acc = _pooled_accuracy(cm, head), _pooled_accuracy(cm, tail)
    present = cm.sum(axis=1) > 0
    scalars = {
        "head_acc": head_acc,
        "tail_acc": tail_acc,
        "tail_gap": head_acc - tail_acc,
        "balanced_acc": balanced_accuracy(y_true, y_pred),
        # zero_division=0: a class never predicted scores F1 0 instead of raising a warning
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro",
                                   zero_division=0)),
    }
    recall = np.diag(cm) / np.maximum(cm.sum(axis=1), 1)
    for name, ok, r in zip(class_metric_names(classes), present, recall, strict=True):
        if ok:  # a class without test images has no accuracy to log
            scalars[name] = float(r)
    for shot, members in (shot_groups(train_counts) if train_counts is not None else {}).items():
        scalars[f"{shot}_acc"] = _pooled_accuracy(cm, members)
    calibration = None
    if confidence is not None:
        calibration = calibration_bins(y_true == y_pred, confidence)
        scalars["ece"] = expected_calibration_error(calibration)
    kwargs = dict(labels=labels, target_names=classes, zero_division=0)
    return CellMetrics(
        calibration=calibration,
        scalars=scalars,
        report_dict=classification_report(y_true, y_pred, output_dict=True, **kwargs),
        report_text=classification_report(y_true, y_pred, digits=3, **kwargs),
        confusion=cm,
    )
