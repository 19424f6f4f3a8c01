"""The phase clock: every moment in one phase, blocks restore the phase they interrupted, resumes carry seconds."""

import time

import pytest

from cifar_lit import phases
from cifar_lit.phases import PHASES, PhaseClock


def test_phases_add_up_to_the_time_since_the_clock_started():
    started = time.perf_counter()
    clock = PhaseClock(started)
    time.sleep(0.02)
    clock.switch("data")
    with clock.phase("reports"):
        time.sleep(0.02)
        assert clock.current == "reports"
    assert clock.current == "data"
    seconds = clock.elapsed()
    assert list(seconds) == list(PHASES)
    assert seconds["startup"] >= 0.02 and seconds["reports"] >= 0.02 and seconds["train"] == 0
    assert sum(seconds.values()) == pytest.approx(time.perf_counter() - started, abs=0.005)


def test_cumulative_adds_the_seconds_of_earlier_processes():
    clock = PhaseClock()
    clock.carried = dict.fromkeys(PHASES, 1.0)
    assert all(value >= 1.0 for value in clock.cumulative().values())
    assert sum(clock.cumulative().values()) == pytest.approx(len(PHASES) + sum(clock.elapsed().values()), abs=1e-3)


def test_listeners_hear_every_change_and_unknown_phases_are_refused():
    clock = PhaseClock()
    heard = []
    clock.listeners.append(heard.append)
    with clock.phase("test"):
        pass
    assert heard == ["test", "startup"]
    with pytest.raises(ValueError, match="unknown phase"):
        clock.switch("lunch")


def test_module_level_phase_marks_the_active_clock_only():
    with phases.phase("data"):  # no clock: nothing happens
        pass
    clock = PhaseClock()
    phases.activate(clock)
    try:
        with phases.phase("warmup"):
            assert clock.current == "warmup"
    finally:
        phases.activate(None)
    assert clock.current == "startup"
