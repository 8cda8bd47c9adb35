"""JSB Chorales: next-step prediction of 88 piano keys (the music task of the Odyssey paper).

Data: the benchmark split of Boulanger-Lewandowski et al. (2012), 229/76/77 chorales, one step
per quarter note. Each chorale becomes an (L, 88) binary piano roll, column = MIDI pitch - 21.
Next-step prediction: the inputs are roll steps 0..L-2, the targets steps 1..L-1 (L - 1
predicted steps per chorale, all scored).

Loss: binary cross-entropy with logits summed over the 88 keys and over a chorale's predicted
steps (the paper's objective; ``train.loss_reduction=mean_over_steps`` divides by the steps).
Metric ``nll`` (primary, lower is better): negative log-likelihood per time step (sum over keys),
pooled over all predicted steps of a split. Worst value 88 * ln 2 = 61.0, the NLL of predicting
0.5 for every key: any model that learned anything does better.

Formats (``format``), all with identical content:

* ``pkl``: ``jsb-chorales-quarter.pkl``, the original Python-2 pickle; read with a restricted
  unpickler that allows only numpy's scalar and dtype constructors.
* ``json``: ``jsb-chorales-quarter.json``, the same as JSON.
* ``mat``: ``JSB_Chorales.mat``, MATLAB piano rolls (``traindata``/``validdata``/``testdata``).

The data directory is ``data_dir`` or, if that is null, the first of: ``$ODYSSEY_JSB_DIR``,
``$ODYSSEY_DATA_DIR/jsb``, ``../shared/data/jsb`` next to the project root (if it exists), and
``$XDG_CACHE_HOME/odyssey/data/jsb`` (default ``~/.cache/...``, where ``odyssey data fetch jsb``
puts it). It is made absolute when the config is created, because Ray moves trials into their
own working directories.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from odyssey.errors import DataError
from odyssey.tasks import TaskConfig, register
from odyssey.tasks.base import SPLITS, Batch, Sequence, Task, check_bool, check_choice, masked, scored_count
from odyssey.tasks.cache import data_dir_from_env, sha256_of, user_cache_root  # sha256_of: re-exported

__all__ = [
    "FILES",
    "KNOWN_SHA256",
    "NUM_KEYS",
    "JSBConfig",
    "JSBTask",
    "default_data_dir",
    "load_piano_rolls",
    "sha256_of",
]

NUM_KEYS = 88
LOWEST_PITCH = 21  # A0, column 0
FILES = {"pkl": "jsb-chorales-quarter.pkl", "json": "jsb-chorales-quarter.json", "mat": "JSB_Chorales.mat"}
KNOWN_SHA256 = {
    "jsb-chorales-quarter.pkl": "be67b1e1d0ea22a0c64eb72db53a83dae65650a7b470ca09a34a1e43a3fb4405",
    "jsb-chorales-quarter.json": "2db9329f1881a1d3f49703ec556bf1d6f84b4f6c1d702c156536e93cf31e1c91",
    "JSB_Chorales.mat": "ac0e608527cc411c7e21ef7d38be47f0de7fb6b13b3ae168b8eccf1c2a9b18d4",
}
_MAT_KEYS = {"train": "traindata", "valid": "validdata", "test": "testdata"}
_HOW_TO_FIX = "set task.data_dir or $ODYSSEY_JSB_DIR to the folder holding it, or run `odyssey data fetch jsb`"


def default_data_dir(*, include_shared: bool = True) -> Path:
    """The data directory used when ``data_dir`` is null (see the module docstring), absolute.

    ``include_shared=False`` skips the (read-only) shared copy: where ``odyssey data fetch`` writes.
    """
    found = data_dir_from_env("jsb")
    if found is not None:
        return found
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "jsb"
    if include_shared and shared.is_dir():
        return shared
    return (user_cache_root() / "data" / "jsb").resolve()


@register("jsb")
@dataclass(frozen=True)
class JSBConfig(TaskConfig):
    """Config of JSB Chorales.

    Attributes:
        data_dir: folder of the data files; null = :func:`default_data_dir`. Made absolute.
        format: ``pkl`` (original), ``json`` or ``mat``.
        verify_sha256: check the file against :data:`KNOWN_SHA256` when its name is listed.
    """

    name: str = "jsb"
    data_dir: str | None = None
    format: str = "pkl"
    verify_sha256: bool = True
    # The three formats hold the same chorales; the checksum is a check, not a setting.
    LOCATION_KEYS: ClassVar[tuple[str, ...]] = ("data_dir", "format", "verify_sha256")

    def __post_init__(self) -> None:
        check_choice("name", self.name, ("jsb",))
        check_choice("format", self.format, tuple(FILES))
        check_bool("verify_sha256", self.verify_sha256)
        directory = default_data_dir() if self.data_dir is None else Path(str(self.data_dir)).expanduser().resolve()
        object.__setattr__(self, "data_dir", str(directory))

    @property
    def path(self) -> Path:
        return Path(self.data_dir) / FILES[self.format]

    def build(self) -> JSBTask:
        rolls = load_piano_rolls(self.path, verify_sha256=self.verify_sha256)
        splits = {
            s: [Sequence(r[:-1], r[1:], torch.ones(len(r) - 1, dtype=torch.bool)) for r in rolls[s]] for s in SPLITS
        }
        return JSBTask(splits)


class JSBTask(Task):
    """Independent Bernoulli outputs per key: BCE loss, metric ``nll`` per predicted step."""

    name = "jsb"
    input_size = NUM_KEYS
    output_size = NUM_KEYS
    metric_names: ClassVar[tuple[str, ...]] = ("nll",)
    primary_metric: ClassVar[str] = "nll"
    lower_is_better: ClassVar[bool] = True
    worst_value: ClassVar[float] = NUM_KEYS * math.log(2.0)

    @staticmethod
    def _step_nll(outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """NLL of each step, summed over keys: (..., T, B), 0 on unscored steps."""
        bce = F.binary_cross_entropy_with_logits(outputs, targets.expand_as(outputs), reduction="none")
        return masked(bce.sum(dim=-1), mask)  # (..., T, B, 88) -> (..., T, B)

    def step_losses(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self._step_nll(outputs, batch.targets, batch.mask)

    def metric_totals(self, outputs: torch.Tensor, batch: Batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        # float64: the split-wide sum runs over ~5000 steps
        nll = self._step_nll(outputs.detach().double(), batch.targets.double(), batch.mask)
        return {"nll": (nll.sum(dim=(-2, -1)), scored_count(batch.mask, nll))}


# --------------------------------------------------------------------------------------------
# Loading


def load_piano_rolls(path: str | Path, *, verify_sha256: bool = True) -> dict[str, list[torch.Tensor]]:
    """The splits of a JSB file as lists of (L, 88) float32 piano rolls.

    The format follows the suffix (``.pkl``/``.pickle``, ``.json``, ``.mat``). Every problem
    (missing, tampered, truncated or malformed file) raises one :class:`DataError` naming the file.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise DataError(f"JSB data directory {path.parent} does not exist; {_HOW_TO_FIX}")
    if not path.is_file():
        raise DataError(f"JSB data file {path} is missing; {_HOW_TO_FIX}")
    expected = KNOWN_SHA256.get(path.name)
    if verify_sha256 and expected is not None:
        actual = sha256_of(path)
        if actual != expected:
            raise DataError(
                f"JSB data file {path} fails its sha256 check (expected {expected}, got {actual}): the "
                f"file is damaged or was tampered with; fetch it again with `odyssey data fetch jsb`"
            )
    suffix = path.suffix.lower()
    readers = {".pkl": _read_pickle, ".pickle": _read_pickle, ".json": _read_json, ".mat": _read_mat}
    if suffix not in readers:
        raise DataError(f"JSB data file {path}: unknown suffix {suffix!r}; valid: {sorted(readers)}")
    try:
        return readers[suffix](path)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure on a corrupt file is the file's fault
        raise DataError(f"JSB data file {path} is truncated or corrupt ({type(exc).__name__}: {exc})") from None


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals needed to rebuild numpy integer scalars; refuses all else."""

    def __init__(self, file: Any, path: Path):
        super().__init__(file, encoding="latin1")  # written by Python 2
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}:
            try:
                from numpy._core.multiarray import scalar  # numpy >= 2
            except ImportError:  # pragma: no cover - numpy 1.x
                from numpy.core.multiarray import scalar
            return scalar
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise DataError(
            f"JSB data file {self._path} refused: the pickle asks for global {module}.{name}, which the "
            f"restricted unpickler does not allow (only numpy scalar/dtype); the file is not a JSB pickle"
        )


def _read_pickle(path: Path) -> dict[str, list[torch.Tensor]]:
    with open(path, "rb") as f:
        data = _NumpyOnlyUnpickler(f, path).load()
    return _rolls_from_pitches(data, path)


def _read_json(path: Path) -> dict[str, list[torch.Tensor]]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return _rolls_from_pitches(data, path)


def _read_mat(path: Path) -> dict[str, list[torch.Tensor]]:
    import scipy.io

    data = scipy.io.loadmat(str(path))
    rolls: dict[str, list[torch.Tensor]] = {}
    for split, key in _MAT_KEYS.items():
        if key not in data:
            raise DataError(f"JSB data file {path} is malformed: it has no variable {key!r}")
        cells = np.asarray(data[key]).reshape(-1)
        rolls[split] = []
        for i, roll in enumerate(cells):
            roll = np.asarray(roll)
            where = f"JSB data file {path} is malformed: {key}[{i}]"
            if roll.ndim != 2 or roll.shape[1] != NUM_KEYS or roll.shape[0] < 2:
                raise DataError(f"{where} has shape {roll.shape}; expected (L >= 2, {NUM_KEYS})")
            if not np.isin(roll, (0, 1)).all():
                raise DataError(f"{where} holds values other than 0 and 1")
            rolls[split].append(torch.from_numpy(roll.astype(np.float32)))
    return rolls


def _rolls_from_pitches(data: Any, path: Path) -> dict[str, list[torch.Tensor]]:
    """Piano rolls from split -> sequences -> steps -> MIDI pitches, checking the structure."""
    bad = f"JSB data file {path} is malformed"
    if not isinstance(data, dict) or any(s not in data for s in SPLITS):
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{bad}: expected a dict with keys {list(SPLITS)}, found {found}")
    rolls: dict[str, list[torch.Tensor]] = {}
    for split in SPLITS:
        if not isinstance(data[split], list) or not data[split]:
            raise DataError(f"{bad}: split {split!r} is not a non-empty list of sequences")
        rolls[split] = []
        for i, steps in enumerate(data[split]):
            if not isinstance(steps, (list, tuple)) or len(steps) < 2:
                raise DataError(f"{bad}: {split}[{i}] is not a list of at least 2 time steps")
            roll = np.zeros((len(steps), NUM_KEYS), dtype=np.float32)
            for t, pitches in enumerate(steps):
                try:
                    columns = np.asarray(pitches, dtype=np.int64).reshape(-1) - LOWEST_PITCH
                except (TypeError, ValueError):
                    raise DataError(f"{bad}: {split}[{i}][{t}] = {pitches!r} is not a list of MIDI pitches") from None
                if columns.size and (columns.min() < 0 or columns.max() >= NUM_KEYS):
                    raise DataError(
                        f"{bad}: {split}[{i}][{t}] holds pitch(es) {sorted(int(p) for p in columns + LOWEST_PITCH)} "
                        f"outside the piano range {LOWEST_PITCH}..{LOWEST_PITCH + NUM_KEYS - 1}"
                    )
                roll[t, columns] = 1.0
            rolls[split].append(torch.from_numpy(roll))
    return rolls
