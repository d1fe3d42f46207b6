"""The API's trial reads (a page, the best trial, the best of many studies, complete trials best first)
are SQL over Optuna's schema that touches only the rows of the answer; they must equal Optuna's own
view of the same study (`optuna.load_study(...).get_trials()`, `.best_trial`), on SQLite and PostgreSQL."""

import math
import random

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy.orm import Session

from service import ledger
from service import repository as repo
from service.db import make_optuna_storage

SPACE = {
    "method": CategoricalDistribution(["smooth", "mixup", "multitask"]),
    "t0": FloatDistribution(0.0, 1.0),
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "k": IntDistribution(1, 8),
}
# state, value: ties at 0.9 (the earliest wins), infinities, and every state the driver writes
PLAN = [
    ("COMPLETE", 0.5),
    ("COMPLETE", 0.9),
    ("PRUNED", 0.95),
    ("FAIL", None),
    ("COMPLETE", 0.9),
    ("RUNNING", None),
    ("COMPLETE", float("-inf")),
    ("COMPLETE", 0.7),
    ("COMPLETE", 0.1),
    ("WAITING", None),  # last: the next ask would run it
]


def _fill(study: optuna.Study, plan, seed: int) -> None:
    """The plan's trials, as the driver leaves them. A finished trial is added whole (one transaction:
    setting its attributes one by one is most of these tests' time); the RUNNING one is asked for and
    left open, the WAITING one enqueued."""
    rng = random.Random(seed)
    for i, (state, value) in enumerate(plan):
        if state == "WAITING":
            study.enqueue_trial({"k": 3}, user_attrs={"queued": True})
            continue
        params = {
            "method": rng.choice(SPACE["method"].choices),
            "t0": rng.random(),
            "lr": 10 ** rng.uniform(-4, -1),
            "k": rng.randint(1, 8),
        }
        method = "multitask" if i % 2 else "smooth"  # what /best?method= filters on, not left to the sampler
        attrs = {
            "sampled": {**params, "method": method, "schedule": i % 2 == 0},
            "node": f"n{seed}",
            "info": {"seed": seed, "nested": {"a": [1, 2.5, None]}},
        }
        attrs |= {f"epoch:{e:05d}": {"epoch": e, "val_acc": 0.1 * e, "lambda": 0.5} for e in range(1, 4)}
        if state == "RUNNING":
            trial = study.ask(SPACE)
            for key, attr in attrs.items():
                trial.set_user_attr(key, attr)
            continue
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState[state],
                value=value,
                params=params,
                distributions=SPACE,
                user_attrs=attrs,
                # a pruned trial keeps its last reported value
                intermediate_values={3: value} if state == "PRUNED" else None,
            )
        )


@pytest.fixture
def stored(url):
    storage = make_optuna_storage(url)
    for name, seed in (("a", 0), ("b", 1)):
        _fill(optuna.create_study(study_name=name, storage=storage, direction="maximize"), PLAN, seed)
    low = optuna.create_study(study_name="low", storage=storage, direction="minimize")
    _fill(low, [("COMPLETE", 0.3), ("COMPLETE", float("inf")), ("COMPLETE", 0.2)], 2)
    optuna.create_study(study_name="empty", storage=storage, direction="maximize")
    yield storage
    storage.engine.dispose()


def _view(t: optuna.trial.FrozenTrial) -> tuple:
    return (
        t.number,
        t.state,
        t.values,
        t.value if t.values is not None and len(t.values) == 1 else None,
        t.params,
        t.distributions,
        t.user_attrs,
        t.datetime_start,
        t.datetime_complete,
        t._trial_id,
    )


def _optuna_trials(storage, name):
    return sorted(optuna.load_study(study_name=name, storage=storage).get_trials(), key=lambda t: t.number)


def test_a_page_of_trials_is_optunas_own_view_of_those_trials(stored):
    expected = _optuna_trials(stored, "b")
    assert {t.state for t in expected} == {TrialState[state] for state, _ in PLAN}
    with Session(stored.engine) as s:
        for offset, limit in [(0, 100), (0, 3), (3, 4), (9, 5), (10, 5), (50, 1)]:
            page, total = repo.trial_page(s, name="b", offset=offset, limit=limit)
            assert total == len(expected) == len(PLAN)
            assert [_view(t) for t in page] == [_view(t) for t in expected[offset : offset + limit]]


def test_a_page_reads_a_fixed_number_of_statements_and_an_unknown_study_is_empty(stored):
    statements = []
    event.listen(stored.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with Session(stored.engine) as s:
        assert repo.trial_page(s, name="a", offset=0, limit=2)[1] == len(PLAN)
        n = len(statements)
        assert repo.trial_page(s, name="a", offset=0, limit=8)[1] == len(PLAN)
        assert len(statements) - n == n  # the page's size does not change the number of queries
        assert repo.trial_page(s, name="nope", offset=0, limit=8) == ([], 0)
    # every statement is a count, a LIMIT page of ids, or a read of the page's ids: none scans the study
    assert all("count(" in q.lower() or "LIMIT" in q or "IN (" in q for q in statements), statements


def test_the_best_of_each_study_is_optunas_best_and_the_earliest_on_ties(stored):
    with Session(stored.engine) as s:
        best = repo.best_trials(s, names=["a", "b", "low", "empty", "nope"])
        assert repo.best_trials(s, names=[]) == {}
    assert sorted(best) == ["a", "b", "low"]
    for name in ("a", "b", "low"):
        ot_best = optuna.load_study(study_name=name, storage=stored).best_trial
        assert best[name].value == ot_best.value
        assert _view(best[name]) == _view(_optuna_trials(stored, name)[best[name].number])
    assert (best["a"].number, best["a"].value) == (1, 0.9)  # trial 4 ties at 0.9: the earliest wins
    assert (best["low"].number, best["low"].value) == (2, 0.2)  # minimize; +inf ranks last


def test_complete_trials_come_best_first_in_batches(stored):
    expected = sorted(
        (t for t in _optuna_trials(stored, "a") if t.state == TrialState.COMPLETE),
        key=lambda t: (-t.value, t.number),
    )
    with Session(stored.engine) as s:
        for batch in (1, 2, 50):
            ranked = list(repo.complete_trials_best_first(s, name="a", batch=batch))
            assert [_view(t) for t in ranked] == [_view(t) for t in expected]
        low = [t.value for t in repo.complete_trials_best_first(s, name="low")]
    assert ranked[-1].value == -math.inf and low == [0.2, 0.3, math.inf]


def test_the_cached_best_follows_a_running_study(stored):

    def multitask(t):
        return t.user_attrs["sampled"]["method"] == "multitask"

    study = optuna.load_study(study_name="b", storage=stored)
    assert ledger.best_trial(stored, name="b").number == 1
    first = ledger.best_trial(stored, name="b", where=multitask, key="multitask")
    again = ledger.best_trial(stored, name="b", where=multitask, key="multitask")  # from the cache
    assert first.number == 1 and _view(again) == _view(first)
    trial = study.ask(SPACE)
    trial.set_user_attr("sampled", {"method": "multitask"})
    assert ledger.best_trial(stored, name="b").number == 1  # a running trial changes nothing
    study.tell(trial, 0.99)
    assert ledger.best_trial(stored, name="b").number == trial.number
    assert ledger.best_trial(stored, name="b", where=multitask, key="multitask").number == trial.number
    assert ledger.best_trial(stored, name="empty") is None
    assert ledger.best_trial(stored, name="nope") is None


def test_our_indexes_on_optunas_trials_leave_optuna_reading_and_writing_as_before(stored):
    from sqlalchemy import inspect

    for _ in range(2):  # idempotent
        with stored.engine.begin() as connection:
            repo.ensure_optuna_indexes(connection)
    names = {ix["name"] for ix in inspect(stored.engine).get_indexes("trials")}
    assert set(repo.OPTUNA_INDEXES) <= names
    again = make_optuna_storage(stored.url)  # Optuna's schema check passes
    study = optuna.load_study(study_name="a", storage=again)
    trial = study.ask(SPACE)  # runs the enqueued (WAITING) trial
    study.tell(trial, 0.2)
    assert study.get_trials()[trial.number].value == 0.2 and trial.number == len(PLAN) - 1
    again.engine.dispose()


def test_a_trial_told_while_its_page_is_read_never_shows_complete_without_its_value(stored, url):
    """The page's statements see what was committed when each ran: a tell that lands between them must
    not give a COMPLETE trial with no value (states are read before values)."""
    (running,) = [t.number for t in _optuna_trials(stored, "b") if t.state == TrialState.RUNNING]
    other = make_optuna_storage(url)
    told = []

    def tell_between(_conn, _cursor, statement, *_args):
        if told == ["after values"]:  # the statement after the values' read: the tell commits first
            optuna.load_study(study_name="b", storage=other).tell(running, 0.42)
            told.append("told")
        elif not told and "FROM trial_values" in statement:
            told.append("after values")

    event.listen(stored.engine, "before_cursor_execute", tell_between)
    try:
        with Session(stored.engine) as s:
            page, _ = repo.trial_page(s, name="b", offset=0, limit=100)
    finally:
        event.remove(stored.engine, "before_cursor_execute", tell_between)
        other.engine.dispose()
    assert told == ["after values", "told"]
    (trial,) = [t for t in page if t.number == running]
    assert trial.state == TrialState.RUNNING or trial.values == [0.42], (trial.state, trial.values)
