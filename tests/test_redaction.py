"""Secrets stay out of logs: names that mark a secret anywhere in them, log records' tracebacks,
uncaught exceptions, and a Spark Connect URL's token."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

from ecominsight.redaction import (
    RedactSecrets, redact_mapping, secret_config_values, secret_url_parameters, secret_values,
)
from tests.conftest import REPO

SECRET = "s3cr3t-value-4c1d9e"


def test_a_secret_word_anywhere_in_a_name_marks_a_secret():
    environ = {"AWS_SECRET_ACCESS_KEY": "aws-secret-1", "MY_TOKEN_FILE_CONTENT": "token-file-2",
               "DB_PASSWORD_2": "password-3", "KEY_VAULT_URI": "vault-uri-4", "HOME": "/root/home", "PATH": "/usr/bin:/bin"}
    assert secret_values(environ) == {"aws-secret-1", "token-file-2", "password-3", "vault-uri-4"}
    config = {"spark": {"conf": {"spark.hadoop.fs.azure.sas.token.provider.value": "sas-token-5",
                                 "spark.hadoop.fs.s3a.secret.key": "s3a-secret-6", "spark.app.name": "ecominsight"}}}
    assert secret_config_values(config) == {"sas-token-5", "s3a-secret-6"}
    assert redact_mapping(config)["spark"]["conf"] == {"spark.hadoop.fs.azure.sas.token.provider.value": "***",
                                                       "spark.hadoop.fs.s3a.secret.key": "***", "spark.app.name": "ecominsight"}


def test_a_logged_traceback_is_redacted():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets({SECRET}))
    logger = logging.getLogger("ecominsight.tests.redaction")
    logger.addHandler(handler)
    try:
        try:
            raise RuntimeError(f"cannot authenticate with {SECRET}")
        except RuntimeError:
            logger.exception("stage failed for %s", SECRET)
        logger.warning("stack of %s", SECRET, stack_info=True)
    finally:
        logger.removeHandler(handler)
    logged = stream.getvalue()
    assert SECRET not in logged
    assert "stage failed for ***" in logged and "RuntimeError: cannot authenticate with ***" in logged
    assert "Traceback (most recent call last)" in logged and "Stack (most recent call last)" in logged


def test_an_uncaught_exception_is_printed_redacted():
    script = "\n".join(["from ecominsight.logs import setup_logging", "from ecominsight import redaction",
                        "setup_logging()", f"redaction.install({{{SECRET!r}}})",
                        f"raise ValueError('bad credentials ' + {SECRET!r})"])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1
    assert SECRET not in result.stderr and "ValueError: bad credentials ***" in result.stderr
    assert "Traceback (most recent call last)" in result.stderr


def test_a_spark_connect_urls_token_is_a_secret():
    url = "sc://workspace.example.com:443/;token=dapi0123456789;x-databricks-cluster-id=0123-456789-abc;use_ssl=true"
    assert secret_url_parameters(url) == {"dapi0123456789"}
    assert secret_url_parameters("sc://127.0.0.1:15002") == set() and secret_url_parameters(None) == set()
