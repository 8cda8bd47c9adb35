"""Readers of the user's sequence files (``task=sequences``): npz, Parquet / Arrow, Hugging Face
``save_to_disk`` folders, and the UEA/UCR ``.ts`` format (:mod:`odyssey.tasks.ts_format`).

Every reader returns a :class:`RawSplit` in one ragged layout: ``inputs`` (S, F) float32, the
steps of all N sequences one after another (S = sum of ``lengths``), ``lengths`` (N,) int64, and
``targets`` (N, ...) per sequence or (S, ...) per step, or None where the file holds none.
Labels stay as the file has them (ints or strings); :mod:`odyssey.tasks.sequences` maps them to
classes. The format follows the path: a folder is a ``datasets`` folder, else the suffix decides
(:data:`SUFFIXES`).

Every problem is one :class:`~odyssey.errors.DataError` line naming the file, the row (or
sequence, or line) and what is wrong.

Layouts:

* npz (read with ``allow_pickle=False``): arrays ``inputs`` (S, F) or (S,), ``lengths`` (N,),
  ``targets`` (N,), (N, D), (S,) or (S, D).
* Parquet / Arrow / ``datasets`` folder: one row per sequence; the inputs column
  (``task.inputs_column``) is ``list<list<float>>`` (T x F) or ``list<float>`` (T, univariate);
  the target column (``task.target_column``) a scalar or a ``list<float>`` (D) per sequence, or a
  list of T scalars or of T lists (D) per step.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from odyssey.errors import DataError

__all__ = ["SUFFIXES", "RawSplit", "check_inputs", "data_files", "read_sequences"]

SUFFIXES = {
    ".npz": "npz",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
    ".ts": "ts",
}


@dataclass(frozen=True)
class RawSplit:
    """One file's sequences: inputs (S, F) float32, lengths (N,) int64, targets or None.

    ``rows`` (N,) and ``row_word`` say where each sequence is in its file, as its reader counts:
    ``locate(i)`` is ``"row 3"`` (Parquet/Arrow), ``"sequence 3"`` (npz) or ``"line 12"`` (``.ts``).
    """

    inputs: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray | None
    rows: np.ndarray
    row_word: str

    def locate(self, i: int) -> str:
        return f"{self.row_word} {int(self.rows[i])}"

    @property
    def offsets(self) -> np.ndarray:
        """(N+1,) start of each sequence in ``inputs``, then S."""
        return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)


def data_files(path: Path) -> list[Path]:
    """The files that make up ``path`` (a file, or every file of a ``datasets`` folder), sorted."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [path]


def read_sequences(path: Path, *, per_step: bool, needs_targets: bool, inputs_column: str, target_column: str) -> RawSplit:
    """The sequences of one file or ``datasets`` folder (see the module docstring).

    Args:
        per_step: the targets are one per step (``step_*`` targets), else one per sequence.
        needs_targets: refuse a file without targets (all targets but ``next_step_binary``).
    """
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raw = _read_table(_dataset_folder_table(path), path, per_step, needs_targets, inputs_column, target_column)
    else:
        kind = SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise DataError(f"{path}: unknown suffix {path.suffix!r}; valid: {sorted(SUFFIXES)} or a datasets folder")
        if kind == "npz":
            raw = _read_npz(path, per_step, needs_targets)
        elif kind == "ts":
            from odyssey.tasks.ts_format import read_ts

            raw = read_ts(path, needs_targets=needs_targets)
            if per_step:
                raise DataError(f"{path}: a .ts file holds one target per sequence; task.target needs one per step")
        else:
            table = _parquet_table(path) if kind == "parquet" else _arrow_table(path)
            raw = _read_table(table, path, per_step, needs_targets, inputs_column, target_column)
    if len(raw.lengths) == 0:
        raise DataError(f"{path}: holds no sequences (an empty split)")
    check_inputs(path, raw)
    return raw


def check_inputs(path: Path, raw: RawSplit) -> None:
    """Refuse lengths < 1, lengths not summing to the inputs' rows, NaN or inf in the inputs."""
    short = np.flatnonzero(raw.lengths < 1)
    if short.size:
        i = int(short[0])
        raise DataError(f"{path}, {raw.locate(i)}: a sequence of length {int(raw.lengths[i])}; expected >= 1 step")
    total = int(raw.lengths.sum())
    if total != raw.inputs.shape[0]:
        raise DataError(f"{path}: the lengths sum to {total} steps but inputs has {raw.inputs.shape[0]} rows")
    bad = ~np.isfinite(raw.inputs)
    if bad.any():
        step, feature = (int(v) for v in np.argwhere(bad)[0])
        i = int(np.searchsorted(raw.offsets, step, side="right") - 1)
        value = raw.inputs[step, feature]
        raise DataError(
            f"{path}, {raw.locate(i)}, step {step - int(raw.offsets[i])}, feature {feature}: the input is {value} "
            "(NaN and inf are refused)"
        )


# --------------------------------------------------------------------------------------------
# npz


def _read_npz(path: Path, per_step: bool, needs_targets: bool) -> RawSplit:
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise DataError(f"{path}: a single .npy array, not an npz archive of inputs, lengths and targets")
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise DataError(f"{path}: not an npz archive (a zip of .npy arrays), though its suffix says so")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not an npz archive, though its suffix says so ({type(exc).__name__}: {exc})") from None
    with archive:
        required = ("inputs", "lengths") + (("targets",) if needs_targets else ())
        missing = [k for k in required if k not in archive.files]
        if missing:
            raise DataError(
                f"{path}: no array {missing[0]!r}; it holds {sorted(archive.files)}; expected inputs (sum of lengths, F), "
                "lengths (N) and targets"
            )
        arrays = {}
        for key in ("inputs", "lengths", "targets"):
            if key not in archive.files:
                continue
            try:
                arrays[key] = archive[key]
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
                raise DataError(f"{path}: array {key!r} cannot be read ({exc}); object arrays (pickles) are refused") from None
    inputs, lengths = arrays["inputs"], arrays["lengths"]
    if inputs.dtype.kind not in "fiub" or inputs.ndim not in (1, 2):
        raise DataError(f"{path}: inputs has dtype {inputs.dtype} and shape {inputs.shape}; expected numbers, (S, F) or (S,)")
    if lengths.dtype.kind not in "iu" or lengths.ndim != 1:
        raise DataError(f"{path}: lengths has dtype {lengths.dtype} and shape {lengths.shape}; expected integers, (N,)")
    inputs = (inputs[:, None] if inputs.ndim == 1 else inputs).astype(np.float32)
    return RawSplit(inputs, lengths.astype(np.int64), arrays.get("targets"), np.arange(len(lengths)), "sequence")


# --------------------------------------------------------------------------------------------
# Parquet, Arrow, datasets folders


def _parquet_table(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a Parquet file, though its suffix says so ({_first_line(exc)})") from None


def _arrow_table(path: Path):
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            try:
                return pa.ipc.open_file(source).read_all()
            except pa.ArrowInvalid:
                source.seek(0)
                return pa.ipc.open_stream(source).read_all()  # the stream format (datasets writes it)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not an Arrow IPC file or stream, though its suffix says so ({_first_line(exc)})") from None


def _dataset_folder_table(folder: Path):
    """A ``datasets`` ``save_to_disk`` folder: ``state.json`` lists its Arrow stream files."""
    import pyarrow as pa

    state = folder / "state.json"
    if state.is_file():
        try:
            names = [f["filename"] for f in json.loads(state.read_text())["_data_files"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{state}: not a datasets state file ({type(exc).__name__}: {exc})") from None
        files = [folder / n for n in names]
    else:
        files = sorted(folder.glob("*.arrow"))
        if (folder / "dataset_dict.json").is_file():
            raise DataError(f"{folder}: a DatasetDict folder; point task.train/valid/test at its split folders")
    if not files:
        raise DataError(f"{folder}: a folder without state.json or .arrow files; expected a datasets save_to_disk folder")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{missing[0]}: no such file (listed in {state})")
    tables = [_arrow_table(f) for f in files]
    try:
        return pa.concat_tables(tables)
    except pa.ArrowException as exc:
        raise DataError(f"{folder}: its Arrow files do not share one schema ({_first_line(exc)})") from None


def _read_table(table, path: Path, per_step: bool, needs_targets: bool, inputs_column: str, target_column: str) -> RawSplit:
    columns = table.column_names
    for key, column, needed in (("inputs_column", inputs_column, True), ("target_column", target_column, needs_targets)):
        if needed and column not in columns:
            raise DataError(f"{path}: no column {column!r} (task.{key}); its columns: {columns}")
    inputs, lengths = _sequence_column(table.column(inputs_column).combine_chunks(), path, inputs_column)
    targets = None
    if target_column in columns:
        targets = _target_column(table.column(target_column).combine_chunks(), path, target_column, per_step, lengths)
    return RawSplit(inputs, lengths, targets, np.arange(len(lengths)), "row")


def _is_list(t) -> bool:
    import pyarrow as pa

    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _lengths(arr) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)


def _first_null(path: Path, column: str, arr, rows_of: Callable[[int], str]) -> None:
    if arr.null_count:
        import pyarrow.compute as pc

        index = int(np.flatnonzero(pc.is_null(arr).to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path}, {rows_of(index)}: column {column!r} holds a missing value (null or NaN is refused)")


def _numbers(arr, path: Path, column: str, what: str) -> np.ndarray:
    import pyarrow as pa

    if not (pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type) or pa.types.is_boolean(arr.type)):
        raise DataError(f"{path}: column {column!r} holds {arr.type} values; expected {what}")
    return arr.to_numpy(zero_copy_only=False)


def _sequence_column(arr, path: Path, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (S, F) float32, lengths (N,)) of a ``list<list<float>>`` or ``list<float>`` column."""
    expected = "list<list<float>> (T x F per row) or list<float> (univariate)"
    if not _is_list(arr.type):
        raise DataError(f"{path}: column {column!r} has type {arr.type}; expected {expected}")
    _first_null(path, column, arr, lambda i: f"row {i}")
    lengths = _lengths(arr)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    row_of = lambda step: int(np.searchsorted(offsets, step, side="right") - 1)  # noqa: E731
    steps = arr.flatten()
    if _is_list(steps.type):
        _first_null(path, column, steps, lambda s: f"row {row_of(s)}, step {s - offsets[row_of(s)]}")
        features = _lengths(steps)
        if features.size and (features != features[0]).any():
            s = int(np.flatnonzero(features != features[0])[0])
            r = row_of(s)
            raise DataError(
                f"{path}, row {r}, step {s - offsets[r]}: {features[s]} features, but row {row_of(0)} step 0 has "
                f"{features[0]} (mixed feature counts)"
            )
        values = steps.flatten()
        _first_null(path, column, values, lambda v: f"row {row_of(v // max(int(features[0]), 1))}")
        inputs = _numbers(values, path, column, expected).astype(np.float32)
        inputs = inputs.reshape(len(steps), int(features[0]) if features.size else 0)
    else:
        _first_null(path, column, steps, lambda s: f"row {row_of(s)}, step {s - offsets[row_of(s)]}")
        inputs = _numbers(steps, path, column, expected).astype(np.float32).reshape(-1, 1)
    return inputs, lengths


def _target_column(arr, path: Path, column: str, per_step: bool, lengths: np.ndarray) -> np.ndarray:
    """Targets (N,) / (N, D) per sequence or (S,) / (S, D) per step, as numbers or strings."""
    import pyarrow as pa

    _first_null(path, column, arr, lambda i: f"row {i}")
    if per_step:
        if not _is_list(arr.type):
            raise DataError(f"{path}: column {column!r} has type {arr.type}; per-step targets need a list of T values per row")
        counts = _lengths(arr)
        if (counts != lengths).any():
            r = int(np.flatnonzero(counts != lengths)[0])
            raise DataError(f"{path}, row {r}: {counts[r]} targets for a sequence of {lengths[r]} steps")
        arr = arr.flatten()
        _first_null(path, column, arr, lambda s: f"step {s}")
    if _is_list(arr.type):
        dims = _lengths(arr)
        if dims.size and (dims != dims[0]).any():
            r = int(np.flatnonzero(dims != dims[0])[0])
            where = f"step {r}" if per_step else f"row {r}"
            raise DataError(f"{path}, {where}: a target of {dims[r]} values, but the first has {dims[0]}")
        values = arr.flatten()
        _first_null(path, column, values, lambda v: f"value {v}")
        return _numbers(values, path, column, "numbers").reshape(len(arr), int(dims[0]) if dims.size else 0)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        return np.asarray(arr.to_pylist(), dtype=str)
    return _numbers(arr, path, column, "numbers or strings")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
