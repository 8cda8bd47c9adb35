"""The ``odyssey`` command. Each subcommand is a ``main(argv) -> int`` in its own module,
imported only when used (so ``odyssey bench`` does not pay for Ray or MLflow)."""

from __future__ import annotations

import importlib
import sys

from odyssey.errors import OdysseyError

__all__ = ["main"]

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("odyssey.run_train:main", "train one trial (Hydra overrides of conf/train.yaml)"),
    "sweep": ("odyssey.sweep.cli:sweep_main", "run a study on Ray Tune (experiment=<name> [overrides])"),
    "submit": ("odyssey.sweep.jobs:submit_main", "submit a study to a Ray cluster as a Ray Job"),
    "jobs": ("odyssey.sweep.jobs:jobs_main", "list the cluster's Ray Jobs"),
    "logs": ("odyssey.sweep.jobs:logs_main", "print (or follow) a Ray Job's logs: odyssey logs ID"),
    "stop": ("odyssey.sweep.jobs:stop_main", "stop a Ray Job: odyssey stop ID"),
    "status": ("odyssey.sweep.jobs:status_main", "a Ray Job's status: odyssey status ID"),
    "analyze": ("odyssey.analysis.cli:main", "variant comparison and fANOVA report of a study"),
    "export": ("odyssey.analysis.optuna_export:main", "a study for other tools: odyssey export optuna STUDY [--storage URL]"),
    "plot": ("odyssey.gradient_flow_plot:main", "figures: odyssey plot gradient-flow --variants rnn,vanilla task=adding --out FILE"),
    "bench": ("odyssey.bench:main", "benchmarks: odyssey bench cells | odyssey bench study"),
    "data": ("odyssey.cli:data_main", "datasets: odyssey data fetch jsb [--dest DIR]"),
    "clean": ("odyssey.sweep.clean:clean_main", "free a finished study's disk: trial checkpoints (--logs: its Ray sessions)"),
}


def data_main(argv: list[str]) -> int:
    """``odyssey data fetch DATASET ...``: the only data action so far."""
    if argv and argv[0] in ("-h", "--help"):
        print("usage: odyssey data fetch DATASET [--dest DIR]\n  actions: fetch (datasets: jsb; see `odyssey data fetch --help`)")
        return 0
    if not argv or argv[0] != "fetch":
        print(f"odyssey data: unknown action {argv[0] if argv else ''!r}; valid actions: fetch", file=sys.stderr)
        return 2
    from odyssey.tasks.fetch import main as fetch_main

    return fetch_main(argv[1:])


def usage() -> str:
    lines = ["usage: odyssey COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"odyssey: unknown command {name!r}; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, func = COMMANDS[name][0].split(":")
    try:
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except OdysseyError as exc:
        print(f"odyssey {name}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print(f"odyssey {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
