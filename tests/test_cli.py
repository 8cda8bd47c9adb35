"""The command line as users meet it: every command's --help, Hydra's --cfg job, --dry-run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from odyssey.cli import COMMANDS, main
from odyssey.config import SWEEP_GROUPS, TRAIN_GROUPS, compose, config_dir, trial_config

ROOT = Path(__file__).resolve().parents[1]


def help_exit_code(command: str) -> int:
    """``odyssey COMMAND --help``'s exit code (argparse commands exit through SystemExit)."""
    try:
        return main([command, "--help"])
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    assert help_exit_code(command) == 0
    out = capsys.readouterr().out
    assert "usage" in out.lower(), out
    if command in ("train", "sweep", "submit"):  # the config groups, with their options
        groups = TRAIN_GROUPS if command == "train" else SWEEP_GROUPS
        for group in groups:
            options = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
            assert any(line.split()[:1] == [group] and ", ".join(options) in line for line in out.splitlines()), (group, out)


@pytest.mark.parametrize("config, overrides", [("train", ["variant=[np,cifg]", "train.lr=0.003"]), ("sweep", ["experiment=quickstart"])])
def test_cfg_job_prints_yaml_that_composes_again(config, overrides, tmp_path, capsys, monkeypatch):
    command = "train" if config == "train" else "sweep"
    assert main([command, "--cfg", "job", *overrides]) == 0
    printed = capsys.readouterr().out
    original = compose(config, overrides)
    assert OmegaConf.create(printed) == original
    # saved as a config file of its own, it composes to the same trial
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / f"{config}.yaml").write_text(printed)
    monkeypatch.setenv("ODYSSEY_CONFIG_PATH", str(conf))
    assert trial_config(compose(config, [])) == trial_config(original)


def test_only_cfg_job_is_supported():
    from odyssey.errors import ConfigError
    from odyssey.run_train import main as train_main

    with pytest.raises(ConfigError, match="only --cfg job is supported"):
        train_main(["--cfg", "hydra"])


def test_dry_run_shows_the_study_and_starts_no_ray(tmp_path):
    """In a fresh interpreter: the study is checked and shown, and Ray is never imported."""
    code = (
        "import sys; from odyssey.sweep.cli import sweep_main; "
        f"rc = sweep_main(['experiment=odyssey_jsb', 'study.storage_path={tmp_path}', '--dry-run']); "
        "print('RAY_IMPORTED', 'ray' in sys.modules); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "study 'odyssey_jsb': 9 search(es) x 200 trial(s) = 1800 trials, up to 150 epochs each" in text
    assert "jsb/cifg (val/nll, min)" in text and "train.lr ~ loguniform[1e-06, 0.01]" in text
    assert "RAY_IMPORTED False" in text
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    "extra, words",
    [
        (["ray.address=foo"], r"ray.address='foo' is invalid: expected HOST:PORT, ray://HOST:PORT, auto or null"),
        (["train.device=cuda"], r"train.device='cuda' is invalid: CUDA is not available on this machine \(the sweep starts a local Ray runtime\)"),
        (["train.device=cuda", "ray.address=127.0.0.1:1"], r"the trials reserve no GPU \(execution.gpu=0\)"),
    ],
)
def test_dry_run_refuses_what_the_real_run_refuses(tmp_path, extra, words):
    """#20: every check that needs no running cluster runs in --dry-run too (measured: ray.address=foo
    and train.device=cuda passed --dry-run; the real run refused them)."""
    import torch

    from odyssey.sweep.cli import sweep_main

    if torch.cuda.is_available() and "ray.address=foo" not in extra:
        pytest.skip("checks a machine without CUDA")
    from odyssey.errors import ConfigError

    with pytest.raises(ConfigError, match=words):
        sweep_main(["experiment=quickstart", f"study.storage_path={tmp_path}", *extra, "--dry-run"])
    assert not any(tmp_path.iterdir())


def test_dry_run_needs_no_data_and_warns_where_the_real_run_refuses(tmp_path, capsys):
    from odyssey.errors import DataError
    from odyssey.sweep.cli import sweep_main

    missing = tmp_path / "no_jsb_here"
    overrides = ["experiment=odyssey_jsb", f"task.data_dir={missing}", f"study.storage_path={tmp_path / 'r'}",
                 f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]  # fmt: skip
    assert sweep_main([*overrides, "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "study 'odyssey_jsb': 9 search(es) x 200 trial(s)" in out and "jsb/cifg (metric known once its data is found)" in out
    (warning,) = [line for line in err.splitlines() if line.startswith("warning:")]
    assert "task jsb: its data cannot be read, so the real run will refuse it" in warning and str(missing) in warning
    with pytest.raises(DataError, match=str(missing)):
        sweep_main(overrides)
    assert not (tmp_path / "mlflow.db").exists()  # refused before any record


def test_a_bare_sweep_starts_nothing_and_says_what_to_choose(capsys, tmp_path, monkeypatch):
    """#23: a bare `odyssey sweep` started the default study (10 trials of up to 150 epochs)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ODYSSEY_OVERRIDES", raising=False)
    assert main(["sweep"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: odyssey sweep experiment=NAME") and "quickstart" in err and "odyssey_jsb" in err
    assert "the default study 'odyssey' would run 1 search(es) x 10 trials of up to 150 epochs" in err
    assert not any(tmp_path.iterdir())  # no MLflow store, no Ray results


@pytest.mark.parametrize("cap, packs, members", [(None, 1, 8), (2, 1, 2), (5, 2, 2), (1, 1, 1)])
def test_max_concurrent_trials_caps_a_search_s_packs(tmp_path, cap, packs, members):
    """#23: study.max_concurrent_trials was shown by --cfg job and ignored by packs (16 trials ran at
    once under a cap of 2). It caps each search's packs x members."""
    from odyssey.sweep.study import load_sweep

    extra = [] if cap is None else [f"study.max_concurrent_trials={cap}"]
    sweep = load_sweep(["experiment=quickstart", "execution=pack", "execution.packs=2" if cap == 5 else "execution.packs=1",
                        f"study.storage_path={tmp_path}", *extra])  # fmt: skip
    assert (sweep.execution.packs, sweep.execution.members) == (packs, members)
    assert sweep.execution.packs * sweep.execution.members <= (cap or 8)
