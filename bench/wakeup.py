"""What one message between two processes costs in CPU when messages come at a steady pace.

    python bench/wakeup.py

A hop's throughput (`bench/hop.py`) says what a burst costs; a real-time pipeline sends at
a pace, and then every message wakes a sleeping receiver (and, with ZeroMQ, the I/O
threads of both ends). This sends 640-byte messages at fixed rates from one process to
another over a ZeroMQ PUSH/PULL pair on ipc (as the pipeline's hops do: the receiver polls,
then drains what is waiting), over a pipe (`os.write`/`os.read`, the floor for a wake-up
between processes) and over a ring in shared memory with a FIFO doorbell rung only when the
reader is parked (no spinning: the reader sleeps in `select`), and reads both processes' CPU
with psutil. The sender's own pacing loop is measured alone and taken off. Writes `bench/results/wakeup.md`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import select
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event
from pathlib import Path

import numpy as np
import psutil
import zmq

RESULTS = Path(__file__).resolve().parent / "results"
RATES = (100, 1000, 5000)
SECONDS = 5.0
SIZE = 640


def cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def paced(rate: int, send: Callable[[bytes], object] | None) -> None:
    """Call `send()` `rate` times a second for SECONDS, then once with None (the end)."""
    t0 = time.monotonic()
    k = 0
    data = b"x" * SIZE
    while (now := time.monotonic()) - t0 < SECONDS:
        if send is not None:
            send(data)
        k += 1
        wait = t0 + k / rate - now
        if wait > 0:
            time.sleep(wait)


def zmq_recv(addr: str, ready: Event) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.bind(addr)
    poller = zmq.Poller()
    poller.register(s, zmq.POLLIN)
    ready.set()
    while True:
        if poller.poll(100):
            while int(s.get(zmq.EVENTS)) & zmq.POLLIN:
                if bytes(s.recv()) == b"end":
                    return


def zmq_send(addr: str, rate: int, ready: Event) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.connect(addr)
    ready.wait()
    time.sleep(0.2)
    paced(rate, s.send)
    s.send(b"end")
    time.sleep(0.2)


def pipe_recv(path: str, ready: Event) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO by name: spawned children inherit no fds
    ready.set()
    heard = False
    while True:
        select.select([fd], [], [], 0.1)
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            continue
        if b"E" in data or (heard and not data):  # the end, or the sender is gone
            return
        heard = heard or bool(data)


def pipe_send(path: str, rate: int, ready: Event) -> None:
    ready.wait()
    fd = os.open(path, os.O_WRONLY)
    time.sleep(0.2)
    paced(rate, lambda data: os.write(fd, data))
    os.write(fd, b"E")


# The doorbell: messages go into a ring in shared memory; the reader, before it sleeps on a FIFO,
# says so in a flag beside the ring, and the writer rings (one byte into the FIFO) only then. A
# reader that is awake when a message comes finds it on its next look, with no system call.
RING_SLOTS = 1024
HEADER = 24  # write count, read count, parked flag: three int64


def _ring(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The ring: a file mapped by both processes (the pools' shared memory, in miniature)."""
    mem = np.memmap(path, np.uint8, "r+")
    return mem[:HEADER].view(np.int64), mem[HEADER:].reshape(RING_SLOTS, SIZE)


def bell_recv(ring: str, path: str, ready: Event) -> None:
    counters, slots = _ring(ring)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    ready.set()
    seen = 0
    while True:
        while seen < counters[0]:  # take what is there
            if slots[seen % RING_SLOTS, 0] == ord("E"):
                return
            seen += 1
        counters[1] = seen
        counters[2] = 1  # parked: ring me
        if seen < counters[0]:  # it came between the look and the flag
            counters[2] = 0
            continue
        select.select([fd], [], [], 0.1)
        counters[2] = 0
        try:
            os.read(fd, 1 << 16)
        except BlockingIOError:
            pass


def bell_send(ring: str, path: str, rate: int, ready: Event) -> None:
    ready.wait()
    counters, slots = _ring(ring)
    fd = os.open(path, os.O_WRONLY)
    time.sleep(0.2)

    def send(data: bytes) -> None:
        k = int(counters[0])
        slots[k % RING_SLOTS] = np.frombuffer(data, np.uint8)
        counters[0] = k + 1
        if counters[2]:
            os.write(fd, b"x")

    paced(rate, send)
    send(b"E" * SIZE)


def idle_send(rate: int) -> None:
    paced(rate, None)


def measure(way: str, rate: int) -> tuple[float, float]:
    """CPU microseconds per message: receiver, sender (pacing loop taken off)."""
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    with tempfile.TemporaryDirectory() as d:
        if way == "zmq":
            addr = f"ipc://{d}/hop"
            r = ctx.Process(target=zmq_recv, args=(addr, ready), daemon=True)
            w = ctx.Process(target=zmq_send, args=(addr, rate, ready), daemon=True)
        elif way == "doorbell":
            fifo = f"{d}/bell"
            os.mkfifo(fifo)
            ring = f"{d}/ring"
            Path(ring).write_bytes(bytes(HEADER + RING_SLOTS * SIZE))
            r = ctx.Process(target=bell_recv, args=(ring, fifo, ready), daemon=True)
            w = ctx.Process(target=bell_send, args=(ring, fifo, rate, ready), daemon=True)
        elif way == "pipe":
            fifo = f"{d}/hop"
            os.mkfifo(fifo)
            r = ctx.Process(target=pipe_recv, args=(fifo, ready), daemon=True)
            w = ctx.Process(target=pipe_send, args=(fifo, rate, ready), daemon=True)
        else:
            r = ctx.Process(target=time.sleep, args=(SECONDS + 0.5,), daemon=True)
            w = ctx.Process(target=idle_send, args=(rate,), daemon=True)
            ready.set()
        r.start()
        w.start()
        pr, pw = psutil.Process(r.pid), psutil.Process(w.pid)
        ready.wait()
        time.sleep(1.0)
        a, b, t = cpu(pr), cpu(pw), time.monotonic()
        time.sleep(SECONDS - 2.0)
        a2, b2, t2 = cpu(pr), cpu(pw), time.monotonic()
        r.join()
        w.join()
    n = rate * (t2 - t)
    return 1e6 * (a2 - a) / n, 1e6 * (b2 - b) / n


def main() -> int:
    rows = []
    for rate in RATES:
        _, pacing = measure("none", rate)
        for way in ("zmq", "pipe", "doorbell"):
            recv_us, send_us = measure(way, rate)
            rows.append((rate, way, recv_us, max(0.0, send_us - pacing)))
            print(f"{rate:5d} msg/s {way:8s}: receiver {recv_us:6.1f} µs, sender {send_us - pacing:6.1f} µs "
                  "per message", flush=True)
    lines = [f"{SIZE}-byte messages at a steady pace, {os.cpu_count()} cores; CPU per message read by psutil "
             "(the sender's pacing loop, measured alone, taken off)", "",
             "| rate | way | receiver CPU per message | sender CPU per message | both |",
             "|---:|---|---:|---:|---:|"]
    lines += [f"| {rate:,} msg/s | {way} | {r:.0f} µs | {s:.0f} µs | {r + s:.0f} µs |" for rate, way, r, s in rows]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "wakeup.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
