"""``task=sequences``: your own sequence data, from files, with no code.

Files (:mod:`odyssey.tasks.sequence_files`): ``task.train``, ``task.valid``, ``task.test``, each an
npz, Parquet or Arrow file, a Hugging Face ``datasets`` ``save_to_disk`` folder, or a UEA/UCR
``.ts`` file. A null ``valid`` (``test``) is carved from the training file: ``valid_fraction``
(``test_fraction``) of its sequences, drawn with ``split_seed``, per class for
``sequence_class`` targets (stratified; every class keeps at least one training sequence).

Targets (``task.target``), with output size O:

* ``sequence_class``: one label per sequence, predicted by the output at its last step.
  Loss: softmax cross-entropy ``-log softmax(y_T)[c]``. Metrics: ``error`` (primary, the fraction
  of misclassified sequences) and ``loss`` (the mean cross-entropy per sequence). O = classes.
* ``step_class``: a label per step (frames, as TIMIT): the same loss at every step; ``error`` is
  the fraction of misclassified steps, ``loss`` the mean cross-entropy per step.
* ``sequence_regression``, ``step_regression``: a number or a vector of D numbers per sequence
  (from the last step) or per step. Loss: the squared error summed over the D outputs. Metric
  ``mse``: the mean squared error per value, ``sum (y - t)^2 / (scored steps * D)``. O = D.
* ``next_step_binary``: the inputs are binary vectors (0/1) and step t predicts step t+1 with
  independent Bernoulli outputs, as JSB: inputs steps 0..T-2, targets steps 1..T-1. Loss the
  Bernoulli NLL summed over the F outputs; metric ``nll`` per predicted step. O = F.

Labels may be ints or strings. The classes are the training file's labels, sorted (numerically
when every label is an integer); a validation or test label missing from them is refused, named.

Preprocessing, in this order: every ``subsample``-th step (from step 0); the first ``max_length``
steps; with ``normalize`` (the default) each input feature standardised with the training split's
mean and std over all its steps, ``(x - mean) / std`` (std 0 -> 1). ``next_step_binary`` targets
are the raw binary steps. The statistics are :attr:`SequencesTask.normalization`.

Parsing runs once per file and node: the arrays are kept in the verified feature cache
(:func:`odyssey.tasks.cache.cached_arrays`), keyed by the file's path, size and mtime and the
reading settings (``target``, the column names); carving, preprocessing and the classes are
recomputed from the cached arrays at each build (cheap).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import torch

from odyssey.errors import ConfigError, DataError
from odyssey.tasks import TaskConfig, register
from odyssey.tasks.base import SPLITS, Sequence, check_bool, check_choice, check_float, check_int
from odyssey.tasks.cache import cached_arrays, fingerprint
from odyssey.tasks.sequence_files import RawSplit, check_inputs, data_files, read_sequences
from odyssey.tasks.sequence_tasks import ClassTask, NextStepBinaryTask, RegressionTask, SequencesTask

__all__ = ["TARGETS", "SequencesConfig", "make_task"]

TARGETS = ("sequence_class", "step_class", "sequence_regression", "step_regression", "next_step_binary")
READER_VERSION = 2  # part of the cache key: bump when a reader's output changes


@register("sequences")
@dataclass(frozen=True)
class SequencesConfig(TaskConfig):
    """Config of ``task=sequences`` (see the module docstring).

    Attributes:
        train, valid, test: paths of the splits' files (made absolute; a relative path is taken
            from ``$ODYSSEY_DATA_DIR`` when set, else the current directory). ``train`` is required.
        target: one of :data:`TARGETS`.
        inputs_column, target_column: the columns of a Parquet/Arrow file or ``datasets`` folder.
        valid_fraction, test_fraction: the share of the training file carved out for a null
            ``valid`` / ``test`` (in (0, 1); unused when the file is given).
        split_seed: the seed of that carving.
        normalize: standardise the inputs per feature with the training split's mean and std.
        max_length: keep only the first ``max_length`` steps of each sequence (null: all).
        subsample: keep every ``subsample``-th step (1: all).
        cache_dir: the parsed-file cache; null = ``$ODYSSEY_CACHE_DIR`` or ``~/.cache/odyssey/features``.
    """

    name: str = "sequences"
    train: str | None = None
    valid: str | None = None
    test: str | None = None
    target: str = "sequence_class"
    inputs_column: str = "inputs"
    target_column: str = "targets"
    valid_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    normalize: bool = True
    max_length: int | None = None
    subsample: int = 1
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        check_choice("name", self.name, ("sequences",))
        check_choice("target", self.target, TARGETS)
        for key in ("valid_fraction", "test_fraction"):
            value = check_float(key, getattr(self, key), low=0.0, high=1.0)
            if not 0.0 < value < 1.0:
                raise ConfigError(f"task.{key}={value!r} is invalid: expected a number in (0, 1)")
            object.__setattr__(self, key, value)
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                f"task.valid_fraction={self.valid_fraction} + task.test_fraction={self.test_fraction} is invalid: "
                "expected a sum < 1 (the training split keeps the rest)"
            )
        check_int("split_seed", self.split_seed, low=0)
        check_bool("normalize", self.normalize)
        if self.max_length is not None:
            check_int("max_length", self.max_length, low=1)
        check_int("subsample", self.subsample, low=1)
        for key in ("inputs_column", "target_column"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ConfigError(f"task.{key}={getattr(self, key)!r} is invalid: expected a column name")
        for key in ("train", "valid", "test", "cache_dir"):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, str(_absolute(str(value))))

    @property
    def per_step(self) -> bool:
        return self.target.startswith("step_")

    @property
    def is_class(self) -> bool:
        return self.target.endswith("_class")

    def build(self) -> SequencesTask:
        if self.train is None:
            raise ConfigError(
                "task.train is not set: task=sequences needs task.train=PATH (npz, Parquet, Arrow, a datasets "
                "folder or a .ts file); task.valid and task.test are optional"
            )
        raw = {s: self._load(Path(getattr(self, s))) for s in SPLITS if getattr(self, s) is not None}
        where = {s: Path(getattr(self, s)) for s in raw}
        classes = None
        if self.is_class:
            classes = _classes(raw["train"].targets, where["train"], raw["train"].locate)
        carved = _carve(raw["train"], self, classes)
        for split, part in carved.items():
            if split not in raw:
                raw[split], where[split] = part, where["train"]
        raw["train"] = carved["train"]
        width = raw["train"].inputs.shape[1]
        for split in ("valid", "test"):
            if raw[split].inputs.shape[1] != width:
                raise DataError(
                    f"{where[split]}: {raw[split].inputs.shape[1]} input features, but the training file {where['train']} "
                    f"has {width} (mixed feature counts)"
                )
        steps = {s: _steps(raw[s], where[s], self, classes) for s in SPLITS}
        stats = _statistics(steps["train"].inputs) if self.normalize else None
        sequences = {s: _sequences(steps[s], self, stats) for s in SPLITS}
        return make_task(self, sequences, width, classes, stats)

    def _load(self, path: Path) -> RawSplit:
        """The file's arrays, parsed once per node (the cache), checked."""
        if not path.exists():
            raise DataError(f"{path}: no such file (task.{self._key_of(path)})")
        files = data_files(path)
        root = path if path.is_dir() else path.parent
        key = {
            "reader": READER_VERSION, "path": str(path), "files": fingerprint(root, files), "count": len(files),
            "target": self.target, "inputs_column": self.inputs_column, "target_column": self.target_column,
        }  # fmt: skip
        holder: dict[str, RawSplit] = {}

        def parse() -> dict[str, np.ndarray]:
            raw = read_sequences(
                path, per_step=self.per_step, needs_targets=self.target != "next_step_binary",
                inputs_column=self.inputs_column, target_column=self.target_column,
            )  # fmt: skip
            holder["raw"] = raw
            targets = raw.targets if raw.targets is not None else np.zeros(0)
            return {
                "inputs": raw.inputs, "lengths": raw.lengths, "targets": targets,
                "has_targets": np.array(raw.targets is not None),
                "rows": raw.rows, "row_word": np.array(raw.row_word),
            }  # fmt: skip

        arrays = cached_arrays("sequences", key, parse, directory=self.cache_dir)
        if "raw" in holder:
            return holder["raw"]
        targets = arrays["targets"] if bool(arrays["has_targets"]) else None
        raw = RawSplit(arrays["inputs"], arrays["lengths"], targets, arrays["rows"], str(arrays["row_word"]))
        check_inputs(path, raw)
        return raw

    def _key_of(self, path: Path) -> str:
        return next((s for s in SPLITS if getattr(self, s) == str(path)), "train")


def _absolute(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute() and os.environ.get("ODYSSEY_DATA_DIR"):
        path = Path(os.environ["ODYSSEY_DATA_DIR"]).expanduser() / path
    return path.resolve()


# --------------------------------------------------------------------------------------------
# Labels, carving, preprocessing


def _label_strings(targets: np.ndarray, path: Path, locate) -> np.ndarray:
    """Labels as strings; floats must be whole numbers, one label per row."""
    if targets.ndim != 1:
        raise DataError(
            f"{path}: targets have shape {targets.shape}; a class target needs one integer or string label per row"
        )
    if targets.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(targets) | (targets != np.round(targets)))
        if bad.size:
            raise DataError(
                f"{path}, {locate(int(bad[0]))}: target {targets[bad[0]].item()!r} is not a class label (an integer or a "
                "string); use task.target=sequence_regression or step_regression for numbers"
            )
        targets = targets.astype(np.int64)
    if targets.dtype.kind not in "iubU":
        raise DataError(f"{path}: targets have dtype {targets.dtype}; expected integer or string labels")
    return targets.astype(str)


def _sort_key(labels: list[str]):
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


def _classes(targets: np.ndarray, path: Path, locate) -> tuple[str, ...]:
    labels = _label_strings(targets, path, locate)
    return tuple(_sort_key([str(c) for c in np.unique(labels)]))


def _carve(raw: RawSplit, cfg: SequencesConfig, classes) -> dict[str, RawSplit]:
    """Split the training file into train and the null ``valid``/``test`` splits (by sequence)."""
    wanted = {s: getattr(cfg, f"{s}_fraction") for s in ("valid", "test") if getattr(cfg, s) is None}
    if not wanted:
        return {"train": raw}
    n = len(raw.lengths)
    rng = np.random.default_rng([cfg.split_seed, 7])
    if classes is not None and not cfg.per_step:
        labels = _label_strings(raw.targets, Path(cfg.train), raw.locate)
        groups = [np.flatnonzero(labels == c) for c in classes]
    else:
        groups = [np.arange(n)]
    groups = [rng.permutation(g) for g in groups]
    sizes = np.array([len(g) for g in groups])
    taken = np.zeros(len(groups), dtype=np.int64)
    picked: dict[str, list[np.ndarray]] = {s: [] for s in wanted}
    for split, fraction in wanted.items():
        counts = _allocate(fraction, sizes, room=sizes - taken - 1)
        for g, members in enumerate(groups):
            picked[split].append(members[taken[g] : taken[g] + counts[g]])
        taken += counts
    keep = [members[taken[g] :] for g, members in enumerate(groups)]
    out = {"train": _subset(raw, np.sort(np.concatenate(keep)), cfg.per_step)}
    for split in wanted:
        index = np.sort(np.concatenate(picked[split]))
        if index.size == 0:
            raise DataError(
                f"{cfg.train}: task.{split}_fraction={wanted[split]} of its {n} sequences leaves the {split} split "
                f"empty (an empty split); give task.{split}=PATH or a larger fraction"
            )
        out[split] = _subset(raw, index, cfg.per_step)
    return out


def _allocate(fraction: float, sizes: np.ndarray, room: np.ndarray) -> np.ndarray:
    """Per group, how many of its ``sizes`` go to a split of ``fraction`` of them all: round(fraction
    * total) in all, in proportion to the groups' sizes (largest remainders first), at most ``room``."""
    room = np.maximum(room, 0)
    share = fraction * sizes
    counts = np.minimum(np.floor(share).astype(np.int64), room)
    for g in np.argsort(-(share - np.floor(share)), kind="stable"):
        if counts.sum() >= int(round(fraction * sizes.sum())):
            break
        if counts[g] < room[g]:
            counts[g] += 1
    return counts


def _subset(raw: RawSplit, index: np.ndarray, per_step: bool) -> RawSplit:
    steps = _ranges(raw.offsets[index], raw.lengths[index])
    targets = raw.targets
    if targets is not None:
        targets = targets[steps] if per_step else targets[index]
    return RawSplit(raw.inputs[steps], raw.lengths[index], targets, raw.rows[index], raw.row_word)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The step indices ``start, start + 1, ..., start + length - 1`` of each sequence, concatenated."""
    ends = np.cumsum(lengths)
    return np.arange(int(ends[-1]) if len(ends) else 0) + np.repeat(starts - (ends - lengths), lengths)


def _steps(raw: RawSplit, path: Path, cfg: SequencesConfig, classes) -> RawSplit:
    """The split's targets checked and mapped (class indices, float32 values), then every
    ``subsample``-th step of each sequence kept, and its first ``max_length``; not normalised."""
    n, offsets = len(raw.lengths), raw.offsets
    total = int(offsets[-1])
    targets = raw.targets
    if cfg.target != "next_step_binary":
        rows = total if cfg.per_step else n
        if targets is None or len(targets) != rows:
            have = "no targets" if targets is None else f"{len(targets)} targets"
            per = f"one per step (the lengths sum to {total})" if cfg.per_step else f"one per sequence ({n})"
            raise DataError(f"{path}: {have}, but task.target={cfg.target} needs {per}")
        row_of = (lambda s: raw.locate(int(np.searchsorted(offsets, s, side="right") - 1))) if cfg.per_step else raw.locate
        if cfg.is_class:
            labels = _label_strings(targets, path, row_of)
            unseen = np.flatnonzero(~np.isin(labels, np.asarray(classes, dtype=str)))
            if unseen.size:
                i = int(unseen[0])
                raise DataError(
                    f"{path}, {row_of(i)}: label {str(labels[i])!r} is not among the training split's classes {list(classes)}"
                )
            order = np.argsort(np.asarray(classes, dtype=str))
            targets = order[np.searchsorted(np.asarray(classes, dtype=str)[order], labels)].astype(np.int64)
        else:
            if targets.dtype.kind not in "fiub":
                raise DataError(
                    f"{path}: targets are {targets.dtype} ({targets.reshape(-1)[0].item()!r}); task.target={cfg.target} needs "
                    "numbers (use sequence_class or step_class for labels)"
                )
            targets = targets.astype(np.float32).reshape(len(targets), -1)
            bad = np.flatnonzero(~np.isfinite(targets).all(axis=1))
            if bad.size:
                raise DataError(f"{path}, {row_of(int(bad[0]))}: the target is NaN or inf")
    else:
        binary = np.isin(raw.inputs, (0.0, 1.0))
        if not binary.all():
            step = int(np.argwhere(~binary)[0][0])
            i = int(np.searchsorted(offsets, step, side="right") - 1)
            raise DataError(
                f"{path}, {raw.locate(i)}, step {step - offsets[i]}: input "
                f"{raw.inputs[step][~binary[step]][0].item()!r} is not 0 or 1; "
                "task.target=next_step_binary predicts binary vectors"
            )
    lengths = raw.lengths
    if cfg.subsample > 1 or cfg.max_length is not None:
        keep = [np.arange(offsets[i], offsets[i + 1], cfg.subsample)[: cfg.max_length] for i in range(n)]
        lengths = np.array([len(k) for k in keep], dtype=np.int64)
        index = np.concatenate(keep)
        inputs = raw.inputs[index]
        if cfg.per_step:
            targets = targets[index]
    else:
        inputs = raw.inputs
    if cfg.target == "next_step_binary" and (lengths < 2).any():
        i = int(np.flatnonzero(lengths < 2)[0])
        raise DataError(f"{path}, {raw.locate(i)}: {lengths[i]} step(s) after preprocessing; next_step_binary needs >= 2")
    return RawSplit(inputs, lengths, targets, raw.rows, raw.row_word)


def _statistics(inputs: np.ndarray) -> dict[str, list[float]]:
    """Per-feature mean and std (population) of the training steps; a std of 0 becomes 1."""
    mean = inputs.mean(axis=0, dtype=np.float64)
    std = np.sqrt(((inputs - mean) ** 2).mean(axis=0))
    return {"mean": mean.tolist(), "std": np.where(std > 0, std, 1.0).tolist()}


def _sequences(steps: RawSplit, cfg: SequencesConfig, stats) -> list[Sequence]:
    """The split's examples: inputs (T, F) normalised with ``stats`` (None: as they are), targets
    and the scored steps as the target kind says (module docstring)."""
    x = steps.inputs
    if stats is not None:
        x = (x - np.asarray(stats["mean"], np.float32)) / np.asarray(stats["std"], np.float32)
    sizes = steps.lengths.tolist()
    inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).split(sizes)
    if cfg.target == "next_step_binary":
        raw = torch.from_numpy(np.ascontiguousarray(steps.inputs, dtype=np.float32)).split(sizes)
        return [Sequence(i[:-1], r[1:], torch.ones(len(i) - 1, dtype=torch.bool)) for i, r in zip(inputs, raw)]
    if cfg.per_step:
        targets = torch.from_numpy(np.ascontiguousarray(steps.targets)).split(sizes)
        return [Sequence(i, y, torch.ones(len(i), dtype=torch.bool)) for i, y in zip(inputs, targets)]
    out = []
    for i, y in zip(inputs, steps.targets):
        t = len(i)
        mask = torch.zeros(t, dtype=torch.bool)
        mask[-1] = True  # the last (valid) step's output
        if cfg.is_class:
            target = torch.full((t,), int(y), dtype=torch.int64)
        else:
            target = torch.zeros(t, len(y))
            target[-1] = torch.from_numpy(y)
        out.append(Sequence(i, target, mask))
    return out


# --------------------------------------------------------------------------------------------
# Tasks (odyssey.tasks.sequence_tasks)


def make_task(cfg: SequencesConfig, splits, width: int, classes, stats) -> SequencesTask:
    if cfg.is_class:
        return ClassTask(splits, input_size=width, classes=classes, target=cfg.target, normalization=stats)
    if cfg.target == "next_step_binary":
        return NextStepBinaryTask(splits, input_size=width, normalization=stats)
    return RegressionTask(splits, input_size=width, target=cfg.target, normalization=stats)
