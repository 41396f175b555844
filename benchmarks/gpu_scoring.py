"""GPU scoring check: bf16 throughput of the classifier on a CUDA GPU and its fraction of the GPU's
sustained bf16 GEMM rate, measured in the same run. One prepared run for a machine with a GPU:

    .venv/bin/python benchmarks/gpu_scoring.py --lake lake            # the lake's latest model, bf16 on cuda
    .venv/bin/python benchmarks/gpu_scoring.py                        # no lake model: the offline MiniLM, fresh head
    .venv/bin/python benchmarks/gpu_scoring.py --device cpu --users 8 # the same path on CPU (fp32), as the tests run it

Users are synthetic: texts of words drawn so that their token lengths spread like real sequences
(a quarter short, the rest up to the model's max_length). They go through `load_scorer`, the scorer
the Spark UDF runs, in length-sorted batches. Results go to benchmarks/results/gpu_scoring.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ecominsight.logs import setup_logging

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from scoring import encoder_flops  # noqa: E402  (the FLOP count the CPU benchmark uses)

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_scoring.json"
log = logging.getLogger("benchmarks.gpu_scoring")
WORDS = ("view cart purchase search favourite remove return basket lantern mug candle holder heart "
         "vintage christmas paper bag red white blue metal sign glass jar set of cake tin doormat").split()


def gemm_tflops(device: str, dtype, *, size: int, repeats: int) -> float:
    """Sustained matrix-multiply rate (TFLOP/s) of `device` in `dtype`: the practical ceiling."""
    import torch

    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    _synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e12


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def fresh_minilm_classifier(directory: Path, n_numeric: int) -> str:
    """The offline MiniLM encoder with a new, untrained head, saved as the train stage saves a model."""
    from transformers import AutoModel, AutoTokenizer

    from ecominsight.models.classifier import NumericScaler, TextAndNumbersClassifier, save_classifier
    from ecominsight.models.transformer import resolve_pretrained

    pretrained = resolve_pretrained("minilm")
    model = TextAndNumbersClassifier(AutoModel.from_pretrained(pretrained), n_numeric)
    names = [f"x{i}" for i in range(n_numeric)]
    save_classifier(model, AutoTokenizer.from_pretrained(pretrained), NumericScaler(names, [0.0] * n_numeric, [1.0] * n_numeric),
                    directory, max_length=128)
    return str(directory)


def synthetic_users(n: int, n_numeric: int, max_length: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Texts whose word counts spread like real sequences (a quarter short, the rest up to max_length)."""
    rng = np.random.default_rng(seed)
    short = rng.integers(8, max(9, max_length // 4), size=n)
    long = rng.integers(max_length // 2, max_length + 1, size=n)
    lengths = np.where(rng.random(n) < 0.25, short, long)
    texts = [" ".join(rng.choice(WORDS, size=int(k))) for k in lengths]
    return texts, rng.gamma(2.0, 5.0, size=(n, n_numeric))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", help="score with this lake's latest transformer model")
    parser.add_argument("--model-dir", help="score with this model directory (overrides --lake)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--users", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    setup_logging()
    import torch

    from ecominsight.models.classifier import load_classifier
    from ecominsight.models.inference import load_scorer

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU is visible: run with --device cpu to check the same path in fp32")
    precision = "bf16" if args.device == "cuda" else "fp32"
    with tempfile.TemporaryDirectory() as scratch:
        if args.model_dir:
            model_dir = args.model_dir
        elif args.lake:
            from ecominsight.io import Lake
            from ecominsight.models.registry import resolve_version

            lake = Lake(Path(args.lake).resolve())
            model_dir = str(lake.model_dir("transformer", resolve_version(lake, "transformer", "latest")))
        else:
            from ecominsight.schema import NUMERIC_FEATURES

            model_dir = fresh_minilm_classifier(Path(scratch) / "minilm", len(NUMERIC_FEATURES))
        model, tokenizer, scaler, max_length = load_classifier(model_dir)
        scorer = load_scorer(model_dir, precision=precision, threads=torch.get_num_threads(), device=args.device)
        texts, numeric = synthetic_users(args.users, len(scaler.names), max_length)
        order = np.argsort([len(t) for t in texts], kind="stable")
        batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
        # Tokenising alone, timed: on a GPU the CPU-side tokenizer can become the limit.
        started = time.perf_counter()
        padded = sum(int(tokenizer([texts[i] for i in b], truncation=True, max_length=max_length, padding=True,
                                   return_tensors="np")["input_ids"].size) for b in batches)
        tokenize_seconds = time.perf_counter() - started
        scorer([texts[i] for i in batches[-1]], numeric[batches[-1]])  # warm-up: kernels, allocator
        _synchronize(args.device)
        started = time.perf_counter()
        probabilities = np.concatenate([scorer([texts[i] for i in b], numeric[b]) for b in batches])
        _synchronize(args.device)
        seconds = time.perf_counter() - started
    gemm_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    on_gpu = args.device == "cuda"
    ceiling = gemm_tflops(args.device, gemm_dtype, size=8192 if on_gpu else 1024, repeats=50 if on_gpu else 10)
    flops = encoder_flops(model.encoder.config, padded / args.users) * args.users
    source = model_dir if (args.model_dir or args.lake) else "offline MiniLM-L6 with an untrained head"
    results = {
        "device": torch.cuda.get_device_name() if on_gpu else "cpu", "precision": precision, "model": source,
        "users": args.users, "batch_size": args.batch_size, "mean_padded_tokens": padded / args.users,
        "seconds": seconds, "tokenize_seconds": tokenize_seconds,
        "users_per_s": args.users / seconds, "model_gflop_per_user": flops / args.users / 1e9,
        "achieved_tflops": flops / seconds / 1e12, f"gemm_tflops_{'bf16' if on_gpu else 'fp32'}": ceiling,
        "flop_fraction": flops / seconds / 1e12 / ceiling,
        "probability_range": [float(probabilities.min()), float(probabilities.max())],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, sort_keys=True))
    log.info("%s", json.dumps(results, indent=2, sort_keys=True))
    return results


if __name__ == "__main__":
    main()
