"""Reproducible trials on the CPU: a member's numbers do not depend on its pack companions.

Bitwise (``==`` and ``torch.equal``, no tolerance): a trial's per-epoch metrics, status, best
epoch, best validation and test metrics and final weights are the same trained alone
(``train_trial``), as a pack of one, and in packs of 2, 3 and 8 in different orders, with members
of other sizes and hyperparameters joining late (continuous batching) and leaving early (shorter
budgets, early stopping), one of them diverging; for every preset and family, float32 and float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from odyssey.config import compose, trial_config
from odyssey.packs import PackTrainer, train_pack
from odyssey.tasks import build_task
from odyssey.train import train_trial

from test_packs import PRESETS

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second intra-op thread only spins (and alone and packed share the count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = ["task=adding", "task.length=10", "task.num_train=12", "task.num_valid=6", "task.num_test=6", "train.patience=2"]

# Eight members that differ in every searched hyperparameter and in the protocol's other knobs;
# member 7 diverges (a huge step), members end after 1-3 epochs or by early stopping.
MEMBERS = [
    ["model.hidden_size=7", "train.lr=0.1", "train.momentum=0.9", "train.input_noise=0.2", "train.max_epochs=3", "seed=11"],
    ["model.hidden_size=4", "train.lr=0.03", "train.momentum=0.5", "train.batch_size=4", "train.max_epochs=2", "seed=12"],
    ["model.hidden_size=9", "train.lr=0.01", "train.momentum=0.0", "train.clip_norm=0.5", "train.max_epochs=3", "seed=13"],
    ["model.hidden_size=5", "train.lr=0.2", "train.momentum=0.8", "train.nesterov=false", "train.batch_size=3",
     "train.input_noise=0.5", "train.max_epochs=3", "seed=14"],
    ["model.hidden_size=3", "train.lr=0.05", "train.momentum=0.9", "train.clip_value=0.1", "train.max_epochs=1", "seed=15"],
    ["model.hidden_size=12", "train.lr=0.002", "train.momentum=0.95", "train.max_epochs=3", "train.patience=1", "seed=16"],
    ["model.hidden_size=6", "train.lr=0.08", "train.momentum=0.7", "train.batch_size=2", "train.max_epochs=2", "seed=17"],
    ["model.hidden_size=8", "train.lr=1e12", "train.momentum=0.9", "train.max_epochs=3", "seed=18"],
]  # fmt: skip


def configs(variant: str, dtype: str, members=MEMBERS):
    return [trial_config(compose("train", [*SMALL, f"variant={variant}", f"train.dtype={dtype}", *m])) for m in members]


def alone(cfg, task):
    """(result, per-epoch metrics, the weights at the last report) of ``train_trial``."""
    metrics, weights = [], {}

    def callback(report):
        metrics.append(report.metrics)
        weights["last"] = report.checkpoint()["model"]

    return train_trial(cfg, callback=callback, task=task), metrics, weights.get("last")


def packed(cfgs, task, **kwargs):
    """Each member's (result, per-epoch metrics, final weights) from one ``train_pack``."""
    metrics, weights = {i: [] for i in range(len(cfgs))}, {}

    def callback(i, report):
        metrics[i].append(report.metrics)
        weights[i] = report.checkpoint()["model"]

    results = train_pack(cfgs, task=task, callback=callback, **kwargs)
    return [(results[i], metrics[i], weights.get(i)) for i in range(len(cfgs))]


def assert_identical(mine, theirs):
    (result, metrics, weights), (other, other_metrics, other_weights) = mine, theirs
    assert result == other  # status, stop reason, epochs, best epoch, best_val and test, exactly
    assert metrics == other_metrics  # every reported epoch's train/loss and val/* (a diverged epoch has none)
    if weights is None or other_weights is None:
        assert weights is None and other_weights is None
        return
    assert weights.keys() == other_weights.keys()
    for k in weights:
        assert torch.equal(weights[k], other_weights[k]), k


DIVERGING = 7


def check_contract(variant: str, dtype: str, orders) -> None:
    cfgs = configs(variant, dtype)
    task = build_task(cfgs[0].task)
    used = sorted({i for order, _ in orders for i in order})
    ref = {i: alone(cfgs[i], task) for i in used}
    assert [r[0].status for r in ref.values()] == ["diverged" if i == DIVERGING else "completed" for i in used]
    assert len({ref[i][0].best_val["mse"] for i in used if i != DIVERGING}) == len(used) - (DIVERGING in used)  # different trials
    assert_identical(packed([cfgs[used[0]]], task)[0], ref[used[0]])  # a pack of one
    for order, pack_size in orders:
        for i, got in zip(order, packed([cfgs[i] for i in order], task, pack_size=pack_size)):
            assert_identical(got, ref[i])


BIG = [("vanilla", "float32"), ("vanilla", "float64"), ("gru", "float32")]  # the whole contract; the rest: a pack of 3


@pytest.mark.parametrize("variant, dtype", BIG)
def test_a_member_is_bitwise_the_same_alone_and_in_packs_of_2_3_and_8_in_any_order(variant, dtype):
    orders = [
        ([5, 0], None),  # a pack of 2, the larger member first
        ([2, 7, 4], None),  # a pack of 3 with the diverging member
        (list(range(8)), None),  # all 8 at once
        ([7, 3, 6, 1, 5, 0, 2, 4], 3),  # 8 in another order, 3 at a time: members join as others leave
    ]
    check_contract(variant, dtype, orders)


@pytest.mark.parametrize(
    "variant, dtype", [(p, d) for p in PRESETS for d in ("float32", "float64") if (p, d) not in BIG],
)
def test_every_preset_and_family_is_bitwise_the_same_alone_and_packed(variant, dtype):
    check_contract(variant, dtype, [([2, 7, 0], 2)])  # the third joins when the diverging one leaves


def test_joining_late_and_leaving_early_by_remove_leaves_a_member_bitwise_unchanged():
    cfgs = configs("cifg", "float32", MEMBERS[:3])
    task = build_task(cfgs[0].task)
    ref = alone(cfgs[0], task)
    trainer = PackTrainer(task, device=torch.device("cpu"), dtype=torch.float32)
    trainer.add("a", cfgs[0])
    trainer.add("b", cfgs[1])
    metrics, weights = [], None
    for epoch in range(3):
        if epoch == 1:
            trainer.remove("b")
            trainer.add("c", cfgs[2])  # joins in the member's second epoch
        for event in trainer.run_epoch():
            if event.key == "a":
                metrics.append(event.report.metrics)
                if event.result is not None:
                    result, weights = event.result, event.report.checkpoint()["model"]
    assert_identical((result, metrics, weights), ref)
    assert not math.isnan(result.test["mse"])


def test_a_pack_on_the_cpu_trains_per_member_and_a_stacked_one_differs_in_rounding_only():
    cfgs = configs("vanilla", "float32", MEMBERS[:2])
    task = build_task(cfgs[0].task)
    assert PackTrainer(task, device=torch.device("cpu"), dtype=torch.float32).stacked is False
    own, stacked = packed(cfgs, task), packed(cfgs, task, stacked=True)
    for (r, _, _), (s, _, _) in zip(own, stacked):
        assert s.best_val["mse"] == pytest.approx(r.best_val["mse"], rel=1e-4)


def test_a_pack_on_cuda_is_deterministic_given_its_members():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    cfgs = [c.replace(train={"device": "cuda"}) for c in configs("vanilla", "float32", MEMBERS[:4])]
    task = build_task(cfgs[0].task)
    first, second = packed(cfgs, task), packed(cfgs, task)
    assert torch.are_deterministic_algorithms_enabled()
    for a, b in zip(first, second):
        assert_identical(a, b)
        assert a[0].device.startswith("cuda:") and a[0].provenance["odyssey.cuda"] == torch.version.cuda
