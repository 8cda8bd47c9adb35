"""The GPU machines lent to this project have torch, numpy and pytest (plus the small hydra-core,
omegaconf and antlr4 wheels) but no Ray, MLflow, Optuna or audio libraries. What runs there (the
cells, ``train_trial``, ``train_pack``, the gradient flow and ``odyssey bench study``'s arms) must
work with those imports blocked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCKED = ("ray", "mlflow", "optuna", "librosa", "soundfile", "matplotlib")

CODE = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError("not on the GPU machine: " + name)
sys.meta_path.insert(0, Block())

import torch
from odyssey.config import compose, trial_config
from odyssey.tasks import build_task
from odyssey.train import train_trial
from odyssey.packs import train_pack
from odyssey.gradient_flow import input_gradient_norms
from odyssey.bench_study import sample_trials

small = ["task=adding", "task.length=10", "task.num_train=8", "task.num_valid=4", "task.num_test=4",
         "model.hidden_size=4", "train.max_epochs=1", "train.batch_size=4"]
for variant in ("vanilla", "gru", "rnn"):
    cfg = trial_config(compose("sweep", [*small, f"variant={{variant}}"]))
    task = build_task(cfg.task)
    alone = train_trial(cfg, task=task)
    packed = train_pack([cfg, cfg.replace(seed=1)], task=task)
    a, p = alone.final_metrics(), packed[0].final_metrics()
    assert a.keys() == p.keys() and all(abs(p[k] - a[k]) <= 1e-4 * max(1.0, abs(a[k])) for k in a), (variant, p, a)
x = torch.randn(6, 2, 3)
norms = input_gradient_norms(lambda v: (v[-1] ** 2).sum(), x)  # only the last step is scored
assert norms.shape == (6,) and norms[0] > 0 and torch.all(norms[1:] == 0), norms
print("JSB ARMS", len(sample_trials(2, epochs=1)))
print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r}))
"""


def test_the_gpu_side_needs_no_ray_mlflow_or_audio_libraries():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "JSB ARMS 2" in out.stdout and "LOADED []" in out.stdout, out.stdout
