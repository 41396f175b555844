"""The shared validator: mappings into frozen dataclasses, types and per-field rules, errors naming the key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from ecominsight.config import Config, ConfigError
from ecominsight.validation import Rule, build, check_value, rule


def _even(value: int, key: str) -> None:
    if value % 2:
        raise ConfigError(f"{key}: {value} is odd")


@dataclass(frozen=True)
class Leaf:
    name: str = field(metadata=rule(non_empty=True))
    size: int = field(default=1, metadata=rule(positive=True))


@dataclass(frozen=True)
class Tree:
    kind: str = field(default="oak", metadata=rule(choices=("oak", "elm")))
    height: float = field(default=1.0, metadata=rule(between=(0, 100)))
    age: int = field(default=0, metadata=rule(non_negative=True))
    rank: int | None = field(default=None, metadata=rule(within=(1, 5)))
    limit: int | None = field(default=None, metadata=rule(positive=True))
    code: str = field(default="a1", metadata=rule(pattern=("[a-z][0-9]", "a letter then a digit")))
    pair: int = field(default=2, metadata=rule(check=_even))
    tags: list[str] = field(default_factory=list, metadata=rule(choices=("old", "tall")))
    names: tuple[str, ...] = field(default=("x",), metadata=rule(non_empty=True))
    labels: dict[str, int] = field(default_factory=dict)
    evergreen: bool = False
    leaves: list[Leaf] = field(default_factory=list)
    root: Leaf | None = None
    source: str = "planted"


def test_a_mapping_becomes_a_frozen_dataclass_with_its_defaults():
    tree = build(Tree, {"kind": "elm", "height": 3, "tags": ["old"], "names": ["a", "b"], "labels": {1: 2},
                        "leaves": [{"name": "l"}], "root": {"name": "r", "size": 4}})
    assert tree == Tree(kind="elm", height=3.0, tags=["old"], names=("a", "b"), labels={"1": 2},
                        leaves=[Leaf("l")], root=Leaf("r", 4))
    assert isinstance(tree.height, float) and isinstance(tree.names, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        tree.kind = "oak"  # type: ignore[misc]


def test_every_config_default_passes_its_own_rules():
    # The whole Config schema (every type and rule in config.py) accepts its own defaults back.
    assert build(Config, dataclasses.asdict(Config())) == Config()


@pytest.mark.parametrize("values, message", [
    ({"kind": "pine"}, "kind: 'pine' is not one of oak, elm"),
    ({"tags": ["old", "short"]}, "tags[1]: 'short' is not one of old, tall"),
    ({"height": 100}, "height: must lie in (0, 100), got 100.0"),
    ({"height": 0}, "height: must lie in (0, 100), got 0.0"),
    ({"age": -1}, "age: must be 0 or more, got -1"),
    ({"rank": 6}, "rank: 6 is outside 1..5"),
    ({"rank": 0}, "rank: 0 is outside 1..5"),
    ({"limit": 0}, "limit: must be a positive integer or null, got 0"),
    ({"leaves": [{"name": "a", "size": 0}]}, "leaves[0].size: must be positive, got 0"),
    ({"leaves": [{"name": "a"}, {"name": "  "}]}, "leaves[1].name: must not be empty"),
    ({"names": []}, "names: must not be empty"),
    ({"code": "1a"}, "code: '1a' must be a letter then a digit"),
    ({"code": "a12"}, "code: 'a12' must be a letter then a digit"),  # the whole value must match
    ({"pair": 3}, "pair: 3 is odd"),
])
def test_a_field_rule_names_the_key_and_the_value(values, message):
    with pytest.raises(ConfigError) as err:
        build(Tree, values)
    assert str(err.value) == message


@pytest.mark.parametrize("values, message", [
    ({"age": 1.5}, "age: expected an integer, got 1.5"),
    ({"age": True}, "age: expected an integer, got True"),  # YAML yes/true is no number
    ({"height": "tall"}, "height: expected a number, got 'tall'"),
    ({"evergreen": "yes"}, "evergreen: expected true or false, got 'yes'"),
    ({"code": None}, "code: expected a string, got None"),
    ({"code": ["a1"]}, "code: expected a string, got ['a1']"),
    ({"tags": "old"}, "tags: expected a list, got str 'old'"),
    ({"labels": ["a"]}, "labels: expected a mapping, got list ['a']"),
    ({"labels": {"a": "b"}}, "labels.a: expected an integer, got 'b'"),
    ({"limit": 2.5}, "limit: expected an integer, got 2.5"),
    ({"root": "r"}, "root: expected a mapping, got str 'r'"),
    ({"leaves": [{"size": 2}]}, "leaves[0]: missing key 'name'; required keys: name"),
])
def test_a_wrong_type_names_the_key(values, message):
    with pytest.raises(ConfigError) as err:
        build(Tree, values)
    assert str(err.value) == message


def test_null_passes_a_nullable_field_and_its_rule():
    assert build(Tree, {"rank": None, "limit": None, "root": None}) == Tree()


def test_scalars_become_strings_where_a_string_is_expected():
    assert build(Tree, {"source": 12}).source == "12"
    assert build(Tree, {"labels": {"a": 1}}).labels == {"a": 1}


def test_unknown_keys_are_named_in_full_with_the_allowed_ones():
    with pytest.raises(ConfigError) as err:
        build(Tree, {"root": {"name": "r", "colour": "red"}}, "forest", noun="tree key")
    assert str(err.value) == "unknown tree key 'forest.root.colour'; allowed keys at forest.root: name, size"
    with pytest.raises(ConfigError, match="unknown config key 'hieght'; allowed keys at the top level: age, code,"):
        build(Tree, {"hieght": 3})


def test_fixed_fields_are_set_by_the_caller_and_refused_from_the_mapping():
    assert build(Tree, {"kind": "elm"}, fixed={"source": "caller"}).source == "caller"
    with pytest.raises(ConfigError) as err:
        build(Leaf, {"name": "a", "size": 2}, "leaf", fixed={"size": 3})
    assert str(err.value) == "unknown config key 'leaf.size'; allowed keys at leaf: name"


def test_the_top_level_must_be_a_mapping():
    with pytest.raises(ConfigError, match="^expected a mapping, got list"):
        build(Tree, [])


def test_check_value_holds_a_single_value_to_a_rule():
    assert check_value("x", 3, int | None) == 3
    assert check_value("x", ["a", "b"], tuple[str, ...]) == ("a", "b")
    assert check_value("x", ["a"], str | tuple[str, ...]) == ("a",)  # the first type that fits
    with pytest.raises(ConfigError, match=r"^x\[0\]: 'c' is not one of a, b$"):
        check_value("x", ["c"], tuple[str, ...], Rule(choices=("a", "b")))
