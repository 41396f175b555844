"""Scoring throughput: a plain PyTorch loop vs ecominsight's predict_batch_udf on local[2], the
machine's FP32 GEMM ceiling, and what length-bucketing and dynamic int8 quantisation buy.

    ./submit.sh pipeline                                   # a trained model in ./lake first
    .venv/bin/python benchmarks/scoring.py --lake lake --users 2000

Users are the lake's `features/current_sequences` rows, repeated until there are `--users` of them
(real sequence lengths). Accuracy costs are measured on the lake's test split. Results go to
benchmarks/results/scoring.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).resolve().parent / "results" / "scoring.json"
log = logging.getLogger("benchmarks.scoring")


def gemm_gflops(threads: int, size: int = 1024, repeats: int = 20) -> float:
    """Sustained FP32 matrix-multiply rate with `threads` threads (the machine's practical ceiling)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def encoder_flops(config, tokens: int) -> float:
    """Forward FLOPs of a BERT encoder on one sequence of `tokens` tokens (matmuls only)."""
    hidden, layers, inner = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    per_layer = 2 * tokens * (4 * hidden * hidden + 2 * hidden * inner) + 2 * 2 * tokens * tokens * hidden
    return float(layers * per_layer)


def _batches(frame: pd.DataFrame, batch_size: int, *, bucket: bool):
    ordered = frame.iloc[np.argsort(frame["text"].str.len().to_numpy(), kind="stable")] if bucket else frame
    for start in range(0, len(ordered), batch_size):
        yield ordered.iloc[start:start + batch_size]


def plain_loop(model_dir: str, frame: pd.DataFrame, *, batch_size: int, threads: int, bucket: bool = True,
               quantize: bool = False) -> tuple[float, np.ndarray, int]:
    """Seconds, probabilities (in frame order) and padded tokens, one process, `threads` threads."""
    import torch

    from ecominsight.models.classifier import load_classifier

    torch.set_num_threads(threads)
    model, tokenizer, scaler, max_length = load_classifier(model_dir)
    if quantize:
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    names = scaler.names
    probabilities = pd.Series(0.0, index=frame.index)
    padded = 0
    started = time.perf_counter()
    for batch in _batches(frame, batch_size, bucket=bucket):
        encoded = tokenizer(batch["text"].tolist(), truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt")
        padded += int(encoded["input_ids"].numel())
        numeric = torch.as_tensor(scaler.transform(batch[names].to_numpy()))
        with torch.inference_mode():
            logits = model(**encoded, numeric=numeric)
        probabilities.loc[batch.index] = torch.softmax(logits, -1)[:, 1].double().numpy()
    return time.perf_counter() - started, probabilities.to_numpy(), padded


def _plain_worker(args):
    model_dir, frame, batch_size = args
    return plain_loop(model_dir, frame, batch_size=batch_size, threads=1)


def plain_two_processes(model_dir: str, frame: pd.DataFrame, *, batch_size: int) -> float:
    """Wall seconds for two 1-thread processes, each scoring half (model load excluded by timing
    inside the workers: the slower half's loop time)."""
    halves = [frame.iloc[: len(frame) // 2], frame.iloc[len(frame) // 2:]]
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.map(_plain_worker, [(model_dir, half, batch_size) for half in halves])
    return max(seconds for seconds, _, _ in results)


def spark_scoring(model_dir: str, frame: pd.DataFrame, *, batch_size: int) -> float:
    """Wall seconds for predict_batch_udf on local[2] over the same rows (noop sink; the session,
    the data load and one warm-up pass that loads the model in each worker are not timed)."""
    from pyspark.sql import functions as F

    from ecominsight.models.scoring import transformer_probability
    from ecominsight.session import get_spark

    spark, created = get_spark("ecominsight-scoring-bench", "local[2]", {"spark.ui.showConsoleProgress": "false"})
    users = spark.createDataFrame(frame).repartition(2).sortWithinPartitions(F.length("text")).cache()
    users.count()
    scored = users.select(transformer_probability(F.col("text"), model_dir, batch_size=batch_size).alias("p"))
    scored.limit(batch_size * 2).collect()
    started = time.perf_counter()
    scored.write.format("noop").mode("overwrite").save()
    seconds = time.perf_counter() - started
    if created:
        spark.stop()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", default="lake")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from sklearn.metrics import roc_auc_score

    from ecominsight.io import Lake
    from ecominsight.models.classifier import load_classifier
    from ecominsight.models.registry import resolve_version

    lake = Lake(Path(args.lake).resolve())
    model_dir = str(lake.model_dir("transformer", resolve_version(lake, "transformer", "latest")))
    current = pd.read_parquet(lake.table_path("features", "current_sequences"))
    frame = pd.concat([current] * (args.users // len(current) + 1), ignore_index=True).iloc[: args.users]
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    test = pd.read_parquet(lake.table_path("features", "user_sequences")).query("split == 'test'").reset_index(drop=True)

    model, tokenizer, _, _ = load_classifier(model_dir)
    ceiling = gemm_gflops(threads=2)
    one_process, reference, padded = plain_loop(model_dir, frame, batch_size=args.batch_size, threads=2)
    two_processes = plain_two_processes(model_dir, frame, batch_size=args.batch_size)
    plain = min(one_process, two_processes)
    spark = spark_scoring(model_dir, frame, batch_size=args.batch_size)
    unbucketed, unbucketed_p, _ = plain_loop(model_dir, frame, batch_size=args.batch_size, threads=2, bucket=False)
    quantized, quantized_p, _ = plain_loop(model_dir, frame, batch_size=args.batch_size, threads=2, quantize=True)
    _, test_fp32, _ = plain_loop(model_dir, test, batch_size=args.batch_size, threads=2)
    _, test_int8, _ = plain_loop(model_dir, test, batch_size=args.batch_size, threads=2, quantize=True)
    # FLOPs of the padded batches actually run (bucketed), averaged per sequence.
    flops = encoder_flops(model.encoder.config, padded / len(frame)) * len(frame)
    results = {
        "users": len(frame), "batch_size": args.batch_size, "model_dir": model_dir,
        "plain_one_process_2_threads_s": one_process, "plain_two_processes_1_thread_s": two_processes,
        "plain_users_per_s": len(frame) / plain, "spark_users_per_s": len(frame) / spark,
        "spark_users_per_s_per_core": len(frame) / spark / 2, "spark_overhead_ratio": spark / plain,
        "gemm_gflops_2_threads": ceiling, "model_gflop_per_user": flops / len(frame) / 1e9,
        "flop_fraction": flops / plain / 1e9 / ceiling,
        "options": {
            "length_bucketing": {"speedup": unbucketed / one_process, "auc_delta": 0.0,
                                 "max_prob_delta": float(np.abs(unbucketed_p - reference).max())},
            "int8_dynamic": {"speedup": one_process / quantized,
                             "auc_delta": float(roc_auc_score(test["label"], test_int8) - roc_auc_score(test["label"], test_fp32)),
                             "max_prob_delta": float(np.abs(quantized_p - reference).max())},
        },
        "ray_users_per_s": None,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True))
    log.info("%s", json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
