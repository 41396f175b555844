"""benchmarks/gpu.py, the prepared GPU check, end to end on CPU: `prepare` from a real run's lake, then
`run` with two gloo ranks (the path nccl takes on a GPU) and fp32 scoring, from the prepared folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = str(REPO / "benchmarks" / "gpu.py")


def test_the_gpu_check_trains_an_epoch_and_scores_from_a_prepared_folder(pipeline_run, tiny_encoder, tmp_path):
    _, _, lake, _ = pipeline_run
    prepared, out = tmp_path / "prepared", tmp_path / "gpu.json"
    subprocess.run([sys.executable, SCRIPT, "prepare", "--lake", lake.root.path, "--out", str(prepared),
                    "--encoder", tiny_encoder, "--no-wheels"], check=True, timeout=300, cwd=REPO)
    described = json.loads((prepared / "PREPARED.json").read_text())
    assert described["train_users"] > 0 and described["bytes"] < 60 << 20
    # Shapes travel, weights do not: the GPU machine starts from a seeded random initialisation.
    assert (prepared / "encoder" / "config.json").is_file()
    assert not [p.name for p in (prepared / "encoder").iterdir() if p.suffix == ".safetensors"]

    subprocess.run([sys.executable, SCRIPT, "run", "--prepared", str(prepared), "--out", str(out), "--device", "cpu",
                    "--processes", "2", "--train-batch-size", "16", "--users", "40", "--batch-size", "8"],
                   check=True, timeout=600, cwd=REPO)
    result = json.loads(out.read_text())
    training, scoring = result["training"], result["scoring"]
    assert result["device"] == "cpu" and result["gemm_tflops_fp32"] > 0
    assert training["backend"] == "gloo" and training["world_size"] == 2
    assert training["train_users"] == described["train_users"] and training["epoch_seconds"] > 0
    assert 0 < training["flop_fraction"] < 2
    assert scoring["precision"] == "fp32" and scoring["users"] == 40
    assert 0 < scoring["flop_fraction"] < 2 and 0 < scoring["mean_padded_tokens"] <= 128
    low, high = scoring["probability_range"]
    assert 0 <= low <= high <= 1
