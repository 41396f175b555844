"""The lake's tables by name: which zone holds each, how it is partitioned, and which stage writes it.

Stages address tables through these constants (`lake.read(spark, CLEAN_EVENTS)`,
`lake.write(df, USER_SCORES)`), never through strings, so the layout lives in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

# Each zone is written by exactly one stage; a missing table names the stage to run.
ZONE_WRITERS = {"clean": "clean", "quarantine": "clean", "features": "fuse", "scores": "score", "insights": "insights"}
# The lake zones that hold tables (models, reports and checkpoints hold files).
TABLE_ZONES = tuple(ZONE_WRITERS)


@dataclass(frozen=True)
class Table:
    """One lake table: `<lake>/<zone>/<name>/`, Parquet, partitioned by `partition_by` if any."""

    zone: str
    name: str
    partition_by: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.zone not in ZONE_WRITERS:
            raise ValueError(f"{self.zone!r} is not a table zone; zones: {', '.join(TABLE_ZONES)}")

    @property
    def written_by(self) -> str:
        """The stage that writes this table (the one to run when it is missing)."""
        return ZONE_WRITERS[self.zone]

    @property
    def warehouse_name(self) -> str:
        """The metastore name of the table: `<zone>_<name>` (clean_events, scores_user_scores, ...)."""
        return f"{self.zone}_{self.name}"

    def __str__(self) -> str:
        return f"{self.zone}/{self.name}"


CLEAN_EVENTS = Table("clean", "events", ("dt",))
CLEAN_USERS = Table("clean", "users")
CLEAN_ITEMS = Table("clean", "items")
CLEAN_LABELS = Table("clean", "labels")
CLEAN_REVIEWS = Table("clean", "reviews")
# One quarantine table per canonical table, partitioned by the source preset that produced the rows.
QUARANTINE = {name: Table("quarantine", name, ("source",)) for name in ("events", "users", "items", "reviews")}

USER_SEQUENCES = Table("features", "user_sequences")  # labelled and split, as of the cutoff
CURRENT_SEQUENCES = Table("features", "current_sequences")  # every user, as of the data's end

USER_SCORES = Table("scores", "user_scores", ("score_date",))
EXPLANATIONS = Table("scores", "explanations", ("score_date",))

USER_PROFILES = Table("insights", "user_profiles")
SEGMENTS = Table("insights", "segments")
MARKETING_ACTIONS = Table("insights", "marketing_actions")
RECOMMENDATIONS = Table("insights", "recommendations")
PURCHASES = Table("insights", "purchases")
SEARCH_INSIGHTS = Table("insights", "search_insights")

TABLES: tuple[Table, ...] = (
    CLEAN_EVENTS, CLEAN_USERS, CLEAN_ITEMS, CLEAN_LABELS, CLEAN_REVIEWS, *QUARANTINE.values(),
    USER_SEQUENCES, CURRENT_SEQUENCES, USER_SCORES, EXPLANATIONS,
    USER_PROFILES, SEGMENTS, MARKETING_ACTIONS, RECOMMENDATIONS, PURCHASES, SEARCH_INSIGHTS,
)


def table(zone: str, name: str) -> Table:
    """The catalog's table `<zone>/<name>`, or an unpartitioned one for a folder the catalog does not
    name (a table an older version wrote)."""
    return next((t for t in TABLES if (t.zone, t.name) == (zone, name)), None) or Table(zone, name)
