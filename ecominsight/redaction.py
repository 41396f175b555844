"""Keep secrets out of logs: credentials come from the environment (or a platform's secret store),
and whatever holds one — an environment variable or a config key named like a secret — is shown as
`***` in every log line (its traceback included), in the logged config and in an uncaught exception's
traceback."""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from types import TracebackType
from typing import Any, Iterable, Mapping

# Names that hold secrets, wherever the word stands: ECOMINSIGHT_PSEUDONYM_KEY, DATABRICKS_TOKEN,
# fs.s3a.secret.key, AWS_SECRET_ACCESS_KEY, api_token_value, ... Broad on purpose: masking a value
# that was no secret costs a `***` in a log line, missing one leaks it.
SECRET_NAME = re.compile(r"key|token|secret|password|passwd|credential", re.IGNORECASE)
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


def secret_url_parameters(url: str | None) -> set[str]:
    """The values of secret-named parameters of a Spark Connect URL (`sc://host:port/;token=...`)."""
    if not url or ";" not in url:
        return set()
    found = set()
    for parameter in url.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LENGTH:
            found.add(value)
    return found


class RedactSecrets(logging.Filter):
    """Rewrites a log record whose message, traceback or stack contains a known secret, longest
    secrets first."""

    def __init__(self, secrets: Iterable[str]):
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """`text` with every known secret replaced by MASK."""
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        if any(secret in message for secret in self.secrets):
            record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            # Formatted here, as the handler's formatter would, and cached where it looks first.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def install(secrets: Iterable[str]) -> None:
    """Put the filter on every handler of the root logger (filters on a logger skip its children),
    and mask the secrets in the traceback of an exception nobody catches (which bypasses logging)."""
    redactor = RedactSecrets(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redactor)
    if redactor.secrets:
        sys.excepthook = _redacting_excepthook(redactor)


def _redacting_excepthook(redactor: RedactSecrets):
    """A `sys.excepthook` that prints the traceback as Python does, with the secrets masked."""

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        sys.stderr.write(redactor.redact("".join(traceback.format_exception(kind, value, tb))))

    return hook
