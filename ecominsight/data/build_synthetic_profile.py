"""Refit the shipped generator profile (`synthetic_profile.json`) from real samples.

    python -m ecominsight.data.build_synthetic_profile

Behaviour (event-type mix view/cart/fav/purchase, sessions, gaps, category and item popularity)
from the Taobao UserBehavior sample (preset `taobao_userbehavior`): the only sample with four kinds
of events at second resolution. Prices (per item) and purchase quantities from the bundled Online
Retail II sample (Taobao has no prices), with the users' region (country). Age and gender from the
JData 2017 users file (preset `jdata2017`). The generated window is one year: the Taobao sample spans
9 days, and users' first events spread over a year give fuse's 90-day horizon a before and an after.
"""

from __future__ import annotations

import json
import logging

from ecominsight.generator import DEFAULT_PROFILE, combine_profiles, profile_of_preset
from ecominsight.logs import setup_logging
from ecominsight.session import spark_session

log = logging.getLogger(__name__)

BEHAVIOUR, PRICES, AGE_GENDER = "taobao_userbehavior", "online_retail_ii_sample", "jdata2017"
TIME = {"start": "2023-01-01", "span_days": 365}


def main() -> None:
    setup_logging()
    with spark_session("fit-synthetic-profile", "local[2]", {"spark.sql.shuffle.partitions": "8"}) as spark:
        fitted = {preset: profile_of_preset(spark, preset) for preset in (BEHAVIOUR, PRICES, AGE_GENDER)}
    profile = combine_profiles(fitted[BEHAVIOUR], prices=fitted[PRICES], time=TIME,
                               users={"age": fitted[AGE_GENDER], "gender": fitted[AGE_GENDER], "region": fitted[PRICES]})
    DEFAULT_PROFILE.write_text(json.dumps(profile, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    log.info("wrote %s", DEFAULT_PROFILE)


if __name__ == "__main__":
    main()
