"""``odyssey sweep [experiment=<name>] [overrides]``: run a study on Ray Tune, tracked in MLflow.

Also the entrypoint of a Ray job (``python -m odyssey.sweep.cli [overrides]``): Hydra overrides
in ``$ODYSSEY_OVERRIDES`` (set by ``jobs/*.yaml``) come before those on the command line.

Examples:
    odyssey sweep experiment=quickstart
    odyssey sweep experiment=quickstart study.variants=[vanilla,nfg] study.num_samples=3 train.max_epochs=2
    odyssey sweep experiment=quickstart resume=true        # continue an interrupted sweep
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Sequence

from odyssey.errors import OdysseyError

__all__ = ["sweep_main"]

USAGE = __doc__


def sweep_main(argv: Sequence[str]) -> int:
    """Run the study given by Hydra overrides ``argv``; 0 when every search ran (failed trials are
    recorded in MLflow, not an exit code). Raises OdysseyError for bad input or unreachable services."""
    argv = list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    overrides = shlex.split(os.environ.get("ODYSSEY_OVERRIDES", "")) + argv
    _loopback_if_local(overrides)
    from odyssey.sweep.runner import run_sweep
    from odyssey.sweep.study import load_sweep

    run_sweep(load_sweep(overrides))
    return 0


def _loopback_if_local(overrides: list[str]) -> None:
    """A Ray runtime this command starts itself stays on 127.0.0.1: on Linux Ray otherwise
    advertises the machine's outward address. Must run before Ray is imported; not for a
    configured cluster (``ray.address``, ``$RAY_ADDRESS``) or inside a Ray job."""
    configured = any(o.startswith("ray.address=") and o.split("=", 1)[1] not in ("", "null") for o in overrides)
    if configured or os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def main() -> None:  # ``python -m odyssey.sweep.cli``
    try:
        sys.exit(sweep_main(sys.argv[1:]))
    except OdysseyError as exc:
        print(f"odyssey sweep: error: {exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))


if __name__ == "__main__":
    main()
