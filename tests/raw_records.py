"""The number of records in raw input files, counted without Spark and without ecominsight's reader.

The accounting tests check `input rows = clean rows + quarantined rows` against this count, so that a
row the reader never produced cannot go unnoticed (Spark's own count of what it read would agree with
the stage however many rows it lost). Standard library and pyarrow only:

- Parquet: the row count in each file's footer.
- CSV: records of Python's csv module (RFC 4180 quoting), less each file's header record. A blank
  line, or one of only whitespace or control characters, is no record; Spark's CSV reader skips such
  lines too (it drops lines that Java's `String.trim` empties). A record with a line break inside a
  quoted field is one record here but two rows to Spark, which reads CSV line by line: such a file
  fails the count with an error rather than letting the two disagree silently.
- Delimited text (`format: text`): every physical line, blank ones included, less each file's header line.
- JSON lines: every line that holds more than whitespace.
- A `.zip` counts the files it holds, with the rules of the reader's unpacking (no folders, dot files
  or `__MACOSX` entries); a folder counts its files but hidden ones (`_` or `.` prefix), as Spark does.
"""

from __future__ import annotations

import csv
import glob
import io
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import pyarrow.parquet as pq

from ecominsight.presets import Preset, TableSource

# Java's String.trim removes every character up to U+0020: spaces and the control characters.
JAVA_TRIMMED = "".join(chr(code) for code in range(0x21))
MAX_FIELD_CHARS = 1 << 30


def count_records(paths: Iterable[str | Path], *, fmt: str, header: bool = False, delimiter: str = ",",
                  encoding: str = "utf-8", escape: str = '"') -> int:
    """Records in the files that `paths` name (files, globs, folders or `.zip` archives), read as `fmt`
    (parquet, csv, text or json); `header`: each csv or text file starts with a header line."""
    total = 0
    for name, data in _files(paths):
        if fmt == "parquet":
            total += pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
        elif fmt == "csv":
            total += _csv_records(name, data.decode(encoding, errors="replace"), header=header, delimiter=delimiter,
                                  escape=escape)
        elif fmt == "text":
            total += max(len(data.splitlines()) - header, 0)
        elif fmt == "json":
            total += sum(1 for line in data.splitlines() if line.strip())
        else:
            raise ValueError(f"no record count for format {fmt!r}")
    return total


def records_of(source: Preset | TableSource) -> int:
    """Records in the raw files of a source preset, or of one of its `user_source`/`item_source` tables."""
    return count_records(source.resolved_paths(), fmt=source.format, header=source.header, delimiter=source.delimiter,
                         encoding=source.encoding, escape=source.escape)


def _csv_records(name: str, text: str, *, header: bool, delimiter: str, escape: str) -> int:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quotechar='"', doublequote=escape == '"',
                        escapechar=None if escape == '"' else escape)
    records, last_line = 0, 0
    # The csv module refuses fields over 128 KiB by default; the reader takes fields of any size.
    default_limit = csv.field_size_limit(MAX_FIELD_CHARS)
    try:
        for fields in reader:
            if reader.line_num - last_line > 1:
                raise ValueError(f"{name}: the record ending on line {reader.line_num} has a quoted line break; "
                                 "Spark's line-by-line CSV reader would count each of its lines as a row")
            last_line = reader.line_num
            blank = not fields or (len(fields) == 1 and not fields[0].strip(JAVA_TRIMMED))
            records += not blank
    finally:
        csv.field_size_limit(default_limit)
    return max(records - header, 0)


def _files(paths: Iterable[str | Path]) -> Iterator[tuple[str, bytes]]:
    """(name, content) of every file the paths name, in order; a path that names nothing is an error."""
    for path in map(str, paths):
        matches = sorted(glob.glob(path))
        if not matches:
            raise FileNotFoundError(path)
        for match in map(Path, matches):
            if match.is_dir():
                for file in sorted(match.rglob("*")):
                    if file.is_file() and not any(part.startswith(("_", ".")) for part in file.relative_to(match).parts):
                        yield str(file), file.read_bytes()
            elif match.suffix.lower() == ".zip":
                yield from _members(match)
            else:
                yield str(match), match.read_bytes()


def _members(archive: Path) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(archive) as bundle:
        for member in bundle.infolist():
            base = PurePosixPath(member.filename.replace("\\", "/")).name
            if member.is_dir() or not base or base.startswith(".") or "__MACOSX" in member.filename:
                continue
            yield f"{archive}!{member.filename}", bundle.read(member)
