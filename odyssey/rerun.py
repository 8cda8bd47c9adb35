"""``odyssey train --from-run RUN_ID``: rebuild a recorded trial from its MLflow run, train it
again, and say whether its numbers came out equal.

The trial's config is the run's ``config.yaml`` artifact (:func:`odyssey.tracking.config_yaml`:
every section, the sampled values and the seed); ``key=value`` overrides go on top
(``train.max_epochs=300`` continues a promising trial past its budget). Training is deterministic
(on the CPU bit for bit, whatever pack the trial ran in), so the rebuilt trial retraces the
recorded one epoch by epoch and then goes on: the comparison covers every epoch both have, and,
when the config is unchanged, the final metrics too. Equality is exact (``==``), as recorded by
MLflow (float64); a run recorded on another kind of machine (``odyssey.machine_kind``) may differ,
and the report says so.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from odyssey.errors import ConfigError, NotFoundError
from odyssey.run_schema import CONFIG_ARTIFACT, ROLE_TRAIN, ROLE_TRIAL, TAG_MACHINE_KIND, TAG_ROLE

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

    from odyssey.config import TrialConfig
    from odyssey.train import TrialResult

__all__ = ["Comparison", "compare_with_run", "rebuilt_config", "recorded_trial"]

REBUILDABLE_ROLES = (ROLE_TRIAL, ROLE_TRAIN)


def recorded_trial(client: "MlflowClient", run_id: str, overrides: Sequence[str] = ()):
    """``(run, TrialConfig)``: the run and its trial's config with ``overrides`` (``key=value``)
    applied. One :class:`~odyssey.errors.OdysseyError` line when the run is missing or is not an
    odyssey trial."""
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise NotFoundError(f"no MLflow run {run_id!r} at {client.tracking_uri}: {str(exc).splitlines()[0]}") from None
    role = run.data.tags.get(TAG_ROLE)
    if role not in REBUILDABLE_ROLES:
        raise ConfigError(
            f"run {run_id} is not an odyssey trial (its {TAG_ROLE} tag is {role!r}; runs that can be rebuilt: "
            f"{', '.join(REBUILDABLE_ROLES)})"
        )
    with tempfile.TemporaryDirectory(prefix="odyssey-rerun-") as folder:
        try:
            path = client.download_artifacts(run_id, CONFIG_ARTIFACT, folder)
            text = Path(path).read_text()
        except Exception:
            raise ConfigError(f"run {run_id} ({role}) has no {CONFIG_ARTIFACT} artifact to rebuild its trial from") from None
    return run, rebuilt_config(text, overrides)


def rebuilt_config(text: str, overrides: Sequence[str] = ()) -> "TrialConfig":
    """The trial config of a ``config.yaml`` text with ``key=value`` overrides (values parsed as
    YAML: ``30``, ``1e-3``, ``null``); a key the trial does not have is a ConfigError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from odyssey.config import trial_config

    cfg = OmegaConf.create(text)
    OmegaConf.set_struct(cfg, True)  # an override of a key the trial does not have is an error
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key or key.startswith(("+", "~")):
            raise ConfigError(f"--from-run takes key=value overrides of the trial's config; got {item!r}")
        try:
            OmegaConf.update(cfg, key, OmegaConf.create(f"v: {value}")["v"], merge=False)
        except OmegaConfBaseException:
            sections = ", ".join(sorted(cfg))
            raise ConfigError(f"--from-run: the trial's config has no key {key!r} (sections: {sections})") from None
    return trial_config(cfg)


@dataclass
class Comparison:
    """The rebuilt trial against its record: ``differences`` (empty: equal), what was compared."""

    epochs_compared: int
    finals_compared: bool
    differences: list[str] = field(default_factory=list)
    recorded_kind: str | None = None
    kind_here: str | None = None

    @property
    def equal(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        what = f"{self.epochs_compared} epoch(s)" + (" and the final metrics" if self.finals_compared else "")
        if self.equal:
            return f"reproduced: every recorded metric of {what} is equal"
        lines = [f"NOT reproduced: {len(self.differences)} of the recorded metrics of {what} differ, first: {self.differences[0]}"]
        if self.recorded_kind and self.kind_here and self.recorded_kind != self.kind_here:
            lines.append(f"  (recorded on {self.recorded_kind!r}, rerun on {self.kind_here!r}: another kind of machine)")
        return "\n".join(lines)


def compare_with_run(client: "MlflowClient", run, epochs: list[dict[str, float]], result: "TrialResult", *, same_config: bool) -> Comparison:
    """Compare per-epoch metrics ``epochs`` (epoch 1 first) and, with ``same_config``, the final
    metrics of ``result`` with those recorded in ``run``."""
    run_id = run.info.run_id
    per_epoch = [k for k in run.data.metrics if k.startswith(("train/", "val/"))]
    history = {k: {m.step: m.value for m in client.get_metric_history(run_id, k)} for k in per_epoch}
    recorded_epochs = max((max(h, default=0) for h in history.values()), default=0)
    n = min(recorded_epochs, len(epochs))
    diffs = []
    if len(epochs) < recorded_epochs:
        diffs.append(f"the rerun trained {len(epochs)} epoch(s), the record has {recorded_epochs}")
    for epoch in range(1, n + 1):
        mine = epochs[epoch - 1]
        for key in sorted(history):
            recorded, now = history[key].get(epoch), mine.get(key)
            if recorded is None or now is None or not _same(recorded, now):
                diffs.append(f"{key} at epoch {epoch}: recorded {recorded!r}, now {now!r}")
    if same_config:
        for key, now in result.final_metrics().items():
            recorded = run.data.metrics.get(key)
            if recorded is None or not _same(recorded, float(now)):
                diffs.append(f"{key}: recorded {recorded!r}, now {float(now)!r}")
    return Comparison(n, same_config, diffs, run.data.tags.get(TAG_MACHINE_KIND), result.provenance.get(TAG_MACHINE_KIND))


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))
