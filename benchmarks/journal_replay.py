"""How long opening a study stored as a PostgreSQL journal takes (every process replays the log).

    python -m benchmarks.journal_replay [--trials 1000] [--pg postgresql://postgres@127.0.0.1:5432/test]

Writes a study of `--trials` trials shaped like a search's (8 parameters, the `record` and `result`
attributes, a value) into a fresh database through `journal+postgresql://`, timing the writes (ask, suggest,
set attributes, tell: the storage's share of a driver's loop, with a random sampler), then times
`optuna.load_study` in this process with a new storage object, and prints trials written per second and
records replayed per second.
"""

from __future__ import annotations

import argparse
import os
import time

import optuna

from benchmarks.driver_capacity import _pg_database


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--pg", default=os.environ.get("GEONAS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args(argv)
    import psycopg

    from nas.study import make_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, drop = _pg_database(args.pg)
    try:
        journal = "journal+" + url
        study = optuna.create_study(storage=make_storage(journal), study_name="replay",
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        written = time.perf_counter()
        for _ in range(args.trials):
            trial = study.ask()
            for k in range(8):
                trial.suggest_categorical(f"p{k}", [1, 2, 3, 4])
            trial.set_user_attr("record", {"arch": list(range(20))})
            trial.set_user_attr("result", {"history": [{"epoch": e, "val_loss": 0.5} for e in range(20)]})
            study.tell(trial, 0.5)
        write_seconds = time.perf_counter() - written
        started = time.perf_counter()
        loaded = optuna.load_study(study_name="replay", storage=make_storage(journal))
        trials = len(loaded.trials)
        seconds = time.perf_counter() - started
        with psycopg.connect(url) as connection:
            records = connection.execute("SELECT count(*) FROM geonas_optuna_journal").fetchone()[0]
    finally:
        drop()
    print(f"{trials} trials, {records} journal records: written in {write_seconds:.2f} s "
          f"({trials / write_seconds:.0f} trials/s, {write_seconds / trials * 1e3:.1f} ms per trial), "
          f"opened in {seconds:.2f} s ({records / seconds:.0f} records/s)")
    return {"trials": trials, "records": records, "seconds": seconds, "write_seconds": write_seconds}


if __name__ == "__main__":
    main()
