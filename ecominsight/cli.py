"""Command line: `python -m ecominsight <stage> [--env local] [--set key=value ...]`, and
`python -m ecominsight generate ...`, the synthetic data generator (beside the stages, not one of them).

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

from ecominsight import generator, redaction
from ecominsight.config import config_to_dict, load_config
from ecominsight.errors import EcominsightError
from ecominsight.io import Lake
from ecominsight.logs import setup_logging
from ecominsight.presets import load_preset
from ecominsight.session import conf_for_lake, remote_url, spark_session
from ecominsight.stages import STAGES, StageResult, run_stage

log = logging.getLogger("ecominsight")

GENERATE = "generate"
# A profile fitted with `generate --fit-from` cleans its preset as a small local run does.
FIT_MASTER = "local[2]"


def _add_stage_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--env", default=os.environ.get("ECOMINSIGHT_ENV", "local"),
                        help="config overlay conf/<env>.yaml (local, cluster, databricks)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set fuse.horizon=30d (repeatable)")
    parser.add_argument("--conf-dir", default=None, help="config directory (default: the project's conf/)")
    parser.add_argument("--remote", default=None, metavar="sc://HOST:PORT",
                        help="run through this Spark Connect server (default: $SPARK_REMOTE where set); "
                             "the server then owns the master and the static Spark settings")
    return parser


def _add_generate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, required=True, help="event rows to write (planted bad rows included)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=generator.FORMATS, default="parquet")
    parser.add_argument("--out", required=True, help="output folder (replaced)")
    parser.add_argument("--bad-fraction", type=float, default=0.001,
                        help="share of planted bad rows: duplicates, missing user ids, unparseable times")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--profile", help="a profile JSON (default: the shipped one)")
    source.add_argument("--fit-from", metavar="PRESET", help="fit the profile from this source preset's clean tables")
    parser.add_argument("--save-profile", help="also write the profile used to this JSON file")


def _parser(stage: str | None) -> argparse.ArgumentParser:
    """One stage's options (`stage` given: jobs/<stage>.py, the console entry points), or the whole
    command line: a subcommand per stage, and `generate`."""
    if stage is not None:
        return _add_stage_options(argparse.ArgumentParser(prog=f"ecominsight-{stage}", description="ecominsight batch jobs"))
    parser = argparse.ArgumentParser(prog="ecominsight", description="ecominsight batch jobs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name in STAGES:
        summary = "run every stage in order (register excepted)" if name == "pipeline" else f"run the {name} stage"
        _add_stage_options(commands.add_parser(name, help=summary, description=summary))
    generate_help = "write synthetic users/events/items fitted to a real sample (not a stage)"
    _add_generate_options(commands.add_parser(GENERATE, help=generate_help, description=generate_help))
    return parser


def main(stage: str | None = None, argv: list[str] | None = None) -> int:
    """Parse arguments and run a stage (or `generate`, when no `stage` is given); the exit status."""
    args = _parser(stage).parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging()
    if stage is None and args.command == GENERATE:
        return _generate(args)
    return _run_stage(stage or args.command, args)


def _run_stage(stage: str, args: argparse.Namespace) -> int:
    """Validate config before any Spark work, run the stage, print where outputs are."""
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
    redaction.install(redaction.secret_values() | redaction.secret_config_values(resolved)
                      | redaction.secret_url_parameters(remote_url(args.remote)))
    log.info("run %s, stage %s, resolved config:\n%s", run_id, stage, json.dumps(redaction.redact_mapping(resolved), indent=2))

    try:
        lake = Lake(config.lake_path, retain_versions_minutes=config.storage.retain_versions_minutes)
        # Locked before Spark starts, so that a second run on the same lake is refused at once.
        with lake.lock(f"ecominsight {stage} (run {run_id})"), \
                spark_session(config.spark.app_name, config.spark.master, conf_for_lake(config.lake_path, config.spark.conf),
                              embedded_metastore=config.warehouse.embedded_metastore, remote=args.remote) as spark:
            summary = run_stage(stage, spark, config, lake, run_id)
    except EcominsightError as err:
        log.error("%s failed: %s", stage, err)
        return 2
    except OSError as err:  # the lake path is not writable, the disk is full, ...
        log.error("%s failed: cannot use %s under the lake %s: %s", stage, err.filename or "a path", config.lake_path,
                  err.strerror or err)
        return 2
    _print_outputs(lake, run_id, summary)
    return 0


def _generate(args: argparse.Namespace) -> int:
    """`ecominsight generate`: fit (in a Spark session) or load a profile, write the files, print the manifest."""
    if args.fit_from:
        settings = load_config("local", [f"spark.master={FIT_MASTER}"]).spark
        try:
            load_preset(args.fit_from)  # a typo fails before any Spark work
            with spark_session(settings.app_name, settings.master, settings.conf) as spark:
                profile = generator.profile_of_preset(spark, args.fit_from)
        except EcominsightError as err:
            log.error("cannot fit a profile to the preset %s: %s", args.fit_from, err)
            return 2
    else:
        try:
            profile = generator.load_profile(args.profile)
        except (OSError, ValueError) as err:
            log.error("cannot read profile: %s", err)
            return 2
    if args.save_profile:
        generator.save_profile(profile, args.save_profile)
    try:
        manifest = generator.generate(profile, n_events=args.events, seed=args.seed, out=args.out, fmt=args.format,
                                      bad_fraction=args.bad_fraction)
    except ValueError as err:
        log.error("generate: %s", err)
        return 2
    print(json.dumps(manifest, indent=2, sort_keys=True))
    return 0


def _print_outputs(lake: Lake, run_id: str, results: dict[str, StageResult]) -> None:
    lines = [f"ecominsight run {run_id} finished", f"  lake:    {lake.root}", f"  reports: {lake.report_dir(run_id)}"]
    for result in results.values():
        lines += result.describe(lake)
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
