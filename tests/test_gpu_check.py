"""`tailbench gpu-check`: refused in one line without CUDA; on the CPU (only to test the
command) it runs its 4 trials at once and the final fit, and writes the JSON."""

import json

import pytest

from benchmark.app.cli import main


def test_without_cuda_the_check_is_refused_in_one_line(capsys):
    assert main(["gpu-check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tailbench gpu-check: error: gpu-check needs a CUDA GPU")
    assert len(err.splitlines()) == 1


@pytest.mark.slow
def test_the_check_runs_four_trials_and_a_fit_and_writes_its_numbers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no CIFAR-10 here: random images
    out = tmp_path / "gpu-check.json"
    assert main(["gpu-check", "--device", "cpu", "--images", "256", "--epochs", "1",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["data"] == "random" and result["trials_at_once"] == 4
    assert result["precision"] == "fp32" and result["train_images"] == 256
    assert 1 <= result["trial_epochs"] <= 4  # four trials of one epoch, pruned ones less
    assert result["trials_img_per_s"] > 0 and result["final_fit_img_per_s"] > 0
    assert result["peak_gpu_memory_gib"] is None
    assert result["packed_4_img_per_s"] > 0 and result["sequential_4_img_per_s"] > 0
    assert result["packed_over_sequential"] == pytest.approx(
        result["packed_4_img_per_s"] / result["sequential_4_img_per_s"])
