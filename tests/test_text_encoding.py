"""The token budget keeps a user's attributes and most recent events, and leaves short texts as they were."""

from __future__ import annotations

import pytest

from ecominsight.models.classifier import encode_texts
from ecominsight.models.transformer import load_tokenizer, resolve_pretrained
from ecominsight.transforms.fuse import ATTRIBUTE_SEPARATOR, NO_HISTORY, SEQUENCE_SEPARATOR


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_pretrained("minilm"), extra_tokens=[])


def _events(n: int) -> str:
    return SEQUENCE_SEPARATOR.join(f"11-{i % 28 + 1:02d} purchase item{i} x2 {i}.50" for i in range(n))


def test_texts_within_the_budget_encode_as_the_tokenizer_does(tokenizer):
    texts = [f"age 47 | region 221{ATTRIBUTE_SEPARATOR}{_events(3)}", _events(2), NO_HISTORY, "age 30 | gender F"]
    for text, encoded in zip(texts, encode_texts(tokenizer, texts, max_length=128)):
        assert encoded == dict(tokenizer(text)), text


def test_a_long_history_keeps_the_attributes_and_loses_its_oldest_events(tokenizer):
    attributes = "age 47 | region 221"
    text = f"{attributes}{ATTRIBUTE_SEPARATOR}{_events(60)}"
    (encoded,) = encode_texts(tokenizer, [text], max_length=64)
    ids = encoded["input_ids"]
    assert len(ids) == 64 == len(encoded["attention_mask"]) == len(encoded["token_type_ids"])
    attribute_ids = tokenizer(attributes, add_special_tokens=False)["input_ids"]
    assert ids[: len(attribute_ids) + 2] == [tokenizer.cls_token_id, *attribute_ids, tokenizer.sep_token_id]
    decoded = tokenizer.decode(ids[len(attribute_ids) + 2:])
    assert decoded.endswith("item59 x2 59. 50 [SEP]") and "item0 " not in decoded  # the newest event survives
    # Plain left truncation, for contrast, loses the attributes entirely.
    assert "age" not in tokenizer.decode(tokenizer(text, truncation=True, max_length=64)["input_ids"])


def test_a_long_text_without_attributes_is_cut_from_the_left(tokenizer):
    text = _events(60)
    (encoded,) = encode_texts(tokenizer, [text], max_length=32)
    assert encoded["input_ids"] == tokenizer(text, truncation=True, max_length=32)["input_ids"]
