"""`python -m app --workers 2`'s supervisor: light, honest about failures, stoppable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.servers import decoder_processes, free_port, resident_mib, start_server


def server_processes(supervisor: int) -> list[int]:
    out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(supervisor)],
                         capture_output=True, text=True).stdout.splitlines()
    return [int(line.split()[0]) for line in out if "spawn_main" in line]


def alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def decoders_of(server: int) -> list[int]:
    """Its decoder processes, or none while it is still starting its fork server."""
    try:
        return decoder_processes(server)
    except (AssertionError, OSError):  # no fork server yet, or a process just gone
        return []


def sigterm_pending(pid: int) -> bool:
    status = open(f"/proc/{pid}/status").read()
    pending = int(status.split("ShdPnd:")[1].split()[0], 16)
    return bool(pending & (1 << (signal.SIGTERM - 1)))


def state(pid: int) -> str:
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]


def catches_sigterm(pid: int) -> bool:
    """Whether the process has its SIGTERM handler (uvicorn installs it as it starts)."""
    status = open(f"/proc/{pid}/status").read()
    return bool(int(status.split("SigCgt:")[1].split()[0], 16) & (1 << (signal.SIGTERM - 1)))


def wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_the_supervisor_holds_no_tensorflow(tiny_model_dir):
    supervisor, _ = start_server(tiny_model_dir, workers=2, preprocess_workers=1)
    try:
        maps = open(f"/proc/{supervisor.pid}/maps").read()
        assert "tensorflow" not in maps and "litert" not in maps
        assert resident_mib(supervisor.pid) < 100
        # Its server processes do load a runtime (LiteRT, on this CPU).
        wait_until(lambda: len(server_processes(supervisor.pid)) == 2, 60, "two servers")
        assert all("litert" in open(f"/proc/{pid}/maps").read()
                   for pid in server_processes(supervisor.pid))
    finally:
        supervisor.terminate()
        supervisor.wait(timeout=30)


@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="this machine has a GPU")
def test_a_server_process_that_cannot_start_fails_the_supervisor(tiny_model_dir):
    env = {**os.environ, "DIGITS_DEVICE": "gpu", "DIGITS_LOG_LEVEL": "warning"}
    result = subprocess.run([sys.executable, "-m", "app", "--port", str(free_port()),
                             "--workers", "2", "--model-dir", str(tiny_model_dir)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr[-2000:]  # as a single process exits


def test_decoders_die_with_a_killed_server_process(tiny_model_dir):
    supervisor, _ = start_server(tiny_model_dir, workers=2, preprocess_workers=2)
    try:
        wait_until(lambda: len(server_processes(supervisor.pid)) == 2, 60,
                   "two server processes")
        victim = server_processes(supervisor.pid)[0]
        wait_until(lambda: len(decoders_of(victim)) == 2, 60, "its two decoders")
        decoders = decoders_of(victim)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not any(alive(pid) for pid in decoders), 30,
                   "decoders outlived their server process")
    finally:
        supervisor.terminate()
        supervisor.wait(timeout=30)


def test_a_second_signal_stops_everything_at_once(tiny_model_dir):
    supervisor, _ = start_server(tiny_model_dir, workers=2, preprocess_workers=0)
    wait_until(lambda: len(server_processes(supervisor.pid)) == 2, 60, "two server processes")
    children = server_processes(supervisor.pid)
    try:
        # Before its handler, a SIGTERM would simply kill a child, stopped or not.
        wait_until(lambda: all(catches_sigterm(pid) for pid in children), 60,
                   "server processes without a SIGTERM handler")
        for pid in children:  # stopped: they cannot finish a graceful shutdown
            os.kill(pid, signal.SIGSTOP)
        # Stopped before the supervisor signals them: a SIGTERM queued beside a SIGSTOP
        # not yet acted on is delivered first (lower number), and the child shuts down.
        wait_until(lambda: all(state(pid) == "T" for pid in children), 30, "not stopped")
        supervisor.send_signal(signal.SIGTERM)
        # Handled once the supervisor has passed it on (pending on the stopped children);
        # two signals sent together could be merged into one.
        wait_until(lambda: all(sigterm_pending(pid) for pid in children), 30,
                   "the first SIGTERM was never passed on")
        assert supervisor.poll() is None  # waiting for children that cannot exit
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=10) == 1
        wait_until(lambda: not any(alive(pid) for pid in children), 10,
                   "server processes outlived the forced exit")
    finally:
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if supervisor.poll() is None:
            supervisor.kill()


def affinity_of_every_thread(pid: int) -> set[frozenset[int]]:
    return {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: nothing to pin")
def test_one_process_per_cpu_each_runs_on_its_own(tiny_model_dir):
    """Each server process, every thread of it (gRPC's among them) and its decoders stay on
    one CPU, a different one for each."""
    cpus = sorted(os.sched_getaffinity(0))
    supervisor, base = start_server(tiny_model_dir, workers=len(cpus), preprocess_workers=1,
                                    grpc_port=free_port())
    try:
        wait_until(lambda: len(server_processes(supervisor.pid)) == len(cpus), 60, "servers")
        servers = server_processes(supervisor.pid)
        wait_until(lambda: all(decoders_of(pid) for pid in servers), 60, "decoders")
        pinned = [affinity_of_every_thread(pid) for pid in servers]
        assert sorted(next(iter(p)) for p in pinned) == [frozenset({c}) for c in cpus]
        assert all(len(p) == 1 for p in pinned)  # every thread on its process's CPU
        for pid, threads in zip(servers, pinned, strict=True):
            assert {frozenset(os.sched_getaffinity(d)) for d in decoders_of(pid)} == threads
        assert os.sched_getaffinity(supervisor.pid) == set(cpus)  # the supervisor is free
    finally:
        supervisor.terminate()
        supervisor.wait(timeout=30)


def test_fewer_processes_than_cpus_are_not_pinned():
    from app.processes import cpu_for_each

    cpus = sorted(os.sched_getaffinity(0))
    assert cpu_for_each(len(cpus), pin=False) == [None] * len(cpus)
    if len(cpus) > 1:
        assert cpu_for_each(len(cpus), pin=True) == cpus
        assert cpu_for_each(len(cpus) - 1, pin=True) == [None] * (len(cpus) - 1)
    assert cpu_for_each(1, pin=True) == [None]
