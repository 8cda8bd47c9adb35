"""Export trials in DeepCAVE's native run format (readable by ``deepcave.runs.converters.deepcave``).

One folder per (task, variant) search, holding the files DeepCAVE's ``Run.load`` reads:

* ``configspace.json`` - a ConfigSpace JSON (format 0.4): ``hidden_size`` (integer, log),
  ``lr`` (float, log), ``one_minus_momentum`` (float, log; the paper samples momentum as
  1 - log-uniform, so this is the coordinate in which it is uniform) and ``input_noise`` (float),
  with bounds from the trials;
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
from pathlib import Path

import pandas as pd

from odyssey.tracking import STATUS_COMPLETED, STATUS_INTERRUPTED, STATUS_STOPPED

STATUS_SUCCESS, STATUS_CRASHED, STATUS_ABORTED = 1, 4, 5
FILES = ("configspace.json", "configs.json", "origins.json", "meta.json", "history.jsonl")

# exported name -> (column, ConfigSpace type, log scale)
_HYPERPARAMETERS = {
    "hidden_size": ("hidden_size", "uniform_int", True),
    "lr": ("lr", "uniform_float", True),
    "one_minus_momentum": ("one_minus_momentum", "uniform_float", True),
    "input_noise": ("input_noise", "uniform_float", False),
}


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _configspace(df: pd.DataFrame) -> dict:
    hps = []
    for name, (col, kind, log) in _HYPERPARAMETERS.items():
        vals = df[col].astype(float)
        vals = vals[vals.map(math.isfinite) & ((vals > 0) if log else True)]
        lo, hi = (float(vals.min()), float(vals.max())) if len(vals) else (1.0, 2.0)
        if kind == "uniform_int":
            lo, hi = math.floor(lo), math.ceil(hi)
        else:  # outward, at ConfigSpace's 13 decimals (a log scale keeps lo > 0)
            lo_13 = math.floor(lo * 1e13) / 1e13
            lo = lo_13 if (lo_13 > 0 or not log) else lo
            hi = math.ceil(hi * 1e13) / 1e13
        if hi <= lo:  # ConfigSpace needs lower < upper
            hi = lo + (1 if kind == "uniform_int" else max(abs(lo) * 1e-6, 1e-12))
        default = round(math.sqrt(lo * hi)) if kind == "uniform_int" else (math.sqrt(lo * hi) if log else 0.5 * (lo + hi))
        hp = {"name": name, "type": kind, "log": log, "lower": lo, "upper": hi, "default": default}
        if kind == "uniform_float":
            hp["q"] = None
        hps.append(hp)
    return {"hyperparameters": hps, "conditions": [], "forbiddens": [], "python_module_version": "0.6.1", "json_format_version": 0.4}


def _config(row) -> dict:
    out = {}
    for name, (col, kind, _) in _HYPERPARAMETERS.items():
        v = float(getattr(row, col))
        out[name] = int(round(v)) if kind == "uniform_int" else v
    return out


def export_deepcave(trials: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write one DeepCAVE run folder per (task, variant) under ``out_dir/<task>/<variant>``.

    Args:
        trials: ``Study.trials`` (all statuses; each becomes a history entry).
        out_dir: where to write.

    Returns:
        The run folders written.
    """
    written = []
    for (task, variant), g in trials.groupby(["task", "variant"], sort=True):
        g = g.assign(one_minus_momentum=1.0 - g["momentum"].astype(float))
        g = g[g[["hidden_size", "lr", "one_minus_momentum", "input_noise"]].astype(float).map(math.isfinite).all(axis=1)]
        if g.empty:
            continue
        metric, lib = str(g["metric"].iloc[0]), bool(g["lower_is_better"].iloc[0])
        folder = Path(out_dir) / str(task) / str(variant)
        folder.mkdir(parents=True, exist_ok=True)
        configs, origins, history, seeds = {}, {}, [], set()
        t0 = float(g["start_time"].min())
        for i, row in enumerate(g.itertuples(index=False)):
            configs[i] = _config(row)
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
        (folder / "configspace.json").write_text(json.dumps(_configspace(g), indent=2))
        (folder / "configs.json").write_text(json.dumps(configs, indent=2))
        (folder / "origins.json").write_text(json.dumps(origins, indent=2))
        (folder / "meta.json").write_text(json.dumps(meta, indent=2))
        with open(folder / "history.jsonl", "w") as fh:
            for entry in history:
                fh.write(json.dumps(entry) + "\n")
        written.append(folder)
    return written
