"""Log an analysis folder to MLflow: one ``analysis`` run in the study's experiment holding
everything, and each (task, variant) parent search run getting its own figures and tables under
``analysis/``, so both are one click away in the MLflow UI."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from odyssey.analysis.study import Study
from odyssey.errors import ServiceError
from odyssey.run_schema import ROLE_ANALYSIS, TAG_ROLE, TAG_STUDY


RESULTS_TABLE = "results_table.json"  # the analysis run's results as one table (MLflow's table artifact)
WELCH_METRICS = ("mean", "median", "p_value", "p_holm", "effect", "effect_low", "effect_high")
PAIRED_METRICS = ("n_pairs", "p_value", "p_holm", "effect", "effect_low", "effect_high", "median_diff", "worse_pairs", "pairs_needed")


def result_metrics(comparison: pd.DataFrame, fanova_table: pd.DataFrame) -> dict[tuple[str, str], dict[str, float]]:
    """The analysis results as MLflow metrics, per (task, variant), so that MLflow charts and
    compares them across searches and studies:

    * Welch rows, per subset (``all``, ``top10``): ``analysis/<subset>/<name>`` for ``WELCH_METRICS``
      (mean, median, p_value, p_holm, effect = difference of means, effect_low/high);
    * paired rows, per subset (``all``, ``top50``): ``analysis/paired/<subset>/<name>`` for
      ``PAIRED_METRICS`` (n_pairs, p_value, p_holm, effect = Hodges-Lehmann, effect_low/high,
      median_diff, worse_pairs, pairs_needed);
    * ``.../significant`` (``p_holm < alpha``, as 1/0) wherever there is a p-value;
    * ``analysis/fanova/<key>`` with its spread over the forest's trees ``analysis/fanova/<key>/std``.

    Values that are missing (no test, no pairs) are not logged."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for r in comparison.to_dict(orient="records"):
        m = out.setdefault((r["task"], r["variant"]), {})
        paired = r.get("test", "welch") != "welch"
        prefix = f"analysis/paired/{r['subset']}" if paired else f"analysis/{r['subset']}"
        for name in PAIRED_METRICS if paired else WELCH_METRICS:
            value = r.get(name)
            if value is not None and np.isfinite(float(value)):
                m[f"{prefix}/{name}"] = float(value)
        if r["p_value"] is not None and np.isfinite(float(r["p_value"])):
            m[f"{prefix}/significant"] = float(bool(r["significant"]))
    for r in fanova_table.itertuples(index=False):
        if not r.key or not np.isfinite(float(r.fraction)):
            continue
        key = _metric_name(r.key)
        m = out.setdefault((r.task, r.variant), {})
        m[f"analysis/fanova/{key}"] = float(r.fraction)
        if np.isfinite(float(r.std)):
            m[f"analysis/fanova/{key}/std"] = float(r.std)
    return out


def _metric_name(text: str) -> str:
    """MLflow metric names take letters, digits, ``_-. /``: anything else becomes ``_``."""
    return re.sub(r"[^\w\-. /]", "_", text).strip()


def log_analysis(
    study: Study, out_dir: Path, pair_files: dict[tuple[str, str], list[Path]], metrics: dict[tuple[str, str], dict[str, float]]
) -> str:
    """Log ``out_dir`` on a new run tagged ``odyssey.role=analysis``; return its run id.

    Args:
        study: the study analysed (experiment and parent runs).
        out_dir: the folder written by the analysis.
        pair_files: per (task, variant), files to log on that pair's parent search run.
        metrics: per (task, variant), :func:`result_metrics`: logged on that pair's parent run
            as they are (``analysis/<name>``: one chart per name, a bar per search), and on the
            analysis run under the one prefix ``analysis/<task>/<variant>/<name>`` (one section
            of MLflow's charts and columns, apart from the trials' metrics) and as the table artifact
            ``RESULTS_TABLE`` (columns task, variant, metric, value).
    """
    from mlflow.entities import Metric
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
        now = int(time.time() * 1000)
        rows = [
            (task, variant, name.removeprefix("analysis/"), value)
            for (task, variant), values in metrics.items()
            for name, value in values.items()
        ]
        flat = [Metric(f"analysis/{task}/{variant}/{name}", value, now, 0) for task, variant, name, value in rows]
        for i in range(0, len(flat), 1000):
            client.log_batch(run_id, metrics=flat[i : i + 1000])
        table = pd.DataFrame(rows, columns=["task", "variant", "metric", "value"])
        client.log_table(run_id, data=table, artifact_file=RESULTS_TABLE)
        client.log_artifacts(run_id, str(out_dir))
        client.set_terminated(run_id)
        for row in study.searches.itertuples(index=False):
            for path in pair_files.get((row.task, row.variant), []):
                client.log_artifact(row.run_id, str(path), artifact_path="analysis")
            own = [Metric(k, v, now, 0) for k, v in metrics.get((row.task, row.variant), {}).items()]
            if own:
                client.log_batch(row.run_id, metrics=own)
    except MlflowException as exc:
        raise ServiceError(f"could not log the analysis to {study.tracking_uri}: {exc}") from None
    return run_id
