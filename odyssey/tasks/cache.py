"""Where licensed corpora live, and a verified on-disk cache of what is extracted from them.

Corpora that cannot be downloaded (TIMIT, IAM-OnDB) are read from the user's copy: ``data_dir``
or, when that is null, ``$ODYSSEY_<NAME>_DIR`` or ``$ODYSSEY_DATA_DIR/<name>``
(:func:`corpus_dir`).

Reading a whole corpus (6300 audio files, 13 000 XML files) takes minutes, so the arrays made
from it are cached (:func:`cached_arrays`) in ``$ODYSSEY_CACHE_DIR`` or
``$XDG_CACHE_HOME/odyssey/features`` (default ``~/.cache/...``):

* The cache key is the sha256 of a JSON document of the corpus fingerprint (each file's relative
  path, size and modification time) and every setting the arrays depend on, so a changed file or
  setting makes a new entry, never a stale hit.
* An entry is ``<name>-<key>.npz`` (numeric and fixed-width string arrays only, read back with
  ``allow_pickle=False``: nothing is unpickled) and ``<name>-<key>.json``, the manifest written
  last, holding the npz's sha256 and the key's document. A read verifies the sha256; an entry that
  fails it (a damaged or tampered file) is reported on stderr and rebuilt.
* Both files are written to temporary names and renamed into place; a lock file serialises the
  trials of one machine that build the same entry at once (the first builds, the others read).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from odyssey.errors import DataError

__all__ = ["cache_dir", "cached_arrays", "corpus_dir", "fingerprint", "sha256_of"]

CACHE_FORMAT = 1


def corpus_dir(data_dir: str | None, name: str) -> Path:
    """``data_dir`` made absolute, else ``$ODYSSEY_<NAME>_DIR``, else ``$ODYSSEY_DATA_DIR/<name>``.

    Raises:
        DataError: ``data_dir`` is null and neither variable is set (nothing can be downloaded).
    """
    if data_dir is not None:
        return Path(str(data_dir)).expanduser().resolve()
    found = data_dir_from_env(name)
    if found is not None:
        return found
    variable = f"ODYSSEY_{name.upper()}_DIR"
    raise DataError(
        f"task {name!r} reads your own copy of a licensed corpus: set task.data_dir (or ${variable}, "
        f"or $ODYSSEY_DATA_DIR with a '{name}' folder) to where it is"
    )


def data_dir_from_env(name: str) -> Path | None:
    """``$ODYSSEY_<NAME>_DIR``, else ``$ODYSSEY_DATA_DIR/<name>``, absolute; None if neither is set."""
    variable = f"ODYSSEY_{name.upper()}_DIR"
    if os.environ.get(variable):
        return Path(os.environ[variable]).expanduser().resolve()
    if os.environ.get("ODYSSEY_DATA_DIR"):
        return (Path(os.environ["ODYSSEY_DATA_DIR"]).expanduser() / name).resolve()
    return None


def user_cache_root() -> Path:
    """``$XDG_CACHE_HOME/odyssey``, else ``~/.cache/odyssey``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "odyssey"


def cache_dir(directory: str | None = None) -> Path:
    """``directory``, else ``$ODYSSEY_CACHE_DIR``, else ``$XDG_CACHE_HOME/odyssey/features``; absolute."""
    if directory is not None:
        return Path(str(directory)).expanduser().resolve()
    if os.environ.get("ODYSSEY_CACHE_DIR"):
        return Path(os.environ["ODYSSEY_CACHE_DIR"]).expanduser().resolve()
    return (user_cache_root() / "features").resolve()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(root: Path, files: Iterable[Path]) -> str:
    """sha256 over each file's path relative to ``root``, size and mtime (cheap: no file is read)."""
    digest = hashlib.sha256()
    for path in files:
        st = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(path: Path):
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock, the atomic renames still hold
        yield
        return
    try:
        f = open(path, "a+b")
    except OSError:  # a read-only cache folder: reading needs no lock (writing fails, and says so)
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _atomic_write(target: Path, write: Callable[[Any], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a cache shared by the nodes' users
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _read(npz: Path, manifest: Path, key: dict) -> dict[str, np.ndarray] | None:
    """The entry's arrays, or None (missing, or failed verification: reported on stderr)."""
    if not (npz.is_file() and manifest.is_file()):
        return None
    try:
        meta = json.loads(manifest.read_text())
        expected = meta["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        print(f"odyssey: feature cache manifest {manifest} is unreadable; rebuilding the entry", file=sys.stderr)
        return None
    actual = sha256_of(npz)
    if actual != expected or meta.get("key") != key:
        print(
            f"odyssey: feature cache file {npz} fails its sha256 check (expected {expected}, got {actual}): "
            "damaged or tampered with; rebuilding it",
            file=sys.stderr,
        )
        return None
    with np.load(npz, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def cached_arrays(
    name: str, key: dict, build: Callable[[], dict[str, np.ndarray]], *, directory: str | Path | None = None
) -> dict[str, np.ndarray]:
    """The arrays ``build()`` makes for ``key``, from the verified cache when it holds them.

    Args:
        name: the entry's file prefix (``timit``, ``iam_ondb``).
        key: JSON-ready document of everything the arrays depend on (corpus fingerprint, settings).
        build: makes the arrays (numeric or fixed-width string dtypes; no objects).
        directory: the cache folder (default :func:`cache_dir`).
    """
    folder = cache_dir(None if directory is None else str(directory))
    key = json.loads(json.dumps({"cache_format": CACHE_FORMAT, **key}, sort_keys=True))  # as the manifest reads back
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    npz, manifest = folder / f"{name}-{digest}.npz", folder / f"{name}-{digest}.json"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"feature cache folder {folder} cannot be created ({exc.strerror}); set $ODYSSEY_CACHE_DIR") from None
    with _locked(folder / f".{name}-{digest}.lock"):
        arrays = _read(npz, manifest, key)
        if arrays is not None:
            return arrays
        arrays = build()
        for k, v in arrays.items():
            if v.dtype.hasobject:
                raise TypeError(f"cache array {k!r} has dtype {v.dtype}: only numeric and fixed-width strings are cached")
        try:
            _atomic_write(npz, lambda f: np.savez(f, **arrays))
            body = json.dumps({"sha256": sha256_of(npz), "key": key}, sort_keys=True, indent=1).encode()
            _atomic_write(manifest, lambda f: f.write(body))
        except OSError as exc:
            raise DataError(
                f"feature cache folder {folder} is not writable ({exc.strerror or exc}); set task.cache_dir or $ODYSSEY_CACHE_DIR"
            ) from None
    return arrays
