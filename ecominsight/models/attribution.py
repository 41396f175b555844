"""Per-user explanations of the transformer's score by occlusion over the events of the user's text.

A user's fused text is `attributes [SEP] event ; event ; ...` (ecominsight/transforms/fuse.py),
where an "event" is one segment: a day line with `fuse.text_encoding=days`, one event with `events`.
Each behaviour event is left out in turn and the text rescored with the same model, tokenizer and
numeric features: the event's contribution is the full text's probability minus the probability
without it, so a positive contribution is an event that raised the score. Occlusion needs no
gradients, works on the model exactly as it scores, and its numbers read directly as "the score
would be this much lower without this event". Leaving an event out of a text longer than the
token budget lets an older event slide into the window (the tokenizer truncates from the left):
that is part of the event's effect. An event whose removal leaves the model's input unchanged
(already truncated away) contributes exactly 0 and is not rescored.

Runs in Spark as a `mapInPandas` function, the model loaded once per task with `load_classifier`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ecominsight.schema import ATTRIBUTE_SEPARATOR, NO_HISTORY, SEQUENCE_SEPARATOR

EVENT_START = re.compile(r"^\d{2}-\d{2} \S")  # an event phrase starts with its MM-dd day
EXPLANATION_SCHEMA = (
    "user_id string, explained_probability double, events_occluded int, "
    "events array<struct<position:int,event:string,contribution:double>>"
)


def split_text(text: str) -> tuple[str | None, list[str]]:
    """(attributes or None, behaviour events oldest first) of a fused text; the inverse of `join_text`."""
    if text == NO_HISTORY:
        return None, []
    if ATTRIBUTE_SEPARATOR in text:
        attributes, behaviour = text.split(ATTRIBUTE_SEPARATOR, 1)
        return attributes, behaviour.split(SEQUENCE_SEPARATOR)
    if EVENT_START.match(text):
        return None, text.split(SEQUENCE_SEPARATOR)
    return text, []


def join_text(attributes: str | None, events: Sequence[str]) -> str:
    """The fused text of `attributes` and `events`, as fuse writes it."""
    parts = [p for p in (attributes, SEQUENCE_SEPARATOR.join(events)) if p]
    return ATTRIBUTE_SEPARATOR.join(parts) or NO_HISTORY


@dataclass(frozen=True)
class Explanation:
    probability: float  # the model's probability for the full text
    occluded: int  # events rescored without them (the others were outside the token window)
    events: list[tuple[int, str, float]]  # (position, 1 = most recent; event; contribution), best first


def explain_text(text: str, numeric: np.ndarray, *, predict: Callable[[list[str], np.ndarray], np.ndarray],
                 encode: Callable[[str], Sequence[int]], top_events: int, batch_size: int) -> Explanation:
    """Occlusion over the events of one text. `predict(texts, numeric rows)` -> probabilities;
    `encode(text)` -> the token ids the model would see. Keeps the `top_events` events with the
    largest positive contribution (none when no event raised the score)."""
    attributes, events = split_text(text)
    full_ids = list(encode(text))
    variants: list[tuple[int, str, str]] = []
    for index, event in enumerate(events):
        without = join_text(attributes, events[:index] + events[index + 1:])
        if list(encode(without)) != full_ids:
            variants.append((len(events) - index, event, without))
    texts = [text] + [without for _, _, without in variants]
    probabilities = np.concatenate([
        predict(texts[start:start + batch_size], np.repeat(numeric[None, :], len(texts[start:start + batch_size]), axis=0))
        for start in range(0, len(texts), batch_size)
    ])
    full = float(probabilities[0])
    scored = [(position, event, full - float(p)) for (position, event, _), p in zip(variants, probabilities[1:])]
    raised = sorted((s for s in scored if s[2] > 0), key=lambda s: (-s[2], s[0]))[:top_events]
    return Explanation(full, len(variants), raised)


def _explain_partitions(model_dir: str, numeric_names: list[str], *, top_events: int, batch_size: int,
                        torch_threads: int) -> Callable[[Iterator[Any]], Iterator[Any]]:
    def run(batches: Iterator[Any]) -> Iterator[Any]:
        import os

        os.environ["HF_HUB_OFFLINE"] = "1"
        import pandas as pd
        import torch

        from ecominsight import storage
        from ecominsight.models.classifier import encode_texts, load_classifier

        torch.set_num_threads(torch_threads)
        # Loaded into memory from a local copy (the lake may be an object store).
        with storage.resolve(model_dir).local_copy() as local:
            model, tokenizer, scaler, max_length = load_classifier(local)

        def encode(text: str) -> list[int]:
            return encode_texts(tokenizer, [text], max_length=max_length)[0]["input_ids"]

        def predict(texts: list[str], numeric: np.ndarray) -> np.ndarray:
            encoded = tokenizer.pad(encode_texts(tokenizer, texts, max_length=max_length), return_tensors="pt")
            features = torch.as_tensor(scaler.transform(numeric[:, : len(scaler.names)]))
            with torch.inference_mode():
                logits = model(**encoded, numeric=features)
            return torch.softmax(logits, dim=-1)[:, 1].double().numpy()

        for batch in batches:
            rows = []
            numeric = batch[numeric_names].to_numpy(dtype=np.float64) if numeric_names else np.zeros((len(batch), 1))
            for user_id, text, values in zip(batch["user_id"], batch["text"], numeric):
                result = explain_text(str(text), values, predict=predict, encode=encode, top_events=top_events,
                                      batch_size=batch_size)
                rows.append({"user_id": user_id, "explained_probability": result.probability,
                             "events_occluded": result.occluded,
                             "events": [{"position": p, "event": e, "contribution": c} for p, e, c in result.events]})
            yield pd.DataFrame(rows, columns=["user_id", "explained_probability", "events_occluded", "events"])

    return run


def explain_users(users: DataFrame, model_dir: str, *, numeric_names: Sequence[str], top_events: int, batch_size: int,
                  torch_threads: int = 1) -> DataFrame:
    """Occlusion explanations of the transformer's score for each row of `users`.

    Input: user_id, text and the model's numeric feature columns (`numeric_names`, from its
    classifier.json). Output: EXPLANATION_SCHEMA, one row per input row; `events` holds up to
    `top_events` {position (1 = most recent event), event (its text), contribution}."""
    names = list(numeric_names)
    selected = users.select("user_id", "text", *[F.col(n).cast("double").alias(n) for n in names])
    return selected.mapInPandas(
        _explain_partitions(model_dir, names, top_events=top_events, batch_size=batch_size, torch_threads=torch_threads),
        EXPLANATION_SCHEMA,
    )
