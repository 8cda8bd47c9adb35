"""JSB Chorales: the facts of the shared data README, the three formats, the Bernoulli baseline,
and refusal of missing, tampered, truncated and malicious files; ``odyssey data fetch`` offline."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from odyssey.errors import ConfigError, DataError
from odyssey.tasks import collate, task_config_from_mapping
from odyssey.tasks.fetch import fetch_jsb, main
from odyssey.tasks.jsb import FILES, KNOWN_SHA256, JSBConfig, default_data_dir, load_piano_rolls

ROOT = Path(__file__).resolve().parents[1]
JSB_DIR = Path(os.environ.get("ODYSSEY_JSB_DIR") or ROOT.parent / "shared" / "data" / "jsb").resolve()
needs_data = pytest.mark.skipif(
    not all((JSB_DIR / f).is_file() for f in FILES.values()),
    reason=f"JSB data files {sorted(FILES.values())} not found in {JSB_DIR} "
    f"(set ODYSSEY_JSB_DIR to the folder holding them, or run `odyssey data fetch jsb`)",
)
SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def rolls() -> dict[str, dict[str, list[torch.Tensor]]]:
    """format -> split -> piano rolls, each format loaded once."""
    return {fmt: load_piano_rolls(JSB_DIR / name) for fmt, name in FILES.items()}


@needs_data
def test_readme_facts(rolls):
    pkl = rolls["pkl"]
    assert [len(pkl[s]) for s in SPLITS] == [229, 76, 77]
    assert [sum(len(r) for r in pkl[s]) for s in SPLITS] == [13807, 4602, 4725]
    lengths = [len(r) for s in SPLITS for r in pkl[s]]
    assert (min(lengths), max(lengths)) == (25, 160)
    keys = torch.cat([r for s in SPLITS for r in pkl[s]]).sum(dim=0).nonzero().flatten() + 21
    assert (int(keys.min()), int(keys.max()), len(keys)) == (43, 96, 52)
    notes = torch.cat(pkl["train"]).sum(dim=1)
    assert torch.mode(notes).values == 4  # "mostly 4 notes per step"


@needs_data
def test_three_formats_hold_identical_rolls(rolls):
    for fmt in ("json", "mat"):
        for split in SPLITS:
            assert len(rolls[fmt][split]) == len(rolls["pkl"][split])
            for a, b in zip(rolls[fmt][split], rolls["pkl"][split]):
                assert a.dtype == torch.float32 and torch.equal(a, b)


@needs_data
@pytest.mark.parametrize("fmt", list(FILES))
def test_task_is_next_step_prediction(fmt, rolls):
    task = JSBConfig(data_dir=str(JSB_DIR), format=fmt).build()
    assert (task.input_size, task.output_size, task.primary_metric, task.lower_is_better) == (88, 88, "nll", True)
    for seq, roll in zip(task.splits["valid"], rolls["pkl"]["valid"]):
        assert torch.equal(seq.inputs, roll[:-1]) and torch.equal(seq.targets, roll[1:]) and seq.mask.all()
    assert sum(len(s) for s in task.splits["test"]) == 4725 - 77  # L - 1 predicted steps per chorale


@needs_data
def test_per_key_bernoulli_baseline_matches_readme(rolls):
    """README: "independent per-key Bernoulli fitted on train 11.06" (test NLL per step).

    The fit is each key's frequency over all 13807 train steps, clipped to [1e-6, 1 - 1e-6]
    (key 45 occurs once in test and never in train). The README's 11.06 pools the test NLL over
    all 4725 test steps (checked here to 0.005); the task scores predicted steps only (steps
    1..L-1, 4648 steps), which gives 11.09: within 0.05 of the reference.
    """
    train = torch.cat(rolls["pkl"]["train"]).double()
    p = train.mean(dim=0).clamp(1e-6, 1 - 1e-6)  # (88,)
    test_all = torch.cat(rolls["pkl"]["test"]).double()
    readme_way = -(test_all * p.log() + (1 - test_all) * (1 - p).log()).sum() / len(test_all)
    assert float(readme_way) == pytest.approx(11.06, abs=0.005)

    task = JSBConfig(data_dir=str(JSB_DIR)).build()
    batch = collate(task.splits["test"])
    logits = (p.log() - (1 - p).log()).float().expand(*batch.targets.shape)  # a constant "model"
    total, count = task.metric_sums(logits, batch)["nll"]
    assert count == 4725 - 77
    assert total / count == pytest.approx(11.06, abs=0.05)
    # The training loss is the paper's: the sum over a chorale's steps, averaged over chorales.
    assert float(task.loss(logits, batch)) == pytest.approx(total / 77, rel=1e-4)
    assert float(task.loss(logits, batch, "mean_over_steps")) == pytest.approx(total / count, rel=1e-4)


# --------------------------------------------------------------------------------------------
# Where the data comes from


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("ODYSSEY_JSB_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("ODYSSEY_DATA_DIR", str(tmp_path / "b"))
    assert default_data_dir() == tmp_path / "a"
    monkeypatch.delenv("ODYSSEY_JSB_DIR")
    assert default_data_dir() == tmp_path / "b" / "jsb"
    monkeypatch.delenv("ODYSSEY_DATA_DIR")
    shared = ROOT.parent / "shared" / "data" / "jsb"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "odyssey" / "data" / "jsb"
    assert default_data_dir().resolve() == (shared.resolve() if shared.is_dir() else cache.resolve())
    assert default_data_dir(include_shared=False) == cache  # where `odyssey data fetch jsb` writes


def test_config_makes_data_dir_absolute(tmp_path, monkeypatch):
    tmp_path = tmp_path.resolve()
    monkeypatch.chdir(tmp_path)
    assert JSBConfig(data_dir="rel/dir").data_dir == str(tmp_path / "rel" / "dir")
    monkeypatch.setenv("ODYSSEY_JSB_DIR", "env/dir")
    config = task_config_from_mapping({"name": "jsb", "data_dir": None})
    assert config.data_dir == str(tmp_path / "env" / "dir")


def test_missing_directory_and_file_say_how_to_fix(tmp_path):
    with pytest.raises(DataError, match=r"directory .*nowhere does not exist.*ODYSSEY_JSB_DIR.*odyssey data fetch jsb"):
        JSBConfig(data_dir=str(tmp_path / "nowhere")).build()
    with pytest.raises(
        DataError, match=r"jsb-chorales-quarter\.json is missing; set task\.data_dir or \$ODYSSEY_JSB_DIR"
    ):
        JSBConfig(data_dir=str(tmp_path), format="json").build()


def test_bad_config_values():
    with pytest.raises(ConfigError, match=r"task\.verify_sha256='no' is invalid: expected true or false"):
        JSBConfig(verify_sha256="no")


# --------------------------------------------------------------------------------------------
# Damaged and hostile files


@needs_data
@pytest.mark.parametrize("fmt", list(FILES))
def test_tampered_file_fails_sha256(fmt, tmp_path):
    data = bytearray((JSB_DIR / FILES[fmt]).read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / FILES[fmt]).write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{FILES[fmt]} fails its sha256 check .*tampered"):
        JSBConfig(data_dir=str(tmp_path), format=fmt).build()


@needs_data
@pytest.mark.parametrize("fmt", list(FILES))
def test_truncated_file_names_the_file(fmt, tmp_path):
    data = (JSB_DIR / FILES[fmt]).read_bytes()
    (tmp_path / FILES[fmt]).write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match=rf"{FILES[fmt]} is (truncated or corrupt|malformed)") as info:
        JSBConfig(data_dir=str(tmp_path), format=fmt, verify_sha256=False).build()
    assert info.value.__cause__ is None  # one clear error, not a chain from inside the loader


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_pickle_is_refused_without_running_anything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "jsb-chorales-quarter.pkl"
    path.write_bytes(pickle.dumps({"train": [_Boom()]}, protocol=2))
    with pytest.raises(DataError, match=r"refused: the pickle asks for global (posix|os|nt)\.system"):
        load_piano_rolls(path, verify_sha256=False)
    assert not (tmp_path / "pwned").exists()


def test_wrong_structure_is_named(tmp_path):
    import json

    def write(obj) -> Path:
        path = tmp_path / "data.json"
        path.write_text(json.dumps(obj))
        return path

    with pytest.raises(DataError, match=r"expected a dict with keys \['train', 'valid', 'test'\], found \['train'\]"):
        load_piano_rolls(write({"train": [[[60], [62]]]}))
    bad_pitch = {s: [[[60], [62]]] for s in SPLITS} | {"test": [[[60], [12, 64]]]}
    with pytest.raises(
        DataError, match=r"test\[0\]\[1\] holds pitch\(es\) \[12, 64\] outside the piano range 21\.\.108"
    ):
        load_piano_rolls(write(bad_pitch))
    ok = load_piano_rolls(write({s: [[[60, 64], [], [108]]] for s in SPLITS}))
    assert ok["train"][0].nonzero().tolist() == [[0, 39], [0, 43], [2, 87]]


def test_numpy_scalar_pickle_round_trip(tmp_path):
    """The restricted unpickler reads numpy scalars as numpy 2 pickles them (``numpy._core``; the
    shared file uses numpy 1's ``numpy.core`` path). Protocol 4 stores bytes without ``_codecs``."""
    data = {s: [[(np.int64(60), np.int64(67)), ()]] for s in SPLITS}
    path = tmp_path / "small.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    assert b"numpy._core.multiarray" in path.read_bytes()
    rolls = load_piano_rolls(path)
    assert rolls["valid"][0].nonzero().tolist() == [[0, 39], [0, 46]]


# --------------------------------------------------------------------------------------------
# odyssey data fetch jsb, offline through file:// URLs


@needs_data
def test_fetch_verifies_and_writes(tmp_path):
    out = io.StringIO()
    path = fetch_jsb(tmp_path / "dest", url=(JSB_DIR / FILES["pkl"]).as_uri(), progress=out)
    assert path == tmp_path / "dest" / "jsb-chorales-quarter.pkl"
    assert path.read_bytes() == (JSB_DIR / FILES["pkl"]).read_bytes()
    assert "MB" in out.getvalue()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left


def test_fetch_with_wrong_sha_leaves_nothing_and_keeps_old_file(tmp_path):
    source = tmp_path / "source.pkl"
    source.write_bytes(b"not the chorales")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "jsb-chorales-quarter.pkl").write_bytes(b"old")
    with pytest.raises(DataError, match=r"fails its sha256 check .* was not written"):
        fetch_jsb(dest, url=source.as_uri(), progress=None)
    assert [p.name for p in dest.iterdir()] == ["jsb-chorales-quarter.pkl"]
    assert (dest / "jsb-chorales-quarter.pkl").read_bytes() == b"old"
    with pytest.raises(DataError, match=r"cannot download file://"):
        fetch_jsb(dest, url=(tmp_path / "absent.pkl").as_uri(), progress=None)
    assert [p.name for p in dest.iterdir()] == ["jsb-chorales-quarter.pkl"]


def test_fetch_cli(tmp_path, capsys):
    assert main(["mnist"]) == 2
    assert "unknown dataset 'mnist'; valid datasets: jsb" in capsys.readouterr().err
    source = tmp_path / "x.pkl"
    source.write_bytes(b"x")
    assert main(["jsb", "--dest", str(tmp_path / "d"), "--url", source.as_uri()]) == 2
    assert "sha256" in capsys.readouterr().err
    if (JSB_DIR / FILES["pkl"]).is_file():
        url = (JSB_DIR / FILES["pkl"]).as_uri()
        assert main(["jsb", "--dest", str(tmp_path / "d"), "--url", url]) == 0
        assert f"ODYSSEY_JSB_DIR={tmp_path / 'd'}" in capsys.readouterr().err
        assert JSBConfig(data_dir=str(tmp_path / "d")).build().splits["train"]


def test_known_sha256_table_matches_file_names():
    assert set(KNOWN_SHA256) == set(FILES.values())
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in KNOWN_SHA256.values())
