"""Several server processes on one port, each with its own listening socket.

uvicorn's own `--workers` shares one listening socket between its processes. Whichever
process the kernel wakes first accepts every connection pending at that moment, so a
client that opens its connections together (a load balancer, a connection pool, a load
generator) can land all of them on one process while the others sit idle. Measured here:
32 connections opened at once all went to one of two processes, at 2,400 requests/s
where an even split gave 3,500.

With SO_REUSEPORT each process listens on a socket of its own, and the kernel spreads new
connections over them by a hash of the client's address and port.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading

import uvicorn
from uvicorn.config import STARTUP_FAILURE

logger = logging.getLogger("digits.processes")


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port that other SO_REUSEPORT sockets can share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def serve_processes(config: uvicorn.Config, processes: int, pin: bool = False) -> None:
    """Run `processes` copies of the server until SIGINT or SIGTERM; replace any that die.

    `config.app` must be an import string: each process builds its own app. Exits with
    uvicorn's start-up failure status (3) if a process fails to start; a second signal
    kills them all at once. `pin`: see `cpu_for_each`.
    """
    check_port_free(config.host, config.port)
    stopping = threading.Event()
    children: list[multiprocessing.Process] = []

    def on_signal(*_) -> None:
        if stopping.is_set():  # the second one: an operator who will not wait
            logger.warning("second signal: killing the server processes")
            for child in children:
                if child.is_alive():
                    child.kill()
            os._exit(1)
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    cpus = cpu_for_each(processes, pin)
    children += [_start(context, config, cpu) for cpu in cpus]
    failed = False
    logger.info("serving on %s:%d with %d processes (SO_REUSEPORT)",
                config.host, config.port, processes)
    while not stopping.wait(0.5):
        for i, child in enumerate(children):
            if child.is_alive():
                continue
            if child.exitcode == STARTUP_FAILURE:
                # It would fail the same way every time (a bad model directory, a bad setting).
                logger.error("a server process failed to start; stopping")
                stopping.set()
                failed = True
                break
            logger.warning("server process %d exited with %s; starting another",
                           child.pid, child.exitcode)
            children[i] = _start(context, config, cpus[i])
    for child in children:
        if child.is_alive():
            child.terminate()  # SIGTERM: each finishes its requests in flight, then exits
    for child in children:
        child.join()
    if failed:
        raise SystemExit(STARTUP_FAILURE)


def check_port_free(host: str, port: int) -> None:
    """Refuse a port that is taken, once and clearly, before any process starts.

    Binding alone is not enough: another server that also uses SO_REUSEPORT (a second
    copy of this one, say) would let us bind and then silently share its traffic.
    """
    probe_host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    try:
        with socket.create_connection((probe_host, port), timeout=1):
            raise SystemExit(f"Something is already listening on {host}:{port}.")
    except OSError:
        pass  # nothing answered: free, unless bound without listening, which bind tells
    try:
        reuse_port_socket(host, port).close()
    except OSError as error:
        raise SystemExit(f"Cannot listen on {host}:{port}: {error}") from error


def cpu_for_each(processes: int, pin: bool) -> list[int | None]:
    """The CPU each server process is pinned to, or None: with `pin` and exactly one process
    per CPU this process may use, the i-th process gets the i-th CPU.

    A pinned process's threads (the event loop, gRPC's poller, the model's) and its decoders
    then wake each other on one core, not across cores: a cross-core wake-up costs an
    interrupt, which on a virtual machine is a trip through the hypervisor, and a gRPC call
    takes several (on this machine a call cost the server 185-223 µs pinned against 223-246
    unpinned: `python -m bench.pinning`). With fewer processes than CPUs nothing is pinned,
    so none is held to one core.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if pin and processes == len(cpus) > 1:
        return list(cpus)
    return [None] * processes


def _start(context, config: uvicorn.Config, cpu: int | None) -> multiprocessing.Process:
    child = context.Process(target=_serve_one, args=(config, cpu), name="digits-server")
    child.start()
    return child


def _serve_one(config: uvicorn.Config, cpu: int | None) -> None:
    """One server process: its own socket, its own app, its own models and batches."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # before any thread starts: they all inherit it
    config.configure_logging()  # a Config arrives unpickled, without its logging set up
    uvicorn.Server(config).run(sockets=[reuse_port_socket(config.host, config.port)])
