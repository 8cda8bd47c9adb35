"""``odyssey data fetch jsb``: download a benchmark's data file, verify it, write it atomically.

The JSB pickle comes from the czhuang/JSB-Chorales-dataset GitHub repository, a mirror of
Boulanger-Lewandowski's original whose sha256 is the one in :data:`odyssey.tasks.jsb.KNOWN_SHA256`.
The download goes to a temporary file in the destination folder and is renamed into place only
after its sha256 matched, so an interrupted or tampered download never leaves a file that looks
valid.

Example:
    $ odyssey data fetch jsb --dest ~/data/jsb
    $ export ODYSSEY_JSB_DIR=~/data/jsb
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import TextIO

from odyssey.errors import DataError
from odyssey.tasks.jsb import FILES, KNOWN_SHA256, default_data_dir

__all__ = ["DATASETS", "JSB_URL", "fetch_jsb", "main"]

JSB_URL = "https://raw.githubusercontent.com/czhuang/JSB-Chorales-dataset/master/jsb-chorales-quarter.pkl"
# The original (same data, another file name):
# http://www-etud.iro.umontreal.ca/~boulanni/JSB%20Chorales.pickle
DATASETS = ("jsb",)
# Licensed corpora: never downloaded; the task reads the user's copy (see their modules).
LICENSED = {
    "timit": "TIMIT is licensed (LDC93S1, https://catalog.ldc.upenn.edu/LDC93S1)",
    "iam_ondb": "IAM-OnDB needs registration (https://fki.tic.heia-fr.ch/databases/iam-on-line-handwriting-database)",
}
_CHUNK = 1 << 16


def fetch_jsb(
    dest_dir: str | Path,
    *,
    url: str = JSB_URL,
    sha256: str | None = KNOWN_SHA256[FILES["pkl"]],
    timeout: float = 60.0,
    progress: TextIO | None = sys.stderr,
) -> Path:
    """Download the JSB pickle into ``dest_dir`` as ``jsb-chorales-quarter.pkl``.

    Args:
        dest_dir: destination folder, created if needed.
        url: where to download from (any urllib URL, ``file://`` included).
        sha256: expected digest; ``None`` skips the check.
        timeout: socket timeout in seconds.
        progress: stream for a one-line progress display; ``None`` for silence.

    Returns:
        The path of the verified file.

    Raises:
        DataError: the download failed or its sha256 does not match; nothing is left behind
            and an existing file is not touched.
    """
    dest_dir = Path(dest_dir).expanduser().resolve()
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / FILES["pkl"]
    fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    total = int(response.headers.get("Content-Length") or 0)
                    done = 0
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        _show(progress, done, total)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise DataError(f"cannot download {url}: {exc}") from None
            out.flush()
            os.fsync(out.fileno())
        if progress is not None:
            progress.write("\n")
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256:
            raise DataError(
                f"download from {url} fails its sha256 check (expected {sha256}, got {actual}); "
                f"{target} was not written"
            )
        os.replace(tmp, target)  # atomic on POSIX: readers see the old file or the new one
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _show(stream: TextIO | None, done: int, total: int) -> None:
    if stream is None:
        return
    if total:
        stream.write(f"\r  {done / 1e6:6.2f} / {total / 1e6:.2f} MB ({100 * done / total:3.0f}%)")
    else:
        stream.write(f"\r  {done / 1e6:6.2f} MB")
    stream.flush()


def main(argv: list[str]) -> int:
    """``odyssey data fetch <dataset> [--dest DIR] [--url URL]``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="odyssey data fetch", description="Download a benchmark data set.")
    parser.add_argument("dataset", help=f"one of: {', '.join(DATASETS)}")
    parser.add_argument(
        "--dest",
        default=None,
        help="destination folder (default: $ODYSSEY_JSB_DIR, $ODYSSEY_DATA_DIR/jsb or ~/.cache/odyssey/data/jsb)",
    )
    parser.add_argument("--url", default=JSB_URL, help="download address (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.dataset in LICENSED:
        print(
            f"error: {LICENSED[args.dataset]}: it cannot be downloaded; put your copy somewhere and set "
            f"task.data_dir (or $ODYSSEY_{args.dataset.upper()}_DIR) to it",
            file=sys.stderr,
        )
        return 2
    if args.dataset not in DATASETS:
        print(f"error: unknown dataset {args.dataset!r}; valid datasets: {', '.join(DATASETS)}", file=sys.stderr)
        return 2
    dest = Path(args.dest) if args.dest else default_data_dir(include_shared=False)
    print(f"fetching {args.dataset} from {args.url} into {dest}", file=sys.stderr)
    try:
        path = fetch_jsb(dest, url=args.url)
    except (DataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} (sha256 verified)", file=sys.stderr)
    if args.dest:
        print(f"use it with: export ODYSSEY_JSB_DIR={path.parent}", file=sys.stderr)
    return 0
