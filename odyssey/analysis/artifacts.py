"""Log an analysis folder to MLflow: one ``analysis`` run in the study's experiment holding
everything, and each (task, variant) parent search run getting its own figures and tables under
``analysis/``, so both are one click away in the MLflow UI."""

from __future__ import annotations

from pathlib import Path

from odyssey.analysis.study import ROLE_ANALYSIS, Study
from odyssey.errors import ServiceError
from odyssey.tracking import TAG_ROLE, TAG_STUDY


def log_analysis(study: Study, out_dir: Path, pair_files: dict[tuple[str, str], list[Path]]) -> str:
    """Log ``out_dir`` on a new run tagged ``odyssey.role=analysis``; return its run id.

    Args:
        study: the study analysed (experiment and parent runs).
        out_dir: the folder written by the analysis.
        pair_files: per (task, variant), files to log on that pair's parent search run.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=study.tracking_uri)
    try:
        run = client.create_run(
            study.experiment_id,
            run_name="analysis",
            tags={TAG_ROLE: ROLE_ANALYSIS, TAG_STUDY: study.name},
        )
        run_id = run.info.run_id
        client.log_artifacts(run_id, str(out_dir))
        client.set_terminated(run_id)
        for row in study.searches.itertuples(index=False):
            for path in pair_files.get((row.task, row.variant), []):
                client.log_artifact(row.run_id, str(path), artifact_path="analysis")
    except MlflowException as exc:
        raise ServiceError(f"could not log the analysis to {study.tracking_uri}: {exc}") from None
    return run_id
