"""Synthetic behaviour with a known answer, to test what each model can and cannot see.

`planted_order_events`: whether a user buys depends only on the *order* of their events: a cart
after a search of the same category means intent; the same events in the other order mean
nothing. Every user holds the same multiset of event types, so counts (LR, GBT) see nothing.
`planted_control_events`: the label depends on counts (how many purchases), order is random, so
the count models have everything they need and the sequence model must simply not lose.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

CATEGORIES = ("shoes", "phone", "coffee", "lamp", "jacket", "tent", "watch", "novel")
FILLER_EVENTS = ("view", "view", "fav", "view")
RAW_COLUMNS = ["user_id", "event_time", "event", "category", "purchased"]


def _timestamps(rng: np.random.Generator, start: dt.datetime, n: int) -> list[str]:
    gaps = np.cumsum(rng.integers(30, 3600, size=n))
    return [(start + dt.timedelta(seconds=int(g))).strftime("%Y-%m-%d %H:%M:%S") for g in gaps]


def planted_order_events(*, users: int, seed: int, filler: int = 4) -> pd.DataFrame:
    """Raw rows (RAW_COLUMNS) where `purchased` = 1 iff `cart c` follows `search c`."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(users):
        intent = bool(rng.integers(0, 2))
        target = CATEGORIES[rng.integers(len(CATEGORIES))]
        pair = [("search", target), ("cart", target)] if intent else [("cart", target), ("search", target)]
        others = [(FILLER_EVENTS[rng.integers(len(FILLER_EVENTS))], CATEGORIES[rng.integers(len(CATEGORIES))])
                  for _ in range(filler)]
        # The pair keeps its order; fillers land anywhere around and between it.
        slots = sorted(rng.choice(filler + 2, size=2, replace=False))
        sequence = list(others)
        sequence.insert(slots[0], pair[0])
        sequence.insert(slots[1], pair[1])
        start = dt.datetime(2024, 3, 1) + dt.timedelta(hours=int(rng.integers(0, 24 * 20)))
        for (event, category), stamp in zip(sequence, _timestamps(rng, start, len(sequence))):
            rows.append((f"u{user:05d}", stamp, event, category, int(intent)))
    return pd.DataFrame(rows, columns=RAW_COLUMNS)


def planted_control_events(*, users: int, seed: int, length: int = 6) -> pd.DataFrame:
    """Raw rows where the purchase probability rises with the number of past purchases."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(users):
        purchases = int(rng.integers(0, length))
        events = ["purchase"] * purchases + [FILLER_EVENTS[rng.integers(len(FILLER_EVENTS))] for _ in range(length - purchases)]
        rng.shuffle(events)
        label = int(rng.random() < 0.1 + 0.8 * purchases / (length - 1))
        start = dt.datetime(2024, 3, 1) + dt.timedelta(hours=int(rng.integers(0, 24 * 20)))
        for event, stamp in zip(events, _timestamps(rng, start, length)):
            rows.append((f"u{user:05d}", stamp, event, CATEGORIES[rng.integers(len(CATEGORIES))], label))
    return pd.DataFrame(rows, columns=RAW_COLUMNS)


# A preset for the files above (write it next to them and point `source.preset` at it).
PRESET_YAML = """\
name: {name}
description: synthetic events with a planted signal (ecominsight.synthetic)
format: csv
paths: ["{path}"]
header: true
timestamp: {{column: event_time, unit: string, format: "yyyy-MM-dd HH:mm:ss", zone: UTC}}
events: {{user_id: user_id, event_type: event, category: category}}
label: purchased
"""
