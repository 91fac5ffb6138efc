"""The `nas` command: search, front, ui.

A user error (bad config, bad data, unknown study) prints one clear message and exits with code 2,
nothing started.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from typing import Any, Sequence

from nas.errors import GeonasError

__all__ = ["main"]

EXIT_USER_ERROR = 2
DEFAULT_STORAGE = "sqlite:///runs/optuna.db"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nas", description="Geometry-guided architecture search (geonas).")
    sub = parser.add_subparsers(dest="command", required=True)

    search = sub.add_parser("search", help="run (or resume) a search from a config")
    search.add_argument("config", help="YAML config file")
    search.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override one config value (repeatable), e.g. --set search.n_trials=10")
    search.add_argument("--override", dest="override_files", action="append", default=[], metavar="FILE",
                        help="a YAML file of overrides merged over the config (repeatable)")
    search.add_argument("--no-progress", action="store_true", help="no progress bar")

    front = sub.add_parser("front", help="print the minimal-complexity front of a stored study")
    front.add_argument("--study", help="study name (default: the only study in the storage, or the config's)")
    front.add_argument("--config", help="a config whose storage and study name to use")
    front.add_argument("--storage", help=f"Optuna storage URL (default {DEFAULT_STORAGE})")
    front.add_argument("--json", action="store_true", help="print JSON instead of a table")

    sync = sub.add_parser("sync", help="rebuild a study's MLflow runs from its Optuna storage (idempotent)")
    sync.add_argument("config", help="the search's YAML config (its storage, study and tracking store)")
    sync.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")

    export = sub.add_parser("export", help="register the best front member within a MACs budget in the MLflow "
                                           "model registry")
    export.add_argument("--config", required=True, help="the search's YAML config (tracking store and study)")
    export.add_argument("--max-macs", type=float,
                        help="the budget: at most this many MACs per sample (default: the config's search.max_macs)")
    export.add_argument("--name", help="registered model name (default: STUDY-best)")

    reproduce = sub.add_parser("reproduce", help="retrain one trial from its MLflow record and compare")
    reproduce.add_argument("run_id", help="the MLflow run id of a trial (a child run of a search)")
    reproduce.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///runs/mlflow.db)")
    reproduce.add_argument("--strict", action="store_true", help="exit with code 1 when anything differs")

    from nas.experiments import add_parser as add_experiment_parser

    add_experiment_parser(sub)

    ui = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 over the configured store")
    ui.add_argument("--config", help="a config whose tracking store to serve")
    ui.add_argument("--backend-store-uri", help="tracking store (default sqlite:///runs/mlflow.db)")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000)
    return parser


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    bar = tqdm(total=total, desc="trials", unit="trial", disable=not enabled, file=sys.stderr, dynamic_ncols=True)

    def update(search: Any) -> None:
        bar.n = search.finished
        best = "-" if search.best_f is None else f"{search.best_f:.4f}"
        bar.set_postfix_str(f"best F {best} | front {len(search.front)} | HV {search.hypervolume():.4f}", refresh=False)
        bar.refresh()

    return bar, update


def _cmd_search(args: argparse.Namespace) -> int:
    from nas.config import load_config
    from nas.search import front_table, run_search

    config = load_config(args.config, args.overrides, args.override_files)
    bar, update = _progress_bar(config.search.n_trials, not args.no_progress)
    try:
        outcome = run_search(config, on_progress=update)
    finally:
        bar.close()
    states = {s: outcome.count(s) for s in ("COMPLETE", "PRUNED", "FAIL")}
    print(f"study {outcome.study_name}: {len(outcome.records)} trials "
          f"({states['COMPLETE']} complete, {states['PRUNED']} pruned, {states['FAIL']} failed) "
          f"in {outcome.wall_time:.0f} s")
    best = "-" if outcome.best_f is None else f"{outcome.best_f:.4f}"
    print(f"best F {best}; hypervolume {outcome.hypervolume:.4f}; MLflow parent run {outcome.parent_run_id}")
    print()
    print(front_table(outcome.front, outcome.final_test), end="")
    return 0


def _cmd_front(args: argparse.Namespace) -> int:
    import optuna

    from nas.config import expand_env, load_config, mask_secrets
    from nas.search import front_json, front_table
    from nas.study import final_results, study_front

    storage, study_name = args.storage, args.study
    if args.config:
        config = load_config(args.config)
        storage = storage or config.search.storage
        study_name = study_name or config.study_name
    storage = expand_env(storage or DEFAULT_STORAGE, "--storage")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage.startswith("sqlite:///") and not os.path.exists(storage[len("sqlite:///"):]):
        raise GeonasError(f"no study storage at {storage}: run a search first or pass --storage")
    from nas.study import make_storage

    storage_object = make_storage(storage)
    if study_name is None:
        names = optuna.get_all_study_names(storage_object)
        if len(names) != 1:
            raise GeonasError(f"--study is required: the storage {mask_secrets(storage)} holds "
                              f"{len(names)} studies {names}")
        study_name = names[0]
    try:
        study = optuna.load_study(study_name=study_name, storage=storage_object)
    except KeyError:
        names = optuna.get_all_study_names(storage_object)
        raise GeonasError(f"no study named {study_name!r} in {mask_secrets(storage)}; studies there: {names}") from None
    from nas.energy import hypervolume

    reference = tuple(study.user_attrs.get("reference_point", (1.0e6, 1.0)))
    points, front = study_front(study)
    final = final_results(study)
    if args.json:
        print(json.dumps({"study": study_name, **front_json(front, hypervolume(front, reference), final)}, indent=2))
    else:
        print(f"study {study_name}: {len(points)} completed trials, {len(front)} on the front")
        print(front_table(front, final), end="")
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    import optuna

    from nas.config import load_config
    from nas.lock import StudyLock
    from nas.study import make_storage, storage_url
    from nas.sync import sync_study
    from nas.tracking import client_for, experiment_id

    config = load_config(args.config, args.overrides)
    url = storage_url(config)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=config.study_name, storage=make_storage(url))
    except KeyError:
        raise GeonasError(f"no study named {config.study_name!r} in the storage of {args.config}") from None
    # A live driver writes the same runs: syncing beside it could create a run twice.
    with StudyLock(url, config.study_name):
        client = client_for(config.tracking.uri)
        report = sync_study(study, client, experiment_id(client, config.experiment_name,
                                                         config.tracking.artifact_location))
    print(f"study {config.study_name}: {report}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from nas.config import load_config
    from nas.review import export_best

    config = load_config(args.config)
    max_macs = config.search.max_macs if args.max_macs is None else args.max_macs
    if max_macs is None:
        raise GeonasError(f"--max-macs is required: {args.config} sets no search.max_macs")
    if max_macs <= 0:
        raise GeonasError(f"--max-macs must be positive, but got {max_macs}")
    record = export_best(config.tracking.uri, config.experiment_name, config.study_name, max_macs,
                         args.name or f"{config.study_name}-best")
    test = "" if record["test_accuracy"] is None else f", test accuracy {100 * record['test_accuracy']:.2f}%"
    print(f"registered {record['name']} version {record['version']}: trial {record['trial_number']} "
          f"({record['summary']}), {record['macs']:,.0f} MACs, validation error {100 * record['val_error']:.2f}%{test}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from nas.review import reproduce_trial

    outcome = reproduce_trial(args.tracking_uri or "sqlite:///runs/mlflow.db", args.run_id)
    for note in outcome.notes:
        print(f"note: {note}")
    print(outcome.table(), end="")
    if outcome.matches:
        print(f"trial {outcome.trial_number}: reproduced exactly")
        return 0
    where = "on the same machine" if outcome.same_machine else "on another machine or torch build"
    print(f"trial {outcome.trial_number}: DIFFERS from its record ({where})")
    return 1 if args.strict else 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from nas.config import load_config

    uri = args.backend_store_uri
    artifacts = "runs/artifacts"
    if args.config:
        config = load_config(args.config)
        uri = uri or config.tracking.uri
        artifacts = config.tracking.artifact_location or artifacts
    uri = uri or "sqlite:///runs/mlflow.db"
    if not uri.startswith(("sqlite:", "postgresql", "mysql", "file:")) and "://" in uri:
        raise GeonasError(f"{uri} is a tracking server already: open it in a browser instead of `nas ui`")
    mlflow = shutil.which("mlflow") or os.path.join(os.path.dirname(sys.executable), "mlflow")
    command = [mlflow, "ui", "--backend-store-uri", uri, "--default-artifact-root", os.path.abspath(artifacts),
               "--host", args.host, "--port", str(args.port)]
    print(f"MLflow UI on http://{args.host}:{args.port} over {uri} (Ctrl-C to stop)", file=sys.stderr)
    sys.stderr.flush()
    from nas.tracking import server_environment

    # Become the server (no child left behind when this process is stopped).
    os.execve(command[0], command, server_environment())
    return 0  # not reached


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `nas` console script; returns the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    from nas.experiments import run as _cmd_experiment

    commands = {"search": _cmd_search, "front": _cmd_front, "sync": _cmd_sync, "export": _cmd_export,
                "reproduce": _cmd_reproduce, "experiment": _cmd_experiment, "ui": _cmd_ui}
    try:
        return commands[args.command](args)
    except GeonasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume the study", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
