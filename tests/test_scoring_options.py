"""Scoring precisions: int8 and ONNX Runtime in Spark agree with fp32, bf16 is refused on CPU,
and score.precision is validated with the rest of the config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pyspark.sql import functions as F

from ecominsight.config import ConfigError, load_config
from ecominsight.models.classifier import NumericScaler, TextAndNumbersClassifier, save_classifier
from ecominsight.models.inference import export_onnx, load_scorer, onnx_path
from ecominsight.models.scoring import transformer_probability

NUMERIC = ["n_events", "spend"]
WORDS = "view cart purchase search favourite shirt mug lamp candle bag card box paper red white".split()


@pytest.fixture(scope="module")
def tiny_classifier(tiny_encoder, tmp_path_factory) -> str:
    """The tiny encoder with a numeric head, saved as the train stage saves a model version."""
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(3)
    model = TextAndNumbersClassifier(AutoModel.from_pretrained(tiny_encoder), len(NUMERIC))
    # A head whose logits are O(1): probabilities spread out, neither sitting at 0.5 nor saturating.
    torch.nn.init.normal_(model.head.weight, std=0.05)
    torch.nn.init.zeros_(model.head.bias)
    # Near the users' own means and spreads (below), so the scaled features are O(1) and do not saturate.
    scaler = NumericScaler(NUMERIC, mean=[20.0, 60.0], std=[12.0, 40.0])
    target = tmp_path_factory.mktemp("tiny_classifier")
    save_classifier(model, AutoTokenizer.from_pretrained(tiny_encoder), scaler, target, max_length=48)
    return str(target)


@pytest.fixture(scope="module")
def users(spark):
    rng = np.random.default_rng(0)
    rows = [(f"u{i}", " ".join(rng.choice(WORDS, size=int(rng.integers(1, 60)))), float(rng.integers(0, 40)),
             float(rng.gamma(2.0, 30.0))) for i in range(48)]
    return spark.createDataFrame(rows, "user_id string, text string, n_events double, spend double").repartition(2)


def _scores(users, model_dir: str, precision: str) -> np.ndarray:
    scored = users.select("user_id", transformer_probability(F.col("text"), model_dir, batch_size=8,
                                                             precision=precision).alias("p"))
    return np.array([r["p"] for r in scored.orderBy("user_id").collect()])


def test_int8_and_onnx_scores_in_spark_agree_with_fp32(users, tiny_classifier):
    fp32 = _scores(users, tiny_classifier, "fp32")
    assert fp32.std() > 0.005  # a spread to compare (0.014 with the seeded tiny encoder), not 48 equal values
    onnx = _scores(users, tiny_classifier, "onnx")
    assert onnx_path(tiny_classifier).is_file()
    np.testing.assert_allclose(onnx, fp32, atol=1e-5)
    int8 = _scores(users, tiny_classifier, "int8")
    np.testing.assert_allclose(int8, fp32, atol=0.05)
    assert not np.array_equal(int8, fp32)  # the quantised model really ran


def test_onnx_export_is_written_once_per_model_version(tiny_classifier):
    path = export_onnx(tiny_classifier)
    stamp = path.modified()
    assert export_onnx(tiny_classifier) == path and path.modified() == stamp
    assert path.parent.list() == ["model.onnx"]  # no temp file beside it


def test_onnx_export_handles_any_batch_and_sequence_length(tiny_classifier):
    export_onnx(tiny_classifier)
    reference, onnx = load_scorer(tiny_classifier), load_scorer(tiny_classifier, precision="onnx")
    for texts in (["mug"], ["red mug " * 20, "bag"], ["lamp"] * 5):
        numeric = np.ones((len(texts), len(NUMERIC)))
        np.testing.assert_allclose(onnx(texts, numeric), reference(texts, numeric), atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 is allowed where a CUDA GPU is visible")
def test_bf16_is_refused_on_cpu_with_a_clear_error(tiny_classifier):
    with pytest.raises(ConfigError, match="bf16 scoring runs on a CUDA GPU only"):
        transformer_probability(F.col("text"), tiny_classifier, batch_size=8, precision="bf16")
    with pytest.raises(ConfigError, match="bf16 scoring runs on a CUDA GPU only"):
        load_scorer(tiny_classifier, precision="bf16")


def test_score_precision_is_validated():
    assert load_config("local").score.precision == "fp32"
    assert load_config("local", ["score.precision=onnx"]).score.precision == "onnx"
    with pytest.raises(ConfigError, match="score.precision: 'fp16' is not one of fp32, int8, onnx, bf16"):
        load_config("local", ["score.precision=fp16"])


def test_loading_a_saved_classifier_reports_no_missing_pooler(tiny_classifier, caplog):
    """The saved encoder has no pooler (the classifier mean-pools); loading it must not log a
    `LOAD REPORT ... MISSING pooler` block, nor rebuild an unused pooler."""
    import logging

    from ecominsight.models.classifier import load_classifier

    with caplog.at_level(logging.INFO):
        model, *_ = load_classifier(tiny_classifier)
    assert "LOAD REPORT" not in caplog.text and "pooler" not in caplog.text
    assert getattr(model.encoder, "pooler", None) is None
