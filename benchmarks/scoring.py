"""Scoring throughput: a plain PyTorch loop vs ecominsight's predict_batch_udf on local[2] vs Ray Data,
the machine's FP32 GEMM ceiling, what length-bucketing, dynamic int8 and ONNX Runtime buy, and the
whole score stage end to end against the plain loop on the same users.

    ./submit.sh pipeline                                   # a trained model in ./lake first
    .venv/bin/pip install 'ray[data]==2.60.0'              # the peer, for the benchmark only (else skipped)
    .venv/bin/python benchmarks/scoring.py --lake lake --users 2000

Users are the lake's `features/current_sequences` rows, repeated until there are `--users` of them
(real sequence lengths). Accuracy costs are measured on the lake's test split: each compressed
option's ROC-AUC minus fp32's on the same test users, with a paired bootstrap 95% interval, judged by
COMPRESSION_RULE only where the split holds at least MIN_TEST_USERS users (a Ta-Feng lake does;
the bundled sample's 65 do not). The score stage (transformer, full mode) runs on the lake itself and
publishes new score versions there. Results go to benchmarks/results/scoring.json.
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

from ecominsight.logs import setup_logging

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).resolve().parent / "results" / "scoring.json"
log = logging.getLogger("benchmarks.scoring")
# An option is offered only if it is at least this much faster and its ROC-AUC moves at most this much,
# with the paired 95% interval inside +-interval (issue 19), judged on at least MIN_TEST_USERS users.
COMPRESSION_RULE = {"min_speedup": 1.3, "max_abs_auc_delta": 0.005, "max_abs_ci": 0.01}
MIN_TEST_USERS = 4000


def compression_verdict(speedup: float, comparison: dict, n_test: int) -> str:
    """`meets the rule`, `fails the rule: <why>`, or `not judged: <why>` for one compressed option."""
    if n_test < MIN_TEST_USERS:
        return f"not judged: {n_test} test users (the rule needs {MIN_TEST_USERS})"
    delta, (low, high) = comparison["delta"], comparison["ci"]
    failures = [text for failed, text in (
        (speedup < COMPRESSION_RULE["min_speedup"], f"speed-up {speedup:.2f} < {COMPRESSION_RULE['min_speedup']}"),
        (abs(delta) > COMPRESSION_RULE["max_abs_auc_delta"], f"|AUC delta| {abs(delta):.4f} > {COMPRESSION_RULE['max_abs_auc_delta']}"),
        (max(abs(low), abs(high)) > COMPRESSION_RULE["max_abs_ci"],
         f"interval [{low:+.4f}, {high:+.4f}] leaves +-{COMPRESSION_RULE['max_abs_ci']}"),
    ) if failed]
    return "fails the rule: " + "; ".join(failures) if failures else "meets the rule"


def score_stage_seconds(spark, lake_root: str, run_id: str) -> tuple[float, int]:
    """Wall seconds and users of one `ecominsight score` run in this session (read, repartition,
    sort, model load in the Python workers, the UDF pass, explanations, the write and the manifest),
    with the transformer in full mode, as a user runs it."""
    from ecominsight.config import load_config
    from ecominsight.io import Lake
    from ecominsight.stages import run_stage

    config = load_config("local", [f"lake={lake_root}", "score.model=transformer", "score.mode=full"])
    started = time.perf_counter()
    result = run_stage("score", spark, config, Lake(config.lake_path), run_id)["score"]
    return time.perf_counter() - started, result.users_scored


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


def _ordered(frame: pd.DataFrame, *, bucket: bool) -> pd.DataFrame:
    return frame.iloc[np.argsort(frame["text"].str.len().to_numpy(), kind="stable")] if bucket else frame


def _batches(frame: pd.DataFrame, batch_size: int, *, bucket: bool):
    ordered = _ordered(frame, bucket=bucket)
    for start in range(0, len(ordered), batch_size):
        yield ordered.iloc[start:start + batch_size]


def padded_tokens(model_dir: str, frame: pd.DataFrame, *, batch_size: int) -> int:
    """Tokens the model runs over (padding included) for the length-bucketed batches."""
    from ecominsight.models.classifier import load_classifier

    _, tokenizer, _, max_length = load_classifier(model_dir)
    return sum(int(tokenizer(batch["text"].tolist(), truncation=True, max_length=max_length, padding=True,
                             return_tensors="np")["input_ids"].size) for batch in _batches(frame, batch_size, bucket=True))


def plain_loop(model_dir: str, frame: pd.DataFrame, *, batch_size: int, threads: int, bucket: bool = True,
               precision: str = "fp32") -> tuple[float, np.ndarray]:
    """Seconds and probabilities (in frame order), one process, `threads` threads, through the same
    scorer as the Spark UDF (`load_scorer`); the model load is not timed."""
    from ecominsight.models.inference import load_scorer

    scorer = load_scorer(model_dir, precision=precision, threads=threads)
    names = json.loads((Path(model_dir) / "classifier.json").read_text())["numeric"]["names"]
    probabilities = pd.Series(0.0, index=frame.index)
    started = time.perf_counter()
    for batch in _batches(frame, batch_size, bucket=bucket):
        probabilities.loc[batch.index] = scorer(batch["text"].tolist(), batch[names].to_numpy())
    return time.perf_counter() - started, probabilities.to_numpy()


def _plain_worker(args):
    model_dir, frame, batch_size = args
    return plain_loop(model_dir, frame, batch_size=batch_size, threads=1)


def plain_two_processes(model_dir: str, frame: pd.DataFrame, *, batch_size: int) -> float:
    """Wall seconds for two 1-thread processes, each scoring half (model load excluded by timing
    inside the workers: the slower half's loop time)."""
    halves = [frame.iloc[: len(frame) // 2], frame.iloc[len(frame) // 2:]]
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.map(_plain_worker, [(model_dir, half, batch_size) for half in halves])
    return max(seconds for seconds, _ in results)


def spark_scoring(spark, model_dir: str, frame: pd.DataFrame, *, batch_size: int, previous_setting: bool = False,
                  precision: str = "fp32") -> float:
    """Wall seconds for predict_batch_udf on local[2] over the same rows (noop sink; the session,
    the data load and a warm-up pass that loads the model in both Python workers are not timed).

    As the score stage runs it (SCORE_TASKS_PER_CORE tasks per core, Spark's default Arrow batches),
    or with `previous_setting`: the stage's earlier 2 tasks per core and Arrow batches of 4 predict
    batches, kept for the side-by-side comparison that replaced it."""
    from pyspark.sql import functions as F

    from ecominsight.models.scoring import SCORE_TASKS_PER_CORE, transformer_probability

    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    if previous_setting:
        spark.conf.set(key, str(4 * batch_size))
    partitions = (2 if previous_setting else SCORE_TASKS_PER_CORE) * 2
    users = spark.createDataFrame(frame).repartition(partitions, "user_id").sortWithinPartitions(F.length("text"), "user_id").cache()
    users.count()
    # One UDF for the warm-up and the timed pass: predict_batch_udf caches the model per Python
    # worker under the UDF's identity, so both workers hold a loaded model before the clock starts.
    probability = transformer_probability(F.col("text"), model_dir, batch_size=batch_size, precision=precision)
    warm = spark.createDataFrame(frame.head(4 * batch_size)).repartition(2)
    warm.select(probability.alias("p")).write.format("noop").mode("overwrite").save()
    started = time.perf_counter()
    users.select(probability.alias("p")).write.format("noop").mode("overwrite").save()
    seconds = time.perf_counter() - started
    users.unpersist()
    spark.conf.unset(key)
    return seconds


class _RayScorer:
    """Ray Data actor: the same scorer as Spark's UDF, loaded once per actor, one thread."""

    def __init__(self, model_dir: str):
        from ecominsight.models.inference import load_scorer

        started = time.perf_counter()
        self.scorer = load_scorer(model_dir, threads=1)
        self.names = json.loads((Path(model_dir) / "classifier.json").read_text())["numeric"]["names"]
        self.load_s = time.perf_counter() - started

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"row": batch["row"], "p": self.scorer(batch["text"].tolist(), batch[self.names].to_numpy()),
                             "load_s": self.load_s})


def ray_scoring(model_dir: str, frame: pd.DataFrame, *, batch_size: int) -> dict | None:
    """Ray Data `map_batches` with two 1-CPU actors over the same length-sorted rows, one block per
    batch. Returns wall seconds with and without the actors' model load, or None without Ray."""
    try:
        import ray
    except ImportError:
        log.warning("Ray is not installed: skipping the Ray Data peer (pip install 'ray[data]==2.60.0' for the benchmark only)")
        return None
    ordered = _ordered(frame, bucket=True).reset_index(names="row")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=300 * 1024**2,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}})
    try:
        blocks = [ordered.iloc[start:start + batch_size] for start in range(0, len(ordered), batch_size)]
        dataset = ray.data.from_pandas(blocks).map_batches(
            _RayScorer, fn_constructor_args=(model_dir,), batch_size=batch_size, batch_format="pandas",
            concurrency=2, num_cpus=1)
        started = time.perf_counter()
        result = dataset.to_pandas()
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    probabilities = result.set_index("row")["p"].reindex(frame.index).to_numpy()
    return {"seconds": seconds, "seconds_without_model_load": seconds - float(result["load_s"].max()),
            "probabilities": probabilities}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", default="lake")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results go (a trial run: elsewhere)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of every timed pass, interleaved; each figure is its fastest round")
    parser.add_argument("--stage-repeats", type=int, default=1,
                        help="of those rounds, how many also time the whole score stage and the plain loop on the "
                             "lake's every current user (minutes each on a real set)")
    args = parser.parse_args()
    setup_logging()
    from ecominsight.catalog import CURRENT_SEQUENCES, USER_SEQUENCES
    from ecominsight.io import Lake
    from ecominsight.models.champion import paired_bootstrap_difference
    from ecominsight.models.classifier import load_classifier
    from ecominsight.models.registry import resolve_version

    lake = Lake(Path(args.lake).resolve())
    model_dir = str(lake.model_dir("transformer", resolve_version(lake, "transformer", "latest")))
    current = lake.read_arrow(CURRENT_SEQUENCES).to_pandas()
    frame = pd.concat([current] * (args.users // len(current) + 1), ignore_index=True).iloc[: args.users]
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    test = lake.read_arrow(USER_SEQUENCES).to_pandas().query("split == 'test'").reset_index(drop=True)

    from ecominsight.models.inference import export_onnx
    from ecominsight.session import spark_session

    model, _, _, _ = load_classifier(model_dir)
    export_onnx(model_dir)  # once per model version, as the score stage does on the driver
    with spark_session("ecominsight-scoring-bench", "local[2]", {"spark.ui.showConsoleProgress": "false"}) as session:
        # Every timed pass runs once per round, the rounds interleaved, and each figure is its fastest
        # round: on a shared machine the minimum is the run least disturbed by others.
        passes = {
            "gemm": lambda: gemm_gflops(threads=2),
            "plain": lambda: plain_loop(model_dir, frame, batch_size=args.batch_size, threads=2),
            "plain_two_processes": lambda: plain_two_processes(model_dir, frame, batch_size=args.batch_size),
            "spark": lambda: spark_scoring(session, model_dir, frame, batch_size=args.batch_size),
            "spark_previous": lambda: spark_scoring(session, model_dir, frame, batch_size=args.batch_size,
                                                    previous_setting=True),
            "spark_onnx": lambda: spark_scoring(session, model_dir, frame, batch_size=args.batch_size, precision="onnx"),
            "unbucketed": lambda: plain_loop(model_dir, frame, batch_size=args.batch_size, threads=2, bucket=False),
            "int8": lambda: plain_loop(model_dir, frame, batch_size=args.batch_size, threads=2, precision="int8"),
            "onnx": lambda: plain_loop(model_dir, frame, batch_size=args.batch_size, threads=2, precision="onnx"),
            # The same users as the stage scores (the lake's current users, not repeated): the model
            # load is the stage's, not the loop's, so the difference is the stage's whole overhead.
            "plain_current_users": lambda: plain_loop(model_dir, current, batch_size=args.batch_size, threads=2),
            "score_stage": lambda: score_stage_seconds(session, str(lake.root), f"bench-score-{len(rounds['score_stage'])}"),
        }
        whole_lake = ("plain_current_users", "score_stage")
        rounds: dict[str, list] = {name: [] for name in passes}
        for round_number in range(args.repeats):
            for name, run in passes.items():
                if name not in whole_lake or round_number < args.stage_repeats:
                    rounds[name].append(run())
            log.info("round %d of %d done", round_number + 1, args.repeats)

    def fastest(name: str):
        """The fastest round's result (seconds, or (seconds, probabilities) for plain loops)."""
        return min(rounds[name], key=lambda r: r[0] if isinstance(r, tuple) else r)

    ceiling = max(rounds["gemm"])
    one_process, reference = fastest("plain")
    two_processes = fastest("plain_two_processes")
    plain = min(one_process, two_processes)
    spark, spark_previous, spark_onnx = fastest("spark"), fastest("spark_previous"), fastest("spark_onnx")
    ray = ray_scoring(model_dir, frame, batch_size=args.batch_size)
    unbucketed, unbucketed_p = fastest("unbucketed")
    _, test_fp32 = plain_loop(model_dir, test, batch_size=args.batch_size, threads=2)
    options = {"length_bucketing": {"speedup": unbucketed / one_process, "auc_delta": 0.0, "n_test": len(test),
                                    "max_prob_delta": float(np.abs(unbucketed_p - reference).max())}}
    for name, precision in (("int8_dynamic", "int8"), ("onnx", "onnx")):
        seconds, probabilities = fastest(precision)
        _, test_p = plain_loop(model_dir, test, batch_size=args.batch_size, threads=2, precision=precision)
        comparison = paired_bootstrap_difference(test["label"], test_p, test_fp32)
        options[name] = {"speedup": one_process / seconds, "n_test": len(test),
                         "auc_delta": comparison["delta"], "auc_delta_ci": comparison["ci"],
                         "max_prob_delta": float(np.abs(probabilities - reference).max()),
                         "max_test_prob_delta": float(np.abs(test_p - test_fp32).max()),
                         "verdict": compression_verdict(one_process / seconds, comparison, len(test))}
    options["onnx"]["spark_speedup"] = spark / spark_onnx
    # bf16 needs a GPU here (ScoreConfig.precision): benchmarks/gpu.py measures it there.
    options["bf16"] = {"verdict": "not judged: GPU only (benchmarks/gpu.py)"}
    stage_seconds, stage_users = min(rounds["score_stage"])
    plain_current, _ = fastest("plain_current_users")
    # FLOPs of the padded batches actually run (bucketed), averaged per sequence.
    padded = padded_tokens(model_dir, frame, batch_size=args.batch_size)
    flops = encoder_flops(model.encoder.config, padded / len(frame)) * len(frame)
    results = {
        "users": len(frame), "batch_size": args.batch_size, "model_dir": model_dir, "test_users": len(test),
        "plain_one_process_2_threads_s": one_process, "plain_two_processes_1_thread_s": two_processes,
        "plain_users_per_s": len(frame) / plain, "spark_users_per_s": len(frame) / spark,
        "spark_users_per_s_per_core": len(frame) / spark / 2, "spark_overhead_ratio": spark / plain,
        "spark_previous_setting_overhead_ratio": spark_previous / plain, "spark_onnx_users_per_s": len(frame) / spark_onnx,
        # The whole stage on the lake's current users against the plain loop (2 threads) on the same users.
        "score_stage_users": stage_users, "score_stage_s": stage_seconds,
        "score_stage_users_per_s": stage_users / stage_seconds, "plain_current_users_s": plain_current,
        "score_stage_overhead_ratio": stage_seconds / plain_current,
        "compression_rule": {**COMPRESSION_RULE, "min_test_users": MIN_TEST_USERS},
        "repeats": args.repeats, "stage_repeats": args.stage_repeats, "round_seconds": {name: [r[0] if isinstance(r, tuple) else r for r in results]
                                                   for name, results in rounds.items()},
        "gemm_gflops_2_threads": ceiling, "model_gflop_per_user": flops / len(frame) / 1e9,
        "flop_fraction": flops / plain / 1e9 / ceiling,
        "options": options,
        "ray_users_per_s": len(frame) / ray["seconds"] if ray else None,
        "ray_users_per_s_without_model_load": len(frame) / ray["seconds_without_model_load"] if ray else None,
        "ray_max_prob_delta": float(np.abs(ray["probabilities"] - reference).max()) if ray else None,
        "load_average_1m_at_end": os.getloadavg()[0],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True))
    log.info("%s", json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
