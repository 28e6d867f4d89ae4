"""``--storage``: where a sweep keeps its results and checkpoints (local folder or bucket).

:func:`resolve_storage` checks a ``--storage`` value and returns what
``ray.tune.RunConfig(storage_path=...)`` needs. Ray resolves it with
``pyarrow.fs.FileSystem.from_uri``, so every scheme pyarrow knows works:
``s3://``, ``gs://``, ``abfs://``, ``hdfs://``, ``file://``, plain paths.

For S3-compatible stores pass the plain URI and set the usual variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
``AWS_ENDPOINT_URL_S3`` for MinIO/moto...) in the driver; Ray's workers on
other nodes pick them up. Alternatively put ``?endpoint_override=HOST:PORT&scheme=http``
in the URI. Do not combine a ``s3://`` path with an explicit
``storage_filesystem`` (Ray then wants ``bucket/prefix`` without the scheme).

On a multi-node cluster a local path must be on a filesystem every node mounts
(NFS, Lustre...), or checkpoints written by other nodes are not found.

The small helpers below read and write files and folders under such a URI
with ``pyarrow.fs`` (used by export/resume when the run lives in a bucket).
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ClusterError

# Schemes handled without instantiating a filesystem (which, for s3, may call the
# network to find the bucket's region). Others are asked of pyarrow.
_KNOWN_REMOTE = {"s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs"}


def _split(uri: str) -> tuple[str, str]:
    """(scheme, rest); scheme is "" for plain paths (including Windows drive letters)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if len(scheme) == 1:  # C:\\...
        return "", uri
    return scheme, uri


def is_remote(uri: str | os.PathLike | None) -> bool:
    """True for URIs with a scheme other than ``file``."""
    if uri is None:
        return False
    scheme, _ = _split(str(uri))
    return scheme not in ("", "file")


def resolve_storage(uri: str | os.PathLike | None) -> str | None:
    """Validate ``--storage`` and return the ``storage_path`` for ``RunConfig``.

    * ``None`` -> ``None`` (the caller's default).
    * a plain or ``~`` path, or ``file://`` URI -> absolute local path (not created here).
    * ``s3://bucket/prefix``, ``gs://...``, any scheme ``pyarrow.fs`` understands ->
      the URI unchanged (query parameters such as ``endpoint_override`` kept).

    Raises:
        ClusterError: unknown scheme, or a bucket URI without a bucket, naming ``--storage``.
    """
    if uri is None:
        return None
    text = str(uri).strip()
    if not text:
        raise ClusterError("--storage is empty: give a folder or a URI such as s3://bucket/prefix")
    scheme, _ = _split(text)
    if scheme == "":
        return str(Path(text).expanduser().resolve())
    if scheme == "file":
        path = urlsplit(text).path
        if not path:
            raise ClusterError(f"--storage {text!r}: file:// URI without a path")
        return str(Path(path).expanduser().resolve())
    if scheme in _KNOWN_REMOTE:
        if not urlsplit(text).netloc:
            raise ClusterError(f"--storage {text!r}: missing bucket/host, expected e.g. {scheme}://bucket/prefix")
        return text
    import pyarrow
    import pyarrow.fs

    try:
        pyarrow.fs.FileSystem.from_uri(text)
    except pyarrow.ArrowInvalid as e:
        if "Unrecognized filesystem type" in str(e):
            raise ClusterError(
                f"--storage {text!r}: unknown scheme '{scheme}://'; use a local folder, s3://, gs://, "
                f"abfs:// or hdfs:// (any scheme pyarrow.fs understands)"
            ) from None
        raise ClusterError(f"--storage {text!r}: {e}") from None
    except OSError as e:  # recognised scheme whose backend is unavailable here (e.g. hdfs without Java)
        raise ClusterError(f"--storage {text!r}: {str(e).splitlines()[0]}") from None
    return text


def filesystem(uri: str | os.PathLike):
    """``(pyarrow.fs.FileSystem, path)`` for a local path or URI (what Ray itself does)."""
    import pyarrow.fs

    text = str(uri)
    if not is_remote(text):
        return pyarrow.fs.LocalFileSystem(), resolve_storage(text)
    return pyarrow.fs.FileSystem.from_uri(text)


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URI (query string kept at the end)."""
    if not is_remote(base):
        return str(Path(base, *parts))
    s = urlsplit(base)
    path = posixpath.join(s.path or "/", *parts)
    out = f"{s.scheme}://{s.netloc}{path}"
    return f"{out}?{s.query}" if s.query else out


def exists(uri: str) -> bool:
    """True if a file or folder exists at ``uri``."""
    import pyarrow.fs

    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to the file at ``uri`` (parents created)."""
    fs, path = filesystem(uri)
    fs.create_dir(posixpath.dirname(path) if is_remote(uri) else os.path.dirname(path), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def read_bytes(uri: str) -> bytes:
    """Read the whole file at ``uri``."""
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def upload_dir(local_dir: str | os.PathLike, uri: str) -> None:
    """Copy a local folder to ``uri`` (recursively; existing files are overwritten)."""
    import pyarrow.fs

    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)
    pyarrow.fs.copy_files(str(Path(local_dir).resolve()), path, destination_filesystem=fs)


def download_dir(uri: str, local_dir: str | os.PathLike) -> Path:
    """Copy the folder at ``uri`` into ``local_dir`` (created); returns ``local_dir``."""
    import pyarrow.fs

    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.Directory:
        raise ClusterError(f"{uri}: no such folder")
    dest = Path(local_dir)
    dest.mkdir(parents=True, exist_ok=True)
    pyarrow.fs.copy_files(path, str(dest.resolve()), source_filesystem=fs)
    return dest
