"""IAM-OnDB: online handwriting recognition with CTC (the handwriting task of the Odyssey paper).

Data: the user's copy of the IAM On-Line Handwriting Database (registration required: nothing is
downloaded). ``data_dir`` holds (null = ``$ODYSSEY_IAM_ONDB_DIR``, then ``$ODYSSEY_DATA_DIR/iam_ondb``):

* ``lineStrokes/a01/a01-000/a01-000u-01.xml``: one text line's pen trajectory, a
  ``WhiteboardCaptureSession`` whose ``StrokeSet`` holds ``Stroke`` elements of
  ``<Point x= y= time=/>`` (time in seconds);
* ``ascii/a01/a01-000/a01-000u.txt``: the form's transcription; the non-empty lines after
  ``CSR:`` pair, in order, with the stroke files ``-01``, ``-02``, ...;
* ``trainset.txt``, ``testset_v.txt``, ``testset_t.txt``, ``testset_f.txt``: the form ids of
  task IAM-OnDB-t1, one per line.

Splits (the paper's): ``train`` = trainset, ``valid`` = testset_v + testset_t, ``test`` =
testset_f. Board ``a08-551z`` is dropped (it holds characters without strokes). A form whose
stroke files (``-01`` .. ``-NN``, consecutive) do not match its ``CSR:`` line count is skipped
and reported by name, never guessed; so is a line that cannot emit its transcription under CTC
(fewer frames than labels plus repeats). The counts are in :attr:`IAMOnDBTask.report` and on stderr.

Inputs, per kept point: ``dx``, ``dy`` (offset from the previous kept point of the line; 0 for
the first), ``t`` (seconds since its stroke started) and ``pen_up`` (1 on a stroke's last point).
Subsampling by ``subsample`` (2, the paper's) keeps every second point of each stroke and always
its last, so that no stroke loses its pen-up. ``dx``, ``dy`` and ``t`` are normalised with the
training set's mean and std; ``pen_up`` stays 0/1.

Targets: the 81 characters of :data:`ALPHABET` (a-z, A-Z, 0-9, ``!"#&'()*+,-./[]:;?`` and space),
classes 1..81, with the CTC blank as class 0 (82 outputs). Outside the alphabet: the HTML entities
``&quot;`` and ``&amp;`` and typographic quotes and dashes become their ASCII character
(:data:`SUBSTITUTES`), a tab a space; any other character is deleted from the target. Both are
counted per character in the report. Loss, decoding and CER: :mod:`odyssey.tasks.ctc`.

XML is parsed with ``xml.etree`` after refusing any ``<!DOCTYPE`` or ``<!ENTITY`` (no external or
expanding entities); a malformed file is refused with its name. The parsed points are cached
(:mod:`odyssey.tasks.cache`).
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from odyssey.errors import DataError
from odyssey.tasks import TaskConfig, register
from odyssey.tasks.base import SPLITS, Sequence, check_bool, check_choice, check_int
from odyssey.tasks.cache import cached_arrays, corpus_dir, fingerprint
from odyssey.tasks.ctc import CTCTask, feasible

__all__ = [
    "ALPHABET",
    "DROPPED_FORMS",
    "SPLIT_FILES",
    "SUBSTITUTES",
    "IAMOnDBConfig",
    "IAMOnDBTask",
    "encode_text",
    "line_features",
    "read_strokes",
    "read_transcription",
]

ALPHABET = "abcdefghijklmnopqrstuvwxyz" "ABCDEFGHIJKLMNOPQRSTUVWXYZ" "0123456789" "!\"#&'()*+,-./[]:;?" " "
assert len(ALPHABET) == 81 and len(set(ALPHABET)) == 81
_LABEL = {c: i + 1 for i, c in enumerate(ALPHABET)}  # 0 is the CTC blank
SUBSTITUTES = {"&quot;": '"', "&amp;": "&", "\t": " ", "`": "'", "\u00b4": "'", "\u2018": "'", "\u2019": "'",
               "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"}  # fmt: skip
SPLIT_FILES = {"train": ("trainset.txt",), "valid": ("testset_v.txt", "testset_t.txt"), "test": ("testset_f.txt",)}
DROPPED_FORMS = ("a08-551z",)
_FORM = re.compile(r"^([A-Za-z0-9]+)-(\d+)([A-Za-z]*)$")
_LAYOUT = "lineStrokes/, ascii/ and trainset.txt, testset_v.txt, testset_t.txt, testset_f.txt"


def encode_text(text: str, counts: Counter | None = None) -> list[int]:
    """The labels (1..81) of ``text``; out-of-alphabet characters substituted or deleted (see the
    module docstring), each counted in ``counts`` as ``"'x' -> 'y'"`` or ``"'x' deleted"``."""
    for entity in ("&quot;", "&amp;"):
        if entity in text:
            if counts is not None:
                counts[f"{entity!r} -> {SUBSTITUTES[entity]!r}"] += text.count(entity)
            text = text.replace(entity, SUBSTITUTES[entity])
    labels = []
    for c in text:
        if c in _LABEL:
            labels.append(_LABEL[c])
        elif c in SUBSTITUTES:
            labels.append(_LABEL[SUBSTITUTES[c]])
            if counts is not None:
                counts[f"{c!r} -> {SUBSTITUTES[c]!r}"] += 1
        elif counts is not None:
            counts[f"{c!r} deleted"] += 1
    return labels


def decode_labels(labels) -> str:
    return "".join(ALPHABET[int(i) - 1] for i in labels)


def read_transcription(path: Path) -> list[str]:
    """The non-empty lines after ``CSR:`` of an ``ascii/`` file, stripped."""
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise DataError(f"IAM-OnDB transcription {path} cannot be read: {exc.strerror or exc}") from None
    lines = text.splitlines()
    marks = [i for i, line in enumerate(lines) if line.strip() == "CSR:"]
    if not marks:
        raise DataError(f"IAM-OnDB transcription {path} has no 'CSR:' section")
    return [line.strip() for line in lines[marks[0] + 1 :] if line.strip()]


def read_strokes(path: Path) -> np.ndarray:
    """(P, 4) float64 ``[x, y, time, stroke_end]`` of a stroke XML file (stroke_end 1 on each
    stroke's last point).

    Raises:
        DataError: naming the file: a DTD or entity declaration, malformed XML, no StrokeSet, a
            stroke without points, or a point without numeric x, y, time.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"IAM-OnDB stroke file {path} cannot be read: {exc.strerror or exc}") from None
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise DataError(f"IAM-OnDB stroke file {path} is refused: it declares a DTD or entities")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise DataError(f"IAM-OnDB stroke file {path} is malformed XML ({exc})") from None
    strokes = root.find("StrokeSet")
    if root.tag != "WhiteboardCaptureSession" or strokes is None:
        raise DataError(f"IAM-OnDB stroke file {path} is not a WhiteboardCaptureSession with a StrokeSet")
    rows = []
    for k, stroke in enumerate(strokes.iter("Stroke")):
        points = stroke.findall("Point")
        if not points:
            raise DataError(f"IAM-OnDB stroke file {path}: stroke {k + 1} has no points")
        for j, p in enumerate(points):
            try:
                rows.append((float(p.attrib["x"]), float(p.attrib["y"]), float(p.attrib["time"]), float(j == len(points) - 1)))
            except (KeyError, ValueError):
                raise DataError(f"IAM-OnDB stroke file {path}: stroke {k + 1}, point {j + 1} lacks numeric x, y, time") from None
    if not rows:
        raise DataError(f"IAM-OnDB stroke file {path} holds no strokes")
    return np.asarray(rows, dtype=np.float64)


def line_features(points: np.ndarray, subsample: int = 2) -> np.ndarray:
    """(T, 4) float32 ``[dx, dy, t, pen_up]`` of a line's points (P, 4) (see the module docstring)."""
    ends = points[:, 3] > 0.5
    stroke = np.concatenate([[0], np.cumsum(ends)[:-1]])  # stroke index of each point
    first = np.concatenate([[True], stroke[1:] != stroke[:-1]])
    position = np.arange(len(points)) - np.maximum.accumulate(np.where(first, np.arange(len(points)), 0))
    keep = (position % subsample == 0) | ends
    kept = points[keep]
    start_time = points[first][stroke[keep], 2]  # the time of each kept point's stroke start
    xy = kept[:, :2]
    d = np.vstack([np.zeros((1, 2)), np.diff(xy, axis=0)])
    return np.column_stack([d, kept[:, 2] - start_time, kept[:, 3]]).astype(np.float32)


@dataclass
class Report:
    """What the loader left out or changed, for stderr and the caller."""

    dropped_forms: list[str] = field(default_factory=list)
    mismatched_forms: list[str] = field(default_factory=list)  # "form: N stroke files, M lines"
    infeasible_lines: list[str] = field(default_factory=list)
    characters: Counter = field(default_factory=Counter)

    def lines(self) -> list[str]:
        out = []
        if self.dropped_forms:
            out.append(f"dropped board(s) {', '.join(self.dropped_forms)} (characters without strokes)")
        for m in self.mismatched_forms:
            out.append(f"skipped form {m}: stroke files and transcription lines do not match")
        if self.infeasible_lines:
            shown = ", ".join(self.infeasible_lines[:10]) + (" ..." if len(self.infeasible_lines) > 10 else "")
            out.append(f"skipped {len(self.infeasible_lines)} line(s) with fewer frames than CTC needs: {shown}")
        if self.characters:
            out.append("characters outside the alphabet: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.characters.items())))
        return out


def _forms(directory: Path) -> dict[str, list[str]]:
    """The form ids of each split, in file order."""
    out: dict[str, list[str]] = {}
    for split, names in SPLIT_FILES.items():
        out[split] = []
        for name in names:
            path = directory / name
            if not path.is_file():
                raise DataError(f"IAM-OnDB corpus at {directory} is partial: it has no split file {name}; expected {_LAYOUT}")
            for number, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
                form = line.strip()
                if not form:
                    continue
                if not _FORM.match(form):
                    raise DataError(f"IAM-OnDB split file {path}, line {number}: {form!r} is not a form id such as a01-000u")
                out[split].append(form)
    return out


def _form_files(directory: Path, form: str) -> tuple[Path, list[Path]]:
    top, number, _ = _FORM.match(form).groups()
    sub = f"{top}-{number}"
    text = directory / "ascii" / top / sub / f"{form}.txt"
    strokes = sorted((directory / "lineStrokes" / top / sub).glob(f"{form}-*.xml"))
    return text, strokes


def _parse(directory: Path, forms: dict[str, list[str]], progress: bool) -> dict[str, np.ndarray]:
    """Every kept line's points and text, concatenated, plus each form's fate."""
    from tqdm.auto import tqdm

    points, lengths, texts, ids, splits, skipped = [], [], [], [], [], []
    todo = [(s, f) for s in SPLITS for f in forms[s]]
    for split, form in tqdm(todo, desc="IAM-OnDB strokes", unit="form", disable=not progress, file=sys.stderr):
        text_path, stroke_paths = _form_files(directory, form)
        if not text_path.is_file():
            raise DataError(f"IAM-OnDB form {form} (listed for {split}) has no transcription {text_path}")
        lines = read_transcription(text_path)
        numbers = [p.stem.rsplit("-", 1)[-1] for p in stroke_paths]
        if numbers != [f"{i:02d}" for i in range(1, len(lines) + 1)]:
            skipped.append(f"{form}: {len(stroke_paths)} stroke files, {len(lines)} lines")
            continue
        for i, (path, line) in enumerate(zip(stroke_paths, lines), start=1):
            pts = read_strokes(path)
            points.append(pts)
            lengths.append(len(pts))
            texts.append(line)
            ids.append(f"{form}-{i:02d}")
            splits.append(SPLITS.index(split))
    return {
        "points": np.concatenate(points) if points else np.zeros((0, 4)),
        "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "texts": np.array(texts, dtype="U"),
        "ids": np.array(ids, dtype="U"),
        "splits": np.array(splits, dtype=np.int8),
        "skipped": np.array(skipped, dtype="U"),
    }


@register("iam_ondb")
@dataclass(frozen=True)
class IAMOnDBConfig(TaskConfig):
    """Config of IAM-OnDB line recognition.

    Attributes:
        data_dir: the corpus (see the module docstring); null = ``$ODYSSEY_IAM_ONDB_DIR`` or
            ``$ODYSSEY_DATA_DIR/iam_ondb``. Made absolute.
        subsample: keep every ``subsample``-th point of each stroke (and its last); the paper: 2.
        cache_dir: the parsed-strokes cache; null = ``$ODYSSEY_CACHE_DIR`` or ``~/.cache/odyssey/features``.
        progress: a progress bar on stderr while the XML files are parsed.
    """

    name: str = "iam_ondb"
    data_dir: str | None = None
    subsample: int = 2
    cache_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        check_choice("name", self.name, ("iam_ondb",))
        check_int("subsample", self.subsample, low=1)
        check_bool("progress", self.progress)
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", str(Path(str(self.data_dir)).expanduser().resolve()))

    def build(self) -> IAMOnDBTask:
        directory = corpus_dir(self.data_dir, "iam_ondb")
        if not directory.is_dir():
            raise DataError(f"IAM-OnDB data directory {directory} does not exist; expected {_LAYOUT}; set task.data_dir")
        for folder in ("lineStrokes", "ascii"):
            if not (directory / folder).is_dir():
                raise DataError(f"IAM-OnDB data directory {directory} has no {folder}/ folder; expected {_LAYOUT}")
        forms = _forms(directory)
        report = Report()
        for split in SPLITS:
            report.dropped_forms += [f for f in forms[split] if f in DROPPED_FORMS]
            forms[split] = [f for f in forms[split] if f not in DROPPED_FORMS]
        files = []
        for split in SPLITS:
            for form in forms[split]:
                text, strokes = _form_files(directory, form)
                files += [text, *strokes] if text.is_file() else strokes
        key = {"corpus": "iam_ondb", "files": fingerprint(directory, files), "forms": forms, "parser": 1}
        arrays = cached_arrays("iam_ondb", key, lambda: _parse(directory, forms, self.progress), directory=self.cache_dir)
        report.mismatched_forms = [str(s) for s in arrays["skipped"]]
        task = IAMOnDBTask(_sequences(arrays, self.subsample, report), report=report)
        for line in report.lines():
            print(f"odyssey: IAM-OnDB: {line}", file=sys.stderr)
        return task


def _sequences(arrays: dict[str, np.ndarray], subsample: int, report: Report) -> dict[str, list[Sequence]]:
    offsets, points = arrays["offsets"], arrays["points"]
    examples: dict[str, list[tuple[np.ndarray, list[int]]]] = {s: [] for s in SPLITS}
    for i, (text, uid, split) in enumerate(zip(arrays["texts"], arrays["ids"], arrays["splits"])):
        feats = line_features(points[offsets[i] : offsets[i + 1]], subsample)
        labels = encode_text(str(text), report.characters)
        if not feasible(labels, len(feats)):
            report.infeasible_lines.append(str(uid))
            continue
        examples[SPLITS[int(split)]].append((feats, labels))
    for split in SPLITS:
        if not examples[split]:
            raise DataError(f"IAM-OnDB: no {split} line is left (files: {', '.join(SPLIT_FILES[split])}); see the report")
    train = np.concatenate([f for f, _ in examples["train"]]).astype(np.float64)
    mean, std = train[:, :3].mean(axis=0), train[:, :3].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    out: dict[str, list[Sequence]] = {}
    for split in SPLITS:
        seqs = []
        for feats, labels in examples[split]:
            x = feats.copy()
            x[:, :3] = (x[:, :3] - mean) / std
            targets = torch.zeros(len(x), dtype=torch.int64)
            targets[: len(labels)] = torch.tensor(labels, dtype=torch.int64)
            seqs.append(Sequence(torch.from_numpy(x.astype(np.float32)), targets, torch.ones(len(x), dtype=torch.bool)))
        out[split] = seqs
    return out


class IAMOnDBTask(CTCTask):
    """CTC over 81 characters + blank; metric ``cer``. ``report``: what the loader left out."""

    name = "iam_ondb"
    input_size = 4
    output_size = len(ALPHABET) + 1

    def __init__(self, splits: dict[str, list[Sequence]], *, report: Report | None = None):
        self.report = report or Report()
        super().__init__(splits)
