"""Occlusion explanations: the fused text splits into its events, and each contribution is the drop
in the real classifier's probability when that event is left out."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import torch
from pyspark.sql import functions as F

from ecominsight import schema
from ecominsight.models.attribution import explain_users, join_text, split_text
from ecominsight.models.classifier import (NumericScaler, TextAndNumbersClassifier, encode_texts, load_classifier,
                                          save_classifier)
from ecominsight.models.scoring import transformer_probability
from ecominsight.transforms import fuse

NUMERIC = ["n_events", "spend"]


def test_fused_texts_split_into_their_events_and_join_back(spark):
    t = dt.datetime(2020, 3, 1, 9)
    events = spark.createDataFrame([
        ("a", t, "view", "i1", None, None, 10.0, 1.0, None, None, "u", t.date()),
        ("a", t + dt.timedelta(hours=1), "search", None, None, None, None, None, "red mug", None, "u", t.date()),
        ("a", t + dt.timedelta(hours=2), "purchase", "i1", None, None, 1234.5, 2.0, None, None, "u", t.date()),
        ("b", t, "cart", "i2", None, None, None, None, None, None, "u", t.date()),
    ], schema.EVENTS)
    users = spark.createDataFrame([("a", 30, "F", "Leeds", None, {}), ("c", 40, "M", None, None, {})], schema.USERS)
    items = spark.createDataFrame([("i1", "red mug", None, None, 10.0, None)], schema.ITEMS)
    fused = fuse.fuse_user_sequences(events, users, items, as_of=dt.date(2020, 3, 2), max_events=8, population="any_event",
                                     labels=None)
    rows = {r["user_id"]: r for r in fused.collect()}
    assert split_text(rows["a"]["text"]) == ("age 30 | gender F | region Leeds",
                                             ["03-01 view red mug 10.00", "03-01 search red mug", "03-01 purchase red mug x2 1,234.50"])
    assert split_text(rows["b"]["text"]) == (None, ["03-01 cart i2"])  # no attributes: events only
    assert split_text(rows["c"]["text"]) == ("age 40 | gender M", [])  # attributes only
    for row in rows.values():
        attributes, found = split_text(row["text"])
        assert len(found) == row["n_events_in_text"] and join_text(attributes, found) == row["text"]
    assert split_text("no history") == (None, []) and join_text(None, []) == "no history"


@pytest.fixture(scope="module")
def classifier_dir(tiny_encoder, tmp_path_factory):
    """The tiny encoder's architecture with seeded weights (the session's tiny encoder is unseeded), saved
    as the train stage saves a classifier (max 40 tokens)."""
    from transformers import BertConfig, BertModel

    from ecominsight.models.transformer import load_tokenizer

    torch.manual_seed(3)
    model = TextAndNumbersClassifier(BertModel(BertConfig.from_pretrained(tiny_encoder)), len(NUMERIC))
    torch.nn.init.normal_(model.head.weight, std=2.0)
    scaler = NumericScaler.fit(NUMERIC, np.array([[1.0, 0.0], [20.0, 500.0], [5.0, 30.0]]))
    directory = tmp_path_factory.mktemp("classifier")
    save_classifier(model, load_tokenizer(tiny_encoder, extra_tokens=[]), scaler, directory, max_length=40)
    return str(directory)


def test_contributions_are_the_probability_drops_of_leaving_each_event_out(spark, classifier_dir):
    events = [f"0{m}-1{d} {kind} {what} 1{d}.00" for m, d, kind, what in [
        (1, 1, "view", "red mug"), (1, 2, "cart", "blue pot"), (2, 3, "purchase", "tea towel"), (2, 4, "view", "big lamp"),
        (3, 5, "fav", "oak desk"), (3, 6, "cart", "red mug"), (3, 7, "view", "wool rug"), (3, 8, "purchase", "tin box"),
        (4, 9, "view", "glass jug"), (4, 1, "cart", "copper pan"), (4, 2, "search", "soft towel"), (4, 3, "view", "old clock"),
    ]]
    texts = {"long": join_text("age 30 | gender F", events), "short": join_text(None, events[-3:])}
    users = spark.createDataFrame([(u, t, 3.0, 40.0) for u, t in texts.items()],
                                  "user_id string, text string, n_events double, spend double")
    explained = {r["user_id"]: r for r in explain_users(users, classifier_dir, numeric_names=NUMERIC, top_events=2,
                                                        batch_size=4).collect()}

    model, tokenizer, scaler, max_length = load_classifier(classifier_dir)
    numeric = torch.as_tensor(scaler.transform(np.array([[3.0, 40.0]])))

    def probability(text):
        encoded = tokenizer.pad(encode_texts(tokenizer, [text], max_length=max_length), return_tensors="pt")
        with torch.inference_mode():
            return torch.softmax(model(**encoded, numeric=numeric), dim=-1)[0, 1].item()

    for user, text in texts.items():
        attributes, found = split_text(text)
        drops = {(len(found) - i, e): probability(text) - probability(join_text(attributes, found[:i] + found[i + 1:]))
                 for i, e in enumerate(found)}
        expected = sorted(((p, e, c) for (p, e), c in drops.items() if c > 0), key=lambda x: -x[2])[:2]
        row = explained[user]
        assert row["explained_probability"] == pytest.approx(probability(text), abs=1e-6)
        assert [(e["position"], e["event"]) for e in row["events"]] == [(p, e) for p, e, _ in expected]
        assert [e["contribution"] for e in row["events"]] == pytest.approx([c for _, _, c in expected], abs=1e-6)
    assert any(row["events"] for row in explained.values())  # the comparison above is not between empty lists
    # 40 tokens hold only the newest few events of the long text: the older ones are not rescored.
    assert 0 < explained["long"]["events_occluded"] < len(events)
    assert explained["short"]["events_occluded"] == 3
    # The same probability as the scoring UDF gives for the full text.
    scored = users.select("user_id", transformer_probability(F.col("text"), classifier_dir, batch_size=4).alias("p")).collect()
    assert {r["user_id"]: r["p"] for r in scored} == pytest.approx(
        {u: r["explained_probability"] for u, r in explained.items()}, abs=1e-5)
