"""Shared fixtures: one local SparkSession, the shared real data, a tiny encoder for fast training."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

REPO = Path(__file__).resolve().parent.parent
# The presets name ../shared/data relative to the repository, so the tests look there too.
SHARED_DATA = REPO.parent / "shared" / "data"
# The bundled sample cut to its last months: every stage still runs (the cutoff 2011-09-10 has two
# months of history before it and the 90-day label window after), with a quarter of the sample's
# ~600 days as clean/events partitions; for the tests that run the whole pipeline in a child process
# on a slow medium (an S3 server, a cluster's executors).
SAMPLE_WINDOW = {"start": "2011-07-01 00:00:00", "end": "2011-12-31 00:00:00", "zone": "Europe/London"}


def windowed_preset(folder: Path) -> Path:
    """The bundled sample's preset with `SAMPLE_WINDOW` added (events outside it are quarantined),
    written into `folder`: its path."""
    from ecominsight.config import DEFAULT_CONF_DIR

    text = (DEFAULT_CONF_DIR / "sources" / "online_retail_ii_sample.yaml").read_text()
    target = folder / "online_retail_ii_window.yaml"
    target.write_text(text.replace("name: online_retail_ii_sample", "name: online_retail_ii_window")
                      + f"window: {json.dumps(SAMPLE_WINDOW)}\n")
    return target


@pytest.fixture(scope="session")
def spark():
    from ecominsight.config import load_config
    from ecominsight.session import spark_session

    with spark_session(
        "ecominsight-tests", "local[2]",
        {
            # conf/local.yaml's SQL settings, as command 1 runs them: the sample's 593 day folders listed by the
            # driver, not by a Spark job per read; the disk caches' batches left uncompressed
            **{key: value for key, value in load_config("local").spark.conf.items() if key.startswith("spark.sql.")},
            # ...except the shuffle width: the suite's small tables take 4 (the Connect test gives its server
            # this session's width, so that the two runs partition alike).
            "spark.sql.shuffle.partitions": "4", "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
            "spark.default.parallelism": "2", "spark.driver.extraJavaOptions": f"-Dderby.system.home={REPO / '.pytest_cache'}",
        },
    ) as session:
        yield session


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public samples in ../shared/data; tests that need them skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: tests on the real shared samples need ../shared/data beside the repo")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    """A 2-layer, 64-wide BERT with the MiniLM vocabulary and tokenizer, saved as safetensors.

    Randomly initialised, so it learns nothing useful; it makes training tests take seconds."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from ecominsight.models.transformer import resolve_pretrained

    import torch

    minilm = resolve_pretrained("minilm")
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    torch.manual_seed(0)  # the same random weights in every run: tests built on them do not flake
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=512, num_labels=2)
    target = tmp_path_factory.mktemp("tiny_encoder")
    BertForSequenceClassification(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return str(target)


# The shared runs' settings: the tiny encoder for one epoch on one gloo rank, short texts.
FAST_PIPELINE = ("train.transformer.epochs=1", "train.transformer.num_processes=1", "train.transformer.max_length=64",
                 "fuse.max_events=16")


def _classic_pipeline(spark, folder: Path, run_id: str, *overrides: str):
    from ecominsight.config import load_config
    from ecominsight.io import Lake
    from ecominsight.stages import run_stage

    config = load_config("local", [f"lake={folder / 'lake'}", *overrides, *FAST_PIPELINE])
    lake = Lake(config.lake_path)
    return spark, config, lake, run_stage("pipeline", spark, config, lake, run_id)


@pytest.fixture(scope="session")
def pipeline_run(spark, tiny_encoder, tmp_path_factory):
    """The whole pipeline once on the bundled sample with the tiny encoder, shared by the tests that
    read a real run's lake: (spark, config, lake, summary). Tests that change the lake copy it first."""
    return _classic_pipeline(spark, tmp_path_factory.mktemp("pipeline"), "e2e", f"train.transformer.pretrained={tiny_encoder}")


@pytest.fixture(scope="session")
def windowed_run(spark, tiny_encoder, tmp_path_factory):
    """`pipeline_run` on the sample's last months (`windowed_preset`): the classic reference of the
    tests that run the same pipeline through a slower medium (an S3 lake, Spark Connect). The same
    tuple; its lake is only read."""
    folder = tmp_path_factory.mktemp("windowed")
    return _classic_pipeline(spark, folder, "windowed", f"source.preset={windowed_preset(folder)}",
                             f"train.transformer.pretrained={tiny_encoder}")


# A real S3-compatible server on loopback and the cached s3a jars (tests/s3_server.py).
from tests.s3_server import cloud_jars, s3_bucket, s3_server  # noqa: E402,F401
