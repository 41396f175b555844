"""The synthetic generator: seeded and byte-identical, faithful to its fitted profile, exact about the
bad rows it plants (through the `synthetic` preset's clean), reachable as `ecominsight generate`."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecominsight.generator import PLANTED, fit_profile, generate, load_profile
from tests.conftest import REPO
from tests.raw_records import count_records, records_of


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != "preset.yaml"}  # the preset names its own folder


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_same_seed_gives_byte_identical_files(tmp_path, fmt):
    profile = load_profile()
    kwargs = dict(n_events=12_000, fmt=fmt, bad_fraction=0.01, chunk_rows=5_000)
    generate(profile, seed=5, out=tmp_path / "a", **kwargs)
    generate(profile, seed=5, out=tmp_path / "b", **kwargs)
    generate(profile, seed=6, out=tmp_path / "c", **kwargs)
    first, again, other = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert {name.split("/")[0] for name in first} == {"events", "users", "items", "manifest.json"}
    assert first == again
    assert first["events/part-00000." + fmt] != other["events/part-00000." + fmt]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "data"
    manifest = generate(load_profile(), n_events=50_000, seed=11, out=out, fmt="parquet", bad_fraction=0.003)
    events = pd.read_parquet(out / "events")
    return manifest, events, pd.read_parquet(out / "users"), pd.read_parquet(out / "items")


def test_event_type_shares_follow_the_profile(generated):
    manifest, events, _, _ = generated
    assert len(events) == manifest["events"] == 50_000
    shares = events["event_type"].value_counts(normalize=True)
    for kind, share in load_profile()["event_types"].items():
        assert abs(shares.get(kind, 0.0) - share) < 0.01, (kind, shares.get(kind), share)


def test_sessions_items_and_prices_are_consistent(generated):
    _, events, users, items = generated
    sound = events.dropna(subset=["user_id"])
    sound = sound[pd.to_datetime(sound["event_time"], errors="coerce").notna()]
    # Events per session: the fitted mean (within 15 %; the last user of a chunk is cut short).
    profile = load_profile()
    expected = np.dot(profile["session_length"]["values"], profile["session_length"]["probs"])
    assert abs(sound.groupby("session_id").size().mean() / expected - 1) < 0.15
    # One price per item, the items file's, and every event's item and user are listed.
    assert (sound.groupby("item_id")["price"].nunique() == 1).all()
    merged = sound.merge(items, on="item_id", suffixes=("", "_listed"))
    assert len(merged) == len(sound)
    assert (merged["price"] == merged["price_listed"]).all() and (merged["category"] == merged["category_listed"]).all()
    assert set(sound["user_id"].astype(int)) <= set(users["user_id"])
    # Times of a user strictly increase: no duplicate other than the planted ones can exist.
    ordered = sound.drop_duplicates().sort_values(["user_id", "event_time"])
    assert not ordered.duplicated(["user_id", "event_time"]).any()
    # Popularity: the most popular category is clearly ahead of the median one (Zipf-like).
    counts = sound["category"].value_counts()
    assert counts.iloc[0] > 20 * counts.median()


def test_planted_bad_rows_are_exactly_as_declared(generated):
    manifest, events, _, _ = generated
    planted = manifest["planted_bad_rows"]
    assert sum(planted.values()) == round(50_000 * 0.003) and set(planted) == set(PLANTED)
    assert events["user_id"].isna().sum() == planted["missing_user_id"]
    assert pd.to_datetime(events["event_time"], format="%Y-%m-%d %H:%M:%S", errors="coerce").isna().sum() == planted["bad_timestamp"]
    assert events.duplicated().sum() == planted["duplicate"]


def test_fit_profile_recovers_a_known_sample():
    rng = np.random.default_rng(0)
    start = dt.datetime(2024, 1, 1)
    rows = []
    for user in range(200):
        t = start + dt.timedelta(hours=int(rng.integers(0, 100)))
        for session in range(3):
            for _ in range(4):
                rows.append((f"u{user}", t, "purchase" if rng.random() < 0.25 else "view", f"i{rng.integers(50)}",
                             f"c{rng.integers(5)}", 2.0, 1.0))
                t += dt.timedelta(seconds=60)
            t += dt.timedelta(hours=5)
    events = pd.DataFrame(rows, columns=["user_id", "ts", "event_type", "item_id", "category", "price", "quantity"])
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(200)], "age": [30] * 150 + [None] * 50,
                          "gender": ["F", "M", "U", None] * 50, "region": ["North"] * 200})
    profile = fit_profile(events, users, source="handmade")
    assert profile["session_length"] == {"values": [4], "probs": [1.0]}
    assert profile["sessions_per_user"] == {"values": [3], "probs": [1.0]}
    assert profile["gap_within_s"][0] == profile["gap_within_s"][-1] == 60
    assert profile["gap_between_s"][50] == 5 * 3600 + 60
    assert abs(profile["event_types"]["purchase"] - 0.25) < 0.03
    assert profile["price"][50] == 2.0
    assert profile["users"]["age"] == {"known_share": 0.75, "values": [30], "probs": [1.0]}
    assert profile["users"]["gender"]["known_share"] == 0.5
    json.dumps(profile)  # a profile is plain JSON


def test_zipf_exponent_of_exact_zipf_counts():
    from ecominsight.generator import _zipf_exponent

    counts = np.round(1e6 * np.arange(1, 300, dtype=float) ** -1.3)
    assert abs(_zipf_exponent(counts) - 1.3) < 0.02


def test_synthetic_preset_quarantines_exactly_the_planted_rows(spark, tmp_path):
    from ecominsight.config import load_config
    from ecominsight.io import Lake
    from ecominsight.presets import load_preset
    from ecominsight.stages import run_clean

    manifest = generate(load_profile(), n_events=8_000, seed=3, out=tmp_path / "data", fmt="csv", bad_fraction=0.01)
    config = load_config("local", [f"source.preset={tmp_path / 'data' / 'preset.yaml'}", f"lake={tmp_path / 'lake'}"])
    summary = run_clean(spark, config, Lake(config.lake_path), "gen-test")
    preset = load_preset(config.source.preset)
    raw_rows = records_of(preset)  # the generated CSV files' records, counted without Spark
    assert raw_rows == 8_000
    assert summary.input_rows == summary.clean_rows + summary.quarantined_rows == raw_rows
    assert summary.quarantined_by_reason == manifest["planted_bad_rows"]
    assert summary.clean_rows == 8_000 - sum(manifest["planted_bad_rows"].values())
    for table, side in (("users", preset.user_source), ("items", preset.item_source)):
        counts = summary.tables[table]
        assert counts["clean_rows"] + counts["quarantined_rows"] == counts["input_rows"] == records_of(side)
        assert counts["input_rows"] == counts["clean_rows"] == manifest[table]


def test_the_synthetic_preset_loads():
    from ecominsight.presets import load_preset

    preset = load_preset("synthetic")
    assert preset.user_source is not None and preset.item_source is not None


def test_cli_generate(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "ecominsight", "generate", "--events", "3000", "--seed", "2",
                             "--format", "csv", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["events"] == 3000
    lines = sum(len(p.read_text().splitlines()) - 1 for p in (tmp_path / "out" / "events").glob("*.csv"))
    assert lines == 3000
    bad = subprocess.run([sys.executable, "-m", "ecominsight", "generate", "--events", "10", "--bad-fraction", "0.9",
                          "--out", str(tmp_path / "bad")], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert bad.returncode == 2 and "bad_fraction" in bad.stderr


def test_benchmark_baselines_agree_with_the_manifest(tmp_path):
    """benchmarks/etl.py's pandas and DuckDB clean+fuse, on a small generated input."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import etl
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    manifest = generate(load_profile(), n_events=20_000, seed=4, out=tmp_path / "data", fmt="parquet", bad_fraction=0.003)
    results = {}
    for name, run in etl.BASELINES.items():
        (tmp_path / name).mkdir()
        results[name] = run(tmp_path / "data", tmp_path / name)
    raw_rows = count_records([tmp_path / "data" / "events"], fmt="parquet")
    assert raw_rows == 20_000
    for counts in results.values():
        assert counts["input_rows"] == counts["clean_rows"] + counts["quarantined_rows"] == raw_rows
        assert counts["quarantined_rows"] == sum(manifest["planted_bad_rows"].values())
    assert results["pandas"] == results["duckdb"]
    assert results["pandas"]["current_users"] == manifest["users"]
