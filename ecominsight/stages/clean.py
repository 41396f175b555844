"""clean: raw files (through the source preset) -> clean/{events,users,items[,labels,reviews]},
quarantine/{events[,users,items,reviews]}, reports/<run_id>/{clean,data_quality}.json."""

from __future__ import annotations

import dataclasses
import logging
from contextlib import ExitStack
from typing import Any, Mapping

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession

from ecominsight import data_quality, schema
from ecominsight.catalog import CLEAN_EVENTS, CLEAN_ITEMS, CLEAN_LABELS, CLEAN_REVIEWS, CLEAN_USERS, QUARANTINE
from ecominsight.config import Config
from ecominsight.errors import AccountingError
from ecominsight.io import Lake, read_source, staging_area, write_json
from ecominsight.presets import Preset, UserAttribute, load_preset
from ecominsight.stages.base import StageResult, persisted
from ecominsight.transforms import clean

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CleanResult(StageResult):
    """Row accounting of a clean run: the events' counts at the top, every table's under `tables`."""

    preset: str
    inputs: list[str]
    input_rows: int
    clean_rows: int
    quarantined_rows: int
    quarantined_by_reason: dict[str, int]
    tables: dict[str, dict[str, Any]]
    users_without_events: int


def tag_arguments(preset: Preset, run_id: str, table: str = "events") -> dict[str, Any]:
    """Keyword arguments of `clean.tag_<table>` for a preset: its events or reviews (both from the
    preset's rows), its users (`user_source`) or its items (`item_source`)."""
    provenance = dict(source=preset.name, run_id=run_id)
    if table == "reviews":
        return dict(**provenance, field_map=preset.reviews, timestamp=preset.timestamp)
    if table == "users":
        side = preset.user_source
        return dict(**provenance, field_map=side.fields, age_values=side.age_values, gender_values=side.gender_values,
                    signup=side.timestamp, user_attributes=side.user_attributes)
    if table == "items":
        return dict(**provenance, field_map=preset.item_source.fields)
    return dict(**provenance, field_map=preset.events, user_field_map=preset.users,
                user_attributes=preset.user_attributes, label_column=preset.label,
                event_type_map=preset.event_types, timestamp=preset.timestamp, window=preset.window,
                reject_rules=preset.reject)


def check_accounting(input_rows: Mapping[str, int], profiles: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise AccountingError unless every table's input rows = its clean rows + its quarantined rows."""
    for table, profile in profiles.items():
        if input_rows[table] != profile["clean_rows"] + profile["quarantined_rows"]:
            raise AccountingError(f"{table}: input rows {input_rows[table]} != clean {profile['clean_rows']} "
                                  f"+ quarantined {profile['quarantined_rows']}")


def table_counts(profiles: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per table: input, clean and quarantined rows, and the quarantined rows by reason."""
    return {table: {"input_rows": p["input_rows"], "clean_rows": p["clean_rows"], "quarantined_rows": p["quarantined_rows"],
                    "quarantined_by_reason": {r: n for r, n in p["rows_by_reason"].items() if r != data_quality.CLEAN_KEY}}
            for table, p in profiles.items()}


def _with_mapped_columns(raw: DataFrame, columns: list[str], source: str) -> DataFrame:
    """The raw rows, all quarantined as malformed (with a warning naming the columns) when the
    input lacks columns the preset maps: a wrong delimiter or header must not crash the run."""
    missing = [name for name in columns if name not in raw.columns]
    if missing:
        log.warning("clean: %s input lacks the mapped column(s) %s (columns read: %s); every row goes to quarantine "
                    "as malformed_row: check the delimiter, the header and the preset", source, missing, raw.columns)
    return clean.mark_missing_columns(raw, columns=columns)


def _attribute_columns(attributes: Mapping[str, UserAttribute]) -> dict[str, str]:
    """The raw columns (or `expr:`) of a preset's extra user attributes, as a field map."""
    return {name: spec.column for name, spec in attributes.items()}


def _warn_unparsed(profiles: Mapping[str, Mapping[str, Any]]) -> None:
    """A numeric attribute that is not a number is left out (as an unreadable age is): said once per table."""
    for table, profile in profiles.items():
        unparsed = {name: figures["unparsed"] for name, figures in profile.get("attributes", {}).items() if figures["unparsed"]}
        if unparsed:
            log.warning("clean: %s rows whose numeric user attribute is no number (left out, counted in "
                        "data_quality.json under tables.%s.attributes): %s", table, table, unparsed)


def run_clean(spark: SparkSession, config: Config, lake: Lake, run_id: str) -> CleanResult:
    """raw files -> clean/* + quarantine/* + reports/<run_id>/{clean,data_quality}.json."""
    preset = load_preset(config.source.preset)
    paths = preset.resolved_paths(config.source.paths)
    log.info("clean: preset %s reading %s", preset.name, paths)
    with staging_area(lake.staging_dir()) as stage, ExitStack() as cached:
        raw = _with_mapped_columns(clean.resolve_aliases(read_source(spark, preset, stage(paths)), aliases=preset.aliases),
                                   clean.mapped_columns(preset.events, preset.users, preset.reviews,
                                                        _attribute_columns(preset.user_attributes),
                                                        extra=[preset.timestamp.column, preset.label]), preset.name)
        inputs = {"events": raw}
        tagged = {"events": clean.mark_duplicates(clean.tag_events(raw, **tag_arguments(preset, run_id)))}
        if preset.reviews:
            inputs["reviews"], tagged["reviews"] = raw, clean.tag_reviews(raw, **tag_arguments(preset, run_id, "reviews"))
        for table, side, tag in (("users", preset.user_source, clean.tag_users), ("items", preset.item_source, clean.tag_items)):
            if side is not None:
                inputs[table] = _with_mapped_columns(read_source(spark, side, stage(side.resolved_paths())),
                                                     clean.mapped_columns(side.fields, _attribute_columns(side.user_attributes),
                                                                          extra=[side.timestamp and side.timestamp.column]),
                                                     f"{preset.name} {table}")
                tagged[table] = tag(inputs[table], **tag_arguments(preset, run_id, table))
        # On disk, not MEMORY_AND_DISK: in-memory cache blocks ran a 4 GB local JVM out of heap at 25M
        # events (10M with 1.6 GB; smaller partitions did not help); disk blocks stream out batch by batch,
        # and the OS page cache still serves the re-reads from memory where there is room.
        tagged = {table: cached.enter_context(persisted(clean.raw_of_rejected_only(frame), StorageLevel.DISK_ONLY))
                  for table, frame in tagged.items()}
        attributes = {"events": tuple(preset.user_attributes),
                      "users": tuple(preset.user_source.user_attributes) if preset.user_source else ()}
        profiles = {table: data_quality.table_profile(frame, columns=data_quality.PROFILED[table],
                                                      window=preset.window if table == "events" else None,
                                                      attributes=attributes.get(table, ()))
                    for table, frame in tagged.items()}
        _warn_unparsed(profiles)
        n_raw = raw.count()
        check_accounting({table: n_raw if frame is raw else frame.count() for table, frame in inputs.items()}, profiles)
        events = tagged["events"]
        users = clean.derive_users(events, gender_values=preset.gender_values, age_values=preset.age_values,
                                   attributes=tuple(preset.user_attributes))
        items = clean.derive_items(events)
        if "users" in tagged:
            users = clean.combine_users(clean.accepted_rows(tagged["users"], schema.USERS), users)
        if "items" in tagged:
            items = clean.combine_items(clean.accepted_rows(tagged["items"], schema.ITEMS), items)
        accepted = clean.accepted_events(events)
        lake.write(accepted, CLEAN_EVENTS)
        lake.write(users, CLEAN_USERS)
        lake.write(items, CLEAN_ITEMS)
        optional = {CLEAN_LABELS: clean.derive_labels(events) if preset.label else None,
                    CLEAN_REVIEWS: clean.accepted_rows(tagged["reviews"], schema.REVIEWS) if preset.reviews else None}
        for name, table in QUARANTINE.items():
            optional[table] = clean.quarantined_rows(tagged[name]) if name in tagged else None
        for table, frame in optional.items():
            # A table this preset does not produce must not survive from an earlier run on the same lake.
            if frame is None:
                lake.drop(table)
            else:
                lake.write(frame, table)
        report = data_quality.clean_report(
            run_id=run_id, preset=preset.name, profiles=profiles, users=lake.read(spark, CLEAN_USERS),
            # An input whose every row was quarantined leaves no event partition: an empty table.
            events=lake.read(spark, CLEAN_EVENTS),
        )
    write_json(lake.report_dir(run_id) / "data_quality.json", report)
    counts = table_counts(profiles)
    result = CleanResult(preset=preset.name, inputs=paths, **counts["events"], tables=counts,
                         users_without_events=report["users_without_events"])
    result.write(lake, run_id, "clean")
    log.info("clean: %d input rows = %d clean + %d quarantined %s", result.input_rows, result.clean_rows,
             result.quarantined_rows, result.quarantined_by_reason)
    return result
