"""Packaging for ecominsight: the library, its config and the bundled sample, as one wheel."""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
# Provided by the platform where the wheel runs (Databricks Runtime, a cluster's Spark): installing
# a second pyspark over it breaks the runtime, so it is an extra: `pip install ecominsight[spark]`.
PLATFORM_PROVIDED = ("pyspark",)


def pinned_requirements() -> list[str]:
    """Runtime dependencies exactly as pinned in requirements.txt (one source of truth)."""
    lines = (HERE / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _is_platform_provided(requirement: str) -> bool:
    return requirement.split("[")[0].split("=")[0].strip().lower() in PLATFORM_PROVIDED


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
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["ecominsight", "ecominsight.*"]),
    package_data={"ecominsight.data": ["*.parquet", "*.json", "README.md"]},
    install_requires=[r for r in pinned_requirements() if not _is_platform_provided(r)],
    extras_require={"spark": [r for r in pinned_requirements() if _is_platform_provided(r)]},
    cmdclass={"build_py": BuildWithConf},
    entry_points={"console_scripts": [
        "ecominsight=ecominsight.cli:main",
        # One per stage: the python_wheel_task entry points of databricks.yml.
        *(f"ecominsight-{stage}=ecominsight.entrypoints:{stage}"
          for stage in ("clean", "fuse", "train", "score", "insights", "register", "pipeline")),
    ]},
    license="Apache-2.0",
)
