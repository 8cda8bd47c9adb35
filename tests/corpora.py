"""Tiny synthetic corpora in the published layouts of TIMIT and IAM-OnDB (both licensed: no real
data is committed or downloaded). Used by test_timit.py, test_iam_ondb.py and the task contract.

TIMIT: speaker folders named after real train, dev and core-test speakers, 0.1 s utterances of
seeded noise (1600 samples = 8 frames of 25 ms every 10 ms) as NIST SPHERE (some as RIFF), with
``.PHN`` files of four segments, and SA sentences (which the loader must drop).

IAM-OnDB: ``lineStrokes/`` XML stroke files, ``ascii/`` transcriptions with their ``CSR:``
section, the four split files, the board ``a08-551z`` and one form whose stroke files do not
match its transcription.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from odyssey.tasks.sphere import write_sphere

RATE = 16000
SAMPLES = 1600  # 0.1 s
# (start, end, phone): boundaries at frame centres 200, 360, ... (t * 160 + 200)
SEGMENTS = ((0, 360, "h#"), (360, 840, "ix"), (840, 1160, "q"), (1160, SAMPLES, "zh"))
UTTERANCES = ("SI1027", "SI1657", "SI648", "SX127", "SX217", "SX307", "SX37", "SX397")

# A few real speakers of each split (dialect, speaker).
TRAIN_SPEAKERS = (("DR1", "FCJF0"), ("DR1", "MDPK0"), ("DR2", "FAEM0"))
DEV_SPEAKERS = (("DR1", "FAKS0"), ("DR2", "MMDM2"))
CORE_SPEAKERS = (("DR1", "MDAB0"), ("DR8", "FMLD0"))
OTHER_TEST = (("DR1", "MJSW0"), ("DR3", "FKLC0"))  # MJSW0 is a dev speaker; FKLC0 is in neither list


def timit_samples(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-3000, 3000, size=SAMPLES).astype(np.int16)


def write_timit(
    directory: Path,
    *,
    train=TRAIN_SPEAKERS,
    dev=DEV_SPEAKERS,
    core=CORE_SPEAKERS,
    other=OTHER_TEST,
    utterances=UTTERANCES,
    lowercase: bool = False,
    riff: tuple[str, ...] = (),
    empty_audio: bool = False,
) -> Path:
    """Write a corpus under ``directory/TIMIT`` and return that folder.

    ``riff``: utterance uids (``DR1/FCJF0/SI1027``) written as RIFF WAV instead of SPHERE.
    ``empty_audio``: write zero-byte ``.WAV`` files (for layout-only tests: fast).
    ``dev``/``core`` default to a few speakers; the loader refuses a corpus lacking the rest of
    the lists, so tests that build a task pass the full lists (see :func:`full_lists`).
    """
    import soundfile

    case = str.lower if lowercase else (lambda s: s)
    root = directory / case("TIMIT")
    seed = 0
    for part, speakers in (("TRAIN", train), ("TEST", tuple(dev) + tuple(core) + tuple(other))):
        for dialect, speaker in speakers:
            folder = root / case(part) / case(dialect) / case(speaker)
            folder.mkdir(parents=True, exist_ok=True)
            for name in ("SA1", *utterances):
                seed += 1
                wav = folder / case(f"{name}.WAV")
                phn = folder / case(f"{name}.PHN")
                phn.write_text("".join(f"{a} {b} {p}\n" for a, b, p in SEGMENTS))
                if empty_audio:
                    wav.write_bytes(b"")
                elif f"{dialect}/{speaker}/{name}" in riff:
                    soundfile.write(str(wav), timit_samples(seed), RATE, subtype="PCM_16", format="WAV")
                else:
                    write_sphere(wav, timit_samples(seed), RATE)
    return root


def full_lists():
    """The complete dev and core-test speaker lists as (dialect, speaker) pairs (dialects made up
    for dev speakers: the loader does not check them)."""
    from odyssey.tasks.timit import CORE_TEST_SPEAKERS, DEV_SPEAKERS

    dev = tuple(("DR1", s) for s in sorted(DEV_SPEAKERS))
    core = tuple((dr, s) for dr, group in CORE_TEST_SPEAKERS.items() for s in group)
    return dev, core


# --------------------------------------------------------------------------------------------
# IAM-OnDB

STROKE_XML = """<?xml version="1.0" encoding="ISO-8859-1"?>
<WhiteboardCaptureSession>
  <WhiteboardDescription>
    <SensorLocation corner="top_left"/>
    <DiagonallyOppositeCoords x="6512" y="1376"/>
  </WhiteboardDescription>
  <StrokeSet>
{strokes}
  </StrokeSet>
</WhiteboardCaptureSession>
"""


def stroke_xml(strokes: list[list[tuple[int, int, float]]]) -> str:
    body = []
    for points in strokes:
        inner = "\n".join(f'      <Point x="{x}" y="{y}" time="{t}"/>' for x, y, t in points)
        body.append(f'    <Stroke colour="black" start_time="{points[0][2]}" end_time="{points[-1][2]}">\n{inner}\n    </Stroke>')
    return STROKE_XML.format(strokes="\n".join(body))


def line_strokes(n_points: int, seed: int) -> list[list[tuple[int, int, float]]]:
    """Two strokes of ``n_points`` points in all, on a random walk, 10 ms apart."""
    rng = np.random.default_rng(seed)
    xy = np.cumsum(rng.integers(-5, 6, size=(n_points, 2)), axis=0) + 1000
    pts = [(int(x), int(y), round(1000.0 + 0.01 * i, 2)) for i, (x, y) in enumerate(xy)]
    half = n_points // 2
    return [pts[:half], pts[half:]]


def write_form(directory: Path, form: str, lines: list[str], *, strokes: int | None = None, points: int = 80, seed: int = 0) -> None:
    """One form: ``ascii/<a01>/<a01-000>/<form>.txt`` and ``strokes`` (default: one per line)
    ``lineStrokes/<a01>/<a01-000>/<form>-NN.xml`` files."""
    top, number = form.split("-")[0], "".join(c for c in form.split("-")[1] if c.isdigit())
    sub = f"{top}-{number}"
    text = directory / "ascii" / top / sub / f"{form}.txt"
    text.parent.mkdir(parents=True, exist_ok=True)
    text.write_text("OCR:\n\n" + "\n".join(lines) + "\n\nCSR:\n\n" + "\n".join(lines) + "\n")
    folder = directory / "lineStrokes" / top / sub
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(lines) if strokes is None else strokes):
        (folder / f"{form}-{i + 1:02d}.xml").write_text(stroke_xml(line_strokes(points, seed + i)))


IAM_FORMS = {
    "train": {"a01-000u": ["A MOVE to stop", "Mr. Gaitskell"], "a01-001w": ["from nominating", "any more"],
              "a01-002x": ["Labour MPs", "tomorrow"]},
    "valid_v": {"a02-000x": ["Labour 1961!"]},
    "valid_t": {"a03-010z": ["it's (\"the\") end;"]},
    "test": {"a04-020a": ["50% of 2 men"], "a05-030b": ["ok?"]},  # '%' is outside the alphabet
}


def write_iam(directory: Path) -> Path:
    """An IAM-OnDB copy: the forms of :data:`IAM_FORMS`, board a08-551z (in the train list), and
    ``a06-040c`` (in the train list) with 3 stroke files for 2 transcription lines."""
    root = directory / "IAM-OnDB"
    seed = 0
    lists = {"trainset.txt": [], "testset_v.txt": [], "testset_t.txt": [], "testset_f.txt": []}
    files = {"train": "trainset.txt", "valid_v": "testset_v.txt", "valid_t": "testset_t.txt", "test": "testset_f.txt"}
    for group, forms in IAM_FORMS.items():
        for form, lines in forms.items():
            write_form(root, form, lines, seed=seed)
            seed += 10
            lists[files[group]].append(form)
    write_form(root, "a08-551z", ["board"], seed=99)
    write_form(root, "a06-040c", ["one line", "two lines"], strokes=3, seed=77)
    lists["trainset.txt"] += ["a08-551z", "a06-040c"]
    for name, forms in lists.items():
        (root / name).write_text("\n".join(forms) + "\n")
    return root
