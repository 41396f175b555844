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
from ecominsight.schema import USER_ATTRIBUTES as USER_FIELDS

EVENT_FIELDS = (
    "user_id", "event_type", "item_id", "category", "brand", "title",
    "price", "quantity", "query", "session_id",
)
FORMATS = ("csv", "parquet", "json")
PACKAGE_PREFIX = "package:"
PACKAGE_DIR = Path(__file__).resolve().parent
TIMESTAMP_UNITS = ("s", "ms", "string")


@dataclass(frozen=True)
class TimestampSpec:
    """How to read the event time: a column in Unix `s`/`ms` or a `string` with a Spark pattern,
    or a fixed `value` for snapshot tables that carry no time at all."""

    column: str | None = None
    unit: str = "string"
    format: str = "yyyy-MM-dd HH:mm:ss"
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


@dataclass(frozen=True)
class Preset:
    name: str
    format: str
    paths: tuple[str, ...]
    events: dict[str, str]  # canonical field -> raw column name, or "expr:<Spark SQL>"
    timestamp: TimestampSpec
    description: str = ""
    delimiter: str = ","
    header: bool = True
    encoding: str = "UTF-8"
    columns: tuple[str, ...] = ()  # names for header-less files, in file order
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    event_types: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)
    gender_values: dict[str, str] = field(default_factory=dict)
    label: str | None = None
    window: WindowSpec | None = None
    reject: tuple[RejectRule, ...] = ()
    base_dir: str = str(PROJECT_ROOT)

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


_KEYS = {f.name for f in dataclasses.fields(Preset)} - {"base_dir"}


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
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown preset key {unknown[0]!r}; allowed: {', '.join(sorted(_KEYS))}")
    for required in ("name", "format", "paths", "events", "timestamp"):
        if required not in raw:
            raise ConfigError(f"{where}: missing required key {required!r}")
    if raw["format"] not in FORMATS:
        raise ConfigError(f"{where}: format {raw['format']!r} is not one of {', '.join(FORMATS)}")
    paths = raw["paths"]
    if isinstance(paths, str):
        paths = [paths]
    events = _string_map(raw["events"], f"{where}: events")
    bad = sorted(set(events) - set(EVENT_FIELDS))
    if bad:
        raise ConfigError(f"{where}: events.{bad[0]} is not a canonical event field; allowed: {', '.join(EVENT_FIELDS)}")
    for required in ("user_id", "event_type"):
        if required not in events:
            raise ConfigError(f"{where}: events.{required} is required")
    users = _string_map(raw.get("users", {}), f"{where}: users")
    bad = sorted(set(users) - set(USER_FIELDS))
    if bad:
        raise ConfigError(f"{where}: users.{bad[0]} is not a canonical user field; allowed: {', '.join(USER_FIELDS)}")
    timestamp = _dataclass_from(TimestampSpec, raw["timestamp"], f"{where}: timestamp")
    if timestamp.value is None and timestamp.column is None:
        raise ConfigError(f"{where}: timestamp needs a column (or a fixed value for snapshot tables)")
    if timestamp.unit not in TIMESTAMP_UNITS:
        raise ConfigError(f"{where}: timestamp.unit {timestamp.unit!r} is not one of {', '.join(TIMESTAMP_UNITS)}")
    window = _dataclass_from(WindowSpec, raw["window"], f"{where}: window") if raw.get("window") else None
    rules = tuple(_dataclass_from(RejectRule, rule, f"{where}: reject[{i}]") for i, rule in enumerate(raw.get("reject") or []))
    aliases = {str(k): tuple(v if isinstance(v, list) else [v]) for k, v in (raw.get("aliases") or {}).items()}
    return Preset(
        name=str(raw["name"]),
        description=str(raw.get("description", "")),
        format=raw["format"],
        paths=tuple(str(p) for p in paths),
        delimiter=str(raw.get("delimiter", ",")),
        header=bool(raw.get("header", True)),
        encoding=str(raw.get("encoding", "UTF-8")),
        columns=tuple(str(c) for c in raw.get("columns") or ()),
        aliases=aliases,
        events=events,
        event_types={str(k).strip().lower(): str(v) for k, v in (raw.get("event_types") or {}).items()},
        users=users,
        gender_values={str(k).strip().lower(): str(v) for k, v in (raw.get("gender_values") or {}).items()},
        label=raw.get("label"),
        timestamp=timestamp,
        window=window,
        reject=rules,
        base_dir=base_dir,
    )


def _string_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of canonical field to raw column")
    return {str(k): str(v) for k, v in value.items()}


def _dataclass_from(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping")
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    try:
        return cls(**{k: (str(v) if v is not None else None) for k, v in value.items()})
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err
