"""Trial packs, stacked (CUDA's way, run here on the CPU): a trial trained in a stacked pack is
the same trial as alone (``train_trial``) up to float rounding. (On the CPU a pack trains its
members one by one by default, bit for bit as alone: tests/test_reproducible.py.)

Tolerances. float64: 1e-10 relative. The pack computes the same sums as the trial alone, but
over padded tensors (longer steps, wider batches, larger hidden sizes with zero entries), so
BLAS and reductions add the same numbers in another order; in float64 that leaves ~1e-15 per
op, and a few epochs of SGD amplify it to well under 1e-10 on these small tasks. float32:
1e-4 relative (the issue's contract), for the same reason at float32's 6e-8 unit roundoff.
"""

from __future__ import annotations

import math

import pytest
import torch

from odyssey.config import compose, trial_config
from odyssey.errors import ConfigError
from odyssey.noise import gaussian_noise, stream_keys
from odyssey.packs import PackTrainer, train_pack
from odyssey.tasks import build_task
from odyssey.train import train_trial

from test_jsb import JSB_DIR

PRESETS = ["vanilla", "nig", "nfg", "nog", "niaf", "noaf", "np", "cifg", "fgr", "lstm1997", "gru", "rnn",
           "slstm", "indrnn", "mingru", "minlstm"]  # fmt: skip
NEW_2026 = ["slstm", "indrnn", "mingru", "minlstm"]  # issue 25's cells
SMALL = ["task.length=10", "task.num_train=24", "task.num_valid=12", "task.num_test=12"]

# Members that differ in every searched hyperparameter and in the protocol's other knobs.
MEMBERS = [
    ["model.hidden_size=7", "train.lr=0.1", "train.momentum=0.9", "train.input_noise=0.2", "train.max_epochs=3", "seed=11"],
    ["model.hidden_size=4", "train.lr=0.03", "train.momentum=0.5", "train.batch_size=4", "train.max_epochs=4", "seed=12"],
    ["model.hidden_size=9", "train.lr=0.01", "train.momentum=0.0", "train.clip_norm=0.5", "train.max_epochs=2", "seed=13"],
    ["model.hidden_size=5", "train.lr=0.2", "train.momentum=0.8", "train.nesterov=false", "train.batch_size=3",
     "train.input_noise=0.5", "train.max_epochs=3", "seed=14"],
]  # fmt: skip


def member_configs(*common: str, members=MEMBERS):
    """Trial configs on a small task (``SMALL`` sizes, less ``task.length`` for tasks without it)."""
    task = next((o.split("=", 1)[1] for o in common if o.startswith("task=")), "adding")
    small = [o for o in SMALL if task in ("adding", "temporal_order") or not o.startswith("task.length")]
    small = [] if task == "jsb" else small
    return [trial_config(compose("train", [*common, *small, *m])) for m in members]


def run_alone(cfg, task):
    reports = []
    result = train_trial(cfg, callback=reports.append, task=task)
    weights = reports[-1].checkpoint()["model"] if reports else None
    return result, [r.metrics for r in reports], weights


def run_packed(cfgs, task, **kwargs):
    reports = {i: [] for i in range(len(cfgs))}
    weights = {}

    def callback(i, report):
        reports[i].append(report.metrics)
        if report.result is not None:
            weights[i] = report.checkpoint()["model"]

    kwargs.setdefault("stacked", True)
    results = train_pack(cfgs, task=task, callback=callback, **kwargs)
    return results, reports, weights


def assert_same_trial(alone, packed, rel):
    (result, metrics, weights), (p_result, p_metrics, p_weights) = alone, packed
    assert (p_result.status, p_result.stop_reason, p_result.epochs, p_result.best_epoch) == (
        result.status, result.stop_reason, result.epochs, result.best_epoch,
    )  # fmt: skip
    assert p_result.params_count == result.params_count
    assert len(p_metrics) == len(metrics)
    for mine, theirs in zip(p_metrics, metrics):
        assert mine.keys() == theirs.keys()
        for k in mine:
            assert mine[k] == pytest.approx(theirs[k], rel=rel, abs=rel * 1e-3), k
    for d_mine, d_theirs in ((p_result.best_val, result.best_val), (p_result.test, result.test)):
        assert d_mine.keys() == d_theirs.keys()
        for k in d_mine:
            assert d_mine[k] == pytest.approx(d_theirs[k], rel=rel, abs=rel * 1e-3), k
    if weights is not None:
        assert p_weights.keys() == weights.keys()
        for k in weights:
            assert p_weights[k].shape == weights[k].shape, k
            torch.testing.assert_close(p_weights[k], weights[k], rtol=rel, atol=rel * 1e-2)


@pytest.mark.parametrize("variant", PRESETS)
def test_packed_equals_alone_for_every_preset_float64(variant):
    """Four members (different hidden sizes, step sizes, momenta, Nesterov or not, noise, batch
    sizes, clipping, epoch budgets and seeds), at most three at a time: the fourth joins when the
    third leaves after its 2-epoch budget."""
    cfgs = member_configs(f"variant={variant}", "train.dtype=float64")
    task = build_task(cfgs[0].task)
    alone = [run_alone(c, task) for c in cfgs]
    results, reports, weights = run_packed(cfgs, task, pack_size=3)
    for i in range(len(cfgs)):
        assert_same_trial(alone[i], (results[i], reports[i], weights[i]), rel=1e-10)


@pytest.mark.parametrize("variant", ["vanilla", "fgr", "gru"])
def test_packed_equals_alone_in_float32(variant):
    cfgs = member_configs(f"variant={variant}")
    task = build_task(cfgs[0].task)
    alone = [run_alone(c, task) for c in cfgs]
    packed = run_packed(cfgs, task)
    for i in range(len(cfgs)):
        assert_same_trial(alone[i], (packed[0][i], packed[1][i], packed[2][i]), rel=1e-4)


@pytest.mark.parametrize(
    "overrides",
    [
        ["variant=np", "variant.coupled_input_forget=true"],
        ["variant=nog", "variant.output_activation=identity"],
        ["variant=fgr", "variant.peepholes=false", "variant.input_gate=false"],
        ["model=bidirectional", "model.num_layers=2", "variant=cifg"],
        ["task=reber", "variant=vanilla"],
        ["task=temporal_order", "variant=vanilla"],
        ["variant=gru", "variant.reset_before_product=true"],
        ["variant=rnn", "variant.rnn_activation=relu"],
        ["model=bidirectional", "model.num_layers=2", "variant=gru"],
        ["model=bidirectional", "model.num_layers=2", "variant=rnn"],
    ],
    ids=["np+cifg", "nog+noaf", "fgr+nig+np", "bidirectional-2-layers", "reber", "temporal_order",
         "gru-reset-before-product", "rnn-relu", "gru-bidirectional-2-layers", "rnn-bidirectional-2-layers"],
)
def test_packed_equals_alone_for_switch_combinations_shapes_and_tasks(overrides):
    cfgs = member_configs(*overrides, "train.dtype=float64", members=MEMBERS[:3])
    task = build_task(cfgs[0].task)
    alone = [run_alone(c, task) for c in cfgs]
    packed = run_packed(cfgs, task)
    for i in range(len(cfgs)):
        assert_same_trial(alone[i], (packed[0][i], packed[1][i], packed[2][i]), rel=1e-10)


@pytest.mark.skipif(not (JSB_DIR / "jsb-chorales-quarter.pkl").is_file(), reason=f"JSB Chorales not found in {JSB_DIR}")
def test_packed_equals_alone_on_jsb():
    """The paper's task and protocol (online SGD, sequences of 25-160 steps padded per update)."""
    members = [["model.hidden_size=6", "train.lr=1e-2", "seed=1", "train.input_noise=0.3"],
               ["model.hidden_size=3", "train.lr=3e-3", "seed=2", "train.momentum=0.5"]]  # fmt: skip
    cfgs = member_configs("task=jsb", f"task.data_dir={JSB_DIR}", "train.max_epochs=1", "train.dtype=float64", members=members)
    task = build_task(cfgs[0].task)
    alone = [run_alone(c, task) for c in cfgs]
    packed = run_packed(cfgs, task)
    for i in range(2):
        assert_same_trial(alone[i], (packed[0][i], packed[1][i], packed[2][i]), rel=1e-10)


def test_a_diverging_member_leaves_the_others_unchanged():
    """Member 1's step size makes it diverge (its loss turns NaN/inf in epoch 1); it leaves as
    ``diverged`` with the task's worst metrics, and the others still equal their solo runs."""
    members = [MEMBERS[0], ["model.hidden_size=6", "train.lr=1e6", "train.momentum=0.0", "train.max_epochs=3", "seed=5"], MEMBERS[1]]
    cfgs = member_configs("variant=vanilla", "train.dtype=float64", members=members)
    task = build_task(cfgs[0].task)
    alone = [run_alone(c, task) for c in cfgs]
    assert alone[1][0].status == "diverged"
    results, reports, weights = run_packed(cfgs, task)
    assert results[1].status == "diverged" and results[1].epochs == alone[1][0].epochs
    assert results[1].best_val == task.worst_metrics() == results[1].test
    assert len(reports[1]) == len(alone[1][1])  # no report for the epoch it diverged in
    for i in (0, 2):
        assert_same_trial(alone[i], (results[i], reports[i], weights[i]), rel=1e-10)


@pytest.mark.parametrize("variant", NEW_2026)
def test_a_diverging_member_leaves_the_others_unchanged_for_the_2026_cells(variant):
    """As above for each new cell, with bidirectional two-layer members of different sizes and
    hyperparameters (two epochs each: the sLSTM's step loop is autograd's, slower than the fused one)."""
    members = [["model.hidden_size=5", "train.lr=0.1", "train.momentum=0.9", "train.input_noise=0.2", "train.max_epochs=2", "seed=11"],
               ["model.hidden_size=6", "train.lr=1e6", "train.momentum=0.0", "train.max_epochs=2", "seed=5"],
               ["model.hidden_size=3", "train.lr=0.03", "train.momentum=0.5", "train.batch_size=4", "train.max_epochs=2", "seed=12"]]  # fmt: skip
    cfgs = member_configs(f"variant={variant}", "model=bidirectional", "model.num_layers=2", "train.dtype=float64", members=members)
    task = build_task(cfgs[0].task)
    alone = [run_alone(c, task) for c in cfgs]
    assert alone[1][0].status == "diverged"
    results, reports, weights = run_packed(cfgs, task)
    assert results[1].status == "diverged" and results[1].epochs == alone[1][0].epochs
    for i in (0, 2):
        assert_same_trial(alone[i], (results[i], reports[i], weights[i]), rel=1e-10)


def test_early_stopping_in_a_pack_matches_alone():
    members = [["model.hidden_size=5", "train.lr=0.3", "train.patience=1", "train.max_epochs=8", "seed=3"], MEMBERS[0]]
    cfgs = member_configs("train.dtype=float64", members=members)
    task = build_task(cfgs[0].task)
    alone = [run_alone(c, task) for c in cfgs]
    assert alone[0][0].stop_reason == "early_stopping" and alone[0][0].epochs < 8
    packed = run_packed(cfgs, task)
    for i in range(2):
        assert_same_trial(alone[i], (packed[0][i], packed[1][i], packed[2][i]), rel=1e-10)


def test_a_member_removed_between_epochs_leaves_the_others_unchanged_and_checkpoints_resume_alone():
    """``PackTrainer.remove`` (what a scheduler's stop does); and a member's checkpoint is a
    ``train_trial`` checkpoint: resuming it alone gives the uninterrupted trial."""
    cfgs = member_configs("train.dtype=float64", members=MEMBERS[:2])
    task = build_task(cfgs[0].task)
    alone = [run_alone(c, task) for c in cfgs]
    trainer = PackTrainer(task, device=torch.device("cpu"), dtype=torch.float64, stacked=True)
    for i, c in enumerate(cfgs):
        trainer.add(i, c)
    first = {e.key: e for e in trainer.run_epoch()}
    checkpoint = first[1].report.checkpoint()
    trainer.remove(1)
    assert trainer.keys == [0]
    reports = [first[0].report.metrics]
    while len(trainer):
        for event in trainer.run_epoch():
            reports.append(event.report.metrics)
            result0 = event.result
    assert_same_trial(alone[0][:2] + (None,), (result0, reports, None), rel=1e-10)
    resumed = []
    result1 = train_trial(cfgs[1], callback=lambda r: resumed.append(r.metrics), resume_from=checkpoint, task=task)
    assert_same_trial(alone[1][:2] + (None,), (result1, [first[1].report.metrics, *resumed], None), rel=1e-10)


def test_a_member_joining_a_running_pack_leaves_the_others_unchanged():
    """``PackTrainer.add`` between epochs while the others are mid-trial (what a pack executor does
    when Tune starts the next trial in a freed slot)."""
    cfgs = member_configs("train.dtype=float64", "variant=fgr", members=MEMBERS[:3])
    task = build_task(cfgs[0].task)
    alone = [run_alone(c, task) for c in cfgs]
    trainer = PackTrainer(task, device=torch.device("cpu"), dtype=torch.float64, stacked=True)
    trainer.add(0, cfgs[0])
    trainer.add(1, cfgs[1])
    reports, results = {0: [], 1: [], 2: []}, {}
    epoch = 0
    while len(trainer):
        epoch += 1
        if epoch == 2:
            trainer.add(2, cfgs[2])  # joins members 0 and 1 in their second epoch
        for event in trainer.run_epoch():
            reports[event.key].append(event.report.metrics)
            if event.result is not None:
                results[event.key] = event.result
    for i in range(3):
        assert_same_trial(alone[i][:2] + (None,), (results[i], reports[i], None), rel=1e-10)


@pytest.mark.parametrize("stop", ["max_epochs", "early_stopping"])
def test_a_member_resumed_from_its_final_checkpoint_ends_without_training(stop):
    """The driver died after a trial's last epoch was checkpointed but before Tune recorded its
    end: alone or in a pack, the resumed trial trains no further epoch and reports its result."""
    early = ["model.hidden_size=5", "train.lr=0.3", "train.patience=1", "train.max_epochs=8", "seed=3"]
    (cfg,) = member_configs("train.dtype=float64", members=[early if stop == "early_stopping" else MEMBERS[0]])
    task = build_task(cfg.task)
    reports = []
    result = train_trial(cfg, callback=reports.append, task=task)
    assert result.stop_reason == stop
    final = reports[-1].checkpoint()
    again = []
    assert train_trial(cfg, callback=again.append, resume_from=final, task=task) == result and again == []
    trainer = PackTrainer(task, device=torch.device("cpu"), dtype=torch.float64, stacked=True)
    trainer.add("late", cfg, resume_from=final)
    (event,) = trainer.run_epoch()
    assert event.report is None and event.result == result and len(trainer) == 0


def test_bad_input_gets_one_clear_error():
    cfgs = member_configs(members=MEMBERS[:2])
    with pytest.raises(ConfigError, match=r"pack_size=0 is invalid: expected an integer >= 1"):
        train_pack(cfgs, pack_size=0)
    with pytest.raises(ConfigError, match="at least one trial config"):
        train_pack([])
    other_task = trial_config(compose("train", ["task=reber"]))
    with pytest.raises(ConfigError, match=r"must share their task: member 0 has 'adding', member 1 has 'reber'"):
        train_pack([cfgs[0], other_task])
    other_variant = cfgs[1].replace(variant=trial_config(compose("train", ["variant=cifg"])).variant)
    with pytest.raises(ConfigError, match=r"must share their variant"):
        train_pack([cfgs[0], other_variant])


# --------------------------------------------------------------------------------------------
# The counter-based noise stream


def test_noise_is_standard_normal_and_independent_across_keys_and_elements():
    keys = stream_keys(7, torch.arange(1, 5)[:, None], torch.arange(50))  # 4 epochs x 50 sequences
    z = gaussian_noise(keys, 40, 25, dtype=torch.float64)  # (4, 40, 50, 25): 200k draws
    assert z.shape == (4, 40, 50, 25)
    n = z.numel()
    # Standard errors: mean 1/sqrt(n) = 0.0022, variance sqrt(2/n) = 0.0032; 5 sigma bounds.
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1.0) < 5 * math.sqrt(2 / n)
    assert abs(float((z.abs() > 1.96).double().mean()) - 0.05) < 5 * math.sqrt(0.05 * 0.95 / n)
    flat = z.flatten()
    for a, b in ((flat[:-1], flat[1:]), (z[0].flatten(), z[1].flatten()), (z[:, :, 0].flatten(), z[:, :, 1].flatten())):
        assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 5 / math.sqrt(a.numel())


def test_noise_depends_only_on_seed_epoch_sequence_and_position():
    keys = stream_keys(3, 2, torch.tensor([5, 9]))
    long = gaussian_noise(keys, 30, 4, dtype=torch.float64)
    short = gaussian_noise(keys[1:], 12, 4, dtype=torch.float64)
    assert torch.equal(long[:12, 1:], short)  # other sequences and a longer batch change nothing
    packed = stream_keys(torch.tensor([[3], [4]]), torch.tensor([[2], [2]]), torch.tensor([[5, 9], [5, 9]]))
    assert torch.equal(packed[0], keys) and not torch.equal(packed[1], keys)
    assert not torch.equal(stream_keys(3, 3, torch.tensor([5, 9])), keys)


def test_noise_on_cuda_equals_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    keys = stream_keys(torch.tensor([[1], [2]]), 4, torch.arange(6).expand(2, 6))
    cpu = gaussian_noise(keys, 20, 8, dtype=torch.float32)
    gpu = gaussian_noise(keys.cuda(), 20, 8, dtype=torch.float32).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-6, atol=1e-6)


def test_pack_on_cuda_equals_pack_on_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    cfgs = member_configs("variant=fgr", "train.dtype=float64", members=MEMBERS[:3])
    task = build_task(cfgs[0].task)
    cpu = run_packed(cfgs, task)
    gpu = run_packed([c.replace(train={"device": "cuda"}) for c in cfgs], task)
    for i in range(3):
        assert gpu[0][i].device.startswith("cuda:")
        assert_same_trial((cpu[0][i], cpu[1][i], cpu[2][i]), (gpu[0][i], gpu[1][i], gpu[2][i]), rel=1e-9)


def test_packed_sgd_clips_values_then_norms_per_member_as_torch():
    """``train.clip_value`` (the paper's TIMIT clipping) then ``clip_norm``, per member, against
    torch's clip_grad_value_ / clip_grad_norm_ and SGD on each member alone."""
    from odyssey.packs.optim import PackedSGD

    gen = torch.Generator().manual_seed(0)
    weights = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    grads = 3 * torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    clip_values, clip_norms = [0.5, math.inf, 2.0], [math.inf, 1.0, 1.5]
    packed = weights.clone().requires_grad_(False)
    packed.grad = grads.clone()
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    opt = PackedSGD([packed], step_sizes=f64([0.1, 0.2, 0.3]), momenta=f64([0.0, 0.9, 0.5]),
                    nesterov=torch.tensor([False, True, True]), clip_norms=f64(clip_norms), clip_values=f64(clip_values))  # fmt: skip
    opt.step()
    for m, (step, mu, nesterov) in enumerate([(0.1, 0.0, False), (0.2, 0.9, True), (0.3, 0.5, True)]):
        p = torch.nn.Parameter(weights[m].clone())
        p.grad = grads[m].clone()
        if math.isfinite(clip_values[m]):
            torch.nn.utils.clip_grad_value_([p], clip_values[m])
        if math.isfinite(clip_norms[m]):
            torch.nn.utils.clip_grad_norm_([p], clip_norms[m])
        torch.optim.SGD([p], lr=step, momentum=mu, nesterov=nesterov).step()
        torch.testing.assert_close(packed[m], p.detach(), rtol=1e-12, atol=1e-12)
    assert not torch.equal(packed[0], weights[0] - 0.1 * grads[0])  # the clipping did something
