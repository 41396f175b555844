"""A static check: outside the I/O layer (ecominsight/io.py, ecominsight/storage.py) no code treats a
lake path as a local file. A lake may be s3a://, abfss://, gs://, hdfs:// or dbfs:/, where `os`,
`shutil`, `open()` and `pathlib` see nothing, so every lake path goes through storage.StoragePath.

What is flagged, per function (nested functions and lambdas count as their own):
- a function that calls a Lake path method (`model_dir`, `report_dir`, `key_file`, ...) and also uses
  `os.*`, `shutil.*`, `open()`, `Path(...)` / `pathlib.*`, or `glob.*`: the two meet in one place, so
  a lake path can reach a local-only call;
- a pathlib-only method (`is_dir`, `is_file`, `mkdir`, `glob`, `stat`, ...) called on a Lake path
  method's result, directly or through a variable assigned from one;
- a module outside the I/O layer that builds a lake path itself: `Lake(...).root` joined with `/`.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "ecominsight"
IO_LAYER = {PACKAGE / "io.py", PACKAGE / "storage.py"}
SCANNED = sorted(p for p in [*PACKAGE.rglob("*.py"), *(REPO / "jobs").glob("*.py")] if p not in IO_LAYER)

# The Lake methods that return a lake path (ecominsight/io.py, "paths").
LAKE_PATH_METHODS = {"table_path", "table_uri", "model_root", "model_dir", "model_pointer", "champion_pointer",
                     "checkpoint_dir", "report_dir", "run_reports", "key_file", "staging_dir"}
# Modules whose use, beside a lake path, means local file access.
LOCAL_FS_MODULES = {"os", "shutil", "pathlib", "glob"}
LOCAL_FS_CALLS = {"open", "Path", "PurePath", "PosixPath"}
# Methods that pathlib.Path has and storage.StoragePath has not (or has with another meaning).
PATHLIB_ONLY_METHODS = {"is_dir", "is_file", "mkdir", "glob", "rglob", "iterdir", "stat", "lstat", "unlink", "rename",
                        "touch", "resolve", "as_uri", "open", "rmdir", "chmod", "is_relative_to", "relative_to",
                        "with_name", "with_suffix", "expanduser", "absolute", "samefile", "symlink_to", "owner"}


@dataclass(frozen=True)
class Finding:
    where: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.where}:{self.line}: {self.what}"


def _is_lake_path_call(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in LAKE_PATH_METHODS)


def _own_nodes(function: ast.AST):
    """The nodes of `function`'s body, without those of the functions and lambdas nested in it."""
    stack = list(ast.iter_child_nodes(function))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def _root_name(node: ast.AST) -> str | None:
    """`os` for `os.path.join`, `shutil` for `shutil.rmtree`, None for anything else."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _local_fs_uses(nodes: list[ast.AST]) -> list[tuple[int, str]]:
    uses = []
    for node in nodes:
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Name) and node.func.id in LOCAL_FS_CALLS:
            uses.append((node.lineno, f"{node.func.id}(...)"))
        elif isinstance(node.func, ast.Attribute) and _root_name(node.func) in LOCAL_FS_MODULES:
            uses.append((node.lineno, f"{ast.unparse(node.func)}(...)"))
    return uses


def _tainted_names(nodes: list[ast.AST]) -> set[str]:
    """Names assigned (directly, or joined with `/`) from a Lake path method call."""
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            value = node.value
            while isinstance(value, ast.BinOp) and isinstance(value.op, ast.Div):
                value = value.left
            if _is_lake_path_call(value):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names |= {target.id for target in targets if isinstance(target, ast.Name)}
    return names


def _from_lake_path(node: ast.AST, tainted: set[str]) -> bool:
    """True for `lake.model_dir(...)`, `lake.model_dir(...) / "x"`, or a name assigned from one."""
    while isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        node = node.left
    return _is_lake_path_call(node) or (isinstance(node, ast.Name) and node.id in tainted)


def check_source(source: str, where: str) -> list[Finding]:
    """Every place in `source` (a module's text) where a lake path may meet local file access."""
    tree = ast.parse(source)
    findings: list[Finding] = []
    functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
    for function in [tree, *functions]:
        nodes = list(_own_nodes(function))
        lake_calls = [node for node in nodes if _is_lake_path_call(node)]
        if not lake_calls:
            continue
        name = getattr(function, "name", "<module>" if function is tree else "<lambda>")
        for line, use in _local_fs_uses(nodes):
            findings.append(Finding(where, line, f"{name}() calls {use} beside the Lake path method "
                                                 f"{lake_calls[0].func.attr}() (line {lake_calls[0].lineno})"))
        tainted = _tainted_names(nodes)
        for node in nodes:
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in PATHLIB_ONLY_METHODS and _from_lake_path(node.func.value, tainted)):
                findings.append(Finding(where, node.lineno, f"{name}() calls the pathlib method "
                                                            f".{node.func.attr}() on a lake path"))
    for node in ast.walk(tree):
        # `lake.root / "zone"`: a path built outside the Lake (the Lake owns every path).
        if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.left, ast.Attribute)
                and node.left.attr == "root" and isinstance(node.left.value, ast.Name) and node.left.value.id == "lake"):
            findings.append(Finding(where, node.lineno, "builds a lake path from lake.root"))
    return sorted(set(findings), key=lambda f: (f.where, f.line, f.what))


def test_no_module_outside_the_io_layer_treats_a_lake_path_as_a_local_file():
    assert len(SCANNED) > 30  # the whole package (less io.py and storage.py) and jobs/
    findings = [finding for path in SCANNED
                for finding in check_source(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))]
    assert not findings, "lake paths used as local files:\n" + "\n".join(map(str, findings))


# The patterns main had before the lake became a URI: each must be caught.
CAUGHT = {
    "a pathlib method on a Lake path (score.py)": """
        def same_run(lake, name, version):
            return version if lake.model_dir(name, version).is_dir() else "latest"
        """,
    "a pathlib method through a variable (registry.py)": """
        def resolve(lake, name):
            pointer = lake.model_pointer(name, "LATEST")
            if not pointer.is_file():
                raise ValueError(name)
        """,
    "a joined path's pathlib method (report.py)": """
        def metrics(lake, name, version):
            return (lake.model_dir(name, version) / "metrics.json").is_file()
        """,
    "os beside a Lake path (privacy.py)": """
        import os
        def key(lake):
            path = lake.key_file()
            os.chmod(path.parent, 0o700)
        """,
    "Path() of a Lake path (inference.py)": """
        from pathlib import Path
        def names(lake):
            return Path(lake.model_dir("t", "v")) / "classifier.json"
        """,
    "open() of a Lake path": """
        def read(lake):
            with open(lake.report_dir("r") + "/x.json") as handle:
                return handle.read()
        """,
    "shutil on a Lake path (a test's copy of a lake)": """
        import shutil
        def copy(lake, target):
            shutil.copytree(lake.table_path(t), target)
        """,
    "a path built from the root": """
        def zone(lake):
            return lake.root / "scores"
        """,
}


@pytest.mark.parametrize("case", sorted(CAUGHT))
def test_the_check_catches_each_way_a_lake_path_became_a_local_file(case):
    assert check_source(textwrap.dedent(CAUGHT[case]), "example.py"), case


def test_the_check_lets_storage_operations_and_unrelated_local_files_pass():
    source = textwrap.dedent("""
        import os
        from pathlib import Path
        def resolve(lake, name):
            pointer = lake.model_pointer(name)
            if not pointer.exists():
                raise ValueError(name)
            return pointer.read_text().strip()
        def code_version():
            return Path(__file__).parent, os.environ.get("X")
        """)
    assert check_source(source, "example.py") == []
