"""TIMIT: framewise phone classification (the speech task of the Odyssey paper).

Data: the user's copy of TIMIT (LDC93S1, licensed: nothing is downloaded), in its published
layout ``TIMIT/{TRAIN,TEST}/DR1..DR8/<SPEAKER>/<UTT>.{WAV,PHN,WRD,TXT}``, upper- or lower-case.
``data_dir`` is the folder holding ``TRAIN/`` and ``TEST/`` or the one above it holding ``TIMIT/``;
null = ``$ODYSSEY_TIMIT_DIR``, then ``$ODYSSEY_DATA_DIR/timit``. ``.WAV`` files are NIST SPHERE or
RIFF (:mod:`odyssey.tasks.sphere`); a ``.PHN`` line is ``start end phone`` in samples, end exclusive.

Splits (Halberstadt 1998, the paper's): the SA sentences are dropped everywhere;

* ``train``: every speaker under ``TRAIN/``: 462 speakers x 8 = 3696 utterances;
* ``valid``: the 50 dev speakers of :data:`DEV_SPEAKERS` (under ``TEST/``): 400 utterances;
* ``test``: the 24 core-test speakers of :data:`CORE_TEST_SPEAKERS`: 192 utterances.

With ``expect_full_corpus`` (the default) other counts are refused, naming what is missing; a
listed speaker missing from ``TEST/`` is always refused.

Inputs: 39 MFCC features per 10 ms frame (:mod:`odyssey.tasks.mfcc`), normalised with the mean and
std of the training set's frames. Targets: the phone covering each frame's centre sample, one of
the 61 :data:`PHONES` (the paper's), or with ``fold_39`` one of the 39 classes of Lee & Hon (1989)
(:data:`FOLD_39`; frames of the deleted ``q`` are unscored). Frames whose centre no ``.PHN``
segment covers are unscored.

Loss: cross-entropy of the softmax over the phones, summed over a sequence's frames (the paper's
objective). Metric ``error`` (primary, lower is better): the fraction of misclassified frames,
pooled over a split; worst 1.0.

Feature extraction of the corpus runs once, with a progress bar, and is cached
(:func:`odyssey.tasks.cache.cached_arrays`, keyed by the corpus files and the feature settings).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from odyssey.errors import DataError
from odyssey.tasks import TaskConfig, register
from odyssey.tasks.base import (
    SPLITS,
    Batch,
    Sequence,
    Task,
    check_bool,
    check_choice,
    class_errors,
    frame_cross_entropy,
)
from odyssey.tasks.cache import cached_arrays, corpus_dir, fingerprint
from odyssey.tasks.mfcc import MFCCSettings, frame_centres, mfcc_features
from odyssey.tasks.sphere import read_audio

__all__ = [
    "CORE_TEST_SPEAKERS",
    "DEV_SPEAKERS",
    "FOLD_39",
    "PHONES",
    "PHONES_39",
    "TIMITConfig",
    "TIMITTask",
    "Utterance",
    "frame_labels",
    "read_phn",
    "scan_corpus",
]

# The 61 phones of TIMIT's .PHN files, in this order (the class index).
PHONES = tuple(
    "aa ae ah ao aw ax ax-h axr ay b bcl ch d dcl dh dx eh el em en eng epi er ey f g gcl h# hh hv ih ix iy "
    "jh k kcl l m n ng nx ow oy p pau pcl q r s sh t tcl th uh uw ux v w y z zh".split()
)
# Lee & Hon (1989) folding to 39 classes, as Kaldi's phones.60-48-39.map; q is deleted (None).
FOLD_39: dict[str, str | None] = {
    **{p: p for p in PHONES},
    "ao": "aa", "ax": "ah", "ax-h": "ah", "axr": "er", "hv": "hh", "ix": "ih", "el": "l", "em": "m",
    "en": "n", "nx": "n", "eng": "ng", "zh": "sh", "ux": "uw",
    **{p: "sil" for p in ("pcl", "tcl", "kcl", "bcl", "dcl", "gcl", "h#", "pau", "epi")},
    "q": None,
}  # fmt: skip
PHONES_39 = tuple(sorted({v for v in FOLD_39.values() if v is not None}))

# Halberstadt (1998): the 50 dev speakers (Kaldi's dev_spk.list) and the 24 core-test speakers.
DEV_SPEAKERS = frozenset(
    "FAKS0 FDAC1 FJEM0 MGWT0 MJAR0 MMDB1 MMDM2 MPDF0 FCMH0 FKMS0 MBDG0 MBWM0 MCSH0 FADG0 FDMS0 FEDW0 "
    "MGJF0 MGLB0 MRTK0 MTAA0 MTDT0 MTHC0 MWJG0 FNMR0 FREW0 FSEM0 MBNS0 MMJR0 MDLS0 MDLF0 MDVC0 MERS0 "
    "FMAH0 FDRW0 MRCS0 MRJM4 FCAL1 MMWH0 FJSJ0 MAJC0 MJSW0 MREB0 FGJD0 FJMG0 MROA0 MTEB0 MJFC0 MRJR0 "
    "FMML0 MRWS1".split()
)
CORE_TEST_SPEAKERS: dict[str, tuple[str, ...]] = {
    "DR1": ("MDAB0", "MWBT0", "FELC0"), "DR2": ("MTAS1", "MWEW0", "FPAS0"), "DR3": ("MJMP0", "MLNT0", "FPKT0"),
    "DR4": ("MLLL0", "MTLS0", "FJLM0"), "DR5": ("MBPM0", "MKLT0", "FNLP0"), "DR6": ("MCMJ0", "MJDH0", "FMGD0"),
    "DR7": ("MGRT0", "MNJM0", "FDHC0"), "DR8": ("MJLN0", "MPAM0", "FMLD0"),
}  # fmt: skip
CORE_SPEAKERS = frozenset(s for group in CORE_TEST_SPEAKERS.values() for s in group)
FULL_COUNTS = {"train": 3696, "valid": 400, "test": 192}
TRAIN_SPEAKERS = 462
UTTERANCES_PER_SPEAKER = 8  # 5 SX + 3 SI (the 2 SA are dropped)

_LAYOUT = "TRAIN/ and TEST/ (or TIMIT/TRAIN, TIMIT/TEST), each DR1..DR8/<SPEAKER>/<UTT>.WAV + .PHN (any case)"
_DIALECT = re.compile(r"dr[1-8]", re.IGNORECASE)


@dataclass(frozen=True)
class Utterance:
    """One SI/SX utterance: ``speaker`` (upper case), ``name`` (e.g. ``SI1027``), its files."""

    split: str
    dialect: str
    speaker: str
    name: str
    wav: Path
    phn: Path

    @property
    def uid(self) -> str:
        return f"{self.dialect}/{self.speaker}/{self.name}"


def _child(folder: Path, name: str) -> Path | None:
    """``folder``'s entry called ``name`` in any case (TIMIT copies come upper- and lower-case)."""
    exact = folder / name
    if exact.exists():
        return exact
    for entry in folder.iterdir() if folder.is_dir() else ():
        if entry.name.lower() == name.lower():
            return entry
    return None


def find_root(directory: Path) -> Path:
    """The folder holding ``TRAIN`` and ``TEST``: ``directory`` itself or its ``TIMIT`` child.

    Raises:
        DataError: naming the directory, what it lacks and the layout expected.
    """
    if not directory.is_dir():
        raise DataError(f"TIMIT data directory {directory} does not exist; expected {_LAYOUT}; set task.data_dir")
    for root in (directory, _child(directory, "TIMIT")):
        if root is None:
            continue
        parts = {name: _child(root, name) for name in ("TRAIN", "TEST")}
        if all(p is not None and p.is_dir() for p in parts.values()):
            return root
        if any(p is not None for p in parts.values()):
            missing = [n for n, p in parts.items() if p is None or not p.is_dir()]
            raise DataError(f"TIMIT corpus at {root} is partial: it has no {'/ or '.join(missing)}/ folder; expected {_LAYOUT}")
    raise DataError(f"TIMIT data directory {directory} holds no TIMIT corpus: expected {_LAYOUT}")


def scan_corpus(root: Path) -> dict[str, list[Utterance]]:
    """The utterances of each split (SA dropped), sorted by dialect, speaker and name.

    Raises:
        DataError: a listed dev or core-test speaker is missing, or an utterance lacks its
            ``.WAV`` or ``.PHN`` file.
    """
    splits: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    found_speakers: set[str] = set()
    for part in ("TRAIN", "TEST"):
        folder = _child(root, part)
        for dialect in sorted(p for p in folder.iterdir() if p.is_dir() and _DIALECT.fullmatch(p.name)):
            for speaker_dir in sorted(p for p in dialect.iterdir() if p.is_dir()):
                speaker = speaker_dir.name.upper()
                if part == "TRAIN":
                    split = "train"
                elif speaker in DEV_SPEAKERS:
                    split = "valid"
                elif speaker in CORE_SPEAKERS:
                    split = "test"
                else:
                    continue  # the rest of the complete test set is not used
                if part == "TEST":
                    found_speakers.add(speaker)
                files: dict[str, dict[str, Path]] = {}
                for f in speaker_dir.iterdir():
                    stem, _, ext = f.name.partition(".")
                    if ext.upper() in ("WAV", "PHN"):
                        files.setdefault(stem.upper(), {})[ext.upper()] = f
                for name in sorted(files):
                    if name.startswith("SA"):
                        continue
                    have = files[name]
                    if "WAV" not in have or "PHN" not in have:
                        lacking = "WAV" if "WAV" not in have else "PHN"
                        raise DataError(f"TIMIT utterance {speaker_dir / name} has no .{lacking} file (in {speaker_dir})")
                    splits[split].append(Utterance(split, dialect.name.upper(), speaker, name, have["WAV"], have["PHN"]))
    missing = sorted((DEV_SPEAKERS | CORE_SPEAKERS) - found_speakers)
    if missing:
        raise DataError(
            f"TIMIT corpus at {root} is partial: {len(missing)} speaker(s) of the dev/core test lists are missing "
            f"under {_child(root, 'TEST')}: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}"
        )
    return splits


def check_full_counts(root: Path, splits: dict[str, list[Utterance]]) -> None:
    """Refuse a corpus whose splits are not Halberstadt's 3696 / 400 / 192 utterances."""
    counts = {s: len(u) for s, u in splits.items()}
    if counts == FULL_COUNTS:
        return
    per_speaker: dict[str, int] = {}
    for u in (u for us in splits.values() for u in us):
        per_speaker[u.speaker] = per_speaker.get(u.speaker, 0) + 1
    short = sorted(s for s, n in per_speaker.items() if n != UTTERANCES_PER_SPEAKER)
    train_speakers = len({u.speaker for u in splits["train"]})
    raise DataError(
        f"TIMIT corpus at {root} has {counts['train']}/{counts['valid']}/{counts['test']} train/valid/test "
        f"utterances ({train_speakers} train speakers); the full corpus has 3696/400/192 ({TRAIN_SPEAKERS}); "
        f"speakers without 8 SI+SX utterances: {', '.join(short[:10]) or 'none'}"
        f"{' ...' if len(short) > 10 else ''}; set task.expect_full_corpus=false to use it anyway"
    )


def read_phn(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, ends, phone indices into :data:`PHONES`) of a ``.PHN`` file, each (S,) int64.

    Raises:
        DataError: naming the file and line: not ``start end phone``, end < start, segments out
            of order, or a phone outside the 61.
    """
    starts, ends, phones = [], [], []
    index = {p: i for i, p in enumerate(PHONES)}
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise DataError(f"TIMIT phone file {path} cannot be read: {exc.strerror or exc}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        bad = f"TIMIT phone file {path}, line {number} {line.strip()!r}"
        if len(parts) != 3 or not (parts[0].isdigit() and parts[1].isdigit()):
            raise DataError(f"{bad}: expected 'start_sample end_sample phone'")
        start, end, phone = int(parts[0]), int(parts[1]), parts[2].lower()
        if phone not in index:
            raise DataError(f"{bad}: unknown phone {phone!r}; valid: the 61 TIMIT phones")
        if end < start or (ends and start < ends[-1]):
            raise DataError(f"{bad}: segment [{start}, {end}) is reversed or overlaps the previous one")
        starts.append(start), ends.append(end), phones.append(index[phone])
    if not phones:
        raise DataError(f"TIMIT phone file {path} holds no segments")
    return tuple(np.asarray(v, dtype=np.int64) for v in (starts, ends, phones))  # type: ignore[return-value]


def frame_labels(centres: np.ndarray, starts: np.ndarray, ends: np.ndarray, phones: np.ndarray) -> np.ndarray:
    """(T,) the phone of the segment [start, end) covering each centre sample, -1 where none does.

    A centre on a boundary belongs to the segment that starts there (the end is exclusive).
    """
    i = np.searchsorted(ends, centres, side="right")  # first segment with end > centre
    inside = i < len(ends)
    i = np.minimum(i, len(ends) - 1)
    inside &= starts[i] <= centres
    return np.where(inside, phones[i], -1)


def _extract(utterances: list[Utterance], settings: MFCCSettings, progress: bool) -> dict[str, np.ndarray]:
    """Features and 61-phone labels of every utterance, concatenated, with offsets."""
    from tqdm.auto import tqdm

    feats, labels, lengths = [], [], []
    bar = tqdm(utterances, desc="TIMIT features", unit="utt", disable=not progress, file=sys.stderr)
    for u in bar:
        samples, rate = read_audio(u.wav)
        f = mfcc_features(samples, rate, settings)
        if len(f) == 0:
            raise DataError(f"TIMIT audio file {u.wav} is shorter than one 25 ms frame ({len(samples)} samples)")
        starts, ends, phones = read_phn(u.phn)
        feats.append(f)
        labels.append(frame_labels(frame_centres(len(samples), rate, settings), starts, ends, phones).astype(np.int16))
        lengths.append(len(f))
    return {
        "features": np.concatenate(feats).astype(np.float32),
        "labels": np.concatenate(labels),
        "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "uids": np.array([u.uid for u in utterances], dtype="U32"),
    }


@register("timit")
@dataclass(frozen=True)
class TIMITConfig(TaskConfig):
    """Config of TIMIT framewise phone classification.

    Attributes:
        data_dir: the corpus (see the module docstring); null = ``$ODYSSEY_TIMIT_DIR`` or
            ``$ODYSSEY_DATA_DIR/timit``. Made absolute.
        fold_39: targets folded to Lee & Hon's 39 classes (the paper: false, 61 phones).
        expect_full_corpus: refuse split counts other than 3696/400/192.
        cache_dir: the feature cache; null = ``$ODYSSEY_CACHE_DIR`` or ``~/.cache/odyssey/features``.
        progress: a progress bar on stderr while features are extracted.
    """

    name: str = "timit"
    data_dir: str | None = None
    fold_39: bool = False
    expect_full_corpus: bool = True
    cache_dir: str | None = None
    progress: bool = True
    LOCATION_KEYS: ClassVar[tuple[str, ...]] = ("data_dir", "expect_full_corpus", "cache_dir", "progress")

    def __post_init__(self) -> None:
        check_choice("name", self.name, ("timit",))
        for key in ("fold_39", "expect_full_corpus", "progress"):
            check_bool(key, getattr(self, key))
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", str(Path(str(self.data_dir)).expanduser().resolve()))

    def build(self) -> TIMITTask:
        root = find_root(corpus_dir(self.data_dir, "timit"))
        splits = scan_corpus(root)
        if self.expect_full_corpus:
            check_full_counts(root, splits)
        utterances = [u for s in SPLITS for u in splits[s]]
        settings = MFCCSettings()
        files = [f for u in utterances for f in (u.wav, u.phn)]
        key = {"corpus": "timit", "files": fingerprint(root, files), "count": len(utterances), "features": settings.as_key()}
        arrays = cached_arrays(
            "timit", key, lambda: _extract(utterances, settings, self.progress), directory=self.cache_dir
        )
        if arrays["uids"].tolist() != [u.uid for u in utterances]:  # the key covers them: a guard, not a path
            raise DataError(f"TIMIT feature cache in {self.cache_dir or 'the cache folder'} does not match the corpus; delete it")
        return TIMITTask(_sequences(arrays, {s: len(splits[s]) for s in SPLITS}, self.fold_39), fold_39=self.fold_39)


def _sequences(arrays: dict[str, np.ndarray], sizes: dict[str, int], fold_39: bool) -> dict[str, list[Sequence]]:
    """Normalised feature sequences and frame targets per split (train, valid, test in order)."""
    features, labels, offsets = arrays["features"], arrays["labels"].astype(np.int64), arrays["offsets"]
    n_train = sizes["train"]
    train = features[: offsets[n_train]].astype(np.float64)
    mean, std = train.mean(axis=0), train.std(axis=0)
    normalised = ((features - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    if fold_39:
        table = np.array([-1 if FOLD_39[p] is None else PHONES_39.index(FOLD_39[p]) for p in PHONES] + [-1])
        labels = table[labels]  # -1 (uncovered) indexes the last entry: stays -1
    out: dict[str, list[Sequence]] = {}
    first = 0
    for split in SPLITS:
        seqs = []
        for i in range(first, first + sizes[split]):
            lo, hi = offsets[i], offsets[i + 1]
            target = torch.from_numpy(labels[lo:hi].copy())
            seqs.append(Sequence(torch.from_numpy(normalised[lo:hi].copy()), target.clamp_min(0), target >= 0))
        out[split] = seqs
        first += sizes[split]
    return out


class TIMITTask(Task):
    """Framewise softmax classification: cross-entropy loss, metric ``error`` (worst 1.0)."""

    name = "timit"
    input_size = MFCCSettings().size
    metric_names: ClassVar[tuple[str, ...]] = ("error",)
    primary_metric: ClassVar[str] = "error"
    lower_is_better: ClassVar[bool] = True
    worst_value: ClassVar[float] = 1.0

    def __init__(self, splits: dict[str, list[Sequence]], *, fold_39: bool = False):
        self.output_size = len(PHONES_39) if fold_39 else len(PHONES)
        super().__init__(splits)

    def step_losses(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return frame_cross_entropy(outputs, batch.targets, batch.mask)

    def metric_totals(self, outputs: torch.Tensor, batch: Batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {"error": class_errors(outputs, batch.targets, batch.mask)}
