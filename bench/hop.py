"""One hop between two processes: which way should audio travel?

Three ways to hand N bytes from one process to another, each measured the way the
pipeline uses it (the receiver ends up with its own copy of the bytes):

* ``shm``    the project's ``BufferPool``: the sender copies the bytes into a slot and
             sends a ``Packet`` with one ``Pcm`` descriptor over ZeroMQ PUSH/PULL (ipc://); the receiver
             copies them out and releases the slot. A full pool makes the sender wait.
* ``zmq``    the same bytes inline in a ZeroMQ message over the same ipc:// socket
             (zero-copy send for large payloads, as pyzmq recommends).
* ``queue``  ``multiprocessing.Queue`` (pickle over a pipe, with a feeder thread).

Two figures per cell: throughput (a burst of messages as fast as the receiver takes
them; messages/s and MB/s) and one-way latency with nothing queued (one message at a
time; the send timestamp rides in the message and CLOCK_MONOTONIC is shared by all
processes of the machine), p50 and p99.

    python bench/hop.py [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamer.transport.messages import Packet, Pcm, Slice, decode, encode
from streamer.transport.shm import BufferPool, PoolFull, PoolSpec

SIZES = {"640 B": 640, "64 KB": 64 * 1024, "2 MB": 2 * 1024 * 1024}
SLOT = 64 * 1024
SLOTS = 256  # 16 MiB: eight 2 MB messages in flight


def _now() -> int:
    return time.monotonic_ns()


class Hop:
    """The sending end; the receiving end runs in `_receiver` in another process."""

    def __init__(self, kind: str, workdir: str, run_id: str) -> None:
        self.kind = kind
        self.workdir = workdir
        self.run_id = run_id
        self.spec = PoolSpec("bench", SLOT, SLOTS)
        self.pool: BufferPool | None = None
        self.queue: Any = None
        self.ctx = zmq.Context()
        self.sock: zmq.Socket[bytes] | None = None

    def open(self, ctx: mp.context.SpawnContext) -> None:
        if self.kind == "queue":
            self.queue = ctx.Queue(maxsize=64)
            return
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 200)
        self.sock.setsockopt(zmq.SNDHWM, 64)
        self.sock.bind(f"ipc://{self.workdir}/hop.sock")
        if self.kind == "shm":
            self.pool = BufferPool.create(self.spec, self.run_id)

    def send(self, payload: bytes, stamp: int) -> None:
        if self.kind == "queue":
            self.queue.put((stamp, payload))
            return
        assert self.sock is not None
        if self.kind == "zmq":
            self.sock.send_multipart([stamp.to_bytes(8, "little"), payload], copy=len(payload) < 65536)
            return
        assert self.pool is not None
        while True:
            try:
                ref = self.pool.write(payload)
                break
            except PoolFull:
                time.sleep(20e-6)  # backpressure: wait for the receiver to release
        self.sock.send(encode(Packet(ref, [Pcm(str(stamp), Slice(0, len(payload)))])))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.ctx.term()
        if self.pool is not None:
            self.pool.unlink()
            self.pool.close()


def _receiver(kind: str, workdir: str, run_id: str, queue: Any, count: int, ack: Connection) -> None:
    """Take `count` messages, copy each payload out, report arrival latencies and end time."""
    pool: BufferPool | None = None
    ctx = zmq.Context()
    sock: zmq.Socket[bytes] | None = None
    if kind != "queue":
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 200)
        sock.connect(f"ipc://{workdir}/hop.sock")
    ack.send("ready")
    latencies: list[int] = []
    one_by_one = ack.recv()
    for _ in range(count):
        if kind == "queue":
            stamp, data = queue.get()
        elif kind == "zmq":
            assert sock is not None
            head, frame = sock.recv_multipart(copy=False)
            stamp = int.from_bytes(head.bytes, "little")
            data = frame.bytes
        else:
            assert sock is not None
            packet = decode(sock.recv())
            (msg,) = packet.items
            assert isinstance(msg, Pcm) and packet.slab is not None
            if pool is None:
                pool = BufferPool.attach(PoolSpec("bench", SLOT, SLOTS), run_id)
            data = pool.read_bytes(packet.slab)  # msg.at is the whole slab: one payload
            pool.release(packet.slab)
            stamp = int(msg.stream)
        latencies.append(_now() - stamp)
        del data
        if one_by_one:
            ack.send(None)
    ack.send((latencies, _now()))
    if sock is not None:
        sock.close()
    ctx.term()
    if pool is not None:
        pool.close()


def run_cell(kind: str, size: int, burst: int, pings: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    payload = os.urandom(size)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="hop-") as workdir:
        for mode, count in (("burst", burst), ("ping", pings)):
            hop = Hop(kind, workdir, uuid.uuid4().hex[:8])
            hop.open(ctx)
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_receiver, args=(kind, workdir, hop.run_id, hop.queue, count, theirs))
            proc.start()
            try:
                assert mine.recv() == "ready"
                time.sleep(0.2)  # let the PULL side connect
                mine.send(mode == "ping")
                start = _now()
                for _ in range(count):
                    hop.send(payload, _now())
                    if mode == "ping":
                        mine.recv()
                latencies, end = mine.recv()
                proc.join(10)
            finally:
                if proc.is_alive():
                    proc.kill()
                    proc.join()
                hop.close()
            if mode == "burst":
                seconds = (end - start) / 1e9
                out["msg_s"] = count / seconds
                out["mb_s"] = count * size / seconds / 1e6
            else:
                lat = sorted(latencies)
                out["p50_us"] = statistics.median(lat) / 1e3
                out["p99_us"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e3
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of the messages (smoke run)")
    args = parser.parse_args(argv)
    scale = 0.1 if args.quick else 1.0
    plan: dict[int, tuple[int, int]] = {640: (20000, 2000), 65536: (4000, 1000), 2097152: (300, 200)}
    rows: list[tuple[str, str, dict[str, float]]] = []
    for label, size in SIZES.items():
        burst, pings = plan[size]
        for kind in ("shm", "zmq", "queue"):
            cell = run_cell(kind, size, max(20, int(burst * scale)), max(20, int(pings * scale)))
            rows.append((label, kind, cell))
            print(f"  {label:>6} {kind:<6} done", file=sys.stderr)
    python = sys.version.split()[0]
    print(f"one hop between two processes ({os.cpu_count()} cores, Python {python}, pyzmq {zmq.__version__})")
    print()
    print("| size | way | msg/s | MB/s | p50 latency | p99 latency |")
    print("|---|---|---:|---:|---:|---:|")
    for label, kind, cell in rows:
        print(
            f"| {label} | {kind} | {cell['msg_s']:,.0f} | {cell['mb_s']:,.1f} "
            f"| {cell['p50_us']:,.0f} µs | {cell['p99_us']:,.0f} µs |"
        )


if __name__ == "__main__":
    main()

