"""Transformer levers, chosen on the validation split: one training run per setting on one data set.

    .venv/bin/python benchmarks/sweep.py --dataset online_retail_ii [--levers default freeze_4 ...]

The data set is cleaned and fused once, with the label of benchmarks/quality.py, in that script's
work lake (fused again for a lever that sets `fuse.*`, such as the text encoding, and again after it);
then the train stage runs once per lever (LR and GBT beside it, as in every run). For
every lever the validation ROC-AUC of the transformer's best epoch is recorded; the lever with the
highest one is chosen, and only the chosen lever's test figures are written, so that nothing is
chosen on the test split. Results: benchmarks/results/sweep.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from quality import DATASETS, WORK, model_benchmark_session

from ecominsight.config import load_config
from ecominsight.io import Lake
from ecominsight.models import registry
from ecominsight.stages import run_stage

RESULTS = Path(__file__).resolve().parent / "results" / "sweep.json"

# lever -> the overrides it adds to the data set's own (the list: layers frozen on small
# data, the sequence budget, the learning rate and epochs, the class weight, the numeric features)
LEVERS: dict[str, list[str]] = {
    "default": [],
    "freeze_4": ["train.transformer.freeze_layers=4"],
    "max_length_256": ["train.transformer.max_length=256"],
    "lr_1e-4": ["train.transformer.learning_rate=1.0e-4"],
    "epochs_3": ["train.transformer.epochs=3"],
    "class_weight_2": ["train.transformer.positive_class_weight=2.0"],
    "text_only": ["train.transformer.numeric_features=false"],
    # the text encoding (a fuse setting): one line per day and event kind, repeated items folded
    "text_days": ["fuse.text_encoding=days"],
}
log = logging.getLogger("benchmarks.sweep")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=list(DATASETS))
    parser.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="extra config overrides for every lever (e.g. train.transformer.max_train_users=2000)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the published JSON (validation figures)")
    args = parser.parse_args()
    # Every lever's test figures stay in the work folder, out of the published results, until a lever is chosen.
    sealed = WORK / f"{args.results.stem}-sealed.json"
    results = json.loads(sealed.read_text()) if sealed.is_file() else {}
    with model_benchmark_session("ecominsight-sweep") as spark:
        base = [f"lake={WORK / args.dataset / 'lake'}", *DATASETS[args.dataset], *args.overrides]
        config = load_config("local", base)
        lake = Lake(config.lake_path)
        for stage in ("clean", "fuse"):
            run_stage(stage, spark, config, lake, f"sweep-{args.dataset}")

        entry = results.setdefault(args.dataset, {"levers": {}})
        entry["base_overrides"] = [f"lake={WORK / args.dataset / 'lake'}", *DATASETS[args.dataset]]
        fused_with: list[str] = []  # the fuse settings of the lake's current fused tables
        for lever in args.levers:
            started = time.perf_counter()
            fuse_settings = [override for override in LEVERS[lever] if override.startswith("fuse.")]
            if fuse_settings != fused_with:
                run_stage("fuse", spark, load_config("local", [*base, *fuse_settings]), lake, f"sweep-{args.dataset}-{lever}")
                fused_with = fuse_settings
            summary = run_stage("train", spark, load_config("local", [*base, *LEVERS[lever]]), lake,
                                f"sweep-{args.dataset}-{lever}")["train"].to_dict()
            transformer = summary["transformer"]
            entry["levers"][lever] = {
                "overrides": [*args.overrides, *LEVERS[lever]],  # beyond the data set's own (base_overrides)
                "valid_roc_auc": transformer["valid"]["roc_auc"],
                "valid_roc_auc_ci": transformer["valid"]["roc_auc_ci"],
                "best_epoch": transformer["best_epoch"],
                "valid_by_epoch": [round(h["valid_selection_score"], 4) for h in transformer["history"]],
                "epoch_seconds": [round(h["seconds"], 1) for h in transformer["history"]],
                "n_train": transformer["n_train"],
                "code_version": registry.code_version(),
                "seconds": round(time.perf_counter() - started, 1),
                # the baselines' validation figures of the same run, for scale
                "valid_roc_auc_lr": summary["lr"]["valid"]["roc_auc"],
                "valid_roc_auc_gbt": summary["gbt"]["valid"]["roc_auc"],
                "_test": {model: summary[model]["test"]["roc_auc"] for model in ("lr", "gbt", "transformer")},
            }
            log.info("%s %s: valid ROC-AUC %.4f (epochs %s)", args.dataset, lever, transformer["valid"]["roc_auc"],
                     entry["levers"][lever]["valid_by_epoch"])
            _write(results, published=args.results, sealed=sealed)


def _write(results: dict, *, published: Path, sealed: Path) -> None:
    """Publish the levers' validation figures and, of the test figures, only the chosen lever's."""
    sealed.parent.mkdir(parents=True, exist_ok=True)
    sealed.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    public: dict = {}
    for dataset, entry in results.items():
        levers = {name: {k: v for k, v in lever.items() if k != "_test"} for name, lever in entry["levers"].items()}
        chosen = max(entry["levers"], key=lambda name: entry["levers"][name]["valid_roc_auc"])
        public[dataset] = {**entry, "levers": levers, "chosen": chosen,
                           "chosen_test_roc_auc": entry["levers"][chosen].get("_test")}
    published.parent.mkdir(parents=True, exist_ok=True)
    published.write_text(json.dumps(public, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("wrote %s", published)


if __name__ == "__main__":
    main()
