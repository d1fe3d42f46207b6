"""bench/b2_orchestration.py: the steady cost of a trial is read from trial endings past the start."""

from __future__ import annotations

import os
import time

import pytest

from bench import b2_orchestration as b2


def test_steady_per_trial_leaves_the_start_out():
    # the first two trials end together after the start, then one trial ends every 0.5 s; in any order
    ends = [10.0, 10.1, *[10.1 + 0.5 * k for k in range(1, 9)]]
    assert b2.steady_per_trial(list(reversed(ends)), skip=2) == pytest.approx(0.5)
    assert b2.steady_per_trial(ends, skip=0) == pytest.approx(4.1 / 9)  # the start's burst counted in


def test_steady_per_trial_needs_two_endings_past_the_skipped():
    with pytest.raises(ValueError, match="too few"):
        b2.steady_per_trial([1.0, 2.0, 3.0], skip=2)


def test_a_drivers_cpu_per_trial_is_read_over_the_steady_window():
    cpu = b2.CpuSampler(lambda pid, cmdline: False)
    cpu.samples = {1: [(0.0, 5.0), (10.0, 6.0), (20.0, 8.0)], 2: [(10.0, 1.0), (20.0, 1.5)]}
    assert cpu.between(10.0, 25.0) == pytest.approx(2.0 + 0.5)
    # trials ending at 9 (the start's, skipped), 10, 15 and 20: two intervals from 10 to 20
    assert b2.steady_cpu_per_trial(cpu, [20.0, 9.0, 15.0, 10.0], skip=1) == pytest.approx(2.5 / 2)


def test_the_cpu_sampler_reads_this_process():
    with b2.CpuSampler(os.getpid()) as cpu:
        deadline = time.monotonic() + 60
        while len(cpu.samples.get(os.getpid(), [])) < 4 and time.monotonic() < deadline:
            sum(i * i for i in range(20_000))  # busy: CPU to be seen
            time.sleep(0.001)
    series = cpu.samples[os.getpid()]
    assert list(cpu.samples) == [os.getpid()] and len(series) >= 4
    (t0, c0), (t1, c1) = series[0], series[-1]
    assert c1 > c0 and cpu.between(t0, t1) == pytest.approx(c1 - c0)


def test_the_cpu_sampler_finds_processes_by_command_line():
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)  # b2-sampler-test"])
    try:
        with b2.CpuSampler(lambda pid, cmdline: b"b2-sampler-test" in cmdline) as cpu:
            deadline = time.monotonic() + 60
            while child.pid not in cpu.samples and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    assert list(cpu.samples) == [child.pid]
