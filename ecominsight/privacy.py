"""Privacy of the output tables: keyed pseudonyms for user ids, and personal columns dropped.

Every table a stage writes for analysts (scores/*, insights/*, the report) carries
`user_id = hex(HMAC-SHA256(key, raw user id))` instead of the raw id. The key comes from the
environment variable `ECOMINSIGHT_PSEUDONYM_KEY`, never from a config file, and is never logged.
Without it, a random key is created once per lake in `<lake>/_secrets/pseudonym.key` (mode 0600)
and reused, so pseudonyms stay stable across runs on that lake (incremental scoring joins on
them) and a warning says so. The same key always gives the same pseudonym; another key gives
other pseudonyms, so a changed key makes every user look new to incremental scoring.

The hash runs in a pandas UDF whose closure holds the key, rather than as Spark SQL built-ins
(`sha2` over `key XOR pad || id`): a literal key would be printed in every query plan, which
Spark shows in its UI, event log and `explain()` output.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from typing import Sequence

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from ecominsight import storage
from ecominsight.errors import PrivacyError
from ecominsight.storage import StoragePath

log = logging.getLogger(__name__)

KEY_ENV = "ECOMINSIGHT_PSEUDONYM_KEY"
MIN_KEY_BYTES = 16  # a shorter key can be brute-forced against known ids


def resolve_key(key_file: StoragePath | str | os.PathLike[str]) -> bytes:
    """The pseudonym key: `$ECOMINSIGHT_PSEUDONYM_KEY` (UTF-8), else `key_file` (the lake's, `Lake.key_file`,
    on any store), created with a random 32-byte key on first use (locally mode 0600 in a 0700
    folder). Raises PrivacyError for a key shorter than 16 bytes or a local key file that others may read."""
    from_env = os.environ.get(KEY_ENV)
    if from_env:
        key = from_env.encode("utf-8")
        if len(key) < MIN_KEY_BYTES:
            raise PrivacyError(f"{KEY_ENV} is shorter than {MIN_KEY_BYTES} bytes; use a long random secret")
        return key
    path = key_file if isinstance(key_file, StoragePath) else storage.resolve(key_file)
    # Created only if absent: two runs starting at once must not each write a different key.
    if not path.exists() and path.create_if_absent(secrets.token_hex(32).encode("ascii"), private=True):
        log.warning("%s is not set: created a random pseudonym key for this lake in %s (mode 0600). Keep it "
                    "with the lake: a new key gives every user a new pseudonym", KEY_ENV, path)
    if path.readable_by_others():
        raise PrivacyError(f"{path} is readable by other users; run `chmod 600 {path}`")
    log.warning("%s is not set: user ids are pseudonymised with the lake's key file %s", KEY_ENV, path)
    return path.read_text().strip().encode("utf-8")


def pseudonym(user_id: str, key: bytes) -> str:
    """hex(HMAC-SHA256(key, user_id)): 64 lower-case hex digits."""
    return hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonym_column(column: Column | str, key: bytes) -> Column:
    """Column expression: the pseudonym of each (string) value; null stays null."""

    @F.pandas_udf("string")
    def _pseudonym(ids: pd.Series) -> pd.Series:
        import hashlib as _hashlib
        import hmac as _hmac

        return ids.map(lambda v: None if v is None else _hmac.new(key, str(v).encode("utf-8"), _hashlib.sha256).hexdigest())

    return _pseudonym(F.col(column) if isinstance(column, str) else column)


def pseudonymise(frame: DataFrame, key: bytes, *, column: str = "user_id") -> DataFrame:
    """`frame` with `column` replaced by its pseudonym (same name, same position)."""
    return frame.withColumn(column, pseudonym_column(column, key))


def drop_personal(frame: DataFrame, personal: Sequence[str]) -> DataFrame:
    """`frame` without the columns the source preset tags as personal (those it has), and without
    the personal extra attributes (`user_attributes` names) in its `attributes` map."""
    present = [name for name in personal if name in frame.columns]
    out = frame.drop(*present) if present else frame
    if "attributes" in out.columns and personal:
        listed = F.array(*[F.lit(name) for name in personal])
        out = out.withColumn("attributes", F.map_filter("attributes", lambda name, _: ~F.array_contains(listed, name)))
    return out
