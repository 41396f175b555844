"""The project's error family: every failure a user can act on is an `EcominsightError`.

The CLI turns each into exit code 2 and one line naming what to fix; anything else is a bug and
keeps its traceback. Each class keeps the built-in base it always had, so existing `except
ValueError` / `except FileNotFoundError` callers still catch it.
"""

from __future__ import annotations


class EcominsightError(Exception):
    """Base of every error ecominsight raises on purpose; the message says what to do."""


class ConfigError(EcominsightError, ValueError):
    """A configuration or preset value is missing, unknown, of the wrong type or out of range."""


class LakeError(EcominsightError, RuntimeError):
    """An input or lake path is missing or unusable; the message says what to do."""


class ModelPathError(EcominsightError, FileNotFoundError):
    """The configured pretrained model cannot be loaded offline; the message says what to do."""


class AccountingError(EcominsightError, RuntimeError):
    """Input rows != clean rows + quarantined rows: a row went missing, which must never happen."""


class LeakageError(EcominsightError, RuntimeError):
    """A feature was computed from an event at or after the label cutoff."""


class PrivacyError(EcominsightError, RuntimeError):
    """The pseudonym key is unusable (too short, or its file is readable by others)."""


class SessionError(EcominsightError, RuntimeError):
    """No Spark session can be had: a Spark Connect URL that is malformed or where no server answers."""


class TrackingError(EcominsightError, RuntimeError):
    """MLflow (tracking.mlflow_uri) refused or could not be reached, or a registered model does not
    name a model of the lake."""
