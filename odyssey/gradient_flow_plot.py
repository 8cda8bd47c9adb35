"""``odyssey plot gradient-flow``: the vanishing gradient of chosen variants on a task, as a PNG.

    odyssey plot gradient-flow --variants rnn,vanilla,lstm1997 task=adding task.length=100 \\
        --train-epochs 2 --out gradient_flow.png

One line per variant and stage (solid: at initialisation; dashed: after ``--train-epochs`` epochs
of ``odyssey train``'s protocol): the mean over validation sequences of ||d loss / d x_t||
against the lag T - t, on a log scale (an exponential decay is a straight line). The title names
the task, its length, H and the learning rate; the curves are also written as CSV beside the PNG
(``<out>.csv``: variant, stage, params_count, lag, grad_norm). The PNG is also logged to MLflow
(one run in ``tracking.experiment``, with the curves as metrics ``grad_norm/<variant>/<stage>``
stepped by lag) unless ``tracking.enabled=false``.

The command's own defaults (:data:`PLOT_DEFAULTS`: H = 20, lr = 1e-2; ``KEY=VALUE`` overrides
beat them) are the setting in which the figure shows what the README describes; at ``odyssey
train``'s own H = 100 and lr = 1e-3 the simple RNN's curve lies above vanilla LSTM's (the README
gives both measurements).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from pathlib import Path
from typing import Sequence

from odyssey.config import TRAIN_GROUPS, TrackingConfig, compose, compose_trial, groups_help, typed
from odyssey.errors import ConfigError, ServiceError

__all__ = ["main", "plot_gradient_flow"]

DEFAULT_VARIANTS = ["rnn", "vanilla", "lstm1997"]
# Overrides the command applies before the user's (so KEY=VALUE beats them): see the module docstring.
PLOT_DEFAULTS = ["model.hidden_size=20", "train.lr=1e-2"]


def plot_gradient_flow(curves, path: Path, *, title: str) -> Path:
    """Draw :class:`~odyssey.gradient_flow.GradientCurve` s (norm against lag, log y) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {}
    for c in curves:
        colour = colours.setdefault(c.variant, f"C{len(colours)}")
        norms = c.norms.numpy()
        lags = range(len(norms))
        positive = norms > 0  # a gradient that underflowed to 0 has no place on a log axis
        ax.semilogy([k for k, p in zip(lags, positive) if p], norms[positive], color=colour,
                    linestyle="-" if c.stage == "initialisation" else "--",
                    label=f"{c.variant} ({c.params_count} params), {c.stage}")  # fmt: skip
    ax.set_xlabel("lag T - t (steps before the scored last step)")
    ax.set_ylabel("mean ||d loss / d x_t||")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png", metadata={"Title": title})  # also the PNG's own title
    plt.close(fig)
    return path


def write_curves_csv(curves, path: Path) -> Path:
    """The curves as a long table: one row per (variant, stage, lag) with ``grad_norm`` (0 where
    the gradient underflowed: left off the log-scale figure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["variant", "stage", "params_count", "lag", "grad_norm"])
        for c in curves:
            out.writerows([c.variant, c.stage, c.params_count, k, repr(float(v))] for k, v in enumerate(c.norms.tolist()))
    return path


def figure_title(cfg) -> str:
    """What the curves depend on: the task (and its length), the hidden size H, the learning rate
    and the training epochs; e.g. ``gradient flow on adding (T >= 100), H = 20, lr = 0.01``."""
    t = cfg.task
    length = f" (T >= {t.length})" if hasattr(t, "length") else ""
    return f"gradient flow on {t.name}{length}, H = {cfg.model.hidden_size}, lr = {cfg.train.lr:g}"


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.strip("[]").split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected variant names such as rnn,vanilla; got {text!r}")
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="odyssey plot gradient-flow",
        description="Norm of d loss / d x_t against the lag T - t (log scale) for chosen variants on a task, "
        "at initialisation and after a short training; writes a PNG and logs it to MLflow.",
        epilog="KEY=VALUE: Hydra overrides of conf/train.yaml applied to every variant (task=..., task.length=..., "
        "model.*, train.*, seed, tracking.*; tracking.enabled=false: no MLflow). This command's own defaults, "
        f"which they override: {' '.join(PLOT_DEFAULTS)}.\n" + groups_help(TRAIN_GROUPS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--variants", type=_names, default=DEFAULT_VARIANTS, metavar="A,B,...",
                        help=f"variants (conf/variant names, comma-separated), one curve each (default: {','.join(DEFAULT_VARIANTS)})")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("gradient_flow.png"),
                        help="the PNG (default: gradient_flow.png); the curves go to the same name with .csv")  # fmt: skip
    parser.add_argument("--train-epochs", type=int, default=0, metavar="N", help="also measure after N epochs of training (default: 0)")
    parser.add_argument("--sequences", type=int, default=32, metavar="N", help="validation sequences averaged over (default: 32)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return parser


def main(argv: Sequence[str]) -> int:
    """``odyssey plot WHAT ...``: the only figure so far is ``gradient-flow``."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: odyssey plot gradient-flow [--variants A,B,...] [--out FILE] [--train-epochs N] [KEY=VALUE ...]\n"
              "  figures: gradient-flow (see `odyssey plot gradient-flow --help`)")  # fmt: skip
        return 0
    if argv[0] != "gradient-flow":
        print(f"odyssey plot: unknown figure {argv[0]!r}; valid figures: gradient-flow", file=sys.stderr)
        return 2
    args = _parser().parse_intermixed_args(argv[1:])
    if args.train_epochs < 0 or args.sequences < 1:
        raise ConfigError(f"--train-epochs={args.train_epochs} / --sequences={args.sequences} is invalid: expected N >= 0 / N >= 1")
    if any(o.split("=", 1)[0].lstrip("+~") == "variant" for o in args.overrides):
        raise ConfigError("variant=... is invalid here: name the variants with --variants rnn,vanilla "
                          "(variant=[a,b] would combine a and b into one variant)")  # fmt: skip
    return run(args.variants, args.overrides, out=args.out, train_epochs=args.train_epochs, sequences=args.sequences)


def run(variants: Sequence[str], overrides: Sequence[str], *, out: Path, train_epochs: int, sequences: int) -> int:
    from odyssey.gradient_flow import gradient_flow
    from odyssey.tasks import build_task

    overrides = [*PLOT_DEFAULTS, *overrides]  # Hydra: the last value of a key wins
    configs = [compose_trial("train", [*overrides, f"variant={v}"])[1] for v in variants]
    tracking = typed(compose("train", list(overrides)).get("tracking"), TrackingConfig, "tracking")
    task = build_task(configs[0].task)
    title = figure_title(configs[0])

    def say(text: str) -> None:  # progress: one line per stage and epoch (training takes minutes)
        print(f"gradient flow: {text}", file=sys.stderr, flush=True)

    say(f"{title}; {len(variants)} variant(s), {train_epochs} training epoch(s) each")
    curves, start = [], time.monotonic()
    for i, cfg in enumerate(configs, 1):
        label = f"[{i}/{len(configs)}] {cfg.variant.label()}"
        say(f"{label}: measuring at initialisation" + (f", then training {train_epochs} epoch(s)" if train_epochs else ""))

        def progress(report, label=label) -> None:
            val = ", ".join(f"{k} {v:.4g}" for k, v in report.metrics.items() if k.startswith("val/"))
            say(f"{label}: epoch {report.epoch}/{train_epochs} ({val}), {time.monotonic() - start:.0f} s in")

        curves += gradient_flow(cfg, task, train_epochs=train_epochs, sequences=sequences, on_epoch=progress)
    title += f", {train_epochs} epoch(s) of training" if train_epochs else ""
    plot_gradient_flow(curves, out, title=title)
    table = write_curves_csv(curves, out.with_suffix(".csv"))
    print(f"wrote {out} and {table} ({time.monotonic() - start:.0f} s)")
    if tracking.enabled:
        setting = {"model.hidden_size": configs[0].model.hidden_size, "train.lr": configs[0].train.lr}
        _log_to_mlflow(tracking, curves, [out, table], variants=variants, task=configs[0].task.name, train_epochs=train_epochs, setting=setting)
    return 0


def _metric_key(curve) -> str:
    """``grad_norm/<variant>/init`` or ``.../trained`` (characters MLflow refuses in a key become _)."""
    variant = re.sub(r"[^\w.-]", "_", curve.variant)
    return f"grad_norm/{variant}/{'init' if curve.stage == 'initialisation' else 'trained'}"


def _log_to_mlflow(
    tracking: TrackingConfig, curves, files: Sequence[Path], *, variants, task: str, train_epochs: int, setting: dict
) -> None:
    """One run (role ``plot``) in ``tracking.experiment``: the PNG and CSV, the curves as metrics, the inputs as params."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from odyssey.run_schema import ROLE_PLOT, TAG_ROLE, TAG_TASK
    from odyssey.tracking import get_or_create_experiment

    uri = tracking.resolved_uri(Path.cwd())
    try:
        client = MlflowClient(uri)
        run = client.create_run(get_or_create_experiment(client, tracking.experiment), run_name=f"gradient-flow-{task}",
                                tags={TAG_ROLE: ROLE_PLOT, TAG_TASK: task})  # fmt: skip
        run_id = run.info.run_id
        params = [Param("variants", ",".join(variants)), Param("task", task), Param("train_epochs", str(train_epochs))]
        params += [Param(k, str(v)) for k, v in setting.items()]
        metrics = [
            Metric(_metric_key(c), float(v), 0, k)
            for c in curves for k, v in enumerate(c.norms.tolist()) if v > 0
        ]  # fmt: skip
        client.log_batch(run_id, params=params)
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i : i + 1000])
        for f in files:
            client.log_artifact(run_id, str(f))
        client.set_terminated(run_id)
    except Exception as exc:  # connection refused, bad URI, server error
        raise ServiceError(f"cannot log the plot to MLflow at {uri!r}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from None
    print(f"MLflow: run {run_id} in experiment {tracking.experiment!r} at {uri}", file=sys.stderr)
