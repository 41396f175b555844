"""One validator for the config and the source presets: mappings (parsed YAML) into frozen dataclasses.

`build` walks a dataclass's fields: unknown keys, missing required keys and wrong types raise
`ConfigError` naming the dotted key (`fuse.horizon`, `insights.actions[0].name`). Each field's own
rule (allowed choices, bounds, a pattern, a parse check) sits beside it as
`field(metadata=rule(...))`, so the dataclass is the whole schema. Rules that relate several fields
(fractions summing below 1, deciles covered once) stay explicit functions in their modules.

Hand-written rather than pydantic: Databricks runtimes ship their own pydantic, which a pinned one
in the wheel would fight, and the frozen dataclasses stay plain dataclasses for their callers.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar

from ecominsight.errors import ConfigError

T = TypeVar("T")
_RULE = "ecominsight.validation.rule"


@dataclass(frozen=True)
class Rule:
    """What a field's value must satisfy beyond its type; `None` (where the type allows it) always passes.

    On a list or tuple the emptiness check applies to the whole, every other check to each item."""

    choices: tuple[Any, ...] = ()
    positive: bool = False  # > 0
    non_negative: bool = False  # >= 0
    between: tuple[float, float] | None = None  # open interval (low, high)
    within: tuple[float, float] | None = None  # closed interval [low, high]
    pattern: tuple[str, str] | None = None  # (regex the whole value must match, what it means in words)
    non_empty: bool = False  # a string with more than blanks, or a list with an item
    check: Callable[[Any, str], Any] | None = None  # check(value, key) raises ConfigError naming key


def rule(**kwargs: Any) -> dict[str, Rule]:
    """Field metadata carrying a `Rule`: `max_iter: int = field(default=100, metadata=rule(positive=True))`."""
    return {_RULE: Rule(**kwargs)}


def build(cls: type[T], values: Any, key: str = "", *, noun: str = "config key",
          fixed: Mapping[str, Any] | None = None) -> T:
    """A frozen `cls` from the mapping `values`, every value checked against its field's type and rule.

    `key` is where `values` sits (for messages; "" at the top level), `noun` names its keys in the
    unknown-key message, and `fixed` holds fields the caller sets, which the mapping may not."""
    if not isinstance(values, Mapping):
        raise ConfigError(_at(key, f"expected a mapping, got {type(values).__name__} {values!r}"))
    fixed = dict(fixed or {})
    fields = [f for f in dataclasses.fields(cls) if f.name not in fixed]
    known = sorted(f.name for f in fields)
    unknown = sorted(str(name) for name in set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown {noun} {_join(key, unknown[0])!r}; "
                          f"allowed keys at {key or 'the top level'}: {', '.join(known)}")
    required = [f.name for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise ConfigError(_at(key, f"missing key {missing[0]!r}; required keys: {', '.join(required)}"))
    hints = typing.get_type_hints(cls)
    kwargs = dict(fixed)
    for f in fields:
        if f.name in values:
            kwargs[f.name] = check_value(_join(key, f.name), values[f.name], hints[f.name], f.metadata.get(_RULE),
                                         noun=noun)
    return cls(**kwargs)


def check_value(key: str, value: Any, hint: Any, field_rule: Rule | None = None, *, noun: str = "config key") -> Any:
    """`value` converted to the type `hint` (ints widen to float, scalars to str), then held to `field_rule`;
    a dataclass `hint` is built from a mapping as by `build`."""
    checked = _typed(key, value, hint, noun)
    if field_rule is not None and checked is not None:
        _apply(field_rule, key, checked, nullable=_allows_none(hint))
    return checked


def _typed(key: str, value: Any, hint: Any, noun: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key, noun=noun)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(hint) if option is not type(None)]
        if value is None and _allows_none(hint):
            return None
        errors = []
        for option in options:
            try:
                return _typed(key, value, option, noun)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        item_hint = typing.get_args(hint)[0]
        return origin(_typed(f"{key}[{i}]", item, item_hint, noun) for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        _, value_hint = typing.get_args(hint)
        return {str(k): _typed(f"{key}.{k}", v, value_hint, noun) for k, v in value.items()}
    return _scalar(key, value, hint)


def _scalar(key: str, value: Any, hint: Any) -> Any:
    """bool and int exactly (YAML `yes` is no integer), float from either number, str from any scalar."""
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
        if value is None or isinstance(value, (dict, list, tuple)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {hint}")


def _apply(field_rule: Rule, key: str, value: Any, *, nullable: bool) -> None:
    if field_rule.non_empty and not (value.strip() if isinstance(value, str) else value):
        raise ConfigError(f"{key}: must not be empty")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _apply(dataclasses.replace(field_rule, non_empty=False), f"{key}[{i}]", item, nullable=False)
        return
    if field_rule.choices and value not in field_rule.choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, field_rule.choices))}")
    if field_rule.positive and value <= 0:
        kind = "integer" if isinstance(value, int) else "number"
        raise ConfigError(f"{key}: must be a positive {kind} or null, got {value}" if nullable
                          else f"{key}: must be positive, got {value}")
    if field_rule.non_negative and value < 0:
        raise ConfigError(f"{key}: must be 0 or more, got {value}")
    if field_rule.between is not None and not field_rule.between[0] < value < field_rule.between[1]:
        raise ConfigError(f"{key}: must lie in ({field_rule.between[0]}, {field_rule.between[1]}), got {value}")
    if field_rule.within is not None and not field_rule.within[0] <= value <= field_rule.within[1]:
        raise ConfigError(f"{key}: {value} is outside {field_rule.within[0]}..{field_rule.within[1]}")
    if field_rule.pattern is not None and not re.fullmatch(field_rule.pattern[0], value):
        raise ConfigError(f"{key}: {value!r} must be {field_rule.pattern[1]}")
    if field_rule.check is not None:
        field_rule.check(value, key)


def _allows_none(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _at(key: str, message: str) -> str:
    return f"{key}: {message}" if key else message
