"""Source presets: a YAML file per raw format that maps it onto the canonical tables.

A user with a new format writes a preset, not code. See conf/sources/*.yaml for examples
and README.md ("Source presets") for every key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ecominsight.config import DEFAULT_CONF_DIR, PROJECT_ROOT, ConfigError
from ecominsight.schema import ITEMS
from ecominsight.schema import USER_ATTRIBUTES as USER_FIELDS

EVENT_FIELDS = (
    "user_id", "event_type", "item_id", "category", "brand", "title",
    "price", "quantity", "query", "session_id",
)
USER_SOURCE_FIELDS = ("user_id", *USER_FIELDS)
ITEM_FIELDS = tuple(ITEMS.fieldNames())
REVIEW_FIELDS = ("user_id", "item_id", "rating", "text")
# What a preset may tag as personal: the canonical user attributes that reach the output tables.
# The user id is never listed: it is always pseudonymised (ecominsight/privacy.py).
PERSONAL_FIELDS = USER_FIELDS
FORMATS = ("csv", "parquet", "json", "text")
PACKAGE_PREFIX = "package:"
PACKAGE_DIR = Path(__file__).resolve().parent
TIMESTAMP_UNITS = ("s", "ms", "string")


@dataclass(frozen=True)
class TimestampSpec:
    """How to read the event time: a column in Unix `s`/`ms` or a `string` with a Spark pattern
    (or a list of patterns, the first that parses wins), or a fixed `value` for snapshot tables
    that carry no time at all."""

    column: str | None = None
    unit: str = "string"
    format: str | tuple[str, ...] = "yyyy-MM-dd HH:mm:ss"
    zone: str = "UTC"  # zone of naive wall-clock strings; ignored for Unix units
    value: str | None = None


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
    format: str
    paths: tuple[str, ...]
    fields: dict[str, str]
    delimiter: str = ","
    delimiter_regex: str | None = None
    escape: str = '"'
    header: bool = True
    encoding: str = "UTF-8"
    columns: tuple[str, ...] = ()
    timestamp: TimestampSpec | None = None  # user_source only: the signup time
    age_values: dict[str, int] = field(default_factory=dict)
    gender_values: dict[str, str] = field(default_factory=dict)
    base_dir: str = str(PROJECT_ROOT)


@dataclass(frozen=True)
class Preset(_Inputs):
    name: str
    format: str
    paths: tuple[str, ...]
    events: dict[str, str]  # canonical field -> raw column name, or "expr:<Spark SQL>"
    timestamp: TimestampSpec
    description: str = ""
    delimiter: str = ","
    delimiter_regex: str | None = None  # format `text`: fields split by this (Java) regex
    escape: str = '"'  # RFC 4180: a quote inside a quoted field is written twice
    header: bool = True
    encoding: str = "UTF-8"
    columns: tuple[str, ...] = ()  # names for header-less files, in file order
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    event_types: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)
    gender_values: dict[str, str] = field(default_factory=dict)
    age_values: dict[str, int] = field(default_factory=dict)  # raw age (bucket) -> age in years
    label: str | None = None
    window: WindowSpec | None = None
    reject: tuple[RejectRule, ...] = ()
    user_source: TableSource | None = None
    item_source: TableSource | None = None
    reviews: dict[str, str] = field(default_factory=dict)  # canonical review field -> raw column
    # Canonical user attributes that are personal data for this source: dropped from every output table.
    personal: tuple[str, ...] = ()
    base_dir: str = str(PROJECT_ROOT)


_KEYS = {f.name for f in dataclasses.fields(Preset)} - {"base_dir"}
_READ_KEYS = ("format", "paths", "delimiter", "delimiter_regex", "escape", "header", "encoding", "columns")
# Keys of each side source: how to read it, its field mapping, and what only that table uses.
_SIDE_KEYS = {
    "user_source": {*_READ_KEYS, "fields", "timestamp", "age_values", "gender_values"},
    "item_source": {*_READ_KEYS, "fields"},
}
_SIDE_FIELDS = {"user_source": ("users", USER_SOURCE_FIELDS), "item_source": ("items", ITEM_FIELDS)}


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


def parse_preset(raw: dict[str, Any], *, where: str = "preset", base_dir: str = str(PROJECT_ROOT)) -> Preset:
    """Validate a preset mapping into a `Preset`; errors name the offending key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a preset must be a mapping")
    _check_keys(raw, _KEYS, where)
    for required in ("name", "format", "paths", "events", "timestamp"):
        if required not in raw:
            raise ConfigError(f"{where}: missing required key {required!r}")
    name = str(raw["name"])
    events = _field_map(raw["events"], EVENT_FIELDS, ("user_id", "event_type"), f"{where}: events")
    users = _field_map(raw.get("users", {}), USER_FIELDS, (), f"{where}: users")
    reviews = _field_map(raw.get("reviews") or {}, REVIEW_FIELDS, (), f"{where}: reviews")
    if reviews and not {"user_id", "item_id"} <= set(reviews):
        raise ConfigError(f"{where}: reviews needs user_id and item_id")
    timestamp = _timestamp(raw["timestamp"], f"{where}: timestamp")
    window = _dataclass_from(WindowSpec, raw["window"], f"{where}: window") if raw.get("window") else None
    rules = tuple(_dataclass_from(RejectRule, rule, f"{where}: reject[{i}]") for i, rule in enumerate(raw.get("reject") or []))
    aliases = {str(k): tuple(v if isinstance(v, list) else [v]) for k, v in (raw.get("aliases") or {}).items()}
    personal = raw.get("personal") or []
    if not isinstance(personal, list) or any(str(name) not in PERSONAL_FIELDS for name in personal):
        raise ConfigError(f"{where}: personal must be a list of canonical user attributes ({', '.join(PERSONAL_FIELDS)}), "
                          f"got {personal!r}")
    return Preset(
        name=name,
        description=str(raw.get("description", "")),
        **_reading(raw, where),
        aliases=aliases,
        events=events,
        event_types=_value_map(raw.get("event_types"), str, f"{where}: event_types"),
        users=users,
        gender_values=_value_map(raw.get("gender_values"), str, f"{where}: gender_values"),
        age_values=_value_map(raw.get("age_values"), int, f"{where}: age_values"),
        label=raw.get("label"),
        timestamp=timestamp,
        window=window,
        reject=rules,
        user_source=_side_source(raw, "user_source", name, where, base_dir),
        item_source=_side_source(raw, "item_source", name, where, base_dir),
        reviews=reviews,
        personal=tuple(str(name) for name in personal),
        base_dir=base_dir,
    )


def _check_keys(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown preset key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def _reading(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """The keys that say how to read files, validated; shared by a preset and its side sources."""
    if raw["format"] not in FORMATS:
        raise ConfigError(f"{where}: format {raw['format']!r} is not one of {', '.join(FORMATS)}")
    paths = raw["paths"]
    if isinstance(paths, str):
        paths = [paths]
    regex = raw.get("delimiter_regex")
    if (raw["format"] == "text") != (regex is not None):
        raise ConfigError(f"{where}: format text needs delimiter_regex, and delimiter_regex needs format text")
    encoding = str(raw.get("encoding", "UTF-8"))
    if raw["format"] == "text" and encoding.upper().replace("-", "") != "UTF8":
        raise ConfigError(f"{where}: format text reads UTF-8 only, not {encoding}")
    escape = str(raw.get("escape", '"'))
    if len(escape) != 1:
        raise ConfigError(f"{where}: escape is a single character, not {escape!r}")
    return dict(
        format=raw["format"],
        paths=tuple(str(p) for p in paths),
        delimiter=str(raw.get("delimiter", ",")),
        delimiter_regex=str(regex) if regex is not None else None,
        escape=escape,
        header=bool(raw.get("header", True)),
        encoding=encoding,
        columns=tuple(str(c) for c in raw.get("columns") or ()),
    )


def _side_source(raw: dict[str, Any], key: str, preset: str, where: str, base_dir: str) -> TableSource | None:
    """`user_source:` / `item_source:`, validated into a `TableSource`, or None when absent."""
    section = raw.get(key)
    if section is None:
        return None
    where = f"{where}: {key}"
    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a mapping")
    _check_keys(section, _SIDE_KEYS[key], where)
    for required in ("format", "paths", "fields"):
        if required not in section:
            raise ConfigError(f"{where}: missing required key {required!r}")
    table, allowed = _SIDE_FIELDS[key]
    return TableSource(
        name=f"{preset}.{table}",
        **_reading(section, where),
        fields=_field_map(section["fields"], allowed, (allowed[0],), f"{where}: fields"),
        timestamp=_timestamp(section["timestamp"], f"{where}: timestamp") if section.get("timestamp") else None,
        age_values=_value_map(section.get("age_values"), int, f"{where}: age_values"),
        gender_values=_value_map(section.get("gender_values"), str, f"{where}: gender_values"),
        base_dir=base_dir,
    )


def _field_map(value: Any, allowed: tuple[str, ...], required: tuple[str, ...], where: str) -> dict[str, str]:
    """canonical field -> raw column (or `expr:`), every field canonical, the required ones present."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of canonical field to raw column")
    fields = {str(k): str(v) for k, v in value.items()}
    bad = sorted(set(fields) - set(allowed))
    if bad:
        raise ConfigError(f"{where}.{bad[0]} is not a canonical field here; allowed: {', '.join(allowed)}")
    for name in required:
        if name not in fields:
            raise ConfigError(f"{where}.{name} is required")
    return fields


def _value_map(value: Any, kind: type, where: str) -> dict[str, Any]:
    """raw value -> canonical value; raw values are matched trimmed and lower-cased."""
    if not value:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of raw value to canonical value")
    try:
        return {str(k).strip().lower(): kind(v) for k, v in value.items()}
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err


def _timestamp(value: Any, where: str) -> TimestampSpec:
    spec = _dataclass_from(TimestampSpec, value, where)
    if spec.value is None and spec.column is None:
        raise ConfigError(f"{where} needs a column (or a fixed value for snapshot tables)")
    if spec.unit not in TIMESTAMP_UNITS:
        raise ConfigError(f"{where}.unit {spec.unit!r} is not one of {', '.join(TIMESTAMP_UNITS)}")
    if isinstance(spec.format, tuple) and not spec.format:
        raise ConfigError(f"{where}.format is an empty list")
    return spec


def _dataclass_from(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping")
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    listed = sorted(k for k, v in value.items() if isinstance(v, list) and k != "format")
    if listed:
        raise ConfigError(f"{where}.{listed[0]} must be a single value, not a list")
    try:
        return cls(**{k: (tuple(str(x) for x in v) if isinstance(v, list) else str(v) if v is not None else None)
                      for k, v in value.items()})
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err
