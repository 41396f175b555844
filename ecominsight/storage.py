"""The filesystem layer for every lake artifact that is not a Spark table (JSON reports, report.html,
model versions and their pointers, checkpoints, the pseudonym key, ONNX exports, the lock), on any
store the lake can live on, and the Spark settings that let a session write tables there.

Input: a lake URI as the user gives it (a plain path, file://, s3a://, s3://, abfss://, gs://,
hdfs://, dbfs:/, /Volumes/...). Output: a `StoragePath` (an fsspec filesystem + a path on it) with the
few operations the lake needs, and `spark_conf_for(uri)`: the Spark settings for that store.

Why fsspec and not pyarrow.fs (checked with pyarrow 26.0.1 / fsspec 2026.9.0): fsspec knows the
schemes Spark uses (s3a:// is an s3fs protocol; pyarrow.fs refuses s3a:// and dbfs:/), and its S3, GCS
and Azure backends offer a conditional create (`pipe_file(mode="create")`: S3 `If-None-Match: *`, GCS
`ifGenerationMatch=0`, Azure `If-None-Match`) that pyarrow.fs has no call for. It is already in every
install (torch depends on it); the store backends are optional extras (s3fs, gcsfs, adlfs), and
hdfs:// goes through pyarrow's libhdfs binding underneath. s3fs reads the same AWS_* environment
variables (keys, AWS_ENDPOINT_URL, region) as Hadoop's default S3A credential chain.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlsplit

import fsspec

from ecominsight.errors import ConfigError, LakeError

log = logging.getLogger(__name__)

# URI scheme -> fsspec protocol. Spark's scheme stays in StoragePath.uri; fsspec gets its own name.
_PROTOCOLS = {
    "s3a": "s3", "s3": "s3", "s3n": "s3",
    "gs": "gs", "gcs": "gs",
    "abfss": "abfs", "abfs": "abfs", "az": "abfs",
    "hdfs": "hdfs",
}
# Where a single PUT replaces an object whole, so a reader sees the old bytes or the new ones, and
# whose backends make pipe_file(mode="create") a server-side conditional create.
_OBJECT_STORES = {"s3", "gs", "abfs"}
# Databricks mounts DBFS at /dbfs and Unity Catalog volumes at /Volumes on every node of a cluster.
_DBFS_MOUNT = "/dbfs"

# Hadoop's S3A committers, bound through spark-hadoop-cloud (see spark_conf_for).
_CLOUD_COMMIT = {
    "spark.sql.sources.commitProtocolClass": "org.apache.spark.internal.io.cloud.PathOutputCommitProtocol",
    "spark.sql.parquet.output.committer.class": "org.apache.spark.internal.io.cloud.BindingParquetOutputCommitter",
}
S3A_COMMITTERS = ("magic", "directory", "partitioned")
# Spark's own commit path, which renames task output into place: right for local and HDFS lakes.
CLASSIC_COMMIT = {
    "spark.sql.sources.commitProtocolClass": "org.apache.spark.sql.execution.datasources.SQLHadoopMapReduceCommitProtocol",
    "spark.sql.parquet.output.committer.class": "org.apache.parquet.hadoop.ParquetOutputCommitter",
}


def default_jars_dir() -> Path:
    """The jar cache that .ci/fetch-jars fills: $ECOMINSIGHT_JARS_DIR, else ~/.cache/ecominsight/jars."""
    return Path(os.environ.get("ECOMINSIGHT_JARS_DIR") or Path.home() / ".cache" / "ecominsight" / "jars")


def cached_cloud_jars(directory: str | Path | None = None) -> list[str]:
    """The jars .ci/fetch-jars put in `directory` (default: default_jars_dir()), as listed by its
    manifest jars.txt; [] when the cache was never filled or a listed jar has gone missing."""
    manifest = Path(directory or default_jars_dir()) / "jars.txt"
    if not manifest.is_file():
        return []
    jars = [line.strip() for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    return jars if jars and all(Path(jar).is_file() for jar in jars) else []


def _env_region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")


def _env_endpoint() -> str | None:
    # The variables botocore (hence s3fs) honours, so one setting points both sides at the same store.
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def spark_conf_for(lake_uri: str, *, endpoint: str | None = None, region: str | None = None,
                   path_style: bool | None = None, committer: str = "magic",
                   jars: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """Spark settings for writing tables under `lake_uri`: {} for a local, HDFS or Databricks lake
    (with `jars`: those and CLASSIC_COMMIT, see below), and for s3:// (EMRFS on EMR, with its own
    committer).

    s3a://: the S3A committers through spark-hadoop-cloud's PathOutputCommitProtocol, so
    a job's files appear at job commit by completing multipart uploads, never by renaming.
    `committer`: "magic" (default: needs nothing but the bucket) or "directory"/"partitioned" (stage
    on local disk and keep their pending uploads on the cluster's default filesystem, which must be
    shared, e.g. HDFS). `endpoint` (default AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL): an S3-compatible
    server; path-style access then defaults on. `region` defaults to AWS_REGION / AWS_DEFAULT_REGION.
    Credentials are never put in the conf: Hadoop's default S3A chain reads AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN from the environment, then the instance's role.

    gs:// and abfss://: the same commit protocol; Hadoop 3.5's mapred-default binds those schemes to
    its manifest committer (gcs-connector / hadoop-azure come with the platform; not exercised here).

    `jars` (e.g. cached_cloud_jars()) become spark.jars: they reach a session only when its JVM starts.
    Once spark-hadoop-cloud is on the classpath, Spark 4.3 itself switches every write of the session
    to PathOutputCommitProtocol (SparkContext.enableMagicCommitterIfNeeded), under which a dynamic
    partition overwrite of a file:// table appends instead of replacing (measured with
    spark-hadoop-cloud 4.1.1): a local lake with jars gets CLASSIC_COMMIT, and a session whose lake is
    s3a:// must not dynamically overwrite local tables unless it sets CLASSIC_COMMIT first.

    With the S3A committers Spark refuses `partitionOverwriteMode=dynamic` on a partitioned
    overwrite ("PathOutputCommitter does not support dynamicPartitionOverwrite"): replace partitions
    with `partition_replace_options` instead."""
    scheme = urlsplit(str(lake_uri)).scheme.lower()
    conf: dict[str, str] = {}
    if jars:
        conf["spark.jars"] = ",".join(jars)
    if scheme == "s3a":
        if committer not in S3A_COMMITTERS:
            raise ConfigError(f"unknown S3A committer {committer!r}: use one of {', '.join(S3A_COMMITTERS)}")
        endpoint = endpoint or _env_endpoint()
        region = region or _env_region()
        conf.update(_CLOUD_COMMIT)
        conf["spark.hadoop.fs.s3a.committer.name"] = committer
        if endpoint:
            conf["spark.hadoop.fs.s3a.endpoint"] = endpoint
            if path_style is None:
                path_style = True  # S3-compatible servers rarely resolve bucket.host names
        if path_style is not None:
            conf["spark.hadoop.fs.s3a.path.style.access"] = str(path_style).lower()
        if region:
            conf["spark.hadoop.fs.s3a.endpoint.region"] = region
    elif _PROTOCOLS.get(scheme) in ("gs", "abfs"):
        conf.update(_CLOUD_COMMIT)
    elif jars:
        conf.update(CLASSIC_COMMIT)
    return conf


def partition_replace_options(lake_uri: str) -> tuple[str, dict[str, str]]:
    """How to replace exactly the partitions a DataFrame holds under `lake_uri`: (save mode, writer
    options). Where Spark's dynamic partition overwrite works: ("overwrite", {}) with
    spark.sql.sources.partitionOverwriteMode=dynamic. On s3a://, where the S3A committers refuse it:
    the partitioned staging committer in conflict mode "replace" with mode "append", which deletes
    the partitions it writes into at job commit and leaves the others. Not atomic per partition: a
    reader between the delete and the uploads' completion sees the partition empty. Like the
    directory committer, it keeps pending uploads on the cluster's default filesystem."""
    if urlsplit(str(lake_uri)).scheme.lower() == "s3a":
        return "append", {"fs.s3a.committer.name": "partitioned",
                          "fs.s3a.committer.staging.conflict-mode": "replace"}
    return "overwrite", {}


def storage_options_from_hadoop(settings: Mapping[str, str]) -> dict[str, Any]:
    """s3fs options from Hadoop-style S3A settings (`fs.s3a.*`, with or without the `spark.hadoop.`
    prefix): endpoint, path-style access, region and keys, for a lake configured the Hadoop way."""
    s3a = {key.removeprefix("spark.hadoop.").removeprefix("fs.s3a."): value for key, value in settings.items()
           if key.removeprefix("spark.hadoop.").startswith("fs.s3a.")}
    options: dict[str, Any] = {}
    client: dict[str, Any] = {}
    if endpoint := s3a.get("endpoint"):
        if "://" not in endpoint:
            secure = s3a.get("connection.ssl.enabled", "true").lower() == "true"
            endpoint = f"{'https' if secure else 'http'}://{endpoint}"
        client["endpoint_url"] = endpoint
    if region := s3a.get("endpoint.region"):
        client["region_name"] = region
    if client:
        options["client_kwargs"] = client
    if s3a.get("path.style.access", "").lower() == "true":
        options["config_kwargs"] = {"s3": {"addressing_style": "path"}}
    for hadoop_key, s3fs_key in (("access.key", "key"), ("secret.key", "secret"), ("session.token", "token")):
        if s3a.get(hadoop_key):
            options[s3fs_key] = s3a[hadoop_key]
    return options


@dataclass(frozen=True)
class StoragePath:
    """A file or folder on the lake's store. `uri`: as Spark names it (the lake's own scheme kept);
    `fs`/`path`: fsspec's filesystem and its path on it (a local path for local, DBFS and volume lakes)."""

    uri: str
    fs: fsspec.AbstractFileSystem
    path: str

    @property
    def is_local(self) -> bool:
        """True when the path is on this machine's filesystem (including the DBFS / volume mounts)."""
        return "file" in _protocols(self.fs)

    @property
    def atomic_create(self) -> bool:
        """True when create_if_absent is decided by the store itself (local O_EXCL/link, S3, GCS,
        Azure); False (HDFS through libhdfs) when it is a check then a write: single writer only."""
        return self.is_local or bool(_protocols(self.fs) & _OBJECT_STORES)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> StoragePath:
        """The folder holding this file or folder (the same store)."""
        return StoragePath(self.uri.rstrip("/").rsplit("/", 1)[0], self.fs, self._parent())

    def joinpath(self, *parts: str) -> StoragePath:
        """The child at `parts` ("a", "b/c"): the same store, one URI and path longer."""
        tail = "/".join(part.strip("/") for part in parts if part.strip("/"))
        if not tail:
            return self
        return StoragePath(f"{self.uri.rstrip('/')}/{tail}", self.fs, f"{self.path.rstrip('/')}/{tail}")

    def __truediv__(self, part: str) -> StoragePath:
        return self.joinpath(part)

    def __str__(self) -> str:
        return self.uri

    def exists(self) -> bool:
        """True if a file or a non-empty folder is there."""
        self._forget_listings()
        return bool(self.fs.exists(self.path))

    def read_bytes(self) -> bytes:
        """The whole file; FileNotFoundError when there is none."""
        return self.fs.cat_file(self.path)

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def modified(self) -> float:
        """When the file was last written, as seconds since the epoch (FileNotFoundError if absent)."""
        return self.fs.modified(self.path).timestamp()

    def files(self) -> list[StoragePath]:
        """Every file below this folder, at any depth, sorted by path; [] if the folder does not exist."""
        self._forget_listings()
        try:
            found = self.fs.find(self.path)
        except FileNotFoundError:
            return []
        own = self.path.rstrip("/")
        return [self.joinpath(entry[len(own) + 1:]) for entry in sorted(found) if entry.startswith(own + "/")]

    def readable_by_others(self) -> bool:
        """True when users other than the owner may read this local file (its mode grants group or
        others any access). Always False on object stores and HDFS: access there is the bucket's or
        the cluster's policy, not a file mode."""
        return self.is_local and bool(os.stat(self.path).st_mode & 0o077)

    def write_bytes(self, data: bytes) -> None:
        """Replace the file whole: readers see the old bytes or the new, never a part. A temp file
        renamed over it on a local disk and HDFS (rename is atomic there); one PUT on object stores."""
        if self.is_local:
            self._local_write(data)
        elif _protocols(self.fs) & _OBJECT_STORES:
            self.fs.pipe_file(self.path, data)
        else:
            staged = f"{self.path}.{uuid.uuid4().hex}.tmp"
            self.fs.makedirs(self._parent(), exist_ok=True)
            self.fs.pipe_file(staged, data)
            self.fs.mv(staged, self.path)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def create_if_absent(self, data: bytes, *, private: bool = False) -> bool:
        """Create the file with `data` unless something is there: True if this call created it. The
        store decides (S3 `If-None-Match: *`, GCS generation 0, Azure If-None-Match, a local hard link
        or O_EXCL), so of two concurrent callers exactly one gets True. See `atomic_create`.
        S3-compatible servers that ignore If-None-Match make this a plain overwrite: check yours.
        `private`: on a local store the folder holding it is made mode 0700 (the file is 0600 always)."""
        if self.is_local:
            if private:
                folder = Path(self.path).parent
                folder.mkdir(parents=True, exist_ok=True)
                os.chmod(folder, 0o700)
            return self._local_create(data)
        if not self.atomic_create:
            log.warning("%s: this store offers no conditional create; check-then-write (single writer only)", self.uri)
            if self.exists():
                return False
            self.write_bytes(data)
            return True
        try:
            self.fs.pipe_file(self.path, data, mode="create")
        except FileExistsError:
            return False
        return True

    def list(self) -> list[str]:
        """Names of the files and folders directly inside this folder, sorted; [] if it does not exist."""
        self._forget_listings()
        try:
            entries = self.fs.ls(self.path, detail=False)
        except FileNotFoundError:
            return []
        own = self.path.rstrip("/")
        names = {entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries if entry.rstrip("/") != own}
        return sorted(names)

    def remove(self) -> None:
        """Remove the file, or the folder with everything under it; nothing there is fine."""
        self._forget_listings()
        if self.is_local:
            target = Path(self.path)
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path, recursive=True)

    def upload_dir(self, local_dir: str | Path) -> None:
        """Copy the contents of a local folder (a saved model, an ONNX export) to this folder. Each file
        lands whole; the set is complete only when this returns, so publish a pointer to it after."""
        source = Path(local_dir)
        if not source.is_dir():
            raise LakeError(f"cannot upload {source}: not a folder")
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            self.joinpath(file.relative_to(source).as_posix()).write_bytes(file.read_bytes())

    @contextlib.contextmanager
    def local_copy(self) -> Iterator[Path]:
        """This folder as a local directory for the duration (transformers and onnxruntime load from
        local paths): the folder itself on a local store, else a download into a temp dir removed after."""
        if self.is_local:
            yield Path(self.path)
            return
        if not self.exists():
            raise LakeError(f"{self.uri} does not exist")
        with tempfile.TemporaryDirectory(prefix="ecominsight-") as scratch:
            target = Path(scratch) / self.name
            self.fs.get(self.path.rstrip("/") + "/", str(target), recursive=True)
            yield target

    def _parent(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[0]

    def _forget_listings(self) -> None:
        # Spark's JVM writes to the same bucket: a listing cached by this client may be stale.
        self.fs.invalidate_cache(self.path)

    def _local_staged(self, data: bytes) -> str:
        """`data` in a new hidden temp file beside the target (same folder: same filesystem)."""
        target = Path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp",
                                         delete=False) as handle:
            handle.write(data)
        return handle.name

    def _local_write(self, data: bytes) -> None:
        os.replace(self._local_staged(data), self.path)

    def _local_create(self, data: bytes) -> bool:
        staged = self._local_staged(data)
        try:
            # A hard link never replaces an existing name, and the file it names is already complete.
            os.link(staged, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            return _exclusive_create(Path(self.path), data)  # a mount without hard links (FUSE): O_EXCL
        finally:
            os.unlink(staged)


def _exclusive_create(target: Path, data: bytes) -> bool:
    try:
        fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return True


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    protocol = fs.protocol
    return {protocol} if isinstance(protocol, str) else set(protocol)


def normalise_uri(uri: str | os.PathLike[str]) -> str:
    """The lake URI as Spark and `resolve` should see it, without touching any store: a plain path
    made absolute (relative to the working directory, `~` expanded), file:// with an absolute path,
    every other scheme (s3a://, hdfs://, dbfs:/, ...) and /Volumes/... exactly as given."""
    text = os.fspath(uri)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "":
        return os.path.abspath(os.path.expanduser(text))
    if scheme == "file":
        return f"file://{os.path.abspath(os.path.expanduser(parts.path))}"
    return text


def is_local_uri(uri: str | os.PathLike[str]) -> bool:
    """True for a plain path or file:// (not for dbfs:/ or a remote store)."""
    return urlsplit(os.fspath(uri)).scheme.lower() in ("", "file")


def is_object_store_uri(uri: str | os.PathLike[str]) -> bool:
    """True for an object store (S3, GCS, Azure): where Spark needs the settings and the cloud
    jars of `spark_conf_for` (HDFS and local lakes need neither)."""
    return _PROTOCOLS.get(urlsplit(os.fspath(uri)).scheme.lower()) in _OBJECT_STORES


def resolve(uri: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> StoragePath:
    """The StoragePath for a lake URI. Plain paths and file:// are local (made absolute); dbfs:/x is
    the /dbfs/x mount (dbfs:/Volumes/x the /Volumes/x one); s3a://, gs://, abfss://, hdfs:// go to
    s3fs, gcsfs, adlfs, pyarrow's HDFS with `storage_options` (default: the store's own environment
    variables). LakeError for an unknown scheme or a store whose library is not installed."""
    text = os.fspath(uri)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ("", "file"):
        normal = normalise_uri(text)
        return StoragePath(normal, fsspec.filesystem("file"), normal.removeprefix("file://"))
    if scheme == "dbfs":
        inside = "/" + parts.path.lstrip("/")
        local = inside if inside.startswith("/Volumes/") else _DBFS_MOUNT + inside
        return StoragePath(text, fsspec.filesystem("file"), local)
    protocol = _PROTOCOLS.get(scheme)
    if protocol is None:
        known = ", ".join(sorted({*_PROTOCOLS, "file", "dbfs"}))
        raise LakeError(f"the lake URI {text} has the scheme {scheme!r}, which ecominsight cannot store to: use a "
                        f"plain path or one of {known}")
    options = dict(storage_options or {})
    if protocol in _OBJECT_STORES:
        options.setdefault("use_listings_cache", False)
    try:
        fs, path = fsspec.core.url_to_fs(f"{protocol}://{parts.netloc}{parts.path}", **options)
    except ImportError as err:
        extra = {"s3": "s3fs", "gs": "gcsfs", "abfs": "adlfs"}.get(protocol, "pyarrow with libhdfs")
        raise LakeError(f"the lake {text} needs {extra} installed (pip install {extra}): {err}") from err
    except OSError as err:
        if protocol != "hdfs":
            raise
        # pyarrow connects at once and needs a JVM, libhdfs and the Hadoop classpath for it.
        raise LakeError(f"the lake {text} needs HDFS access through pyarrow's libhdfs (JAVA_HOME, HADOOP_HOME "
                        f"and CLASSPATH=$(hadoop classpath --glob) on this machine): {err}") from err
    return StoragePath(text, fs, path)
