"""Keep secrets out of logs: credentials come from the environment (or a platform's secret store),
and whatever holds one — an environment variable or a config key named like a secret — is shown as
`***` in every log line and in the logged config."""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Iterable, Mapping

# Names that hold secrets: ECOMINSIGHT_PSEUDONYM_KEY, DATABRICKS_TOKEN, fs.s3a.secret.key, ...
SECRET_NAME = re.compile(r"(key|token|secret|password|passwd|credentials?)$", re.IGNORECASE)
MASK = "***"
# Shorter values would mask ordinary words ("true", "1") wherever they occur.
MIN_SECRET_LENGTH = 6


def secret_values(environ: Mapping[str, str] | None = None) -> set[str]:
    """Values of the environment variables whose names mark them as secrets."""
    environ = os.environ if environ is None else environ
    return {value for name, value in environ.items() if SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LENGTH}


def redact_mapping(values: Any) -> Any:
    """A copy of a nested config mapping with the values of secret-named keys masked."""
    if isinstance(values, Mapping):
        return {key: MASK if SECRET_NAME.search(str(key)) and value not in (None, "") else redact_mapping(value)
                for key, value in values.items()}
    if isinstance(values, list):
        return [redact_mapping(item) for item in values]
    return values


def secret_config_values(values: Any) -> set[str]:
    """The values of secret-named keys in a nested config mapping."""
    found: set[str] = set()
    if isinstance(values, Mapping):
        for key, value in values.items():
            if SECRET_NAME.search(str(key)) and isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH:
                found.add(value)
            else:
                found |= secret_config_values(value)
    elif isinstance(values, list):
        for item in values:
            found |= secret_config_values(item)
    return found


class RedactSecrets(logging.Filter):
    """Rewrites a log record whose message contains a known secret, longest secrets first."""

    def __init__(self, secrets: Iterable[str]):
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            if any(secret in message for secret in self.secrets):
                for secret in self.secrets:
                    message = message.replace(secret, MASK)
                record.msg, record.args = message, None
        return True


def install(secrets: Iterable[str]) -> None:
    """Put the filter on every handler of the root logger (filters on a logger skip its children)."""
    redactor = RedactSecrets(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redactor)
