"""Data shipped with the package: the embedded default sample (see README.md in this folder)."""
