"""Single flight: concurrent callers of one key share one run, its result or its error."""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred

from nopard.ops.singleflight import SingleFlight


def outcome(deferred: Deferred) -> list:
    """What ``deferred`` fired with (a Failure for an error), once it has."""
    got: list = []
    deferred.addBoth(got.append)
    return got


def test_concurrent_callers_share_one_run() -> None:
    """Three callers of one key while it runs make one call of the work and all get its result."""
    gate: Deferred = Deferred()
    calls: list[str] = []

    async def work() -> str:
        calls.append("run")
        await gate
        return "result"

    flight: SingleFlight[str] = SingleFlight()
    results = [outcome(ensureDeferred(flight.run("k", work))) for _ in range(3)]
    assert flight.running("k") and calls == ["run"] and results == [[], [], []]
    gate.callback(None)
    assert results == [["result"]] * 3 and not flight.running("k")


def test_other_keys_and_later_calls_run_again() -> None:
    """Another key runs on its own, and a call after a run has ended starts a new run."""
    gates = {"a": Deferred(), "b": Deferred()}
    calls: list[str] = []

    def work_of(key: str):
        async def work() -> str:
            calls.append(key)
            await gates[key]
            return key
        return work

    flight: SingleFlight[str] = SingleFlight()
    a = outcome(ensureDeferred(flight.run("a", work_of("a"))))
    b = outcome(ensureDeferred(flight.run("b", work_of("b"))))
    gates["a"].callback(None)
    gates["b"].callback(None)
    assert (a, b, calls) == (["a"], ["b"], ["a", "b"])
    gates["a"] = Deferred()
    again = outcome(ensureDeferred(flight.run("a", work_of("a"))))
    gates["a"].callback(None)
    assert again == ["a"] and calls == ["a", "b", "a"]


def test_every_caller_gets_the_error_and_the_key_is_free_again() -> None:
    """When the shared run fails, each caller sees that error, and the next call runs afresh."""
    gate: Deferred = Deferred()

    async def failing() -> str:
        await gate
        raise ValueError("broken")

    flight: SingleFlight[str] = SingleFlight()
    results = [outcome(ensureDeferred(flight.run("k", failing))) for _ in range(2)]
    gate.callback(None)
    for result in results:
        assert len(result) == 1 and result[0].check(ValueError)
    assert not flight.running("k")

    async def working() -> str:
        return "fine"

    assert outcome(ensureDeferred(flight.run("k", working))) == ["fine"]


def test_work_that_finishes_at_once_leaves_nothing_running() -> None:
    """Work that needs no waiting returns at once, and the key is not left taken."""
    async def immediate() -> int:
        return 7

    flight: SingleFlight[int] = SingleFlight()
    assert outcome(ensureDeferred(flight.run("k", immediate))) == [7]
    assert not flight.running("k")


def test_a_caller_going_away_leaves_the_run_to_the_others() -> None:
    """The first caller's wait cancelled: the work is not cancelled, the other caller gets its result."""
    gate: Deferred = Deferred()
    cancelled: list[bool] = []

    async def work() -> str:
        try:
            await gate
        except CancelledError:
            cancelled.append(True)
            raise
        return "result"

    flight: SingleFlight[str] = SingleFlight()
    first = ensureDeferred(flight.run("k", work))
    second = outcome(ensureDeferred(flight.run("k", work)))
    first.addErrback(lambda failure: failure.trap(CancelledError))
    first.cancel()
    assert flight.running("k") and not cancelled and not gate.called
    gate.callback(None)
    assert second == ["result"] and not flight.running("k")


def test_the_run_finishes_when_every_caller_went_away() -> None:
    """With its only caller gone the work still runs to its end, and the key is free afterwards."""
    gate: Deferred = Deferred()
    done: list[str] = []

    async def work() -> str:
        await gate
        done.append("stored")
        return "result"

    flight: SingleFlight[str] = SingleFlight()
    only = ensureDeferred(flight.run("k", work))
    only.addErrback(lambda failure: failure.trap(CancelledError))
    only.cancel()
    gate.callback(None)
    assert done == ["stored"] and not flight.running("k")
