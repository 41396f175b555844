"""Packaging for ecominsight: the library, its config and the bundled sample, as one wheel."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def pinned_requirements() -> list[str]:
    """Runtime dependencies exactly as pinned in requirements.txt (one source of truth)."""
    lines = (HERE / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


setup(
    name="ecominsight",
    version="0.1.0",
    description="E-commerce behaviour -> purchase propensity and user insight, on Spark with a fine-tuned transformer",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["ecominsight", "ecominsight.*"]),
    package_data={"ecominsight.data": ["*.parquet", "*.json", "README.md"]},
    install_requires=pinned_requirements(),
    entry_points={"console_scripts": ["ecominsight=ecominsight.cli:main"]},
    license="Apache-2.0",
)
