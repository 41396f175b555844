"""Source presets: a YAML file per raw format that maps it onto the canonical tables.

A user with a new format writes a preset, not code. See conf/sources/*.yaml for examples
and README.md ("Source presets") for every key.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ecominsight.config import DEFAULT_CONF_DIR, PROJECT_ROOT
from ecominsight.errors import ConfigError
from ecominsight.schema import ATTRIBUTE_KINDS, ITEMS, NUMERIC_FEATURES, USERS
from ecominsight.schema import USER_ATTRIBUTES as USER_FIELDS
from ecominsight.validation import build, rule

EVENT_FIELDS = (
    "user_id", "event_type", "item_id", "category", "brand", "title",
    "price", "quantity", "query", "session_id",
)
USER_SOURCE_FIELDS = ("user_id", *USER_FIELDS)
ITEM_FIELDS = tuple(ITEMS.fieldNames())
REVIEW_FIELDS = ("user_id", "item_id", "rating", "text")
# What a preset may tag as personal: the canonical user attributes that reach the output tables, and
# the names of its own `user_attributes`. The user id is never listed: it is always pseudonymised
# (ecominsight/privacy.py).
PERSONAL_FIELDS = USER_FIELDS
ATTRIBUTE_NAME = (r"[a-z][a-z0-9_]*", "lower-case letters, digits and _, starting with a letter")
# An extra attribute may not take the name of a users column or of a fused numeric feature: the text,
# the baselines' feature names and `personal` name them side by side.
RESERVED_ATTRIBUTE_NAMES = (*USERS.fieldNames(), *NUMERIC_FEATURES)
FORMATS = ("csv", "parquet", "json", "text")
PACKAGE_PREFIX = "package:"
PACKAGE_DIR = Path(__file__).resolve().parent
TIMESTAMP_UNITS = ("s", "ms", "string")
_FORMAT = rule(choices=FORMATS)
_ESCAPE = rule(pattern=("(?s).", "a single character"))


@dataclass(frozen=True)
class TimestampSpec:
    """How to read the event time: a column in Unix `s`/`ms` or a `string` with a Spark pattern
    (or a list of patterns, the first that parses wins), or a fixed `value` for snapshot tables
    that carry no time at all."""

    column: str | None = None
    unit: str = field(default="string", metadata=rule(choices=TIMESTAMP_UNITS))
    format: str | tuple[str, ...] = field(default="yyyy-MM-dd HH:mm:ss", metadata=rule(non_empty=True))
    zone: str = "UTC"  # zone of naive wall-clock strings; ignored for Unix units
    value: str | None = None


def _attribute_names(attributes: Mapping[str, Any], key: str) -> None:
    """`user_attributes` names: lower-case identifiers that are no canonical field."""
    for name in attributes:
        if not re.fullmatch(ATTRIBUTE_NAME[0], name):
            raise ConfigError(f"{key}.{name}: an attribute name must be {ATTRIBUTE_NAME[1]}")
        if name in RESERVED_ATTRIBUTE_NAMES:
            raise ConfigError(f"{key}.{name}: {name!r} is a canonical field name; give the attribute another name")


@dataclass(frozen=True)
class UserAttribute:
    """An extra user attribute: its raw `column` (or `expr:<Spark SQL>`) and its `kind`: `categorical`
    (a label: one-hot in the baselines) or `numeric` (a number: a value and a missing flag)."""

    column: str = field(metadata=rule(non_empty=True))
    kind: str = field(metadata=rule(choices=ATTRIBUTE_KINDS))


_USER_ATTRIBUTES = rule(check=_attribute_names)


@dataclass(frozen=True)
class WindowSpec:
    """Events outside [start, end) (wall-clock in `zone`) are quarantined as `outside_window`."""

    start: str
    end: str
    zone: str = "UTC"


@dataclass(frozen=True)
class RejectRule:
    """Rows for which the Spark SQL predicate `when` holds are quarantined with `reason`."""

    reason: str
    when: str


class _Inputs:
    """Path resolution shared by a preset and its side sources (`paths` and `base_dir` fields)."""

    paths: tuple[str, ...]
    base_dir: str

    def resolved_paths(self, override: list[str] | None = None) -> list[str]:
        """Input paths. `package:<path>` is data shipped inside the ecominsight package; other
        relative paths resolve against the project root (the folder above conf/)."""
        chosen = override if override else list(self.paths)
        resolved = []
        for raw in chosen:
            if raw.startswith(PACKAGE_PREFIX):
                resolved.append(str(PACKAGE_DIR / raw[len(PACKAGE_PREFIX):]))
            elif "://" in raw or raw.startswith("dbfs:"):
                resolved.append(raw)
            else:
                path = Path(raw).expanduser()
                resolved.append(str(path if path.is_absolute() else Path(self.base_dir) / path))
        return resolved


@dataclass(frozen=True)
class TableSource(_Inputs):
    """Files of their own that feed one canonical table directly: `user_source` (a user list
    such as JData_User.csv) or `item_source` (a product list). Read by the same reader as the
    events, with the same reading keys; `fields` maps canonical field -> raw column or `expr:`."""

    name: str  # "<preset>.users" / "<preset>.items", for messages and the quarantine's `source`
    format: str = field(metadata=_FORMAT)
    paths: tuple[str, ...]
    fields: dict[str, str]
    delimiter: str = ","
    delimiter_regex: str | None = None
    escape: str = field(default='"', metadata=_ESCAPE)
    header: bool = True
    encoding: str = "UTF-8"
    columns: tuple[str, ...] = ()
    timestamp: TimestampSpec | None = None  # user_source only: the signup time
    age_values: dict[str, int] = field(default_factory=dict)
    gender_values: dict[str, str] = field(default_factory=dict)
    user_attributes: dict[str, UserAttribute] = field(default_factory=dict, metadata=_USER_ATTRIBUTES)  # user_source only
    base_dir: str = str(PROJECT_ROOT)


@dataclass(frozen=True)
class Preset(_Inputs):
    name: str
    format: str = field(metadata=_FORMAT)
    paths: tuple[str, ...]
    events: dict[str, str]  # canonical field -> raw column name, or "expr:<Spark SQL>"
    timestamp: TimestampSpec
    description: str = ""
    delimiter: str = ","
    delimiter_regex: str | None = None  # format `text`: fields split by this (Java) regex
    escape: str = field(default='"', metadata=_ESCAPE)  # RFC 4180: a quote inside a quoted field is written twice
    header: bool = True
    encoding: str = "UTF-8"
    columns: tuple[str, ...] = ()  # names for header-less files, in file order
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    event_types: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)
    # Extra user attributes on the event rows, name -> UserAttribute (a user_source takes its own).
    user_attributes: dict[str, UserAttribute] = field(default_factory=dict, metadata=_USER_ATTRIBUTES)
    gender_values: dict[str, str] = field(default_factory=dict)
    age_values: dict[str, int] = field(default_factory=dict)  # raw age (bucket) -> age in years
    label: str | None = None
    window: WindowSpec | None = None
    reject: tuple[RejectRule, ...] = ()
    user_source: TableSource | None = None
    item_source: TableSource | None = None
    reviews: dict[str, str] = field(default_factory=dict)  # canonical review field -> raw column
    # User attributes (canonical, or `user_attributes` names) that are personal data for this source:
    # dropped from every output table. Checked against the attribute names in `_check_personal`.
    personal: tuple[str, ...] = ()
    base_dir: str = str(PROJECT_ROOT)

    def attribute_kinds(self) -> dict[str, str]:
        """Every extra user attribute (the event rows' and the user list's) -> its kind."""
        side = self.user_source.user_attributes if self.user_source is not None else {}
        return {name: spec.kind for name, spec in sorted({**self.user_attributes, **side}.items())}


# Each side source: the table it feeds, the canonical fields it maps, its raw-value maps, and the
# keys it does not take (only a user list has a signup time and raw age and gender values).
_SIDES: dict[str, tuple[str, tuple[str, ...], dict[str, type], dict[str, Any]]] = {
    "user_source": ("users", USER_SOURCE_FIELDS, {"age_values": int, "gender_values": str}, {}),
    "item_source": ("items", ITEM_FIELDS, {}, {"timestamp": None, "age_values": {}, "gender_values": {},
                                               "user_attributes": {}}),
}
# The preset's own maps: canonical field -> raw column (with the fields it needs), raw value -> canonical.
_FIELD_MAPS = {"events": (EVENT_FIELDS, ("user_id", "event_type")), "users": (USER_FIELDS, ()),
               "reviews": (REVIEW_FIELDS, ())}
_VALUE_MAPS = {"event_types": str, "gender_values": str, "age_values": int}


def available_presets(conf_dir: Path = DEFAULT_CONF_DIR) -> list[str]:
    return sorted(p.stem for p in (conf_dir / "sources").glob("*.yaml"))


def load_preset(name_or_path: str, conf_dir: Path = DEFAULT_CONF_DIR) -> Preset:
    """Load and validate a preset by name (conf/sources/<name>.yaml) or by file path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        path = candidate
    else:
        path = conf_dir / "sources" / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"unknown source preset {name_or_path!r}; available presets: "
                f"{', '.join(available_presets(conf_dir))} (or give a path to a preset .yaml file)"
            )
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return parse_preset(raw, where=str(path), base_dir=str(conf_dir.resolve().parent))


def parse_preset(raw: Mapping[str, Any], *, where: str = "preset", base_dir: str = str(PROJECT_ROOT)) -> Preset:
    """Validate a preset mapping into a `Preset`; errors name the preset (`where`) and the offending
    key. A key left empty (null) takes its default."""
    try:
        return _parse(raw, base_dir)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err


def _parse(raw: Any, base_dir: str) -> Preset:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a preset must be a mapping, got {type(raw).__name__}")
    values = _expanded(_without_nulls(raw), "", _FIELD_MAPS, _VALUE_MAPS)
    if isinstance(values.get("aliases"), Mapping):  # one other name may stand without a list
        values["aliases"] = {name: others if isinstance(others, list) else [others]
                             for name, others in values["aliases"].items()}
    sides = {key: values.pop(key) for key in _SIDES if key in values}
    preset = build(Preset, values, noun="preset key", fixed={"base_dir": base_dir})
    _check_reading(preset, "")
    _check_timestamp(preset.timestamp, "timestamp")
    if preset.reviews and not {"user_id", "item_id"} <= set(preset.reviews):
        raise ConfigError("reviews needs user_id and item_id")
    preset = dataclasses.replace(preset, **{key: _side_source(section, key, preset.name, base_dir)
                                            for key, section in sides.items()})
    _check_attributes(preset)
    return preset


def _check_attributes(preset: Preset) -> None:
    """An attribute mapped on the event rows and in the user list has one kind; `personal` names
    canonical user attributes or the preset's own."""
    side = preset.user_source.user_attributes if preset.user_source is not None else {}
    for name in sorted(set(preset.user_attributes) & set(side)):
        if preset.user_attributes[name].kind != side[name].kind:
            raise ConfigError(f"user_attributes.{name} is {preset.user_attributes[name].kind} but "
                              f"user_source.user_attributes.{name} is {side[name].kind}; give it one kind")
    allowed = (*PERSONAL_FIELDS, *preset.attribute_kinds())
    for i, name in enumerate(preset.personal):
        if name not in allowed:
            raise ConfigError(f"personal[{i}]: {name!r} is not one of {', '.join(PERSONAL_FIELDS)} "
                              f"or a user_attributes name ({', '.join(preset.attribute_kinds()) or 'none mapped'})")


def _side_source(section: Any, key: str, preset: str, base_dir: str) -> TableSource:
    """`user_source:` / `item_source:`, validated into a `TableSource`."""
    table, canonical, value_maps, not_taken = _SIDES[key]
    values = _expanded(section, key, {"fields": (canonical, canonical[:1])}, value_maps)
    source = build(TableSource, values, key, noun="preset key",
                   fixed={"name": f"{preset}.{table}", "base_dir": base_dir, **not_taken})
    _check_reading(source, key)
    _check_timestamp(source.timestamp, f"{key}.timestamp")
    return source


def _without_nulls(value: Any) -> Any:
    """`value` with every null mapping entry left out, at any depth: an empty key means its default."""
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def _expanded(values: Any, key: str, field_maps: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]],
              value_maps: Mapping[str, type]) -> Any:
    """A preset (or side source) mapping with its shorthands expanded: `paths` may be one path, field
    maps name canonical fields, raw values of value maps match trimmed and lower-cased."""
    if not isinstance(values, Mapping):
        return values  # build() says what is wrong with it
    expanded = dict(values)
    prefix = f"{key}." if key else ""
    if isinstance(expanded.get("paths"), str):
        expanded["paths"] = [expanded["paths"]]
    for name, (allowed, required) in field_maps.items():
        if name in expanded:
            expanded[name] = _field_map(expanded[name], allowed, required, prefix + name)
    for name, kind in value_maps.items():
        if name in expanded:
            expanded[name] = _value_map(expanded[name], kind, prefix + name)
    return expanded


def _check_reading(source: Preset | TableSource, key: str) -> None:
    """The reading keys agree: format text goes with delimiter_regex, and reads UTF-8 only."""
    where = f"{key}: " if key else ""
    if (source.format == "text") != (source.delimiter_regex is not None):
        raise ConfigError(f"{where}format text needs delimiter_regex, and delimiter_regex needs format text")
    if source.format == "text" and source.encoding.upper().replace("-", "") != "UTF8":
        raise ConfigError(f"{where}format text reads UTF-8 only, not {source.encoding}")


def _check_timestamp(spec: TimestampSpec | None, key: str) -> None:
    if spec is not None and spec.value is None and spec.column is None:
        raise ConfigError(f"{key} needs a column (or a fixed value for snapshot tables)")


def _field_map(value: Any, allowed: tuple[str, ...], required: tuple[str, ...], key: str) -> dict[str, str]:
    """canonical field -> raw column (or `expr:`), every field canonical, the required ones present."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: must be a mapping of canonical field to raw column")
    fields = {str(k): str(v) for k, v in value.items()}
    bad = sorted(set(fields) - set(allowed))
    if bad:
        raise ConfigError(f"{key}.{bad[0]} is not a canonical field here; allowed: {', '.join(allowed)}")
    for name in required:
        if name not in fields:
            raise ConfigError(f"{key}.{name} is required")
    return fields


def _value_map(value: Any, kind: type, key: str) -> dict[str, Any]:
    """raw value -> canonical value; raw values are matched trimmed and lower-cased."""
    if not value:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: must be a mapping of raw value to canonical value")
    try:
        return {str(k).strip().lower(): kind(v) for k, v in value.items()}
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{key}: {err}") from err
