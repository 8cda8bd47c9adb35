"""IAM-OnDB on a tiny synthetic copy in the published layout (tests/corpora.py): stroke XML, CSR
transcriptions, the t1 splits, board a08-551z, a mismatched form, the inputs and the alphabet;
CTC against an independent forward recursion, infinite losses, best-path decoding and CER; a
tiny trial, alone and packed."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import corpora
from odyssey.config import compose, trial_config
from odyssey.errors import DataError
from odyssey.tasks import Sequence, collate
from odyssey.tasks.ctc import best_path, edit_distance, feasible
from odyssey.tasks.iam_ondb import (
    ALPHABET,
    IAMOnDBConfig,
    IAMOnDBTask,
    decode_labels,
    encode_text,
    line_features,
    read_strokes,
    read_transcription,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return corpora.write_iam(tmp_path_factory.mktemp("iam"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("iam_cache")


@pytest.fixture(scope="module")
def task(corpus, cache):
    return IAMOnDBConfig(data_dir=str(corpus), cache_dir=str(cache), progress=False).build()


# --------------------------------------------------------------------------------------------
# Files, inputs and targets


def test_stroke_xml_parse(tmp_path):
    path = tmp_path / "a01-000u-01.xml"
    path.write_text(corpora.stroke_xml([[(10, 20, 1.0), (12, 25, 1.01), (15, 21, 1.02)], [(40, 22, 1.5)]]))
    points = read_strokes(path)
    assert points.tolist() == [[10, 20, 1.0, 0], [12, 25, 1.01, 0], [15, 21, 1.02, 1], [40, 22, 1.5, 1]]


def test_inputs_dx_dy_time_pen_up_and_subsampling():
    # stroke 1: 5 points, stroke 2: 2 points; columns x, y, time, stroke end
    pts = np.array([[0, 0, 1.0, 0], [1, 2, 1.1, 0], [3, 3, 1.2, 0], [6, 1, 1.3, 0], [7, 7, 1.4, 1],
                    [20, 5, 2.0, 0], [22, 9, 2.5, 1]], dtype=np.float64)  # fmt: skip
    full = line_features(pts, subsample=1)
    assert np.allclose(full, [[0, 0, 0, 0], [1, 2, 0.1, 0], [2, 1, 0.2, 0], [3, -2, 0.3, 0], [1, 6, 0.4, 1],
                              [13, -2, 0, 0], [2, 4, 0.5, 1]], atol=1e-6)  # fmt: skip
    half = line_features(pts, subsample=2)  # kept: 0, 2, 4 (even positions; 4 ends stroke 1), then 5, 6 (last)
    assert np.allclose(half, [[0, 0, 0, 0], [3, 3, 0.2, 0], [4, 4, 0.4, 1], [13, -2, 0, 0], [2, 4, 0.5, 1]], atol=1e-6)
    assert half[:, 3].sum() == 2  # no stroke loses its pen-up


def test_alphabet_and_out_of_alphabet_mapping():
    assert len(ALPHABET) == 81 and ALPHABET[-1] == " " and '!"#&\'()*+,-./[]:;?' in ALPHABET
    assert encode_text("aZ0! ") == [1, 52, 53, 63, 81]
    counts = Counter()
    labels = encode_text("\u201cIt\u2019s 50%\u201d &quot;ok&quot;", counts)
    assert decode_labels(labels) == '"It\'s 50" "ok"'
    assert counts == {"'\u201c' -> '\"'": 1, "'\u201d' -> '\"'": 1, "'\u2019' -> \"'\"": 1, "'%' deleted": 1, "'&quot;' -> '\"'": 2}


def test_transcription_lines_after_csr(tmp_path):
    path = tmp_path / "a01-000u.txt"
    path.write_text("OCR:\n\nignored line\n\nCSR:\n\nfirst line  \nsecond line\n\n")
    assert read_transcription(path) == ["first line", "second line"]
    path.write_text("OCR:\n\nno csr\n")
    with pytest.raises(DataError, match=rf"{path} has no 'CSR:' section"):
        read_transcription(path)


def test_splits_board_and_mismatched_form(task, corpus, cache, capsys):
    assert {s: len(v) for s, v in task.splits.items()} == {"train": 6, "valid": 2, "test": 2}
    assert task.report.dropped_forms == ["a08-551z"]
    assert task.report.mismatched_forms == ["a06-040c: 3 stroke files, 2 lines"]
    assert task.report.characters == {"'%' deleted": 1}
    texts = {s: [decode_labels(q.targets[q.targets > 0]) for q in task.splits[s]] for s in task.splits}
    assert texts == {
        "train": ["A MOVE to stop", "Mr. Gaitskell", "from nominating", "any more", "Labour MPs", "tomorrow"],
        "valid": ["Labour 1961!", 'it\'s ("the") end;'],  # testset_v then testset_t
        "test": ["50 of 2 men", "ok?"],
    }
    IAMOnDBConfig(data_dir=str(corpus), cache_dir=str(cache), progress=False).build()  # from the cache: reported again
    err = capsys.readouterr().err
    assert "skipped form a06-040c: 3 stroke files, 2 lines" in err and "dropped board(s) a08-551z" in err
    assert "'%' deleted x1" in err


def test_ctc_targets_and_inputs(task):
    seq = task.splits["train"][0]
    labels = encode_text("A MOVE to stop")
    assert seq.targets[: len(labels)].tolist() == labels and not seq.targets[len(labels) :].any()
    assert seq.inputs.shape[1] == 4 == task.input_size and task.output_size == 82 and bool(seq.mask.all())
    assert set(seq.inputs[:, 3].tolist()) == {0.0, 1.0} and float(seq.inputs[:, 3].sum()) == 2  # two strokes
    train = torch.cat([s.inputs for s in task.splits["train"]]).double()
    torch.testing.assert_close(train[:, :3].mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(train[:, :3].std(0, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)


@pytest.mark.parametrize("problem", ["malformed", "doctype", "no_points"])
def test_corrupt_xml_is_refused_with_its_name(tmp_path, problem):
    root = corpora.write_iam(tmp_path)
    bad = root / "lineStrokes" / "a02" / "a02-000" / "a02-000x-01.xml"
    text = bad.read_text()
    bad.write_text({
        "malformed": text[: len(text) // 2],
        "doctype": '<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>\n<WhiteboardCaptureSession>&e;</WhiteboardCaptureSession>',
        "no_points": text.replace("<Point", "<Pt"),
    }[problem])  # fmt: skip
    with pytest.raises(DataError) as err:
        IAMOnDBConfig(data_dir=str(root), cache_dir=str(tmp_path / "c"), progress=False).build()
    message = str(err.value)
    assert str(bad) in message
    assert {"malformed": "malformed XML", "doctype": "declares a DTD", "no_points": "has no points"}[problem] in message


def test_missing_or_partial_corpus(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=rf"{tmp_path / 'x'} does not exist; expected lineStrokes/, ascii/ and trainset.txt"):
        IAMOnDBConfig(data_dir=str(tmp_path / "x")).build()
    root = corpora.write_iam(tmp_path)
    (root / "testset_f.txt").unlink()
    with pytest.raises(DataError, match="is partial: it has no split file testset_f.txt"):
        IAMOnDBConfig(data_dir=str(root), cache_dir=str(tmp_path / "c")).build()
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError, match="has no lineStrokes/ folder"):
        IAMOnDBConfig(data_dir=str(tmp_path / "e")).build()
    monkeypatch.delenv("ODYSSEY_IAM_ONDB_DIR", raising=False)
    monkeypatch.setenv("ODYSSEY_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=rf"IAM-OnDB data directory {tmp_path / 'iam_ondb'} does not exist"):
        IAMOnDBConfig().build()


# --------------------------------------------------------------------------------------------
# CTC


def reference_ctc(log_probs: np.ndarray, labels: list[int]) -> float:
    """-ln p(labels | x) by the CTC forward recursion (Graves et al. 2006, eq. 6-8), in log space."""
    ext = [0]
    for label in labels:
        ext += [label, 0]
    S, T = len(ext), len(log_probs)
    alpha = np.full((T, S), -np.inf)
    alpha[0, 0] = log_probs[0, 0]
    if S > 1:
        alpha[0, 1] = log_probs[0, ext[1]]
    for t in range(1, T):
        for s in range(S):
            terms = [alpha[t - 1, s]] + ([alpha[t - 1, s - 1]] if s > 0 else [])
            if s > 1 and ext[s] != 0 and ext[s] != ext[s - 2]:
                terms.append(alpha[t - 1, s - 2])
            alpha[t, s] = np.logaddexp.reduce(terms) + log_probs[t, ext[s]]
    return -float(np.logaddexp(alpha[T - 1, S - 1], alpha[T - 1, S - 2] if S > 1 else -np.inf))


def ctc_sequence(frames: int, labels: list[int]) -> Sequence:
    targets = torch.zeros(frames, dtype=torch.int64)
    targets[: len(labels)] = torch.tensor(labels, dtype=torch.int64)
    return Sequence(torch.zeros(frames, 4), targets, torch.ones(frames, dtype=torch.bool))


def test_ctc_loss_matches_the_forward_recursion_and_keeps_a_member_axis(task):
    seqs = [ctc_sequence(7, [3, 3, 5]), ctc_sequence(4, [2]), ctc_sequence(6, [])]
    batch = collate(seqs)
    outputs = torch.randn(2, 7, 3, 82, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    per_seq = task.sequence_losses(outputs, batch)  # (M, B)
    for m in range(2):
        for b, s in enumerate(seqs):
            lp = torch.log_softmax(outputs[m, : len(s), b], -1).numpy()
            assert float(per_seq[m, b]) == pytest.approx(reference_ctc(lp, s.targets[s.targets > 0].tolist()), rel=1e-9)
    losses = task.loss(outputs, batch)
    assert losses.shape == (2,) and torch.allclose(losses, per_seq.mean(-1))
    assert torch.allclose(task.loss(outputs, batch, "mean_over_steps"), per_seq.sum(-1) / 17)


def test_infinite_ctc_loss_is_kept_and_a_trial_diverges():
    assert feasible([1, 1], 3) and not feasible([1, 1], 2) and feasible([1, 2], 2) and feasible([], 1)
    impossible = collate([ctc_sequence(2, [4, 4])])  # needs 3 frames (a blank between the repeats)
    loss = IAMOnDBTask({s: [] for s in ("train", "valid", "test")}).loss(torch.zeros(2, 1, 82), impossible)
    assert math.isinf(float(loss))  # not zeroed: the trainer must see it
    from odyssey.train import train_trial

    good = [ctc_sequence(6, [1, 2]), ctc_sequence(5, [3])]
    toy = IAMOnDBTask({"train": good + [ctc_sequence(2, [4, 4])], "valid": good, "test": good})
    cfg = trial_config(compose("train", ["model=bidirectional", "model.hidden_size=3", "train.max_epochs=3"]))
    cfg = cfg.replace(task=IAMOnDBConfig(data_dir="/nonexistent"))  # the task is passed in below
    result = train_trial(cfg, task=toy)
    assert (result.status, result.stop_reason, result.epochs) == ("diverged", "diverged", 1)
    assert result.test == {"cer": 1.0} and result.best_val == {"cer": 1.0}


def test_best_path_edit_distance_and_cer(task):
    assert best_path(np.array([1, 1, 0, 1, 2, 2, 0])).tolist() == [1, 1, 2]
    assert best_path(np.array([0, 0])).tolist() == [] and best_path(np.array([3, 0, 3, 3])).tolist() == [3, 3]
    assert edit_distance(list("sitting"), list("kitten")) == 3 and edit_distance(list("flaw"), list("lawn")) == 2
    assert edit_distance([], [1, 2, 3]) == 3 and edit_distance([1, 2], []) == 2 and edit_distance([5], [5]) == 0
    assert edit_distance(list("abcdef"), list("azced")) == 3  # the classic example
    # Two sequences: decodes "abd" (ref "abc": 1 substitution) and "" (ref "x": 1 deletion): CER 2 / 4
    ref = [encode_text("abc"), encode_text("x")]
    paths = [encode_text("aab") + [0] + encode_text("d"), [0, 0, 0, 0, 0]]
    batch = collate([ctc_sequence(5, r) for r in ref])
    outputs = torch.full((5, 2, 82), -10.0)
    for b, path in enumerate(paths):
        outputs[torch.arange(5), b, torch.tensor(path)] = 10.0
    assert [decode_labels(p) for p in task.decode(outputs, batch)] == ["abd", ""]
    assert task.metric_sums(outputs, batch) == {"cer": (2.0, 4)}


# --------------------------------------------------------------------------------------------
# Training


def test_a_tiny_trial_trains_and_packed_equals_alone(task, corpus, cache):
    from test_packs import assert_same_trial, run_alone, run_packed

    base = ["task=iam_ondb", f"task.data_dir={corpus}", f"task.cache_dir={cache}", "task.progress=false",
            "model=bidirectional", "model.hidden_size=4", "train.max_epochs=2", "train.lr=1e-2", "train.dtype=float64"]  # fmt: skip
    cfgs = [trial_config(compose("train", [*base, *m])) for m in (
        ["seed=1", "train.clip_value=1.0", "train.nesterov=false"], ["seed=2", "model.hidden_size=3", "train.batch_size=2"])]  # fmt: skip
    alone = [run_alone(c, task) for c in cfgs]
    for result, metrics, _ in alone:
        assert result.status == "completed" and result.epochs == 2
        assert all(math.isfinite(m["train/loss"]) and m["val/cer"] >= 0 for m in metrics)
        assert math.isfinite(result.test["cer"])
    packed = run_packed(cfgs, task)
    for i in range(len(cfgs)):
        assert_same_trial(alone[i], (packed[0][i], packed[1][i], packed[2][i]), rel=1e-10)
