"""Command line: `python -m ecominsight <stage> [--env local] [--set key=value ...]`.

The same `main` backs jobs/<stage>.py, the spark-submit entry points.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import secrets
import sys

from ecominsight import redaction
from ecominsight.config import config_to_dict, load_config
from ecominsight.errors import EcominsightError
from ecominsight.io import Lake
from ecominsight.presets import load_preset
from ecominsight.stages import STAGES, StageResult, run_stage

log = logging.getLogger("ecominsight")


def _parser(stage: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"ecominsight-{stage}" if stage else "ecominsight",
                                     description="ecominsight batch jobs")
    if stage is None:
        parser.add_argument("stage", choices=STAGES, help="the stage to run; 'pipeline' runs all in order")
    parser.add_argument("--env", default=os.environ.get("ECOMINSIGHT_ENV", "local"),
                        help="config overlay conf/<env>.yaml (local, cluster, databricks)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set fuse.horizon=30d (repeatable)")
    parser.add_argument("--conf-dir", default=None, help="config directory (default: the project's conf/)")
    return parser


def main(stage: str | None = None, argv: list[str] | None = None) -> int:
    """Parse arguments, validate config before any Spark work, run the stage, print where outputs are.
    `ecominsight generate ...` is the synthetic data generator (ecominsight.generator), not a stage."""
    argv = sys.argv[1:] if argv is None else argv
    if stage is None and argv[:1] == ["generate"]:
        from ecominsight.generator import main as generate_main

        return generate_main(argv[1:])
    args = _parser(stage).parse_args(argv)
    stage = stage or args.stage
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ecominsight.models.transformer import resolve_pretrained

    try:
        config = load_config(args.env, args.overrides, args.conf_dir)
        # Cheap checks of what later stages need, so that a typo fails before any Spark work.
        if stage in ("clean", "pipeline"):
            load_preset(config.source.preset)
        if stage in ("train", "pipeline"):
            resolve_pretrained(config.train.transformer.pretrained)
    except EcominsightError as err:
        log.error("configuration error: %s", err)
        return 2
    run_id = config.run_id or f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"
    resolved = config_to_dict(config)
    redaction.install(redaction.secret_values() | redaction.secret_config_values(resolved))
    log.info("run %s, stage %s, resolved config:\n%s", run_id, stage, json.dumps(redaction.redact_mapping(resolved), indent=2))

    from ecominsight.session import get_spark

    lake = Lake(config.lake_path)
    try:
        # Locked before Spark starts, so that a second run on the same lake is refused at once.
        with lake.lock(f"ecominsight {stage} (run {run_id})"):
            spark, created = get_spark(config.spark.app_name, config.spark.master, config.spark.conf,
                                       embedded_metastore=config.warehouse.embedded_metastore)
            try:
                summary = run_stage(stage, spark, config, lake, run_id)
            finally:
                if created:
                    spark.stop()
    except EcominsightError as err:
        log.error("%s failed: %s", stage, err)
        return 2
    except OSError as err:  # the lake path is not writable, the disk is full, ...
        log.error("%s failed: cannot use %s under the lake %s: %s", stage, err.filename or "a path", lake.root,
                  err.strerror or err)
        return 2
    _print_outputs(lake, run_id, summary)
    return 0


def _print_outputs(lake: Lake, run_id: str, results: dict[str, StageResult]) -> None:
    lines = [f"ecominsight run {run_id} finished", f"  lake:    {lake.root}", f"  reports: {lake.report_dir(run_id)}"]
    for result in results.values():
        lines += result.describe(lake)
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
