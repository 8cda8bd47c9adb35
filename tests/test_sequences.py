"""``task=sequences``: your own data from npz, Parquet, Arrow, ``datasets`` folders and UEA/UCR
``.ts`` files; the five target kinds; bad data as one line; real UCR data; the plugin group.

Datasets here are tiny and written per test (tmp_path); the real data are the UEA/UCR excerpts
in tests/data/ucr (license and origin in its README).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from odyssey.config import compose, trial_config
from odyssey.errors import ConfigError, DataError
from odyssey.tasks import collate, task_config_from_mapping
from odyssey.tasks.sequences import TARGETS, SequencesConfig

from test_packs import assert_same_trial, run_alone, run_packed

ROOT = Path(__file__).resolve().parents[1]
UCR = ROOT / "tests" / "data" / "ucr"


# --------------------------------------------------------------------------------------------
# Writers: one dataset, every format


def make_data(seed: int, n: int, target: str, *, features: int = 3, labels=("cat", "dog", "eel")) -> dict:
    """``n`` sequences of 2-7 steps with targets of kind ``target``: {"x": [(T, F)], "y": [...]}."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 8, size=n)
    if target == "next_step_binary":
        xs = [(rng.random((t, features)) < 0.4).astype(np.float64) for t in lengths]
    else:
        xs = [rng.normal(size=(t, features)).round(4) for t in lengths]
    if target == "sequence_class":
        ys = [labels[i % len(labels)] for i in range(n)]
    elif target == "step_class":
        ys = [[int(v) for v in rng.integers(0, 3, size=t)] for t in lengths]
    elif target == "sequence_regression":
        ys = [rng.normal(size=2).round(4).tolist() for _ in lengths]
    elif target == "step_regression":
        ys = [rng.normal(size=t).round(4).tolist() for t in lengths]
    else:
        ys = None
    return {"x": xs, "y": ys, "per_step": target.startswith("step_")}


def write_npz(path: Path, data: dict) -> Path:
    arrays = {"inputs": np.concatenate(data["x"]), "lengths": np.array([len(x) for x in data["x"]])}
    if data["y"] is not None:
        y = data["y"]
        arrays["targets"] = np.concatenate([np.asarray(v) for v in y]) if data.get("per_step") else np.asarray(y)
    np.savez(path, **arrays)
    return path


def _table(data: dict):
    import pyarrow as pa

    columns = {"inputs": [x.tolist() for x in data["x"]]}
    if data["y"] is not None:
        columns["targets"] = data["y"]
    return pa.table(columns)


def write_parquet(path: Path, data: dict) -> Path:
    import pyarrow.parquet as pq

    pq.write_table(_table(data), path)
    return path


def write_arrow(path: Path, data: dict) -> Path:
    import pyarrow as pa

    table = _table(data)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def write_hf(path: Path, data: dict) -> Path:
    datasets = pytest.importorskip("datasets")
    columns = {"inputs": [x.tolist() for x in data["x"]]}
    if data["y"] is not None:
        columns["targets"] = data["y"]
    datasets.Dataset.from_dict(columns).save_to_disk(str(path))
    return path


def write_ts(path: Path, data: dict) -> Path:
    labelled = data["y"] is not None
    header = ["@problemName test", "@timeStamps false", "@missing false", "@univariate false", "@equalLength false"]
    header.append(f"@classLabel true {' '.join(sorted(set(data['y'])))}" if labelled else "@classLabel false")
    lines = [":".join(",".join(repr(float(v)) for v in x[:, d]) for d in range(x.shape[1])) for x in data["x"]]
    if labelled:
        lines = [f"{line}:{y}" for line, y in zip(lines, data["y"])]
    path.write_text("\n".join(["# written by the tests", *header, "@data", *lines]) + "\n")
    return path


WRITERS = {"npz": write_npz, "parquet": write_parquet, "arrow": write_arrow, "hf": write_hf, "ts": write_ts}
SUFFIX = {"npz": ".npz", "parquet": ".parquet", "arrow": ".arrow", "hf": "", "ts": ".ts"}


def write_splits(tmp_path: Path, fmt: str, target: str, *, sizes=(24, 9, 9), seed=0) -> dict[str, str]:
    paths = {}
    for i, split in enumerate(("train", "valid", "test")):
        data = make_data(seed + i, sizes[i], target)
        paths[split] = str(WRITERS[fmt](tmp_path / f"{fmt}-{target}-{split}{SUFFIX[fmt]}", data))
    return paths


def config(tmp_path: Path, **keys) -> SequencesConfig:
    return task_config_from_mapping({"name": "sequences", "cache_dir": str(tmp_path / "cache"), **keys})


def assert_same_task(a, b, tol=1e-6):
    assert (a.input_size, a.output_size, a.classes) == (b.input_size, b.output_size, b.classes)
    for split in ("train", "valid", "test"):
        assert len(a.splits[split]) == len(b.splits[split]), split
        for x, y in zip(a.splits[split], b.splits[split]):
            torch.testing.assert_close(x.inputs, y.inputs, atol=tol, rtol=0)
            assert x.targets.dtype == y.targets.dtype
            torch.testing.assert_close(x.targets, y.targets, atol=tol, rtol=0)
            assert torch.equal(x.mask, y.mask)


# --------------------------------------------------------------------------------------------
# Formats


@pytest.mark.parametrize("target", TARGETS)
def test_every_format_gives_the_same_task(tmp_path, target):
    """npz, Parquet, Arrow, a datasets folder (and .ts for class labels) give one Task to 1e-6."""
    formats = ["npz", "parquet", "arrow", "hf"] + (["ts"] if target == "sequence_class" else [])
    tasks = {f: config(tmp_path, target=target, **write_splits(tmp_path, f, target)).build() for f in formats}
    reference = tasks["npz"]
    assert len(reference.splits["train"]) == 24 and len(reference.splits["test"]) == 9
    for fmt, task in tasks.items():
        assert_same_task(task, reference)
    data = make_data(0, 24, target)
    first = reference.splits["train"][0]
    if target == "sequence_class":
        assert reference.classes == ("cat", "dog", "eel") and first.mask.tolist() == [False] * (len(first) - 1) + [True]
        assert int(first.targets[-1]) == 0
    if target == "next_step_binary":
        assert len(first) == len(data["x"][0]) - 1
        torch.testing.assert_close(first.targets, torch.from_numpy(data["x"][0][1:]).float())


def test_valid_and_test_carved_from_train_stratified(tmp_path):
    data = make_data(0, 60, "sequence_class")  # 20 each of cat, dog, eel
    path = write_npz(tmp_path / "all.npz", data)
    task = config(tmp_path, train=str(path), valid_fraction=0.2, test_fraction=0.25, split_seed=3).build()
    counts = {s: np.bincount([int(q.targets[-1]) for q in task.splits[s]], minlength=3).tolist() for s in task.splits}
    assert counts == {"train": [11, 11, 11], "valid": [4, 4, 4], "test": [5, 5, 5]}
    seen = sorted(tuple(q.inputs.flatten().tolist()) for s in task.splits for q in task.splits[s])
    again = config(tmp_path, train=str(path), valid_fraction=0.2, test_fraction=0.25, split_seed=3, normalize=False).build()
    assert len(seen) == 60 and sum(len(v) for v in again.splits.values()) == 60
    other = config(tmp_path, train=str(path), valid_fraction=0.2, test_fraction=0.25, split_seed=4).build()
    assert [len(q) for q in other.splits["valid"]] != [len(q) for q in task.splits["valid"]]


def test_normalize_max_length_and_subsample(tmp_path):
    data = make_data(0, 30, "step_regression")
    paths = {s: str(write_npz(tmp_path / f"{s}.npz", data)) for s in ("train", "valid", "test")}
    task = config(tmp_path, target="step_regression", **paths).build()
    steps = torch.cat([q.inputs for q in task.splits["train"]]).double()
    torch.testing.assert_close(steps.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(steps.std(0, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0)
    raw = np.concatenate(data["x"])
    assert task.normalization["mean"] == pytest.approx(raw.mean(0).tolist()) and task.normalization["std"] == pytest.approx(raw.std(0).tolist())
    cut = config(tmp_path, target="step_regression", normalize=False, max_length=3, subsample=2, **paths).build()
    for q, x, y in zip(cut.splits["train"], data["x"], data["y"]):
        torch.testing.assert_close(q.inputs, torch.from_numpy(x[::2][:3]).float())
        torch.testing.assert_close(q.targets[:, 0], torch.tensor(y[::2][:3], dtype=torch.float32))


def test_the_run_records_what_the_task_derived_from_the_data(tmp_path):
    data = {"x": [np.array([[1.0, 5.0], [3.0, 5.0]]), np.array([[5.0, 5.0]])], "y": ["b", "a"]}
    path = str(write_npz(tmp_path / "d.npz", data))
    tags = config(tmp_path, train=path, valid=path, test=path).build().data_tags()
    assert tags == {
        "odyssey.task_data.normalization": json.dumps({"mean": [3.0, 5.0], "std": [math.sqrt(8 / 3), 1.0]}).replace(
            str(math.sqrt(8 / 3)), f"{math.sqrt(8 / 3):.7g}"),  # std 0 (a constant feature) becomes 1
        "odyssey.task_data.classes": '["a", "b"]',
        "odyssey.task_data.sizes": '{"train": 2, "valid": 2, "test": 2}',
    }  # fmt: skip
    regression = config(tmp_path, train=path, valid=path, test=path, normalize=False, target="sequence_regression")
    with pytest.raises(DataError):
        regression.build()  # string targets
    np.savez(tmp_path / "r.npz", inputs=np.zeros((3, 1)), lengths=[2, 1], targets=[0.5, 1.0])
    r = str(tmp_path / "r.npz")
    assert set(config(tmp_path, train=r, valid=r, test=r, normalize=False, target="sequence_regression").build().data_tags()) == {
        "odyssey.task_data.sizes"}  # fmt: skip


def test_the_parsed_file_is_cached_and_a_changed_file_is_parsed_again(tmp_path, monkeypatch):
    from odyssey.tasks import sequence_files

    paths = write_splits(tmp_path, "parquet", "sequence_class")
    calls = []
    real = sequence_files.read_sequences
    monkeypatch.setattr("odyssey.tasks.sequences.read_sequences", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    first = config(tmp_path, **paths).build()
    assert len(calls) == 3
    second = config(tmp_path, **paths).build()
    assert len(calls) == 3  # all three from the cache
    assert_same_task(first, second, tol=0)
    write_parquet(Path(paths["test"]), make_data(9, 5, "sequence_class"))
    third = config(tmp_path, **paths).build()
    assert calls[3:] == [Path(paths["test"])] and len(third.splits["test"]) == 5
    assert len(list((tmp_path / "cache").glob("sequences-*.npz"))) == 4


def test_ts_regression_targets_and_univariate_equal_lengths(tmp_path):
    """``@targetLabel true``: the last field is a number (the archive's regression problems)."""
    text = "# a comment\n@problemName r\n@univariate true\n@equalLength true\n@targetLabel true\n@data\n1,2,3:0.5\n4,5,6:-2\n"
    path = tmp_path / "r.ts"
    path.write_text(text)
    task = config(tmp_path, train=str(path), valid=str(path), test=str(path), target="sequence_regression", normalize=False).build()
    seqs = task.splits["train"]
    assert task.input_size == 1 and task.output_size == 1 and [q.inputs[:, 0].tolist() for q in seqs] == [[1, 2, 3], [4, 5, 6]]
    assert [float(q.targets[-1, 0]) for q in seqs] == [0.5, -2.0] and seqs[0].mask.tolist() == [False, False, True]
    with pytest.raises(DataError, match=r"r\.ts: a \.ts file holds one target per sequence"):
        config(tmp_path, train=str(path), valid=str(path), test=str(path), target="step_regression").build()


# --------------------------------------------------------------------------------------------
# Targets: losses and metrics against hand-computed values


def tiny_task(tmp_path, target, data):
    path = str(write_npz(tmp_path / f"{target}.npz", data))
    return config(tmp_path, target=target, train=path, valid=path, test=path, normalize=False).build()


def test_sequence_class_metrics_by_hand(tmp_path):
    data = {"x": [np.zeros((3, 1)), np.ones((2, 1))], "y": ["b", "a"]}  # classes (a, b): targets 1, 0
    task = tiny_task(tmp_path, "sequence_class", data)
    assert task.classes == ("a", "b") and task.metric_names == ("error", "loss") and task.output_size == 2
    batch = collate(task.splits["train"])  # T = 3, B = 2
    outputs = torch.zeros(3, 2, 2)
    outputs[2, 0] = torch.tensor([0.0, 2.0])  # sequence 0 (class 1), last step 2: right
    outputs[1, 1] = torch.tensor([0.0, 1.0])  # sequence 1 (class 0), last step 1: wrong
    outputs[0, 0] = torch.tensor([9.0, -9.0])  # not its last step: not scored
    sums = task.metric_sums(outputs, batch)
    ce0, ce1 = math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(1.0))
    assert sums["error"] == (1.0, 2)
    assert sums["loss"][0] == pytest.approx(ce0 + ce1, rel=1e-6) and sums["loss"][1] == 2
    assert float(task.loss(outputs, batch)) == pytest.approx((ce0 + ce1) / 2, rel=1e-6)


def test_step_class_metrics_by_hand(tmp_path):
    data = {"x": [np.zeros((2, 1)), np.ones((1, 1))], "y": [[0, 2], [1]], "per_step": True}
    task = tiny_task(tmp_path, "step_class", data)
    assert task.classes == ("0", "1", "2") and task.output_size == 3
    batch = collate(task.splits["train"])
    outputs = torch.zeros(2, 2, 3)
    outputs[0, 0, 0] = 1.0  # right
    outputs[1, 0, 1] = 1.0  # wrong (target 2)
    outputs[0, 1, 1] = 1.0  # right
    sums = task.metric_sums(outputs, batch)
    assert sums["error"] == (1.0, 3)
    right = -math.log(math.e / (math.e + 2))
    assert sums["loss"][0] == pytest.approx(2 * right + -math.log(1 / (math.e + 2)), rel=1e-6)


def test_regression_metrics_by_hand(tmp_path):
    seq = tiny_task(tmp_path, "sequence_regression", {"x": [np.zeros((2, 1)), np.ones((3, 1))], "y": [[1.0, 2.0], [0.0, -1.0]]})
    assert seq.output_size == 2 and seq.metric_names == ("mse",)
    batch = collate(seq.splits["train"])
    outputs = torch.zeros(3, 2, 2)
    outputs[1, 0] = torch.tensor([2.0, 2.0])  # errors 1, 0 at the last step of sequence 0
    outputs[2, 1] = torch.tensor([0.0, 1.0])  # errors 0, 2 at the last step of sequence 1
    outputs[0, 0] = 100.0  # unscored
    total, count = seq.metric_sums(outputs, batch)["mse"]
    assert (total, count) == (pytest.approx(5.0), 4)  # mse = (1 + 0 + 0 + 4) / 4 values
    assert float(seq.loss(outputs, batch)) == pytest.approx(5.0 / 2)  # summed over D, mean over sequences
    step = tiny_task(tmp_path, "step_regression", {"x": [np.zeros((2, 1))], "y": [[1.0, 3.0]], "per_step": True})
    b = collate(step.splits["train"])
    assert step.metric_sums(torch.zeros(2, 1, 1), b)["mse"] == (pytest.approx(10.0), 2)


def test_next_step_binary_metrics_by_hand(tmp_path):
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    task = tiny_task(tmp_path, "next_step_binary", {"x": [x], "y": None})
    assert task.metric_names == ("nll",) and task.output_size == 2 and task.worst_value == pytest.approx(2 * math.log(2))
    batch = collate(task.splits["train"])
    outputs = torch.zeros(2, 1, 2)
    outputs[0, 0] = torch.tensor([0.0, math.log(3.0)])  # p = (0.5, 0.75) for targets (0, 1)
    total, count = task.metric_sums(outputs, batch)["nll"]
    expected = (-math.log(0.5) - math.log(0.75)) + 2 * math.log(2)  # step 2: zero logits, 2 ln 2
    assert count == 2 and total == pytest.approx(expected, rel=1e-6)  # float32 outputs


# --------------------------------------------------------------------------------------------
# Training: alone and in a pack, every target kind


@pytest.mark.parametrize("target", TARGETS)
def test_each_target_trains_alone_and_packed_the_same(tmp_path, target):
    paths = write_splits(tmp_path, "npz", target, sizes=(12, 6, 6))
    members = [["model.hidden_size=5", "train.lr=0.05", "train.momentum=0.9", "seed=1", "train.input_noise=0.1"],
               ["model.hidden_size=3", "train.lr=0.02", "train.batch_size=4", "seed=2"]]  # fmt: skip
    common = ["task=sequences", f"task.target={target}", f"task.cache_dir={tmp_path / 'cache'}",
              *(f"task.{s}={p}" for s, p in paths.items()), "train.max_epochs=2", "train.dtype=float64"]  # fmt: skip
    cfgs = [trial_config(compose("train", [*common, *m])) for m in members]
    task = cfgs[0].task.build()
    alone = [run_alone(c, task) for c in cfgs]
    for result, metrics, _ in alone:
        assert result.status == "completed" and result.epochs == 2
        assert set(result.test) == set(task.metric_names) and all(math.isfinite(v) for v in result.test.values())
        assert len(metrics) == 2 and math.isfinite(metrics[-1]["train/loss"])
    packed = run_packed(cfgs, task)
    for i in range(2):
        assert_same_trial(alone[i], (packed[0][i], packed[1][i], packed[2][i]), rel=1e-10)


# --------------------------------------------------------------------------------------------
# Bad data: one line each


def _npz(tmp_path, name="bad.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def _good(n=4, f=2):
    return {"inputs": np.zeros((3 * n, f)), "lengths": np.full(n, 3), "targets": np.arange(n) % 2}


BAD = {
    "missing file": (lambda p: {"train": str(p / "nope.npz")}, r"nope\.npz: no such file \(task\.train\)"),
    "missing array": (lambda p: {"train": _npz(p, inputs=np.zeros((3, 1)), lengths=np.array([3]))},
                      r"bad\.npz: no array 'targets'; it holds \['inputs', 'lengths'\]"),
    "missing column": (lambda p: {"train": write_parquet(p / "b.parquet", make_data(0, 5, "sequence_class")), "inputs_column": "x"},
                       r"b\.parquet: no column 'x' \(task\.inputs_column\); its columns: \['inputs', 'targets'\]"),
    "lengths do not sum": (lambda p: {"train": _npz(p, **{**_good(), "lengths": np.array([3, 3, 3, 2])})},
                           r"bad\.npz: the lengths sum to 11 steps but inputs has 12 rows"),
    "NaN input": (lambda p: {"train": _npz(p, **{**_good(), "inputs": np.where(np.arange(24).reshape(12, 2) == 15, np.nan, 0.0)})},
                  r"bad\.npz, sequence 2, step 1, feature 1: the input is nan \(NaN and inf are refused\)"),
    "inf input": (lambda p: {"train": _npz(p, **{**_good(), "inputs": np.where(np.arange(24).reshape(12, 2) == 0, np.inf, 0.0)})},
                  r"bad\.npz, sequence 0, step 0, feature 0: the input is inf"),
    "mixed feature counts": (lambda p: {"train": write_parquet(p / "m.parquet", {"x": [np.zeros((2, 2)), np.zeros((2, 3))], "y": ["a", "b"], "per_step": False})},
                             r"m\.parquet, row 1, step 0: 3 features, but row 0 step 0 has 2 \(mixed feature counts\)"),
    "mixed across files": (lambda p: {"train": _npz(p, **_good(f=2)), "valid": _npz(p, "v.npz", **_good(f=3))},
                           r"v\.npz: 3 input features, but the training file .*bad\.npz has 2 \(mixed feature counts\)"),
    "empty file": (lambda p: {"train": _npz(p, inputs=np.zeros((0, 2)), lengths=np.zeros(0, int), targets=np.zeros(0))},
                   r"bad\.npz: holds no sequences \(an empty split\)"),
    "empty carved split": (lambda p: {"train": _npz(p, **_good(n=2)), "valid_fraction": 0.1},
                           r"task\.valid_fraction=0\.1 of its 2 sequences leaves the valid split empty"),
    "float labels": (lambda p: {"train": _npz(p, **{**_good(), "targets": np.array([0.5, 1, 0, 1])})},
                     r"bad\.npz, sequence 0: target 0\.5 is not a class label"),
    "string regression": (lambda p: {"train": _npz(p, **{**_good(), "targets": np.array(["a", "b", "a", "b"])}), "target": "sequence_regression"},
                          r"targets are <U1 \('a'\); task\.target=sequence_regression needs numbers"),
    "per-sequence targets for a step target": (lambda p: {"train": _npz(p, **_good()), "target": "step_class"},
                                               r"bad\.npz: 4 targets, but task\.target=step_class needs one per step \(the lengths sum to 12\)"),
    "unseen label": (lambda p: {"train": _npz(p, **_good()), "valid": _npz(p, "v.npz", **{**_good(), "targets": np.array([0, 1, 7, 1])})},
                     r"v\.npz, sequence 2: label '7' is not among the training split's classes \['0', '1'\]"),
    "not binary": (lambda p: {"train": _npz(p, **{**_good(), "inputs": np.full((12, 2), 0.5)}), "target": "next_step_binary"},
                   r"bad\.npz, sequence 0, step 0: input 0\.5 is not 0 or 1"),
    "npz that is not": (lambda p: {"train": str((p / "t.npz").write_text("hello") and p / "t.npz")},
                        r"t\.npz: not an npz archive \(a zip of \.npy arrays\), though its suffix says so"),
    "parquet that is not": (lambda p: {"train": str((p / "t.parquet").write_bytes(b"PK\x03\x04junk") and p / "t.parquet")},
                            r"t\.parquet: not a Parquet file, though its suffix says so"),
    "arrow that is not": (lambda p: {"train": str((p / "t.arrow").write_text("x,y\n1,2\n") and p / "t.arrow")},
                          r"t\.arrow: not an Arrow IPC file or stream, though its suffix says so"),
    "ts that is not": (lambda p: {"train": str((p / "t.ts").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe") and p / "t.ts")},
                       r"t\.ts: not a \.ts text file, though its suffix says so"),
    "ts missing value": (lambda p: {"train": str((p / "m.ts").write_text("@classLabel true a b\n@data\n1,2,3:a\n1,?,3:b\n") and p / "m.ts")},
                         r"m\.ts, line 4, dimension 0, step 1: a missing value"),
    "ts unequal dimensions": (lambda p: {"train": str((p / "u.ts").write_text("@classLabel true a\n@data\n1,2:1,2,3:a\n") and p / "u.ts")},
                              r"u\.ts, line 3: its dimensions have unequal lengths \[2, 3\]"),
    "ts mixed dimension count": (lambda p: {"train": str((p / "d.ts").write_text("@classLabel true a\n@data\n1,2:1,2:a\n1,2:a\n") and p / "d.ts")},
                                 r"d\.ts, line 4: 1 dimensions, but line 3 has 2 \(mixed feature counts\)"),
    "ts label not listed": (lambda p: {"train": str((p / "l.ts").write_text("@classLabel true a b\n@data\n1,2:c\n") and p / "l.ts")},
                            r"l\.ts, line 3: class label 'c' is not in the header's @classLabel list \['a', 'b'\]"),
    "pickled npz": (lambda p: {"train": _npz(p, inputs=np.array([np.zeros(2), np.zeros(3)], dtype=object), lengths=np.array([1, 1]),
                                            targets=np.array([0, 1]))},
                    r"bad\.npz: array 'inputs' cannot be read \(.*\); object arrays \(pickles\) are refused"),
    "unknown suffix": (lambda p: {"train": str((p / "t.csv").write_text("1,2") and p / "t.csv")},
                       r"t\.csv: unknown suffix '\.csv'; valid: \['\.arrow'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_is_one_line_naming_file_row_and_problem(tmp_path, case):
    keys, expected = BAD[case]
    mapping = {k: str(v) if isinstance(v, Path) else v for k, v in keys(tmp_path).items()}
    if "valid_fraction" not in mapping:  # no carving: each case checks its own problem
        mapping = {"valid": mapping["train"], "test": mapping["train"], **mapping}
    cfg = config(tmp_path, **mapping)
    with pytest.raises(DataError, match=expected) as info:
        cfg.build()
    assert "\n" not in str(info.value)


def test_a_problem_found_in_a_cached_file_still_names_its_line(tmp_path):
    train = write_ts(tmp_path / "train.ts", {"x": [np.zeros((2, 1))] * 2, "y": ["a", "b"]})
    valid = write_ts(tmp_path / "valid.ts", {"x": [np.zeros((2, 1))] * 3, "y": ["a", "b", "z"]})
    cfg = config(tmp_path, train=str(train), valid=str(valid), test=str(train))
    messages = []
    for _ in range(2):  # parsed, then from the cache
        with pytest.raises(DataError) as info:
            cfg.build()
        messages.append(str(info.value))
    assert messages[0] == messages[1] == f"{valid}, line 11: label 'z' is not among the training split's classes ['a', 'b']"


def test_bad_config_values():
    with pytest.raises(ConfigError, match=r"task\.target='sequence' is invalid: expected one of \['sequence_class'"):
        task_config_from_mapping({"name": "sequences", "target": "sequence"})
    with pytest.raises(ConfigError, match=r"task\.valid_fraction=0\.6 \+ task\.test_fraction=0\.5 is invalid"):
        task_config_from_mapping({"name": "sequences", "valid_fraction": 0.6, "test_fraction": 0.5})
    with pytest.raises(ConfigError, match=r"task\.train is not set: task=sequences needs task\.train=PATH"):
        task_config_from_mapping({"name": "sequences"}).build()


# --------------------------------------------------------------------------------------------
# Real data: the UEA/UCR archive (excerpts shipped in the aeon wheel; tests/data/ucr/README.md)


def test_italy_power_demand_reads_as_the_archive_describes(tmp_path):
    task = config(tmp_path, train=str(UCR / "ItalyPowerDemand_TRAIN.ts"), test=str(UCR / "ItalyPowerDemand_TEST_excerpt.ts"),
                  valid_fraction=0.2).build()  # fmt: skip
    assert task.classes == ("1", "2") and task.input_size == 1 and task.output_size == 2
    assert len(task.splits["train"]) + len(task.splits["valid"]) == 67 and len(task.splits["test"]) == 200
    assert {len(q) for s in task.splits.values() for q in s} == {24}
    # the archive z-normalises each series: the first training case begins -0.71051757,-1.1833204
    raw = config(tmp_path, train=str(UCR / "ItalyPowerDemand_TRAIN.ts"), test=str(UCR / "ItalyPowerDemand_TEST_excerpt.ts"),
                 valid_fraction=0.2, normalize=False).build()  # fmt: skip
    firsts = sorted(round(float(q.inputs[0, 0]), 6) for q in raw.splits["train"] + raw.splits["valid"])
    assert -0.710518 in firsts and -0.993009 in firsts


def test_japanese_vowels_multivariate_unequal_lengths(tmp_path):
    task = config(tmp_path, train=str(UCR / "JapaneseVowels_TRAIN_excerpt.ts"), valid_fraction=0.2, test_fraction=0.2).build()
    assert task.input_size == 12 and task.classes == tuple(str(c) for c in range(1, 10))
    seqs = [q for s in task.splits.values() for q in s]
    assert len(seqs) == 30 and min(map(len, seqs)) >= 7 and max(map(len, seqs)) <= 29 and len({len(q) for q in seqs}) > 5
    labels = [int(q.targets[-1]) for q in seqs]
    # the training file holds 30 cases per class, in class order; the excerpt every 9th case
    assert np.bincount(labels, minlength=9).tolist() == [sum(j // 30 == c for j in range(0, 270, 9)) for c in range(9)]


# --------------------------------------------------------------------------------------------
# Plugins: the entry point group odyssey.tasks, from an installed wheel


PLUGIN = '''
from dataclasses import dataclass
import torch
from odyssey.tasks import TaskConfig
from odyssey.tasks.base import Sequence
from odyssey.tasks.adding import AddingTask

@dataclass(frozen=True)
class ConstantConfig(TaskConfig):
    name: str = "constant"
    value: float = 0.25

    def build(self):
        seq = lambda: Sequence(torch.ones(4, 2), torch.full((4, 1), self.value), torch.ones(4, dtype=torch.bool))
        return AddingTask({s: [seq() for _ in range(3)] for s in ("train", "valid", "test")})
'''


def build_wheel(folder: Path) -> Path:
    """A wheel of package ``odyssey_constant`` with an ``odyssey.tasks`` entry point, by hand."""
    dist = "odyssey_constant-0.1.dist-info"
    files = {
        "odyssey_constant/__init__.py": PLUGIN,
        f"{dist}/METADATA": "Metadata-Version: 2.1\nName: odyssey-constant\nVersion: 0.1\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/entry_points.txt": "[odyssey.tasks]\nconstant = odyssey_constant:ConstantConfig\nbroken = odyssey_constant:Missing\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{dist}/RECORD"])
    wheel = folder / "odyssey_constant-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return wheel


def test_a_task_plugin_from_an_installed_wheel(tmp_path):
    wheel = build_wheel(tmp_path)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)  # fmt: skip
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    script = (
        "from odyssey.config import compose, trial_config\n"
        "from odyssey.train import train_trial\n"
        "cfg = trial_config(compose('train', ['task=constant', 'task.value=0.5', 'train.max_epochs=2', 'model.hidden_size=3']))\n"
        "print(type(cfg.task).__name__, cfg.task.value)\n"
        "r = train_trial(cfg)\n"
        "print(r.status, r.epochs, sorted(r.test))\n"
        "from odyssey.tasks import task_config_from_mapping\n"
        "try:\n"
        "    task_config_from_mapping({'name': 'broken'})\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target), "ODYSSEY_CONFIG_PATH": ""}
    out = subprocess.run([sys.executable, "-c", script], cwd=fresh, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == [
        "ConstantConfig 0.5",
        "completed 2 ['accuracy', 'mse']",  # a broken plugin beside it does not stop the others
        "ConfigError task plugin 'broken' (odyssey_constant:Missing, entry point group 'odyssey.tasks') cannot be loaded: "
        "AttributeError: module 'odyssey_constant' has no attribute 'Missing'",
    ]
    # without the package, the name is unknown and the built-in tasks are listed
    env.pop("PYTHONPATH")
    out = subprocess.run([sys.executable, "-c", script], cwd=fresh, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "constant" in out.stderr and "ConfigError" in out.stderr


# --------------------------------------------------------------------------------------------
# Sweeps on the test cluster


def _sweep_overrides(tmp_path, name, paths, mlflow_server, ray_cluster, *, samples=2):
    return [
        f"study.name={name}", "study.tasks=[sequences]", "study.variants=[vanilla,nfg]", f"study.num_samples={samples}",
        "study.max_concurrent_trials=2", "study.progress_interval_s=2", f"study.storage_path={tmp_path / 'ray_results'}",
        "search_space=tiny", "task=sequences", *(f"task.{s}={p}" for s, p in paths.items()),
        f"task.cache_dir={tmp_path / 'cache'}", "train.batch_size=4", "train.max_epochs=2", "train.patience=10",
        f"tracking.uri={mlflow_server}", f"ray.address={ray_cluster.address}",
    ]  # fmt: skip


def test_sweep_and_analyze_over_your_own_data(tmp_path, mlflow_server, ray_cluster, capsys):
    """`odyssey sweep` + `odyssey analyze` on task=sequences: 2 variants x 2 trials x 2 epochs."""
    from mlflow import MlflowClient

    from odyssey.analysis.cli import main as analyze_main
    from odyssey.sweep.cli import sweep_main

    paths = write_splits(tmp_path, "parquet", "sequence_class", sizes=(16, 8, 8))
    expected = json.loads(config(tmp_path, **paths).build().data_tags()["odyssey.task_data.normalization"])
    assert sweep_main([*_sweep_overrides(tmp_path, "own-data", paths, mlflow_server, ray_cluster), "execution=pack"]) == 0
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("own-data")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("odyssey.role") == "trial"]
    assert len(runs) == 4 and {r.data.tags["odyssey.status"] for r in runs} == {"completed"}
    for r in runs:
        assert r.data.params["task.train"] == paths["train"] and r.data.params["task.normalize"] == "True"
        assert r.data.tags["odyssey.primary_metric"] == "error" and 0.0 <= r.data.metrics["test/error"] <= 1.0
        assert {"best_val/error", "test/loss"} <= set(r.data.metrics)
        # what the task derived from the data is on record: the normalisation, the classes, the sizes
        assert json.loads(r.data.tags["odyssey.task_data.normalization"]) == expected
        assert json.loads(r.data.tags["odyssey.task_data.classes"]) == ["cat", "dog", "eel"]
        assert json.loads(r.data.tags["odyssey.task_data.sizes"]) == {"train": 16, "valid": 8, "test": 8}
    capsys.readouterr()
    assert analyze_main(["own-data", "--tracking-uri", mlflow_server, "--out", str(tmp_path / "analysis"), "--min-trials", "2",
                         "--n-trees", "8", "--no-log"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "sequences" in out and "nfg" in out and (tmp_path / "analysis" / "report.html").is_file()


def test_a_sweep_over_a_corrupt_file_records_the_cause(tmp_path, mlflow_server, ray_cluster):
    """The driver's checks read the file; it is corrupt when the trials start: each trial fails
    with the one-line DataError as its recorded cause."""
    from odyssey.sweep.interrupts import SweepFailed
    from odyssey.sweep.runner import run_sweep
    from odyssey.sweep.study import load_sweep

    paths = write_splits(tmp_path, "npz", "sequence_class", sizes=(12, 6, 6))
    overrides = _sweep_overrides(tmp_path, "corrupt", paths, mlflow_server, ray_cluster, samples=1)
    overrides = [o.replace("study.variants=[vanilla,nfg]", "study.variants=[vanilla]") for o in overrides]
    sweep = load_sweep([*overrides, "study.max_failures=0", "execution=single"])
    Path(paths["valid"]).write_bytes(b"this is not an npz archive")
    with pytest.raises(SweepFailed, match="DataError"):
        run_sweep(sweep)
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("corrupt")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("odyssey.role") == "trial"]
    assert len(runs) == 1 and runs[0].data.tags["odyssey.status"] == "failed"
    error = runs[0].data.tags["odyssey.error"]
    assert error.endswith(f"DataError: {paths['valid']}: not an npz archive (a zip of .npy arrays), though its suffix says so"), error
