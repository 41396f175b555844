"""Generate tests/data/flat_labelled_sample.csv, the sample for the `flat_labelled` source preset.

    python tests/data/make_flat_sample.py

The classic flat labelled table, `user_id,age,gender,query,purchased` (UTF-8, header): 200 users,
1-4 rows per user, one row per search query; a user's age, gender and purchase label repeat on each
of their rows. Queries are mostly Chinese e-commerce searches, a few English. Genders are written
variously (M/F/男/女/male/female). The label is drawn per user with a probability that rises with
purchase-intent words in the user's queries (优惠, 包邮, 正品, 购买, ...), falls with browsing words
(评测, 推荐, 怎么样, ...), and rises mildly with age, so a model has something to learn.

Seeded (numpy, SEED below): re-running writes the same bytes. Clean users' queries are distinct
per user even after text cleaning, so no clean row is an accidental duplicate.

Dirty rows written on purpose, so that the quarantine path of `clean` is exercised; the expected
reason of each is in brackets:
  1. 2 rows with an empty user_id (ages/genders/queries/labels otherwise valid)   [missing_user_id]
  2. 1 row whose purchased value is "maybe", for its own user 100201            [bad_label]
  3. 2 rows that are exact byte copies of two earlier rows (of users 100007 and 100042),
     written after all the regular rows                                         [duplicate]
  4. 1 valid row (user 100003) whose query is `<b>促销</b>笔记本电脑 &amp; 鼠标!!`;
     cleaning must strip the tag and the entity and keep `促销 笔记本电脑 鼠标`   [accepted]
  5. 1 valid row (user 100005) whose query is `笔记本电脑 轻薄` (the word 笔记本电脑 is
     certain to occur; many other rows have it too)                             [accepted]
So: 6 dirty-path rows of which 5 are quarantined (2 + 1 + 2) and the HTML/笔记本电脑 rows stay.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

SEED = 20240630
N_USERS = 200
FIRST_USER_ID = 100001
OUTPUT = Path(__file__).resolve().parent / "flat_labelled_sample.csv"
HEADER = ["user_id", "age", "gender", "query", "purchased"]

# (product, category effect on the purchase logit)
PRODUCTS = [
    ("笔记本电脑", 0.3), ("手机壳", 0.1), ("连衣裙", 0.2), ("化妆品", 0.2), ("运动鞋", 0.2),
    ("婴儿奶粉", 0.6), ("蓝牙耳机", 0.1), ("机械键盘", 0.0), ("电饭煲", 0.3), ("羽绒服", 0.2),
    ("洗面奶", 0.3), ("口红", 0.2), ("猫粮", 0.5), ("纸尿裤", 0.6), ("行李箱", -0.1),
    ("咖啡机", -0.2), ("扫地机器人", -0.1), ("儿童玩具", 0.1), ("茶叶", 0.2), ("瑜伽垫", 0.0),
    ("智能手表", -0.1), ("充电宝", 0.2), ("牛仔裤", 0.1), ("床上四件套", 0.1), ("空气净化器", -0.3),
]
ENGLISH = [("iphone 15 case", 0.1), ("nike running shoes", 0.1), ("wireless earbuds", 0.0),
           ("laptop stand", 0.0), ("air fryer", 0.2)]
INTENT_WORDS = ["优惠", "包邮", "正品", "购买", "旗舰店", "折扣", "下单", "优惠券"]
BROWSE_WORDS = ["评测", "推荐", "怎么样", "图片", "对比", "哪个牌子好"]
GENDERS = {"M": ["M", "男", "male", "m"], "F": ["F", "女", "female", "f"]}


def _clean(text: str) -> str:
    """Approximates the pipeline's text cleaning, only to keep a user's queries distinct."""
    text = re.sub(r"<[^>]*>|&[a-zA-Z#0-9]+;|[^\w\s]", " ", text)
    return " ".join(text.split())


def _query(rng: np.random.Generator) -> tuple[str, float]:
    """One search query and its effect on the purchase logit."""
    if rng.random() < 0.1:
        product, effect = ENGLISH[rng.integers(len(ENGLISH))]
        roll = rng.random()
        if roll < 0.25:
            return f"{product} discount", effect + 1.3
        if roll < 0.45:
            return f"{product} review", effect - 0.8
        return product, effect
    product, effect = PRODUCTS[rng.integers(len(PRODUCTS))]
    kind = rng.random()
    if kind < 0.35:
        word = INTENT_WORDS[rng.integers(len(INTENT_WORDS))]
        text = f"{product} {word}" if rng.random() < 0.7 else f"{word}{product}"
        return text, effect + 1.3
    if kind < 0.6:
        word = BROWSE_WORDS[rng.integers(len(BROWSE_WORDS))]
        return f"{product}{word}", effect - 0.8
    return product, effect


def build(seed: int = SEED) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    rows: list[list[str]] = []
    for index in range(N_USERS):
        user_id = str(FIRST_USER_ID + index)
        age = int(np.clip(rng.normal(33, 10), 16, 70))
        sex = "M" if rng.random() < 0.48 else "F"
        gender = GENDERS[sex][rng.integers(len(GENDERS[sex]))]
        queries: list[tuple[str, float]] = []
        seen: set[str] = set()
        forced = {3: ("<b>促销</b>笔记本电脑 &amp; 鼠标!!", 1.3 + 0.3), 5: ("笔记本电脑 轻薄", 0.3)}
        if index + 1 in forced:
            queries.append(forced[index + 1])
            seen.add(_clean(forced[index + 1][0]))
        n_queries = int(rng.integers(1, 5))
        while len(queries) < n_queries:
            text, effect = _query(rng)
            if _clean(text) not in seen:
                seen.add(_clean(text))
                queries.append((text, effect))
        logit = -1.6 + sum(effect for _, effect in queries) / len(queries) * 1.5 + 0.03 * (age - 33)
        logit += 0.4 * sum(effect > 1.0 for _, effect in queries)
        purchased = int(rng.random() < 1 / (1 + np.exp(-logit)))
        rows.extend([user_id, str(age), gender, text, str(purchased)] for text, _ in queries)

    # Dirty rows (see the module docstring).
    by_user = {row[0]: row for row in rows}
    rows.append(["", "29", "女", "连衣裙 包邮", "1"])
    rows.append(["", "41", "M", "机械键盘评测", "0"])
    rows.append([str(FIRST_USER_ID + N_USERS), "35", "男", "手机壳 正品", "maybe"])
    rows.append(list(by_user[str(FIRST_USER_ID + 6)]))
    rows.append(list(by_user[str(FIRST_USER_ID + 41)]))
    return rows


def main() -> None:
    rows = build()
    with OUTPUT.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(rows)


if __name__ == "__main__":
    main()
