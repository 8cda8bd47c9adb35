"""Tests of the benchmark tasks: a contract every task runs through, then each generator's rules
checked against independent re-statements of the 1997 definitions."""

from __future__ import annotations

import atexit
import dataclasses
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import corpora
from odyssey.errors import ConfigError
from odyssey.tasks import TASKS, Task, collate, task_config_from_mapping
from odyssey.tasks.adding import AddingConfig
from odyssey.tasks.reber import ReberConfig, embedded_legal_next, encode
from odyssey.tasks.temporal_order import SYMBOLS as TO_SYMBOLS
from odyssey.tasks.temporal_order import TemporalOrderConfig

ROOT = Path(__file__).resolve().parents[1]
TASK_CONF = ROOT / "conf" / "task"
JSB_DIR = Path(os.environ.get("ODYSSEY_JSB_DIR") or ROOT.parent / "shared" / "data" / "jsb")

# Small configs: the whole file runs in a few seconds.
SMALL = {
    "adding": {"length": 20, "num_train": 40, "num_valid": 10, "num_test": 10},
    "temporal_order": {"length": 20, "num_train": 40, "num_valid": 10, "num_test": 10},
    "temporal_order_3": {"length": 20, "num_train": 40, "num_valid": 10, "num_test": 10},
    "reber": {"num_train": 40, "num_valid": 10, "num_test": 10},
    "jsb": {"data_dir": str(JSB_DIR)},
}
GENERATED = ["adding", "temporal_order", "temporal_order_3", "reber"]
CORPUS_TASKS = ("iam_ondb", "timit")  # licensed corpora: synthetic copies in their layouts (tests/corpora.py)
_CORPORA: dict[str, tuple[Path, Path]] = {}


def corpus_mapping(name: str) -> dict:
    """The config of a licensed task on its synthetic corpus, written once per session."""
    if name not in _CORPORA:
        base = Path(tempfile.mkdtemp(prefix=f"odyssey-{name}-"))
        atexit.register(shutil.rmtree, base, True)
        if name == "timit":
            dev, core = corpora.full_lists()
            root = corpora.write_timit(base, dev=dev, core=core, utterances=corpora.UTTERANCES[:2])
        else:
            root = corpora.write_iam(base)
        _CORPORA[name] = (root, base / "cache")
    root, cache = _CORPORA[name]
    extra = {"expect_full_corpus": False} if name == "timit" else {}
    return {"data_dir": str(root), "cache_dir": str(cache), "progress": False, **extra}


def sequences_mapping() -> dict:
    """task=sequences on an npz file of 40 ragged sequences with 3 string classes, written once."""
    if "sequences" not in _CORPORA:
        base = Path(tempfile.mkdtemp(prefix="odyssey-sequences-"))
        atexit.register(shutil.rmtree, base, True)
        rng = np.random.default_rng(0)
        lengths = rng.integers(3, 9, size=40)
        labels = np.array(["a", "b", "c"])[np.arange(40) % 3]
        np.savez(base / "data.npz", inputs=rng.normal(size=(lengths.sum(), 2)), lengths=lengths, targets=labels)
        _CORPORA["sequences"] = (base / "data.npz", base / "cache")
    path, cache = _CORPORA["sequences"]
    return {"train": str(path), "cache_dir": str(cache)}


def small_config(name: str, **changes):
    if name == "sequences":
        return task_config_from_mapping({"name": name, **sequences_mapping(), **changes})
    base = corpus_mapping(name) if name in CORPUS_TASKS else SMALL[name]
    return task_config_from_mapping({"name": name, **base, **changes})


_BUILT: dict[str, Task] = {}


def small_task(name: str) -> Task:
    if name == "jsb" and not (JSB_DIR / "jsb-chorales-quarter.pkl").is_file():
        pytest.skip(f"JSB data not found in {JSB_DIR} (set ODYSSEY_JSB_DIR to the folder holding it)")
    if name not in _BUILT:
        _BUILT[name] = small_config(name).build()
    return _BUILT[name]


def same_data(a: Task, b: Task) -> bool:
    for split in ("train", "valid", "test"):
        if len(a.splits[split]) != len(b.splits[split]):
            return False
        for x, y in zip(a.splits[split], b.splits[split]):
            if x.inputs.shape != y.inputs.shape or not (
                torch.equal(x.inputs, y.inputs) and torch.equal(x.targets, y.targets) and torch.equal(x.mask, y.mask)
            ):
                return False
    return True


def perfect_outputs(task: Task, batch) -> torch.Tensor:
    """Outputs that a perfect model gives: the target (regression), large logits otherwise."""
    if task.name == "adding":
        return batch.targets.clone()
    if task.name == "iam_ondb":  # CTC: the labels, a blank between repeats, blanks after
        outputs = torch.zeros(*batch.mask.shape, task.output_size)
        for b in range(batch.batch_size):
            labels = batch.targets[:, b][batch.targets[:, b] > 0].tolist()
            path = [x for i, label in enumerate(labels) for x in ([0] if i and labels[i - 1] == label else []) + [label]]
            path += [0] * (int(batch.mask[:, b].sum()) - len(path))
            outputs[torch.arange(len(path)), b, torch.tensor(path, dtype=torch.int64)] = 30.0
        return outputs
    if batch.targets.dtype == torch.int64:  # 30: 61 TIMIT classes still give a loss < 1e-6
        return 30.0 * torch.nn.functional.one_hot(batch.targets, task.output_size).float()
    return 20.0 * (2 * batch.targets - 1)


def reference_sequence_loss(name: str, outputs: torch.Tensor, seq) -> float:
    """One sequence's training loss written out step by step: the sum over its scored steps."""
    if name == "iam_ondb":  # CTC: one loss per sequence, by the forward recursion
        from test_iam_ondb import reference_ctc

        log_probs = torch.log_softmax(outputs.double(), -1).numpy()
        return reference_ctc(log_probs[: len(seq)], seq.targets[seq.targets > 0].tolist())
    total = 0.0
    for t in range(len(seq)):
        if not seq.mask[t]:
            continue
        out, target = outputs[t].double(), seq.targets[t]
        if name == "adding":
            total += float((out[0] - target[0]) ** 2)
        elif name.startswith("temporal_order") or name in ("timit", "sequences"):
            total += float(torch.logsumexp(out, 0) - out[int(target)])
        else:  # independent Bernoulli outputs (jsb, reber): -[y log s(x) + (1-y) log(1 - s(x))]
            y = target.double()
            total += float((torch.log1p(torch.exp(-out.abs())) + out.clamp_min(0) - y * out).sum())
    return total


# --------------------------------------------------------------------------------------------
# Contract: every registered task


def test_registry_lists_every_task_config():
    assert sorted(TASKS) == ["adding", "iam_ondb", "jsb", "reber", "sequences", "temporal_order", "temporal_order_3", "timit"]
    assert sorted(p.stem for p in TASK_CONF.glob("*.yaml")) == sorted(TASKS)


@pytest.mark.parametrize("name", sorted(TASKS))
class TestTaskContract:
    def test_yaml_keys_are_the_dataclass_fields(self, name):
        mapping = yaml.safe_load((TASK_CONF / f"{name}.yaml").read_text())
        cls = TASKS[name]
        assert set(mapping) == {f.name for f in dataclasses.fields(cls)}
        assert mapping["name"] == name
        config = task_config_from_mapping(mapping)
        assert isinstance(config, cls) and config.name == name
        if name != "jsb":  # the YAML defaults are the dataclass defaults
            assert config == cls(name=name)

    def test_unknown_key_is_refused(self, name):
        with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lenght'\]"):
            task_config_from_mapping({"name": name, "lenght": 5})

    def test_splits_and_shapes(self, name):
        task = small_task(name)
        assert task.name == name
        assert task.primary_metric in task.metric_names
        for split in ("train", "valid", "test"):
            assert len(task.splits[split]) > 0
            for seq in task.splits[split]:
                n = len(seq)
                assert seq.inputs.shape == (n, task.input_size) and seq.inputs.dtype == torch.float32
                assert seq.mask.shape == (n,) and seq.mask.dtype == torch.bool and seq.mask.any()
                if seq.targets.dtype == torch.int64:
                    assert seq.targets.shape == (n,)
                    assert 0 <= int(seq.targets[seq.mask].min()) and int(seq.targets.max()) < task.output_size
                else:
                    assert seq.targets.shape == (n, task.output_size)

    def test_sequences_of_a_split_differ(self, name):
        train = small_task(name).splits["train"]
        distinct = {(s.inputs.numpy().tobytes(), s.targets.numpy().tobytes()) for s in train}
        assert len(distinct) > len(train) // 2

    def test_collate_loss_and_metrics(self, name):
        task = small_task(name)
        seqs = task.splits["train"][:5]
        batch = collate(seqs)
        t_max = max(len(s) for s in seqs)
        assert batch.inputs.shape == (t_max, 5, task.input_size)
        assert batch.mask.sum() == sum(int(s.mask.sum()) for s in seqs)
        outputs = torch.zeros(t_max, 5, task.output_size, requires_grad=True)
        loss = task.loss(outputs, batch)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        assert outputs.grad[~batch.mask].abs().sum() == 0  # padding and unscored steps carry no gradient
        sums = task.metric_sums(outputs, batch)
        assert set(sums) == set(task.metric_names)
        assert all(count > 0 and math.isfinite(total) for total, count in sums.values())

    def test_loss_is_each_sequences_sum_over_steps_averaged_over_sequences(self, name):
        """The paper's objective (PyLSTM): per sequence the sum of its scored steps' losses (each
        summed over output units), then the mean over the batch's sequences; padding is masked."""
        task = small_task(name)
        seqs = task.splits["train"][:4]
        batch = collate(seqs)
        gen = torch.Generator().manual_seed(0)
        outputs = torch.randn(*batch.mask.shape, task.output_size, generator=gen, dtype=torch.float64)
        outputs[~batch.mask] = 1e6  # garbage where nothing is scored: must not matter
        batch64 = dataclasses.replace(batch, targets=batch.targets.double() if batch.targets.is_floating_point() else batch.targets)
        sums = [reference_sequence_loss(name, outputs[: len(s), b], seqs[b]) for b, s in enumerate(seqs)]
        steps = sum(int(s.mask.sum()) for s in seqs)
        assert float(task.loss(outputs, batch64)) == pytest.approx(sum(sums) / len(seqs), rel=1e-12)
        assert float(task.loss(outputs, batch64, "mean_over_steps")) == pytest.approx(sum(sums) / steps, rel=1e-12)
        one = collate(seqs[:1])  # a batch of one sequence: exactly the sum of its steps' losses
        one = dataclasses.replace(one, targets=batch64.targets[: len(seqs[0]), :1])
        assert float(task.loss(outputs[: len(seqs[0]), :1], one)) == pytest.approx(sums[0], rel=1e-12)
        if name in ("jsb", "reber"):  # per-step targets: the sum is ~L times the per-step mean (L >= 5 here)
            assert sum(sums) / len(seqs) > 5 * sum(sums) / steps
        with pytest.raises(ValueError, match="valid reductions: \\['sum_over_steps', 'mean_over_steps'\\]"):
            task.loss(outputs, batch64, "mean")

    def test_loss_and_metrics_keep_a_leading_member_axis(self, name):
        """A pack evaluates M members at once: outputs (M, T, B, O) give losses and metric totals
        of shape (M,), each equal to that member's alone; with batch tensors of their own (M, T, B)
        or shared by all members (T, B)."""
        task = small_task(name)
        batch = collate(task.splits["valid"][:6])
        gen = torch.Generator().manual_seed(1)
        outputs = torch.randn(3, *batch.mask.shape, task.output_size, generator=gen)
        losses = task.loss(outputs, batch)
        assert losses.shape == (3,)
        totals = task.metric_totals(outputs, batch)
        for m in range(3):
            assert float(losses[m]) == pytest.approx(float(task.loss(outputs[m], batch)), rel=1e-6)
            for metric, (total, count) in task.metric_sums(outputs[m], batch).items():
                assert float(totals[metric][0][m]) == pytest.approx(total, rel=1e-6)
                assert int(totals[metric][1][m]) == count
        stacked = dataclasses.replace(
            batch, targets=batch.targets.expand(3, *batch.targets.shape), mask=batch.mask.expand(3, *batch.mask.shape)
        )
        assert torch.allclose(task.loss(outputs, stacked), losses)

    def test_perfect_outputs_score_best(self, name):
        if name == "jsb":
            pytest.skip("no perfect JSB model: outputs are probabilities (see test_jsb.py)")
        task = small_task(name)
        batch = collate(task.splits["valid"])
        sums = task.metric_sums(perfect_outputs(task, batch), batch)
        values = {m: total / count for m, (total, count) in sums.items()}
        assert values[task.primary_metric] == (0.0 if task.lower_is_better else 1.0)
        assert values.get("accuracy", 1.0) == 1.0
        assert values.get("mse", 0.0) == 0.0
        assert float(task.loss(perfect_outputs(task, batch), batch)) < 1e-6

    def test_worst_metrics_are_finite_and_no_better_than_a_constant_guess(self, name):
        task = small_task(name)
        worst = task.worst_metrics()
        assert set(worst) == set(task.metric_names)
        assert all(math.isfinite(v) for v in worst.values())
        assert worst.get("accuracy", 0.0) == 0.0
        batch = collate(task.splits["valid"])
        zero = task.metric_sums(torch.zeros(batch.inputs.shape[0], batch.batch_size, task.output_size), batch)
        total, count = zero[task.primary_metric]
        if name == "jsb":  # zero logits predict 0.5 everywhere: exactly the documented worst, 88 ln 2
            assert total / count == pytest.approx(88 * math.log(2), rel=1e-9)
        else:
            assert not task.better(worst[task.primary_metric], total / count)

    def test_same_seed_same_data_and_no_global_rng(self, name):
        task = small_task(name)
        torch_state, np_state = torch.random.get_rng_state(), np.random.get_state()
        again = small_config(name).build()
        assert torch.equal(torch_state, torch.random.get_rng_state())
        assert np_state[1].tolist() == np.random.get_state()[1].tolist()
        assert same_data(task, again)

    def test_different_seed_different_data(self, name):
        if name not in GENERATED:
            pytest.skip("fixed data set: no seed")
        assert not same_data(small_task(name), small_config(name, seed=1).build())


@pytest.mark.parametrize(
    "name, key, value, expected",
    [
        ("adding", "length", 5, r"task\.length=5 is invalid: expected an integer >= 10"),
        ("adding", "num_train", 0, r"task\.num_train=0 is invalid: expected an integer >= 1"),
        ("adding", "seed", -1, r"task\.seed=-1 is invalid"),
        ("adding", "length", 20.5, r"task\.length=20\.5 is invalid: expected an integer"),
        ("adding", "end_markers", "yes", r"task\.end_markers='yes' is invalid: expected true or false"),
        ("temporal_order", "num_relevant", 3, r"task\.num_relevant=3 is invalid for task 'temporal_order'"),
        ("temporal_order_3", "num_relevant", 2, r"expected 3 \(use task=temporal_order for 2"),
        ("reber", "min_length", 8, r"task\.min_length=8 is invalid: expected an integer in \[9, 30\]"),
        ("reber", "max_length", 9, r"task\.max_length=9 is invalid: expected >= task\.min_length=10"),
        ("jsb", "format", "csv", r"task\.format='csv' is invalid: expected one of \['pkl', 'json', 'mat'\]"),
    ],
)
def test_bad_values_name_key_value_and_range(name, key, value, expected):
    mapping = {"name": name, key: value}
    if key == "max_length":
        mapping["min_length"] = 10
    with pytest.raises(ConfigError, match=expected):
        task_config_from_mapping(mapping)


def test_unknown_task_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown task 'adder'; valid tasks: \['adding', 'iam_ondb', 'jsb', 'reber'"):
        task_config_from_mapping({"name": "adder"})


# --------------------------------------------------------------------------------------------
# Adding problem


@pytest.mark.parametrize("end_markers", [False, True], ids=["simple", "1997-end-markers"])
def test_adding_follows_the_1997_rules(end_markers):
    t = 40
    task = AddingConfig(length=t, num_train=300, num_valid=1, num_test=1, end_markers=end_markers).build()
    lengths, firsts = set(), set()
    for seq in task.splits["train"]:
        n = len(seq)
        lengths.add(n)
        values, markers = seq.inputs[:, 0], seq.inputs[:, 1]
        assert t <= n <= t + t // 10
        assert values.abs().max() <= 1.0
        marked = torch.nonzero(markers == 1.0).flatten().tolist()
        assert len(marked) == 2
        first, second = marked
        assert first < 10 and second < t // 2  # second: among the first T/2 - 1 unmarked pairs
        firsts.add(first)
        others = markers[[i for i in range(n) if i not in marked]]
        if end_markers:
            assert markers[0] in (-1.0, 1.0) and markers[-1] == -1.0
            assert set(others[1:-1].tolist()) <= {0.0}
            if first == 0:
                assert values[0] == 0.0
        else:
            assert set(others.tolist()) == {0.0}
        assert seq.mask.tolist() == [False] * (n - 1) + [True]
        expected = 0.5 + (values[first] + values[second]) / 4.0
        assert torch.isclose(seq.targets[-1, 0], expected, atol=1e-6)
        assert seq.targets[:-1].abs().sum() == 0
    assert len(lengths) > 1 and len(firsts) == 10  # lengths vary; every one of the first ten is used


def test_adding_metrics_on_hand_made_outputs():
    task = small_task("adding")
    batch = collate(task.splits["valid"])
    off = batch.targets.clone()
    off[..., 0] += torch.where(torch.arange(batch.batch_size) % 2 == 0, 0.03, 0.05)  # half within 0.04
    sums = task.metric_sums(off, batch)
    n = batch.batch_size
    assert sums["accuracy"] == (float((n + 1) // 2), n)
    expected_mse = ((n + 1) // 2 * 0.03**2 + n // 2 * 0.05**2) / n
    assert sums["mse"][0] / n == pytest.approx(expected_mse, rel=1e-4)
    assert float(task.loss(off, batch)) == pytest.approx(expected_mse, rel=1e-4)


# --------------------------------------------------------------------------------------------
# Temporal order


@pytest.mark.parametrize("num_relevant", [2, 3])
def test_temporal_order_follows_the_1997_rules(num_relevant):
    name = "temporal_order" if num_relevant == 2 else "temporal_order_3"
    # At T = 100 the windows are the paper's (0-based: E is step 0).
    windows = {2: [(10, 20), (50, 60)], 3: [(10, 20), (33, 43), (66, 76)]}[num_relevant]
    task = TemporalOrderConfig(name=name, length=100, num_train=300, num_valid=1, num_test=1).build()
    assert task.output_size == 2**num_relevant and task.input_size == 8
    labels = set()
    for seq in task.splits["train"]:
        n = len(seq)
        assert 100 <= n <= 110
        assert seq.inputs.sum(dim=1).eq(1).all()  # one-hot
        symbols = "".join(TO_SYMBOLS[i] for i in seq.inputs.argmax(dim=1).tolist())
        assert symbols[0] == "E" and symbols[-1] == "B"
        relevant = [(i, s) for i, s in enumerate(symbols) if s in "XY"]
        assert len(relevant) == num_relevant
        assert set(symbols[1:-1]) - set("XY") <= set("abcd")
        for (pos, _), (lo, hi) in zip(relevant, windows):
            assert lo <= pos <= hi
        pattern = "".join(s for _, s in relevant)
        label = int(pattern.replace("X", "0").replace("Y", "1"), 2)  # XX=0 (Q), XY=1 (R), YX=2 (S), YY=3 (U)
        assert seq.targets[-1] == label and seq.mask.tolist() == [False] * (n - 1) + [True]
        labels.add(label)
    assert labels == set(range(2**num_relevant))


def test_temporal_order_accuracy_counts_argmax_hits():
    task = small_task("temporal_order")
    batch = collate(task.splits["valid"])
    outputs = torch.zeros(*batch.targets.shape, 4)
    outputs[..., 0] = 1.0  # always class XX
    total, count = task.metric_sums(outputs, batch)["accuracy"]
    assert count == batch.batch_size
    assert total == sum(int(s.targets[-1] == 0) for s in task.splits["valid"])


# --------------------------------------------------------------------------------------------
# Embedded Reber grammar: checked against a regular expression and an exhaustive enumeration
# written here, independently of odyssey.tasks.reber.

_REBER = r"B(?:(?:TS*X|PT*VP)(?:XT*VP)*(?:S|XT*VV)|PT*VV)E"
_EMBEDDED = re.compile(rf"B([TP]){_REBER}\1E")
# The grammar as edges "from symbol to" (state 0 start, 7 accept), for the enumeration.
_EDGES = ["0B1", "1T2", "1P3", "2S2", "2X4", "3T3", "3V5", "4X3", "4S6", "5P4", "5V6", "6E7"]


def _all_embedded(max_len: int) -> set[str]:
    inner, frontier = set(), [("", "0")]
    while frontier:
        text, state = frontier.pop()
        if state == "7":
            inner.add(text)
            continue
        if len(text) < max_len - 4:
            frontier += [(text + e[1], e[2]) for e in _EDGES if e[0] == state]
    return {f"B{w}{s}{w}E" for s in inner for w in "TP"}


def test_reber_enumeration_and_regex_agree():
    strings = _all_embedded(14)
    assert len(strings) > 50 and all(_EMBEDDED.fullmatch(s) for s in strings)
    assert not _EMBEDDED.fullmatch("BTBTXSEPE") and not _EMBEDDED.fullmatch("BTBTSSEPE")


def test_reber_strings_and_legal_next_sets():
    max_len = 14
    language = _all_embedded(max_len + 6)  # every prefix of a shorter string can be completed within 6 more symbols
    task = ReberConfig(min_length=9, max_length=max_len, num_train=200, num_valid=1, num_test=1).build()
    seen = set()
    for seq in task.splits["train"]:
        string = "".join("BTPSXVE"[i] for i in seq.inputs.argmax(dim=1).tolist()) + "E"
        assert _EMBEDDED.fullmatch(string), string
        assert 9 <= len(string) <= max_len and len(seq) == len(string) - 1 and seq.mask.all()
        seen.add(string)
        for t in range(len(seq)):
            legal = {s[t + 1] for s in language if s.startswith(string[: t + 1])}
            got = {"BTPSXVE"[i] for i in torch.nonzero(seq.targets[t]).flatten().tolist()}
            assert got == legal, (string, t)
        assert {"BTPSXVE"[i] for i in torch.nonzero(seq.targets[-2]).flatten().tolist()} == {string[1]}  # long lag
    assert len(seen) > 20 and {s[1] for s in seen} == {"T", "P"}


def test_reber_length_bounds_and_rejects_bad_strings():
    task = ReberConfig(min_length=15, max_length=18, num_train=30, num_valid=1, num_test=1).build()
    assert all(15 <= len(s) + 1 <= 18 for s in task.splits["train"])
    for bad in ("BTBTXSEPE", "BTBTSSETE", "BTBTXSE", "BTBTXXETE"):
        with pytest.raises(ValueError):
            embedded_legal_next(bad)


def test_reber_accuracy_needs_every_legal_symbol_on_top():
    task = small_task("reber")
    seqs = [encode("BTBTXSETE"), encode("BPBPVVEPE")]
    batch = collate(seqs)
    perfect = 2 * batch.targets - 1  # legal +1, illegal -1
    assert task.metric_sums(perfect, batch)["accuracy"] == (2.0, 2)
    wrong = perfect.clone()
    wrong[6, 1, 1] = 1.0  # string 2, after the inner E: T as likely as the legal P (a tie fails)
    assert task.metric_sums(wrong, batch)["accuracy"] == (1.0, 2)
    ranked = perfect.clone()
    ranked[0, 0] = torch.tensor([-1.0, 0.5, 0.4, 0.3, -1, -1, -1])  # k=2 legal {T,P}, S third: correct
    assert task.metric_sums(ranked, batch)["accuracy"] == (2.0, 2)
    ranked[0, 0, 3] = 0.45  # S above P: the 2 most active are not the 2 legal ones
    assert task.metric_sums(ranked, batch)["accuracy"] == (1.0, 2)
