"""The ``.ts`` format of the UEA/UCR time-series archives, as sktime and aeon write it.

A header of ``@key value`` lines (``#`` comments allowed), then ``@data`` and one case per line::

    @problemName GunPoint
    @timeStamps false
    @missing false
    @univariate false
    @equalLength false
    @classLabel true walk run
    @data
    0.1,0.2,0.3:1.0,1.1,1.2:walk

Dimensions (features) are separated by ``:``, the values of one dimension by ``,``; the last
field is the class label (``@classLabel true``) or the regression target (``@targetLabel true``).
Lengths may differ between cases, not between the dimensions of one case. A case becomes a
(T, F) sequence with F = the number of dimensions.

Refused with the line number: missing values (``?``, ``NaN``), time stamps, a label not in the
``@classLabel`` list, a case whose dimension count or dimension lengths differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from odyssey.errors import DataError
from odyssey.tasks.sequence_files import RawSplit

__all__ = ["read_ts"]


def read_ts(path: Path, *, needs_targets: bool) -> RawSplit:
    """The cases of a ``.ts`` file: inputs (S, F), lengths (N,), targets (N,) labels (str) or floats."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a .ts text file, though its suffix says so (byte {exc.start} is not UTF-8)") from None
    header: dict[str, str] = {}
    labels: list[str] | None = None
    steps: list[np.ndarray] = []
    lengths: list[int] = []
    targets: list[str] = []
    lines: list[int] = []
    features = None
    in_data = False
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}, line {number}"
        if not in_data:
            if not line.startswith("@"):
                raise DataError(f"{where}: expected an @header line or @data before the cases, found {line[:40]!r}")
            key, _, value = line[1:].partition(" ")
            key = key.lower()
            if key == "data":
                in_data = True
                has_class = header.get("classlabel", "false").split()[0].lower() == "true"
                has_target = header.get("targetlabel", "false").split()[0].lower() == "true"
                if header.get("timestamps", "false").lower() == "true":
                    raise DataError(f"{where}: @timeStamps true is not supported; write the values without time stamps")
                if has_class:
                    listed = header["classlabel"].split()[1:]
                    labels = listed or None
                if needs_targets and not (has_class or has_target):
                    raise DataError(f"{path}: the header has neither '@classLabel true' nor '@targetLabel true': no targets")
                labelled = has_class or has_target
                continue
            header[key] = value.strip()
            continue
        fields = line.split(":")
        target = None
        if labelled:
            target = fields.pop().strip()
            if labels is not None and target not in labels:
                raise DataError(f"{where}: class label {target!r} is not in the header's @classLabel list {labels}")
            if has_target and not has_class:
                try:
                    float(target)
                except ValueError:
                    raise DataError(f"{where}: regression target {target!r} is not a number") from None
        if features is None:
            features = len(fields)
        elif len(fields) != features:
            raise DataError(f"{where}: {len(fields)} dimensions, but line {lines[0]} has {features} (mixed feature counts)")
        try:
            dims = [np.array(d.replace("?", "nan").split(","), dtype=np.float64) for d in fields]
        except ValueError:
            bad = next(v for d in fields for v in d.split(",") if not _is_number(v))
            raise DataError(f"{where}: value {bad.strip()!r} is not a number") from None
        for d, values in enumerate(dims):
            if not np.isfinite(values).all():
                step = int(np.flatnonzero(~np.isfinite(values))[0])
                raise DataError(
                    f"{where}, dimension {d}, step {step}: a missing value ('?', NaN or inf); missing values are refused"
                )
        if len({len(v) for v in dims}) != 1:
            raise DataError(f"{where}: its dimensions have unequal lengths {[len(v) for v in dims]}")
        steps.append(np.stack(dims, axis=1))
        lengths.append(len(dims[0]))
        if target is not None:
            targets.append(target)
        lines.append(number)
    if not in_data:
        raise DataError(f"{path}: no @data line; not a .ts file")
    inputs = np.concatenate(steps).astype(np.float32) if steps else np.zeros((0, features or 0), np.float32)
    out_targets = None
    if labelled:
        out_targets = np.asarray(targets, dtype=str) if has_class else np.asarray(targets, dtype=np.float64)
    return RawSplit(inputs, np.asarray(lengths, dtype=np.int64), out_targets, np.asarray(lines, dtype=np.int64), "line")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
