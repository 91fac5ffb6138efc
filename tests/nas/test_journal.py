"""Optuna's journal in one PostgreSQL table (`journal+postgresql://`), on the real server at 127.0.0.1:5432."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from nas.config import config_from_dict
from nas.errors import ConfigError
from nas.journal import TABLE, PostgresJournalBackend
from nas.lock import StudyInUseError, StudyLock
from nas.search import run_search
from nas.study import make_storage, trial_attrs
from tests.conftest import ROOT
from tests.nas.test_search import tiny_config


@pytest.fixture()
def journal_url(pg_database) -> str:
    return "journal+" + pg_database("journal")


def _seqs(url: str) -> list[int]:
    engine = sqlalchemy.create_engine(url[len("journal+"):], poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as connection:
        seqs = [row[0] for row in connection.execute(sqlalchemy.text(f"SELECT seq FROM {TABLE} ORDER BY seq"))]
    engine.dispose()
    return seqs


def _append_many(url: str, writer: int, count: int) -> None:
    backend = PostgresJournalBackend(url)
    for i in range(count):
        backend.append_logs([{"writer": writer, "i": i}])
    backend.close()


def test_concurrent_writers_get_gap_free_numbers_in_their_own_order(journal_url):
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_append_many, args=(journal_url, w, 40)) for w in range(3)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(60)
        assert p.exitcode == 0
    assert _seqs(journal_url) == list(range(120))  # no gaps, no duplicates
    logs = list(PostgresJournalBackend(journal_url).read_logs(0))
    for w in range(3):
        assert [log["i"] for log in logs if log["writer"] == w] == list(range(40))
    assert list(PostgresJournalBackend(journal_url).read_logs(117)) == logs[117:]


def test_the_read_after_an_own_append_is_answered_without_a_query_only_when_nothing_came_between(journal_url):
    a, b = PostgresJournalBackend(journal_url), PostgresJournalBackend(journal_url)
    a.append_logs([{"who": "a", "i": 0}, {"who": "a", "i": 1}])  # records 0, 1
    queries = []
    real_run = a._run

    def counting_run(work, done=None):
        queries.append(work)
        return real_run(work, done)

    a._run = counting_run
    # The journal reads right after its write: records 0 and 1 are the answer, as stored, with no query.
    assert list(a.read_logs(0)) == [{"who": "a", "i": 0}, {"who": "a", "i": 1}] and queries == []
    # Another writer appends between this process's read and its append: the read asks the table.
    b.append_logs([{"who": "b", "i": 0}])  # record 2
    a.append_logs([{"who": "a", "i": 2, "x": [1.5, None]}])  # record 3
    appended = len(queries)
    assert [log["who"] for log in a.read_logs(2)] == ["b", "a"] and len(queries) == appended + 1
    # Own append, then someone else's after it: the fast answer is the own record; the next read brings the rest.
    a.append_logs([{"who": "a", "i": 3}])  # record 4
    b.append_logs([{"who": "b", "i": 1}])  # record 5
    assert list(a.read_logs(4)) == [{"who": "a", "i": 3}]
    assert list(a.read_logs(5)) == [{"who": "b", "i": 1}]
    # An answer is given once: reading the same number again asks the table.
    assert list(a.read_logs(4)) == [{"who": "a", "i": 3}, {"who": "b", "i": 1}]
    assert list(PostgresJournalBackend(journal_url).read_logs(0)) == list(a.read_logs(0))
    assert _seqs(journal_url) == list(range(6))
    a.close()
    b.close()


def test_study_in_the_journal_reads_back_in_a_new_process(journal_url):
    study = optuna.create_study(storage=make_storage(journal_url), study_name="j", directions=["minimize"])
    for value in (0.5, 0.25):
        trial = study.ask()
        trial.suggest_int("depth", 0, 4)
        trial.set_user_attr("record", {"arch_id": f"a{value}"})
        study.tell(trial, value)
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)
    script = ("import sys, optuna; from nas.study import make_storage; "
              "s = optuna.load_study(study_name='j', storage=make_storage(sys.argv[1])); "
              "print([(t.state.name, t.value, sorted(t.params), t.user_attrs.get('record')) for t in s.trials])")
    out = subprocess.run([sys.executable, "-c", script, journal_url], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout
    assert out.strip() == ("[('COMPLETE', 0.5, ['depth'], {'arch_id': 'a0.5'}), "
                           "('COMPLETE', 0.25, ['depth'], {'arch_id': 'a0.25'}), ('FAIL', None, [], None)]")


def test_a_connection_closed_by_the_server_is_reopened_without_duplicating_a_record(journal_url):
    backend = PostgresJournalBackend(journal_url)
    backend.append_logs([{"n": 0}])
    pid = backend._connection.info.backend_pid
    admin = sqlalchemy.create_engine(journal_url[len("journal+"):], isolation_level="AUTOCOMMIT",
                                     poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as connection:  # what a server restart or an idle timeout does to the driver's session
        assert connection.execute(sqlalchemy.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    admin.dispose()
    backend.append_logs([{"n": 1}])
    assert backend._connection.info.backend_pid != pid
    assert [log["n"] for log in backend.read_logs(0)] == [0, 1] and _seqs(journal_url) == [0, 1]


def test_config_accepts_the_journal_url_and_names_a_wrong_scheme():
    base = {"name": "x", "data": {"dataset": "digits"}}
    url = "journal+postgresql://u:${GEONAS_NOT_LOGGED}@db:5432/geonas"
    assert config_from_dict({**base, "search": {"storage": url}}).search.storage == url
    with pytest.raises(ConfigError, match=r"search.storage must be .*journal\+postgresql.* but got 'journal\+mysql"):
        config_from_dict({**base, "search": {"storage": "journal+mysql://u:secret@db/x"}})


def test_second_driver_is_refused_on_a_journal_storage(journal_url):
    with StudyLock(journal_url, "locked"):
        with pytest.raises(StudyInUseError, match="is being driven by"):
            StudyLock(journal_url, "locked").acquire()
    StudyLock(journal_url, "locked").acquire().release()  # free again once the first let go


def test_search_on_the_journal_storage_resumes_and_prints_its_front(journal_url, stores, ray_executor):
    config = tiny_config({**stores, "storage": journal_url}, search={"n_trials": 4, "final_seeds": 0})
    first = run_search(config, executor=ray_executor)
    assert len(first.records) == 4
    again = run_search(tiny_config({**stores, "storage": journal_url}, search={"n_trials": 6, "final_seeds": 0}),
                       executor=ray_executor)
    study = optuna.load_study(study_name="tiny", storage=make_storage(journal_url))
    assert len(study.trials) == 6 and len(again.records) == 6
    assert [trial_attrs(t).get("arch_id") for t in study.trials[:4]] == \
        [first.records[n].arch_id for n in range(4)]  # the first four kept, two more added
    out = subprocess.run([sys.executable, "-m", "nas.cli", "front", "--storage", journal_url, "--study", "tiny"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "study tiny:" in out.stdout and "on the front" in out.stdout
