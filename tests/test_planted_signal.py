"""The sequence model learns sequences: a purchase signal planted in the *order* of events, which
count-based baselines cannot see, and a control where counts carry everything.

Runs the real pipeline with the pretrained MiniLM (a random tiny encoder cannot learn this in a
few epochs), on short synthetic histories, so each data set trains in about a minute on 2 cores.
"""

from __future__ import annotations

import pytest

from ecominsight import synthetic
from ecominsight.config import load_config
from ecominsight.io import Lake
from ecominsight.stages import run_stage

GENERATORS = {"order": synthetic.planted_order_events, "control": synthetic.planted_control_events}


def train_on(kind: str, spark, directory, *, users: int, epochs: int) -> dict:
    raw = directory / "events.csv"
    GENERATORS[kind](users=users, seed=11).to_csv(raw, index=False)
    preset = directory / "preset.yaml"
    preset.write_text(synthetic.PRESET_YAML.format(name=f"planted_{kind}", path=raw))
    config = load_config("local", [
        f"lake={directory / 'lake'}", f"source.preset={preset}", "fuse.label_mode=given", "fuse.population=any_event",
        f"train.transformer.epochs={epochs}", "train.transformer.max_length=64", "train.transformer.checkpoint=false",
    ])
    lake = Lake(config.lake_path)
    for stage in ("clean", "fuse"):
        run_stage(stage, spark, config, lake, f"planted-{kind}")
    train = run_stage("train", spark, config, lake, f"planted-{kind}")["train"]
    return {model: train.metrics[model]["test"]["roc_auc"] for model in ("lr", "gbt", "transformer")}


def test_transformer_sees_the_order_that_counts_cannot(spark, tmp_path):
    auc = train_on("order", spark, tmp_path, users=800, epochs=3)
    assert max(auc["lr"], auc["gbt"]) < 0.7, auc  # the planted signal is invisible to counts
    assert auc["transformer"] > 0.85, auc
    assert auc["transformer"] > max(auc["lr"], auc["gbt"]) + 0.2, auc


def test_transformer_does_not_lose_where_counts_carry_the_signal(spark, tmp_path):
    auc = train_on("control", spark, tmp_path, users=800, epochs=2)
    assert min(auc["lr"], auc["gbt"]) > 0.65, auc  # the control really is learnable from counts
    assert auc["transformer"] >= max(auc["lr"], auc["gbt"]) - 0.06, auc


@pytest.mark.parametrize("kind", ["order", "control"])
def test_planted_sets_hold_the_same_event_mix_in_both_classes(kind):
    frame = GENERATORS[kind](users=400, seed=3)
    per_user = frame.groupby("user_id").agg(label=("purchased", "first"), n=("event", "size"),
                                            searches=("event", lambda e: (e == "search").sum()))
    if kind == "order":
        # Same length and the same number of searches whatever the label: only the order differs.
        assert per_user.groupby("label")["n"].nunique().eq(1).all()
        assert per_user.groupby("label")["searches"].mean().nunique() == 1
    assert 0.3 < per_user["label"].mean() < 0.7
