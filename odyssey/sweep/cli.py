"""``odyssey sweep [experiment=<name>] [overrides]``: run a study on Ray Tune, tracked in MLflow.

Also the entrypoint of a Ray job (``python -m odyssey.sweep.cli [overrides]``): Hydra overrides
in ``$ODYSSEY_OVERRIDES`` (set by ``jobs/*.yaml``) come before those on the command line.

Examples:
    odyssey sweep experiment=quickstart
    odyssey sweep experiment=quickstart study.variants=[vanilla,nfg] study.num_samples=3 train.max_epochs=2
    odyssey sweep experiment=quickstart resume=true        # continue an interrupted sweep
    odyssey sweep experiment=odyssey_jsb --dry-run          # the searches, trial counts, resources, space
    odyssey sweep experiment=quickstart --cfg job           # the composed config (YAML)
    odyssey sweep --config-dir ~/my_conf experiment=mine    # your own configs, before the package's

Your own config folder (variant/, task/, search_space/, experiment/ ... laid out like the
package's conf/) is searched before the package's: ./conf by convention, --config-dir DIR
(repeatable) or $ODYSSEY_CONFIG_PATH.
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
    from odyssey.config import SWEEP_GROUPS, cfg_job, groups_help, print_composed, take_config_dirs

    argv = take_config_dirs(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(
            "usage: odyssey sweep [--dry-run] [--cfg job] [--config-dir DIR] [KEY=VALUE ...]\n\n"
            + USAGE + "\n" + groups_help(SWEEP_GROUPS)
        )  # fmt: skip
        return 0
    argv, show = cfg_job(argv)
    dry_run = "--dry-run" in argv
    overrides = shlex.split(os.environ.get("ODYSSEY_OVERRIDES", "")) + [a for a in argv if a != "--dry-run"]
    if show:
        print_composed("sweep", overrides)
        return 0
    if not overrides:  # a bare `odyssey sweep` would start the default study: say what to choose
        print(_bare_usage(), file=sys.stderr)
        return 2
    from odyssey.sweep import interrupts

    hint = interrupts.resume_command_for(overrides)
    interrupts.reset()
    # From the first line printed to the last, SIGINT ends the command with 130 and SIGTERM with
    # 143, saying how to resume: also while the study is checked, claimed or Ray starts.
    with interrupts.handle_stop_signals(hint):
        print(_which_odyssey(), file=sys.stderr, flush=True)
        from odyssey.sweep.study import describe_sweep, load_sweep

        sweep = load_sweep(overrides, need_data=not dry_run)
        interrupts.raise_if_stopped(sweep.study.name, hint)
        if dry_run:  # every check that needs no cluster and no tracking server, and the plan
            from odyssey.sweep.identity import existing_study_note
            from odyssey.sweep.runner import check_sweep_locally

            check_sweep_locally(sweep)
            print(describe_sweep(sweep))
            note = existing_study_note(sweep) if not sweep.resume else None
            for warning in [*sweep.warnings, *([note] if note else [])]:
                print(f"warning: {warning}", file=sys.stderr)
            return 0
        from odyssey.sweep.runner import run_sweep

        run_sweep(sweep)
        interrupts.raise_if_stopped(sweep.study.name, hint)
    return 0


def _bare_usage() -> str:
    """What a bare ``odyssey sweep`` prints: how to choose a study, the experiments, and what the
    default study (no experiment, no override) would run."""
    from odyssey.config import group_options
    from odyssey.sweep.study import load_sweep

    default = load_sweep([], need_data=False)
    epochs = max(p.base.train.max_epochs for p in default.searches)
    experiments = ", ".join(group_options("experiment")) or "(none)"
    return (
        "usage: odyssey sweep experiment=NAME [KEY=VALUE ...] [--dry-run]   (odyssey sweep --help for more)\n"
        f"  experiments: {experiments}\n"
        "  e.g. odyssey sweep experiment=quickstart --dry-run, then without --dry-run\n"
        f"Nothing was started: with no experiment and no override the default study {default.study.name!r} would run "
        f"{len(default.searches)} search(es) x {default.study.num_samples} trials of up to {epochs} epochs; "
        "name it explicitly (e.g. study.name=odyssey) to run it."
    )


def _which_odyssey() -> str:
    """The odyssey and config folders this sweep runs with (a submitted job's log shows them)."""
    from pathlib import Path

    import odyssey
    from odyssey.config import config_dir, user_config_dirs

    folders = [str(d) for d in user_config_dirs()]
    where = f"config folders {', '.join(folders)}, then the package's {config_dir()}" if folders else f"configs {config_dir()}"
    return f"odyssey {odyssey.__version__} from {Path(odyssey.__file__).resolve().parent}; {where}"


def main() -> None:  # ``python -m odyssey.sweep.cli``
    try:
        sys.exit(sweep_main(sys.argv[1:]))
    except OdysseyError as exc:
        print(f"odyssey sweep: error: {exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))


if __name__ == "__main__":
    main()
