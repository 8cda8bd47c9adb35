"""What a user sees: the MLflow UI in headless Chromium (skipped where Chromium is absent;
`apt-get install chromium` on Debian). The URL odyssey prints must open the model-training view,
where the study's runs are listed; MLflow 3's default experiment URL opens its GenAI view,
which shows "No data" for a study (what issue 11 measured)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (apt-get install chromium)")]


def render(url: str, screenshot=None) -> str:
    """The page's DOM after its scripts ran (and a PNG screenshot, if asked)."""
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000", "--window-size=1600,1000"]
    if screenshot is not None:
        subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True)
    return subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout


def test_the_printed_url_opens_the_model_training_view_with_the_study(mlflow_server, tmp_path):
    from odyssey.config import compose, trial_config
    from odyssey.sweep import mlflow_runs
    from odyssey.tracking import MlflowTrialLogger, experiment_url, trial_run_name

    name = "ui-study"
    exp = mlflow_runs.ensure_experiment(mlflow_server, name)
    parent = mlflow_runs.start_parent_run(mlflow_server, exp, study=name, task="adding", variant="vanilla", tags={}, resume=False)
    cfg = trial_config(compose("train", []))
    logger = MlflowTrialLogger.start(mlflow_server, name, cfg, tags={"odyssey.role": "trial"}, parent_run_id=parent,
                                     run_name=trial_run_name("vanilla", "abc_00007"))  # fmt: skip
    logger.finish(None, "completed")

    url = experiment_url(mlflow_server, exp)
    assert url.endswith(f"/#/experiments/{exp}?workflowType=machine_learning")
    page = render(url, screenshot=tmp_path / "runs.png")
    assert "adding/vanilla" in page and "matching runs" in page and "Model training" in page
    png = (tmp_path / "runs.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    default = render(f"{mlflow_server}/#/experiments/{exp}")  # MLflow's own link: the GenAI view
    assert "adding/vanilla" not in default and "No data" in default
