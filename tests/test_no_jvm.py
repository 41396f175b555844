"""No SparkContext, RDD or JVM access in the library or the jobs: a Spark Connect session (Databricks
serverless and shared clusters, Databricks Connect, any sc:// server) has none of them, so one such
use makes a stage fail at start there. Checked on the syntax tree, so that prose in docstrings and
comments may still name them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCANNED = sorted([*REPO.glob("ecominsight/**/*.py"), *REPO.glob("jobs/*.py")])
# Attributes and names of classic-only pyspark: the SparkContext and its settings object, RDDs, the
# py4j gateway and the Java objects behind DataFrames, sessions and exceptions.
CLASSIC_ONLY = {
    "sparkContext", "SparkContext", "SparkConf", "defaultParallelism", "setLogLevel", "rdd", "RDD",
    "_sc", "_jsc", "_jvm", "_gateway", "_jdf", "_jsparkSession", "_jconf", "_jreader", "_jwrite", "java_exception",
}
CLASSIC_ONLY_MODULES = ("py4j", "pyspark.core", "pyspark.rdd", "pyspark.context")


def classic_only_uses(source: str, filename: str = "<source>") -> list[str]:
    """`file:line name` for every use of CLASSIC_ONLY in `source`: an attribute (`spark.sparkContext`),
    a name, an import, or a string that getattr could use (`getattr(err, "java_exception")`)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        used = None
        if isinstance(node, ast.Attribute) and node.attr in CLASSIC_ONLY:
            used = node.attr
        elif isinstance(node, ast.Name) and node.id in CLASSIC_ONLY:
            used = node.id
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in CLASSIC_ONLY:
            used = repr(node.value)
        elif isinstance(node, ast.alias) and (node.name in CLASSIC_ONLY or node.name.startswith(CLASSIC_ONLY_MODULES)):
            used = f"import {node.name}"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(CLASSIC_ONLY_MODULES):
            used = f"from {node.module}"
        if used:
            found.append(f"{filename}:{node.lineno} {used}")
    return found


def test_the_library_and_jobs_use_no_sparkcontext_rdd_or_jvm():
    assert len(SCANNED) > 20  # the scan sees the package, not an empty glob
    uses = [use for path in SCANNED for use in classic_only_uses(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))]
    assert not uses, "classic-only Spark API (fails on Spark Connect):\n" + "\n".join(uses)


@pytest.mark.parametrize("planted", [
    "n = spark.sparkContext.defaultParallelism",
    "n = df.rdd.getNumPartitions()",
    "df.sparkSession.sparkContext.setLogLevel('WARN')",
    "cause = getattr(err, 'java_exception', None)",
    "jvm = spark._jvm",
    "from pyspark import SparkContext",
    "from pyspark.rdd import RDD",
    "from py4j.protocol import Py4JJavaError",
    "plan = df._jdf.queryExecution()",
])
def test_the_scan_finds_a_planted_use(planted):
    source = f'"""Docstrings may say SparkContext."""\n# and so may comments: sparkContext, .rdd\n{planted}\n'
    uses = classic_only_uses(source, "planted.py")
    assert uses and all(use.startswith("planted.py:3 ") for use in uses), uses
