"""Model quality on every data set with a user-level label: LR, GBT, the fine-tuned transformer, the hybrid and the champion.

    .venv/bin/python benchmarks/quality.py [--datasets planted_order planted_control online_retail_ii ...]

Each data set runs through the real stages (clean -> fuse -> train) in its own lake under
benchmarks/.work/, with the point-in-time label described below; the test-split metrics of every
model land in benchmarks/results/quality.json; a data set with fewer than MIN_TEST_POSITIVES positive
test users stops after fuse and is recorded as `{"_meta": {"skipped": <why, with the counts>}}`.
Nothing here is tuned on the test split: the transformer keeps the epoch with the best validation
ROC-AUC, thresholds come from validation, the hybrid's stacker is fitted on validation and the
champion is the model with the best validation ROC-AUC. Per data set the results also name the
`champion` and give `champion_vs_best_baseline`: the champion's test ROC-AUC minus that of the better
of LR and GBT on test, with a paired bootstrap 95% interval over test users (computed by the train
stage once the champion is chosen).

Cost, per model (`train_cpu_s`, `train_wall_s`, `score_users_per_s`): a CPU meter (cpu_meter.py) samples
this process tree during train (the JVM, its Python workers, the TorchDistributor ranks) and each
model's fit window (recorded by the train stage; the fits run one after another here,
`train.concurrent_baselines=false`) gives its CPU-seconds; then the score stage runs once
per model on every current user (full mode, no explanations) and its users per wall second are the
scoring cost, read, write and model load included. `--render-costs` prints that table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import ContextManager

from pyspark.sql import SparkSession

from ecominsight import synthetic
from ecominsight.config import load_config
from ecominsight.io import Lake
from ecominsight.logs import setup_logging
from ecominsight.session import spark_session
from ecominsight.stages import run_stage

from cpu_meter import CpuMeter  # benchmarks/ is the script's own folder, first on sys.path

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
RESULTS = HERE / "results" / "quality.json"
MODELS = ("lr", "gbt", "transformer", "hybrid")
REPORTED = ("roc_auc", "roc_auc_ci", "avg_precision", "avg_precision_ci", "f1", "accuracy", "positive_rate",
            "majority_class_accuracy", "brier")

# data set -> config overrides (the label each one asks, features strictly before the cutoff)
DATASETS: dict[str, list[str]] = {
    # buys in 2011-09-10..2011-12-09 given the history before; customers with a purchase before
    "online_retail_ii": ["source.preset=online_retail_ii", "fuse.cutoff=2011-09-10", "fuse.horizon=91d",
                         "fuse.population=purchasers"],
    # buys in February 2001 given November-January; the transformer on the whole train split for one
    # epoch (25 min on 2 quiet cores; two epochs did not fit the CPU time budget, see BENCHMARKS.md)
    "tafeng": ["source.preset=tafeng_grocery", "fuse.cutoff=2001-02-01", "fuse.horizon=28d",
               "fuse.population=purchasers", "train.transformer.epochs=1"],
    # The CDNOW transformer trains on a seeded, label-stratified sample of the train split (CPU time:
    # about 0.2 s per training user per epoch on 2 loaded cores, see BENCHMARKS.md); LR/GBT use it all.
    # any purchase in weeks 40-78 (1997-10-01..1998-06-30) given weeks 1-39
    "cdnow": ["source.preset=cdnow", "fuse.cutoff=1997-10-01", "fuse.horizon=273d", "fuse.population=purchasers",
              "train.transformer.max_train_users=3000"],
    # buys on Dec 2-3 given the history to Dec 1 (UTC days: the Beijing-time days shifted by 8 h)
    "taobao": ["source.preset=taobao_userbehavior", "fuse.cutoff=2017-12-02", "fuse.horizon=2d",
               "fuse.population=any_event"],
    # The two samples that span hours, with an exact sub-day cutoff and a one-hour label window; the
    # population is the users active before the cutoff ("active": their users tables are derived from
    # every event, so "any_event" would also admit users first seen inside the label window).
    # Cutoffs chosen from counts of users and positives before any model ran (BENCHMARKS.md).
    # REES46: buys in 02:32-02:50 UTC (the rest of the sample) given 00:00-02:32.
    "rees46": ["source.preset=rees46_multicategory", "fuse.cutoff=2019-10-01T02:32:00", "fuse.horizon=1h",
               "fuse.population=active"],
    # JData: orders in 2016-03-01 00:02-00:31 Beijing time (the rest of the March head) given the
    # February head and the March head's first three minutes.
    "jdata": ["source.preset=jdata2017", "fuse.cutoff=2016-03-01T00:02:00+08:00", "fuse.horizon=1h",
              "fuse.population=active"],
    # The bundled 500-customer sample with the pipeline's defaults (README command 1): the label the
    # default run trains on (buys in the 90 days from 2011-09-10, customers with a purchase before).
    "online_retail_ii_sample": ["source.preset=online_retail_ii_sample"],
    "planted_order": ["fuse.label_mode=given", "fuse.population=any_event"],
    "planted_control": ["fuse.label_mode=given", "fuse.population=any_event"],
}
# Fewer test positives than this and no model is trained: the data set is recorded as skipped.
MIN_TEST_POSITIVES = 5
PLANTED = {"planted_order": synthetic.planted_order_events, "planted_control": synthetic.planted_control_events}


def prepare_planted(name: str, *, users: int, seed: int) -> str:
    """Write the synthetic raw CSV and its preset; return the preset path."""
    directory = WORK / "raw" / name
    directory.mkdir(parents=True, exist_ok=True)
    PLANTED[name](users=users, seed=seed).to_csv(directory / "events.csv", index=False)
    preset = directory / "preset.yaml"
    preset.write_text(synthetic.PRESET_YAML.format(name=name, path=directory / "events.csv"))
    return str(preset)


def markdown_table(results: dict) -> str:
    """The results as the table BENCHMARKS.md shows: ROC-AUC [95% CI], AP, F1, positive rate, n."""
    lines = ["| data set | n test | positive rate | model | ROC-AUC [95% CI] | avg precision | F1 | accuracy |",
             "|---|---|---|---|---|---|---|---|"]
    for name, models in results.items():
        if "skipped" in models["_meta"]:
            lines.append(f"| {name} | | | skipped | {models['_meta']['skipped']} | | | |")
            continue
        for model in (m for m in MODELS if m in models):
            m = models[model]
            ci = m["roc_auc_ci"] or [float("nan")] * 2
            label = f"**{model}** (champion)" if model == models.get("champion") else model
            lines.append(f"| {name} | {m['n_test']} | {m['positive_rate']:.3f} | {label} | {m['roc_auc']:.3f} "
                         f"[{ci[0]:.3f}, {ci[1]:.3f}] | {m['avg_precision']:.3f} | {m['f1']:.3f} | {m['accuracy']:.3f} |")
        versus = models.get("champion_vs_best_baseline")
        if versus and versus.get("delta") is not None:
            lines.append(f"| {name} | | | champion − {versus['baseline']} | {versus['delta']:+.3f} "
                         f"[{versus['ci'][0]:+.3f}, {versus['ci'][1]:+.3f}] | | | |")
    return "\n".join(lines)


def cost_table(results: dict) -> str:
    """Per data set and model: training CPU-seconds and wall seconds, scoring users/s, test ROC-AUC.
    The hybrid's training cost is its components' plus its own stacker's (shown in brackets): it
    cannot exist without them; its scoring runs every component."""
    lines = ["| data set | model | training CPU-s | training wall s | scoring users/s (whole stage) | test ROC-AUC |",
             "|---|---|---|---|---|---|"]
    for name, models in results.items():
        costed = [m for m in MODELS if m in models and "train_cpu_s" in models[m]]
        for model in costed:
            m = models[model]
            cpu, wall = f"{m['train_cpu_s']:.0f}", f"{m['train_wall_s']:.0f}"
            if model == "hybrid":
                parts = [models[c] for c in costed if c != "hybrid"]
                cpu = f"{m['train_cpu_s'] + sum(p['train_cpu_s'] for p in parts):.0f} (stacker {cpu})"
                wall = f"{m['train_wall_s'] + sum(p['train_wall_s'] for p in parts):.0f} (stacker {wall})"
            lines.append(f"| {name} | {model} | {cpu} | {wall} | {m['score_users_per_s']:.1f} | {m['roc_auc']:.3f} |")
    return "\n".join(lines)


def scoring_cost(spark: SparkSession, overrides: list[str], model: str, run_id: str) -> float:
    """Users per wall second of one score-stage run with `model` on every current user (full mode, no
    explanations): read, repartition, model load, the pass and the write."""
    config = load_config("local", [*overrides, f"score.model={model}", "score.mode=full", "insights.explain.max_users=0"])
    started = time.perf_counter()
    result = run_stage("score", spark, config, Lake(config.lake_path), run_id)["score"]
    return result.users_scored / (time.perf_counter() - started)


def model_benchmark_session(app_name: str) -> ContextManager[SparkSession]:
    """Logging, the offline hub and the local[2] session that every model benchmark runs in, for a
    `with` block."""
    setup_logging()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return spark_session(app_name, "local[2]", {"spark.ui.showConsoleProgress": "false", "spark.driver.memory": "6g"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--planted-users", type=int, default=800)
    parser.add_argument("--render-only", action="store_true", help="print the markdown table of the saved results")
    parser.add_argument("--render-costs", action="store_true", help="print the cost table of the saved results")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the results file (a trial run: elsewhere)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="extra config overrides for every data set (e.g. train.transformer.epochs=3)")
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.render_only or args.render_costs:
        print(cost_table(results) if args.render_costs else markdown_table(results))
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with model_benchmark_session("ecominsight-quality") as spark:
        for name in args.datasets:
            # One fit at a time: each fit window's CPU-seconds must be that model's alone.
            overrides = [f"lake={WORK / name / 'lake'}", *DATASETS[name], "train.concurrent_baselines=false", *args.overrides]
            if name in PLANTED:
                overrides.append(f"source.preset={prepare_planted(name, users=args.planted_users, seed=11)}")
            config = load_config("local", overrides)
            started = time.perf_counter()
            summary = {}
            for stage in ("clean", "fuse"):
                summary.update({ran: result.to_dict() for ran, result in
                                run_stage(stage, spark, config, Lake(config.lake_path), f"quality-{name}").items()})
            by_split = summary["fuse"]["training_users_by_split"]
            test = by_split.get("test", {"users": 0, "positives": 0})
            if (test["positives"] or 0) < MIN_TEST_POSITIVES:
                results[name] = {"_meta": {"skipped": f"{test['positives'] or 0} positives among {test['users']} test users "
                                                      f"(fewer than {MIN_TEST_POSITIVES}); users/positives by split: {by_split}",
                                           "overrides": overrides, "training_users_by_split": by_split}}
                args.out.write_text(json.dumps(results, indent=2, sort_keys=True))
                logging.info("%s: skipped, %s", name, results[name]["_meta"]["skipped"])
                continue
            with CpuMeter() as meter:
                summary["train"] = run_stage("train", spark, config, Lake(config.lake_path), f"quality-{name}")["train"].to_dict()
            trained = [model for model in MODELS if model in summary["train"]]
            results[name] = {model: {**{key: summary["train"][model]["test"].get(key) for key in REPORTED},
                                     "valid_roc_auc": summary["train"][model]["valid"]["roc_auc"],
                                     "n_test": summary["train"][model]["test"]["n"]} for model in trained}
            for model in trained:
                cost = summary["train"][model]["cost"]
                results[name][model].update(
                    train_wall_s=cost["fit_seconds"],
                    train_cpu_s=meter.cpu_seconds_between(cost["fit_started_at"], cost["fit_started_at"] + cost["fit_seconds"]),
                    score_users_per_s=scoring_cost(spark, overrides, model, f"quality-{name}-score-{model}"))
            champion = summary["train"]["champion"]
            results[name]["champion"] = champion["model"]
            results[name]["champion_vs_best_baseline"] = champion["champion_vs_best_baseline"]
            results[name]["_meta"] = {"seconds": round(time.perf_counter() - started, 1), "overrides": overrides,
                                      "load_average_1m_at_end": os.getloadavg()[0],
                                      "transformer_best_epoch": summary["train"]["transformer"]["best_epoch"],
                                      # LR and GBT always fit the whole train split; the transformer may be capped
                                      "transformer_n_train": summary["train"]["transformer"]["n_train"],
                                      "transformer_n_train_available": summary["train"]["transformer"]["n_train_available"],
                                      "transformer_epoch_seconds": [round(h["seconds"], 1) for h in
                                                                    summary["train"]["transformer"]["history"]],
                                      "training_users_by_split": summary["fuse"]["training_users_by_split"],
                                      "champion_reason": champion["reason"],
                                      "hybrid_stacker": summary["train"].get("hybrid", {}).get("stacker")}
            args.out.write_text(json.dumps(results, indent=2, sort_keys=True))
            logging.info("%s: %s; champion %s, vs best baseline %s", name, {m: results[name][m]["roc_auc"] for m in trained},
                         champion["model"], champion["champion_vs_best_baseline"])
    print(markdown_table(results))


if __name__ == "__main__":
    main()
