"""benchmarks/gpu_scoring.py, the prepared GPU check, runs end to end on CPU (fp32) with a few users."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_scoring_script_runs_on_cpu_with_the_offline_minilm(tmp_path):
    out = tmp_path / "gpu_scoring.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_scoring.py"), "--device", "cpu", "--users", "6",
                    "--batch-size", "4", "--out", str(out)], check=True, timeout=300, cwd=REPO)
    result = json.loads(out.read_text())
    assert result["precision"] == "fp32" and result["device"] == "cpu" and result["users"] == 6
    assert result["model"] == "offline MiniLM-L6 with an untrained head"
    assert result["users_per_s"] > 0 and result["gemm_tflops_fp32"] > 0
    # Real sequence lengths: most users fill a good part of the 128-token window.
    assert 16 < result["mean_padded_tokens"] <= 128
    assert 0 < result["flop_fraction"] < 2
    low, high = result["probability_range"]
    assert 0 <= low <= high <= 1
