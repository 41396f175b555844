"""TorchDistributor training with 2 CPU processes (gloo) on the flat labelled table with Chinese queries."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F
from safetensors import safe_open
from transformers import AutoTokenizer

from ecominsight.config import load_config
from ecominsight.io import Lake, read_json
from ecominsight.models.classifier import freeze_lower_layers, load_classifier
from ecominsight.models.transformer import ModelPathError, resolve_pretrained, stratified_sample
from ecominsight.stages import run_stage
from ecominsight.transforms.fuse import NUMERIC_FEATURES
from ecominsight.catalog import CLEAN_LABELS, CURRENT_SEQUENCES, SEARCH_INSIGHTS, USER_PROFILES, USER_SEQUENCES

REPO = Path(__file__).resolve().parent.parent


def _flat_overrides(lake_root, tiny_encoder) -> list[str]:
    return [f"lake={lake_root}", "source.preset=flat_labelled", "fuse.label_mode=given", "fuse.population=any_event",
            f"train.transformer.pretrained={tiny_encoder}", "train.transformer.epochs=2",
            "train.transformer.num_processes=2", "train.transformer.max_length=64", "train.transformer.batch_size=8"]


@pytest.fixture(scope="module")
def flat_run(spark, tiny_encoder, tmp_path_factory):
    lake_root = tmp_path_factory.mktemp("flat_lake")
    config = load_config("local", _flat_overrides(lake_root, tiny_encoder))
    lake = Lake(config.lake_path)
    summary = run_stage("pipeline", spark, config, lake, "flat")
    return spark, lake, summary, tiny_encoder


def test_two_gloo_processes_train_and_rank0_writes_the_model(flat_run):
    _, _, summary, tiny_encoder = flat_run
    model_dir = Path(summary["train"].model_dirs["transformer"])
    metrics = read_json(model_dir / "metrics.json")
    assert metrics["world_size"] == 2
    assert len(metrics["history"]) == 2 and all(math.isfinite(h["train_loss"]) for h in metrics["history"])
    assert metrics["best_epoch"] in (1, 2)
    for split in ("valid", "test"):
        assert 0.0 <= metrics[split]["roc_auc"] <= 1.0 and 0.0 <= metrics[split]["f1"] <= 1.0
    # Training really moved the encoder away from the pretrained starting point.
    with safe_open(str(Path(tiny_encoder) / "model.safetensors"), "pt") as before, \
         safe_open(str(model_dir / "model.safetensors"), "pt") as after:
        key = "encoder.layer.0.attention.self.query.weight"
        assert not before.get_tensor(f"bert.{key}").equal(after.get_tensor(key))
    assert (model_dir / "head.safetensors").is_file() and (model_dir / "classifier.json").is_file()


def test_chinese_queries_reach_the_model_as_real_tokens(flat_run):
    spark, lake, summary, tiny_encoder = flat_run
    model_dir = summary["train"].model_dirs["transformer"]
    base = AutoTokenizer.from_pretrained(tiny_encoder)
    assert base.unk_token_id in base("笔记本电脑")["input_ids"]  # the English vocabulary alone loses it
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("笔记本电脑")["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert [t.strip() for t in tokenizer.convert_ids_to_tokens(ids)[1:-1]] == list("笔记本电脑")
    model, _, scaler, _ = load_classifier(model_dir)
    assert model.encoder.get_input_embeddings().num_embeddings == len(tokenizer) > base.vocab_size
    assert scaler.names == list(NUMERIC_FEATURES)
    # Every Chinese training text survives tokenisation without [UNK].
    texts = [r["text"] for r in lake.read(spark, USER_SEQUENCES)
             .filter(F.col("split") == "train").select("text").collect()]
    chinese = [t for t in texts if any("\u4e00" <= c <= "\u9fff" for c in t)]
    assert len(chinese) > 50
    unknown = sum(tokenizer(t)["input_ids"].count(tokenizer.unk_token_id) for t in chinese)
    assert unknown == 0


def test_given_labels_and_scores_cover_the_flat_table(flat_run):
    spark, lake, summary, _ = flat_run
    labels = lake.read(spark, CLEAN_LABELS)
    training = lake.read(spark, USER_SEQUENCES)
    assert training.count() == labels.count()
    joined = training.join(labels.withColumnRenamed("label", "given"), "user_id")
    assert joined.filter(F.col("label") != F.col("given")).count() == 0
    assert summary["score"].users_scored == lake.read(spark, CURRENT_SEQUENCES).count()


def test_missing_or_pickled_model_paths_are_refused_with_advice(tmp_path):
    with pytest.raises(ModelPathError, match="does not exist.*'minilm'.*local directory"):
        resolve_pretrained(str(tmp_path / "nowhere"))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(ModelPathError, match="pickle-based pytorch_model.bin.*never loaded"):
        resolve_pretrained(str(tmp_path))


def _wait_for(path: Path, child: subprocess.Popen, *, timeout: float) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if child.poll() is not None or time.time() > deadline:
            child.kill()
            raise AssertionError(f"{path} never appeared (train exited {child.returncode}): "
                                 f"{child.communicate()[1][-3000:]}")
        time.sleep(0.01)


def test_training_killed_mid_epoch_resumes_to_the_uninterrupted_result(flat_run, tmp_path):
    """Injected: SIGKILL to the whole `ecominsight train` process group (driver JVM, TorchDistributor,
    both gloo ranks) a third of an epoch into epoch 2. Checked: epoch 2 left no checkpoint, and the
    re-run resumes from epoch 1's and ends with the metrics of the uninterrupted run (flat_run)."""
    spark, lake, summary, tiny_encoder = flat_run
    uninterrupted = read_json(Path(summary["train"].model_dirs["transformer"]) / "metrics.json")
    copy = Lake(tmp_path / "lake")
    shutil.copytree(lake.root.path, copy.root.path, ignore=shutil.ignore_patterns("checkpoints", "models", "_lock"))
    # The baselines are not what is under test: few boosting rounds keep the two runs short.
    overrides = [*_flat_overrides(copy.root, tiny_encoder), "train.gradient_boosted_trees.max_iter=3"]
    child = subprocess.Popen([sys.executable, "-m", "ecominsight", "train", *[f"--set={o}" for o in overrides]],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    checkpoints = Path(copy.root.path) / "checkpoints" / "transformer"
    _wait_for(checkpoints, child, timeout=300)
    _wait_for(next(checkpoints.iterdir()) / "epoch-1" / "state.json", child, timeout=300)
    (checkpoint_dir,) = list(checkpoints.iterdir())
    epoch_seconds = read_json(checkpoint_dir / "epoch-1" / "state.json")["history"][0]["seconds"]
    time.sleep(epoch_seconds / 3)
    os.killpg(child.pid, signal.SIGKILL)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert not (checkpoint_dir / "epoch-2" / "state.json").exists(), "the kill came after epoch 2 had finished"

    again = run_stage("train", spark, load_config("local", overrides), copy, "flat-resumed")["train"].metrics["transformer"]
    # Epoch 1 came from the killed run's checkpoint (its wall time is that run's, not re-measured) ...
    assert again["history"][0]["seconds"] == epoch_seconds
    assert again["history"][0]["train_loss"] == pytest.approx(uninterrupted["history"][0]["train_loss"], abs=1e-6)
    # ... and epoch 2, retrained from it, lands where the uninterrupted run did.
    assert again["history"][1]["train_loss"] == pytest.approx(uninterrupted["history"][1]["train_loss"], abs=1e-6)
    for split in ("valid", "test"):
        assert again[split]["roc_auc"] == pytest.approx(uninterrupted[split]["roc_auc"], abs=1e-6)


def test_barrier_mode_trains_on_the_executors(flat_run):
    """local_mode=False: TorchDistributor runs the ranks as barrier tasks on Spark's executors."""
    spark, lake, summary, tiny_encoder = flat_run
    config = load_config("local", [
        f"lake={lake.root}", "source.preset=flat_labelled", "fuse.label_mode=given", "fuse.population=any_event",
        f"train.transformer.pretrained={tiny_encoder}", "train.transformer.epochs=1", "train.transformer.num_processes=2",
        "train.transformer.local_mode=false", "train.transformer.checkpoint=false", "train.transformer.max_length=32",
    ])
    metrics = run_stage("train", spark, config, lake, "flat-barrier")["train"].metrics["transformer"]
    assert metrics["world_size"] == 2 and len(metrics["history"]) == 1
    assert 0.0 <= metrics["test"]["roc_auc"] <= 1.0


def test_search_queries_of_the_flat_table_become_search_insights(flat_run):
    spark, lake, summary, _ = flat_run
    assert summary["insights"].rows["search_insights"] > 0
    table = lake.read(spark, SEARCH_INSIGHTS)
    everyone = table.filter(F.col("segment") == "all").collect()
    assert any("\u4e00" <= c <= "\u9fff" for r in everyone for c in r["query"])  # Chinese queries survive
    assert sorted(r["rank"] for r in everyone) == list(range(1, len(everyone) + 1))
    # The flat table records searches only: nothing follows them, so no query converts or is zero-conversion.
    assert {(r["outcome"], r["zero_conversion"]) for r in everyone} == {("no_follow_up", False)}
    profiles = lake.read(spark, USER_PROFILES)
    segments = {r["segment"] for r in table.select("segment").distinct().collect()}
    assert "all" in segments and segments - {"all"} <= {r["segment"] for r in profiles.select("segment").distinct().collect()}
    assert '<section id="search">' in (lake.report_dir("flat") / "report.html").read_text()


def test_training_user_cap_is_a_seeded_stratified_sample():
    labels = np.array([1] * 30 + [0] * 70)
    kept = stratified_sample(labels, 20, seed=3)
    assert len(kept) == 20 and len(set(kept.tolist())) == 20 and labels[kept].sum() == 6  # 30% positives kept
    assert kept.tolist() == stratified_sample(labels, 20, seed=3).tolist()  # deterministic
    assert kept.tolist() != stratified_sample(labels, 20, seed=4).tolist()  # and the seed matters
    assert stratified_sample(labels, None, seed=3).tolist() == list(range(100))
    assert stratified_sample(labels, 100, seed=3).tolist() == list(range(100))
    # A rare class keeps at least one member, so the capped train split still holds both classes.
    rare = np.array([1] + [0] * 99)
    assert rare[stratified_sample(rare, 10, seed=0)].tolist().count(1) == 1


def test_the_transformer_trains_on_at_most_max_train_users_with_frozen_lower_layers(flat_run):
    spark, lake, summary, tiny_encoder = flat_run
    available = read_json(Path(summary["train"].model_dirs["transformer"]) / "metrics.json")["n_train"]
    overrides = [
        *_flat_overrides(lake.root, tiny_encoder), "train.transformer.epochs=1", "train.transformer.num_processes=1",
        "train.transformer.checkpoint=false", "train.transformer.max_length=32", "train.transformer.max_train_users=40",
        "train.transformer.freeze_layers=1",
        # small baselines: this test is about the transformer's sample
        "train.gradient_boosted_trees.max_iter=2", "train.logistic_regression.max_iter=5",
        # one fit after another, as benchmarks/quality.py runs them to attribute CPU time per model
        "train.concurrent_baselines=false",
    ]
    train = run_stage("train", spark, load_config("local", overrides), lake, "flat-capped")["train"]
    windows = [(cost["fit_started_at"], cost["fit_started_at"] + cost["fit_seconds"])
               for cost in (train.metrics[name]["cost"] for name in ("lr", "gbt", "transformer"))]
    assert all(end <= next_start + 0.01 for (_, end), (next_start, _) in zip(windows, windows[1:]))
    assert not any(train.metrics[name]["cost"]["concurrent"] for name in ("lr", "gbt", "transformer"))
    assert train.metrics["transformer"]["n_train"] == 40 and train.metrics["transformer"]["n_train_available"] == available > 40
    assert len(train.metrics["transformer"]["history"]) == 1
    # The baselines keep the whole train split; every model is tested on the same users.
    assert train.metrics["lr"]["test"]["n"] == train.metrics["transformer"]["test"]["n"]
    # Embeddings and layer 0 stayed pretrained; layer 1 and the head trained.
    with safe_open(str(Path(tiny_encoder) / "model.safetensors"), "pt") as before, \
         safe_open(str(Path(train.model_dirs["transformer"]) / "model.safetensors"), "pt") as after:
        for key in ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight"):
            pretrained = before.get_tensor(f"bert.{key}")
            # The word embeddings grew by the added CJK characters; the pretrained rows come first.
            assert pretrained.equal(after.get_tensor(key)[: len(pretrained)]), key
        key = "encoder.layer.1.attention.self.query.weight"
        assert not before.get_tensor(f"bert.{key}").equal(after.get_tensor(key))


def test_freezing_more_layers_than_the_encoder_has_is_refused(tiny_encoder):
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(tiny_encoder, use_safetensors=True)
    with pytest.raises(ValueError, match="2 layers"):
        freeze_lower_layers(encoder, 3)
    freeze_lower_layers(encoder, 2)
    assert not any(p.requires_grad for p in encoder.embeddings.parameters())
    assert not any(p.requires_grad for p in encoder.encoder.layer.parameters())
