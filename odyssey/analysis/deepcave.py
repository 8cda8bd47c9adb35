"""Export trials in DeepCAVE's native run format (readable by ``deepcave.runs.converters.deepcave``).

One folder per (task, variant) search, holding the files DeepCAVE's ``Run.load`` reads:

* ``configspace.json`` - a ConfigSpace JSON (format 0.4) of every hyperparameter of the search's
  recorded space (:mod:`odyssey.analysis.space`), named by its config key: ``uniform`` ->
  float, ``loguniform`` -> float on a log scale, ``int`` / ``loguniform_int`` -> integer (log),
  ``one_minus_loguniform`` -> float ``one_minus_<key>`` on a log scale (the paper samples momentum
  as 1 - log-uniform, so this is the coordinate in which it is uniform), ``choice`` ->
  categorical (its choices as numbers when they all are, else as text: ``clip_norm`` is
  ``["None", "1.0", "10.0"]``; booleans ``["True", "False"]``). Bounds are the recorded ones
  (widened to any trial outside them); a study without the record falls back on the paper's
  four with bounds from the trials;
* ``configs.json`` - ``{config_id: {name: value}}``; ``origins.json`` - ``{config_id: origin}``;
* ``meta.json`` - ``{"objectives": [...], "budgets": [...], "seeds": [...]}``; the objectives
  are ``test/<metric>`` and ``val/<metric>`` with ``optimize`` "lower" or "upper";
* ``history.jsonl`` - one JSON list per trial: ``[config_id, budget, seed, costs, start_time,
  end_time, status, additional]`` with DeepCAVE's status codes (1 success, 4 crashed, 5
  aborted). Diverged and failed trials are "crashed" with ``null`` costs (DeepCAVE fills those
  with the worst value), trials stopped early are "aborted". The budget is 1 (one full run).
  Times are seconds since the search's first trial started, as DeepCAVE's own recorder writes.

DeepCAVE itself is not needed to write these. Checked by loading the folders with
``DeepCAVERun.from_path`` in DeepCAVE 1.3.4 and 1.4.1 (ConfigSpace 1.2; DeepCAVE needs Python
< 3.11, so it runs in an environment of its own): configs, costs, statuses, budgets, seeds and
trajectories read back as written. DeepCAVE 1.4.x's loader misplaces the two time fields of every
history row (its own saved runs too), so its cost-over-time views are wrong there; 1.3.4 reads them.
ConfigSpace >= 1.0 rounds float bounds to 13 decimals, so the bounds are rounded outward here:
otherwise the extreme trials fall outside the space and DeepCAVE refuses their configs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from odyssey.analysis.space import KIND_INTEGER, AnalysisSpace, Hyperparameter
from odyssey.tracking import STATUS_COMPLETED, STATUS_INTERRUPTED, STATUS_STOPPED

STATUS_SUCCESS, STATUS_CRASHED, STATUS_ABORTED = 1, 4, 5
FILES = ("configspace.json", "configs.json", "origins.json", "meta.json", "history.jsonl")

def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _export_name(h: Hyperparameter) -> str:
    return f"one_minus_{h.key}" if h.param.dist.startswith("one_minus_") else h.key


def _choices(h: Hyperparameter) -> list:
    values = list(h.param.values)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    return values if numeric else [str(v) for v in values]


def _config_value(h: Hyperparameter, row: pd.Series):
    """The trial's value of ``h`` as the exported space has it (None: missing or off the space)."""
    if h.categorical:
        idx = row.get(h.name)
        return _choices(h)[int(idx)] if idx is not None and math.isfinite(float(idx)) else None
    v = row.get(h.path)
    v = float(v) if v is not None else math.nan
    if h.param.dist.startswith("one_minus_"):
        v = 1.0 - v
    if not math.isfinite(v) or (h.param.dist.startswith(("loguniform", "one_minus_")) and v <= 0):
        return None
    return int(round(v)) if h.kind == KIND_INTEGER else v


def _hyperparameter(h: Hyperparameter, values: list) -> dict:
    name = _export_name(h)
    if h.categorical:
        choices = _choices(h)
        return {"name": name, "type": "categorical", "choices": choices, "default": choices[0], "weights": None}
    integer, log = h.kind == KIND_INTEGER, h.param.dist.startswith(("loguniform", "one_minus_"))
    kind = "uniform_int" if integer else "uniform_float"
    observed = [float(v) for v in values if v is not None]
    lo, hi = (h.param.low, h.param.high) if h.param.low is not None else (None, None)
    if observed:
        lo = min(observed) if lo is None else min(float(lo), min(observed))
        hi = max(observed) if hi is None else max(float(hi), max(observed))
    lo, hi = (1.0, 2.0) if lo is None else (float(lo), float(hi))
    if integer:
        lo, hi = math.floor(lo), math.ceil(hi)
    else:  # outward, at ConfigSpace's 13 decimals (a log scale keeps lo > 0)
        lo_13 = math.floor(lo * 1e13) / 1e13
        lo = lo_13 if (lo_13 > 0 or not log) else lo
        hi = math.ceil(hi * 1e13) / 1e13
    if hi <= lo:  # ConfigSpace needs lower < upper
        hi = lo + (1 if integer else max(abs(lo) * 1e-6, 1e-12))
    default = round(math.sqrt(lo * hi)) if integer and log else round(0.5 * (lo + hi)) if integer else (math.sqrt(lo * hi) if log else 0.5 * (lo + hi))
    hp = {"name": name, "type": kind, "log": log, "lower": lo, "upper": hi, "default": default}
    if not integer:
        hp["q"] = None
    return hp


def _configspace(space: AnalysisSpace, configs: dict[int, dict]) -> dict:
    hps = [_hyperparameter(h, [c[_export_name(h)] for c in configs.values()]) for h in space.hyperparameters]
    return {"hyperparameters": hps, "conditions": [], "forbiddens": [], "python_module_version": "0.6.1", "json_format_version": 0.4}


def export_deepcave(
    trials: pd.DataFrame, out_dir: Path, spaces: Mapping[tuple[str, str], AnalysisSpace] | None = None
) -> list[Path]:
    """Write one DeepCAVE run folder per (task, variant) under ``out_dir/<task>/<variant>``.

    Args:
        trials: ``Study.trials`` (all statuses; each becomes a history entry; a trial without a
            value for some hyperparameter of the space is left out).
        out_dir: where to write.
        spaces: per (task, variant) its hyperparameters (``Study.spaces``); a search missing
            there gets the fallback (the paper's four, bounds from the trials).

    Returns:
        The run folders written.
    """
    written = []
    for (task, variant), g in trials.groupby(["task", "variant"], sort=True):
        space = (spaces or {}).get((task, variant)) or AnalysisSpace.fallback()
        values = [{_export_name(h): _config_value(h, row) for h in space.hyperparameters} for _, row in g.iterrows()]
        keep = [all(v is not None for v in c.values()) for c in values]
        g, values = g[keep], [c for c, k in zip(values, keep) if k]
        if g.empty:
            continue
        metric, lib = str(g["metric"].iloc[0]), bool(g["lower_is_better"].iloc[0])
        folder = Path(out_dir) / str(task) / str(variant)
        folder.mkdir(parents=True, exist_ok=True)
        configs, origins, history, seeds = {}, {}, [], set()
        t0 = float(g["start_time"].min())
        for i, row in enumerate(g.itertuples(index=False)):
            configs[i] = values[i]
            origins[i] = "random"
            seed = int(row.seed) if math.isfinite(row.seed) else 0
            seeds.add(seed)
            ok = row.status == STATUS_COMPLETED
            cut_short = row.status in (STATUS_STOPPED, STATUS_INTERRUPTED)  # not the trial's fault
            status = STATUS_SUCCESS if ok else STATUS_ABORTED if cut_short else STATUS_CRASHED
            costs = [_finite(row.test), _finite(row.val)] if ok else [None, None]
            additional = {"mlflow_run_id": row.run_id, "odyssey_status": row.status}
            end = max(row.end_time, row.start_time)  # a run still open has no end time (0)
            times = [round(row.start_time - t0, 2), round(end - t0, 2)]
            history.append([i, 1.0, seed, costs, *times, status, additional])
        objectives = []
        for name, col in ((f"test/{metric}", "test"), (f"val/{metric}", "val")):
            vals = g.loc[g["status"] == STATUS_COMPLETED, col].astype(float)  # the trials with costs
            vals = vals[vals.map(math.isfinite)]
            objectives.append(
                {
                    "name": name,
                    "lower": float(vals.min()) if len(vals) else None,
                    "upper": float(vals.max()) if len(vals) else None,
                    "lock_lower": False,
                    "lock_upper": False,
                    "optimize": "lower" if lib else "upper",
                }
            )
        meta = {"objectives": objectives, "budgets": [1.0], "seeds": sorted(seeds), "task": task, "variant": variant}
        (folder / "configspace.json").write_text(json.dumps(_configspace(space, configs), indent=2))
        (folder / "configs.json").write_text(json.dumps(configs, indent=2))
        (folder / "origins.json").write_text(json.dumps(origins, indent=2))
        (folder / "meta.json").write_text(json.dumps(meta, indent=2))
        with open(folder / "history.jsonl", "w") as fh:
            for entry in history:
                fh.write(json.dumps(entry) + "\n")
        written.append(folder)
    return written
