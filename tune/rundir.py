"""A sweep's run directory, local or remote (any pyarrow.fs URI: s3://, gs://, file paths).

It is Ray Tune's experiment folder plus stune's own files:
``summary.json``, ``trials.csv``, ``best/`` (the best checkpoint's model), ``sweep.json``
(the config the sweep was started with, so ``--resume`` and ``export`` need nothing else).
Every file stune writes goes through a temp name and a rename, so readers never see half a file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import posixpath
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

log = logging.getLogger("stune.sweep")

SUMMARY = "summary.json"
TRIALS = "trials.csv"
BEST = "best"
SWEEP = "sweep.json"
RUNNING = ".stune-running"  # local: held (flock) by the sweep's process; remote: that sweep's lease
RAY_STATE_PREFIX = "experiment_state"
# A trial's status in trials.csv: the first four are final, the last two are not (yet).
DONE = ("completed", "stopped_early", "out_of_time", "errored")
TRIAL_STATUSES = (*DONE, "running", "pending")


TRIAL_DIR_PREFIX = "trial_"


def trial_dir_name(trial_id: str) -> str:
    """The folder of a trial in the run directory."""
    return f"{TRIAL_DIR_PREFIX}{trial_id}"


def trial_dirname(trial) -> str:
    """Ray Tune's ``trial_dirname_creator``. Ray pickles it into the experiment state by module
    and name, so it lives here, in a module whose name stays put, for ``--resume`` to find."""
    return trial_dir_name(trial.trial_id)


def delete_checkpoint_dirs(fs: Any, trial_path: str) -> None:
    """Remove the ``checkpoint_*`` folders Ray keeps in one trial's folder (what a finished trial
    no longer needs: ``best/`` holds the winner)."""
    for info in fs.get_file_info(pafs.FileSelector(trial_path, recursive=False, allow_not_found=True)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
            fs.delete_dir(info.path)


# In the name of a file being written through LinkingLocalFileSystem (see _ReplacedOnClose).
PARTIAL_MARK = ".stune-partial-"


class _ReplacedOnClose(io.FileIO):
    """A file written under a hidden name beside ``path`` and renamed over it when closed. Ray
    saves the sweep's state by copying its files into the run dir one after another, overwriting
    the last save's; a driver killed mid-copy left a truncated ``experiment_state-*.json``, which
    made ``--resume`` start the sweep over (seen in a test run, 2026-12-07). Now a killed write
    leaves the file as it was, and a hidden ``.NAME.stune-partial-*`` the resume removes."""

    def __init__(self, path: str) -> None:
        folder, name = os.path.split(path)
        self.final_path = path
        super().__init__(os.path.join(folder, f".{name}{PARTIAL_MARK}{uuid.uuid4().hex[:8]}"), "w")

    def close(self) -> None:
        if not self.closed:
            super().close()
            os.replace(self.name, self.final_path)


class LinkingLocalFileSystem(pafs.FileSystemHandler):
    """The local file system, except that copying a file hard-links it where it can, and that
    a file written is renamed into place when complete (_ReplacedOnClose).

    Ray persists each reported checkpoint by copying it from the trial's working folder into the
    run dir, through ``pyarrow.fs.copy_files``; between two file systems that compare equal, that
    calls ``copy_file`` per file. A local run dir and the trials' checkpoints both use this one
    (``RunDir.ray_storage_filesystem``, ``tune.trainable``), so a checkpoint on the run dir's disk
    is linked, not written a second time: half the checkpoint I/O, and at a report a trial holds
    its new checkpoint once, not twice (bench/resources.py). Neither copy is written to in place
    afterwards (the trial deletes its own). Across disks (EXDEV), or where links are not
    supported, it copies as before."""

    def __init__(self) -> None:
        self._local = pafs.LocalFileSystem()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LinkingLocalFileSystem)

    def __hash__(self) -> int:
        return hash(LinkingLocalFileSystem)

    def copy_file(self, src: str, dest: str) -> None:
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dest)  # copy_file overwrites; a link needs the name free
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)

    def get_type_name(self) -> str:
        return "stune-local"

    def normalize_path(self, path):
        return self._local.normalize_path(path)

    def get_file_info(self, paths):
        return self._local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self._local.get_file_info(selector)

    def create_dir(self, path, recursive):
        self._local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self._local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("stune never empties the root folder")

    def delete_file(self, path):
        self._local.delete_file(path)

    def move(self, src, dest):
        self._local.move(src, dest)

    def open_input_stream(self, path):
        return self._local.open_input_stream(path)

    def open_input_file(self, path):
        return self._local.open_input_file(path)

    def open_output_stream(self, path, metadata):
        import pyarrow as pa

        return pa.PythonFile(_ReplacedOnClose(path), mode="w")

    def open_append_stream(self, path, metadata):
        return self._local.open_append_stream(path, metadata=metadata)


def linking_local_fs() -> pafs.FileSystem:
    """A pyarrow file system for local paths whose ``copy_file`` hard-links (LinkingLocalFileSystem)."""
    return pafs.PyFileSystem(LinkingLocalFileSystem())


def is_local_fs(fs: Any) -> bool:
    return isinstance(fs, pafs.LocalFileSystem) or (
        isinstance(fs, pafs.PyFileSystem) and isinstance(fs.handler, LinkingLocalFileSystem)
    )


@dataclass(frozen=True)
class RunDir:
    uri: str  # as the user gave it (a path or a URI)
    fs: Any
    path: str  # path inside fs

    @classmethod
    def open(cls, uri: str) -> "RunDir":
        if "://" in uri:
            fs, path = pafs.FileSystem.from_uri(uri)
        else:
            fs, path = pafs.LocalFileSystem(), os.path.abspath(uri)
        return cls(uri, fs, path.rstrip("/"))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def ray_storage_filesystem(self) -> Any:
        """What Ray Tune's ``RunConfig(storage_filesystem=...)`` takes: None (Ray resolves the URI)
        for a remote run dir, a linking local file system for a local one."""
        return linking_local_fs() if self.is_local else None

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def storage_path(self) -> str:
        """What Ray Tune's ``RunConfig(storage_path=...)`` takes for the parent folder."""
        if self.is_local:
            return os.path.dirname(self.path)
        scheme = self.uri.split("://", 1)[0]
        query = "?" + self.uri.split("?", 1)[1] if "?" in self.uri else ""
        return f"{scheme}://{posixpath.dirname(self.path)}{query}"

    def join(self, *parts: str) -> str:
        """A path inside the run directory; names that would lead out of it are refused."""
        joined = posixpath.normpath(posixpath.join(self.path, *parts)) if parts else self.path
        if joined != self.path and not joined.startswith(self.path.rstrip("/") + "/"):
            raise ValueError(f"{'/'.join(parts)!r} is outside the run directory {self.uri}")
        return joined

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.join(*parts)).type != pafs.FileType.NotFound

    def is_empty(self) -> bool:
        """Nothing in it but, at most, the lock or lease a sweep killed before it wrote anything left
        behind (one that a sweep holds now still refuses a second sweep: ``SweepRunning.take``)."""
        if not self.exists():
            return True
        entries = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False))
        return all(entry.base_name == RUNNING for entry in entries)

    def why_not_a_sweep(self) -> str:
        """What this folder is instead of a sweep's run dir, for an error line "URI <this>"."""
        if not self.exists():
            return "does not exist"
        if self.exists("metrics.json") and self.exists("model"):  # what `stune train --out` writes
            return (f"is the output of 'stune train', not of a sweep: its model is ready to load from "
                    f"{posixpath.join(self.uri.rstrip('/'), 'model')}")
        return f"is not a stune sweep (no {SWEEP})"

    def has_sweep(self) -> bool:
        return self.exists(SWEEP) and any(
            info.base_name.startswith(RAY_STATE_PREFIX)
            for info in self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False))
        )

    def write_bytes(self, name: str, data: bytes) -> None:
        self.fs.create_dir(self.path, recursive=True)
        target = self.join(name)
        tmp = self.join(f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)
        except Exception:  # disk full...: the previous file stays as it was, no half-written temp is left
            with contextlib.suppress(OSError):
                self.fs.delete_file(tmp)
            raise
        self.fs.move(tmp, target)  # atomic on local disks; a single PUT on object stores

    def write_json(self, name: str, payload: Any) -> None:
        self.write_bytes(name, json.dumps(payload, indent=2, default=str).encode())

    def read_json(self, name: str) -> Any:
        with self.fs.open_input_stream(self.join(name)) as src:
            return json.loads(src.read())

    def write_csv(self, name: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        self.write_bytes(name, buffer.getvalue().encode())

    def read_csv(self, name: str) -> list[dict[str, str]]:
        with self.fs.open_input_stream(self.join(name)) as src:
            return list(csv.DictReader(io.StringIO(src.read().decode())))

    def trial_results(self) -> dict[str, list[dict[str, Any]]]:
        """Every trial's reported results by trial id, from Ray's ``trial_<id>/result.json`` (JSON lines)."""
        curves: dict[str, list[dict[str, Any]]] = {}
        try:
            entries = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False))
        except (FileNotFoundError, OSError):
            return curves
        for entry in entries:
            if entry.type != pafs.FileType.Directory or not entry.base_name.startswith(TRIAL_DIR_PREFIX):
                continue
            try:
                with self.fs.open_input_stream(posixpath.join(entry.path, "result.json")) as src:
                    text = src.read().decode(errors="replace")
            except (FileNotFoundError, OSError):
                continue
            results = []
            for line in text.splitlines():
                try:  # the last line of a running trial may be half written
                    results.append(json.loads(line))
                except ValueError:
                    continue
            if results:
                curves[results[0].get("trial_id") or entry.base_name.removeprefix(TRIAL_DIR_PREFIX)] = results
        return curves

    def replace_dir_from(self, name: str, src_fs, src_path: str, skip: tuple[str, ...] = ()) -> None:
        """Copy a folder into ``name`` via a temp folder, then swap it in. Object stores have no
        folder rename: there the old copy is replaced file by file. Between local folders on one
        file system the files are hard-linked, not copied: a trial's checkpoint and best/ then
        take the model's size on disk once (neither is ever written to in place)."""
        self.join(name)  # refuses a name outside the run directory before anything is copied
        local = self.is_local
        dest_fs = self.fs
        if local and is_local_fs(src_fs):
            src_fs = dest_fs = linking_local_fs()  # links, or copies across disks
        tmp = self.join(f".{name}.{uuid.uuid4().hex[:8]}.tmp") if local else self.join(name)
        if not local and self.exists(name):
            self.fs.delete_dir(tmp)
        selector = pafs.FileSelector(src_path, recursive=True)
        try:
            for info in src_fs.get_file_info(selector):
                if info.type != pafs.FileType.File or info.base_name in skip:
                    continue
                rel = posixpath.relpath(info.path, src_path)
                dest = posixpath.join(tmp, rel)
                self.fs.create_dir(posixpath.dirname(dest), recursive=True)
                pafs.copy_files(info.path, dest, source_filesystem=src_fs, destination_filesystem=dest_fs)
        except Exception:
            if local:  # a failed copy (disk full...) leaves the old folder as it was, and no temp folder
                with contextlib.suppress(OSError):
                    self.fs.delete_dir(tmp)
            raise
        target = self.join(name)
        if not local:
            return
        if self.exists(name):
            old = self.join(f".{name}.old.{uuid.uuid4().hex[:8]}")
            self.fs.move(target, old)
            self.fs.move(tmp, target)
            self.fs.delete_dir(old)
        else:
            self.fs.move(tmp, target)

    def download_dir(self, name: str, local: str) -> str:
        pafs.copy_files(self.join(name), local, source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
        return local


LEASE_REFRESH_S = 15.0  # how often a sweep in a remote run dir renews its lease
LEASE_LAPSES_S = 45.0  # a lease not renewed for this long belongs to a sweep that is gone


class SweepRunning:
    """Which process runs a sweep in a run dir, so that a second sweep, ``--resume`` or ``--force``
    there is refused instead of two sweeps writing one run dir.

    Local run dirs: an OS lock on a file. It goes with the process, so a crashed sweep leaves
    nothing to clean up. Remote run dirs (S3...), which have no locks: a lease, a small file the
    sweep rewrites every ``LEASE_REFRESH_S`` seconds; one not renewed for ``LEASE_LAPSES_S``
    seconds (its sweep was killed) is taken over. Object stores have no "create if absent"
    through pyarrow, so two sweeps started within the same second could both write a lease:
    each reads it back a moment later and the one whose lease was overwritten gives way."""

    def __init__(self, run_dir: RunDir):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir.path, RUNNING) if run_dir.is_local else None
        self.file = None
        self._token: str | None = None
        self._renewing: threading.Event | None = None
        self._renewer: threading.Thread | None = None

    def holder(self) -> str | None:
        """Who runs a sweep here now ("pid 123 on host, since ..."), or None."""
        if not self.run_dir.is_local:
            lease = self._read_lease()
            if lease is None:
                return None
            try:
                age = time.time() - float(lease.get("renewed", 0))
            except (TypeError, ValueError):  # not a lease stune wrote: nobody holds the run dir
                return None
            if age > LEASE_LAPSES_S:
                return None
            return (f"{lease.get('holder') or 'another process'}, last seen {max(age, 0):.0f} s ago; "
                    f"a killed sweep's claim lapses {LEASE_LAPSES_S:.0f} s after that")
        import fcntl

        if not os.path.isfile(self.path):
            return None
        with open(self.path) as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return probe.read().strip() or "another process"
            fcntl.flock(probe, fcntl.LOCK_UN)
        return None

    def take(self) -> None:
        """Claim the run dir; RuntimeError(who holds it) if a sweep runs there."""
        if not self.run_dir.is_local:
            self._take_lease()
            return
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            self.file = None
            raise RuntimeError(holder) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(_who_and_since())
        self.file.flush()

    def release(self) -> None:
        if self._renewing is not None:
            self._renewing.set()
            self._renewer.join(timeout=30)
            with contextlib.suppress(Exception):  # a lease left behind lapses on its own
                if (self._read_lease() or {}).get("token") == self._token:
                    self.run_dir.fs.delete_file(self.run_dir.join(RUNNING))
            self._renewing = self._renewer = self._token = None
        if self.file is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.file.close()  # closing drops the lock
            self.file = None

    def _read_lease(self) -> dict | None:
        try:
            lease = self.run_dir.read_json(RUNNING)
        except (FileNotFoundError, ValueError):  # none, or not one of ours: nobody holds the run dir
            return None
        return lease if isinstance(lease, dict) else None

    def _write_lease(self, holder: str) -> None:
        self.run_dir.write_json(RUNNING, {"holder": holder, "token": self._token, "renewed": time.time()})

    def _take_lease(self) -> None:
        if holder := self.holder():
            raise RuntimeError(holder)
        self._token = uuid.uuid4().hex
        holder = _who_and_since()
        self._write_lease(holder)
        time.sleep(1.0)  # a sweep that read no lease when this one did has written its own by now
        if (self._read_lease() or {}).get("token") != self._token:
            self._token = None
            raise RuntimeError(self.holder() or "another sweep, started at the same moment")
        self._renewing = threading.Event()
        self._renewer = threading.Thread(target=self._renew, args=(holder,), name="stune-lease", daemon=True)
        self._renewer.start()

    def _renew(self, holder: str) -> None:
        while not self._renewing.wait(LEASE_REFRESH_S):
            try:
                if (self._read_lease() or {}).get("token") not in (self._token, None):
                    log.error(
                        "%s: another sweep took this run dir over (this one could not renew its lease for %.0f s)",
                        self.run_dir.uri, LEASE_LAPSES_S)
                    return
                self._write_lease(holder)
            except Exception:  # noqa: BLE001 - a network blip: the next renewal may get through
                log.debug("could not renew the lease on %s", self.run_dir.uri, exc_info=True)


def _who_and_since() -> str:
    import socket

    return f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
