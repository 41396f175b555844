"""Fixtures for a real S3-compatible server on loopback (moto's server mode, from PyPI) and the
cached s3a jars. Imported by tests/conftest.py; tests that need them skip, saying why, where moto or
the jars (.ci/fetch-jars) are missing."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

# Fixed, fake credentials: moto accepts any. The region is set so that no client ever asks an
# instance-metadata service for one, and metadata lookups are switched off outright.
ACCESS_KEY = "ecominsight-test"
SECRET_KEY = "ecominsight-test-secret"
REGION = "us-east-1"
START_TIMEOUT_S = 60


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def env(self) -> dict[str, str]:
        """The environment every client here reads (botocore/s3fs and Hadoop's S3A chain)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)


@dataclass(frozen=True)
class S3Bucket:
    server: S3Server
    name: str

    @property
    def uri(self) -> str:
        return f"s3a://{self.name}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def _start_moto(port: int, log_path: Path) -> subprocess.Popen | None:
    """moto's server on 127.0.0.1:port, once it answers; None if it exited or never answered."""
    env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true"}
    with open(log_path, "ab") as log:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + START_TIMEOUT_S
    while server.poll() is None and time.monotonic() < deadline:
        if _answers(f"http://127.0.0.1:{port}"):
            return server
        time.sleep(0.1)
    server.kill()
    server.wait()
    return None


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port for the whole session; stopped at the end."""
    missing = [name for name in ("moto", "flask", "flask_cors", "boto3") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"no S3-compatible server: {', '.join(missing)} not installed (pip install -r requirements-dev.txt)")
    log_path = tmp_path_factory.mktemp("moto") / "server.log"
    started = time.monotonic()
    for _ in range(3):  # the port can be taken between the probe and the server's bind: try another
        port = _free_port()
        server = _start_moto(port, log_path)
        if server is not None:
            break
    else:
        pytest.fail(f"moto's S3 server did not start; its log:\n{log_path.read_text(errors='replace')[-3000:]}")
    print(f"\ns3_server: moto answered on 127.0.0.1:{port} after {time.monotonic() - started:.1f} s")
    try:
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    """A new, empty bucket on the session's server, with this test's environment pointing every S3
    client at the server (credentials, region, AWS_ENDPOINT_URL)."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    name = f"lake-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return S3Bucket(s3_server, name)


SPARK_JOB_TIMEOUT_S = 600


def run_s3a_spark_job(module: str, bucket: S3Bucket, scratch: Path) -> dict:
    """Run `python -m <module> <bucket>/lake <scratch> <result.json>` (a test module's `__main__`: a
    Spark job that needs the cloud jars on its JVM's classpath at start, so in a process of its own)
    with the environment pointing at the loopback S3 server; the job's JSON result."""
    out = scratch / "result.json"
    env = {**os.environ, **bucket.server.env(), "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
           "SPARK_LOCAL_IP": "127.0.0.1"}
    started = time.monotonic()
    job = subprocess.run([sys.executable, "-m", module, f"{bucket.uri}/lake", str(scratch), str(out)],
                         cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True,
                         timeout=SPARK_JOB_TIMEOUT_S)
    print(f"{module} s3a job: {time.monotonic() - started:.1f} s")
    assert job.returncode == 0 and out.exists(), f"the Spark job failed:\n{job.stdout[-4000:]}\n{job.stderr[-8000:]}"
    return json.loads(out.read_text())


@pytest.fixture(scope="session")
def cloud_jars() -> list[str]:
    """The hadoop-aws / AWS SDK / spark-hadoop-cloud jars .ci/fetch-jars cached; skip without them."""
    from ecominsight.storage import cached_cloud_jars, default_jars_dir

    jars = cached_cloud_jars()
    if not jars:
        pytest.skip(f"no s3a jars in {default_jars_dir()}: run .ci/fetch-jars (needs mvn and Maven Central)")
    return jars
