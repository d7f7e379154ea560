"""Starting, restarting and stopping the group: nothing left behind in /dev/shm or the process table."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import psutil
import pytest

from audio import noise
from conversation import check_simple_counts, converse, stream_steps
from server import SPLIT, Server, actor, alive, process_names, shm_segments, topology, wait_for


def test_processes_show_their_role_in_ps(fresh_server: Server) -> None:
    fresh_server.start()
    titles = {p.cmdline()[0] for p in fresh_server.descendants()}
    assert {f"streamer: {name}" for name in process_names(fresh_server)} <= titles
    assert psutil.Process(fresh_server.proc.pid).cmdline()[0] == "streamer: supervisor"  # type: ignore[union-attr]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_leaves_no_segment_and_no_process(fresh_server: Server, sig: int) -> None:
    fresh_server.start()
    run_id = fresh_server.run_id()
    children = fresh_server.descendants()
    topo = topology(fresh_server)
    # A pool per front, and each shard's decoder's and segmenter's (one shard under "split", one per front in "shards").
    assert len(children) >= len(topo.hosts) and len(shm_segments(run_id)) == len(topo.pools)
    urllib.request.urlopen(f"{fresh_server.http}/api/v1/actors", timeout=5).close()  # its CPU readings: a file
    fresh_server.signal(sig)
    assert fresh_server.wait(30) == 0
    assert shm_segments(run_id) == []
    assert alive(children) == []
    assert sorted(os.listdir(fresh_server.run_dir)) == []
    assert "Traceback" not in fresh_server.log()  # a clean stop is a quiet one


def test_killed_model_actor_is_restarted_and_the_pipeline_works(fresh_server: Server) -> None:
    fresh_server.start()
    victim = next(a for a in fresh_server.actors() if a["name"] == "model-0")
    os.kill(victim["pid"], signal.SIGKILL)

    def replaced() -> bool:
        now = next(a for a in fresh_server.actors() if a["name"] == "model-0")
        return bool(now["state"] == "running" and now["pid"] != victim["pid"] and now["restarts"] == 1)

    wait_for(replaced)
    now = next(a for a in fresh_server.actors() if a["name"] == "model-0")
    assert now["last_exit"] == "signal SIGKILL"
    x = noise(3.0)[None]
    t = asyncio.run(converse(fresh_server.ws("simple"), stream_steps(x, 16000, False)))
    check_simple_counts(t, 0, x.shape[1])


def test_health_names_a_role_with_no_live_process(fresh_server: Server) -> None:
    # The segmenter's own process, under its own restart policy: in a shard it is the front's
    # process, restarted under the front's policy, and health names no role meanwhile.
    fresh_server.env.update(SPLIT)
    # A replacement is forked and bound within milliseconds; a quick second death waits out the
    # back-off (10 s here: longer than a loaded machine's slowest health answer), and health says
    # which role is missing meanwhile: that is the window to look in, not after the second
    # replacement is up (then only its first milliseconds).
    fresh_server.env["STREAMER_SUPERVISOR_SEGMENTER_BACKOFF_STEP_S"] = "10"
    fresh_server.env["STREAMER_SUPERVISOR_SEGMENTER_BACKOFF_MAX_S"] = "10"
    fresh_server.start()
    first = actor(fresh_server, "segmenter")["pid"]
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: (a := actor(fresh_server, "segmenter"))["pid"] not in (None, first)
             and a["state"] == "running", 10)
    os.kill(actor(fresh_server, "segmenter")["pid"], signal.SIGKILL)  # a quick second death: backed off
    wait_for(lambda: fresh_server.health() == (503, {"status": "unhealthy", "missing": ["segmenter"]}), 10)
    wait_for(lambda: fresh_server.health()[0] == 200, 30)


def test_a_second_server_on_a_port_in_use_refuses_to_start_instead_of_sharing_it(tmp_path: Path) -> None:
    """The fronts bind with SO_REUSEPORT, and so would a second server's: it used to start and take
    half of the first one's connections (a gRPC client of one test met another test's HTTP front
    on its port: "HTTP status 400"). It now names the port and exits 2, whichever of the two
    ports is taken."""
    for taken in ("port", "grpc_port"):
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as a front would
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            (tmp_path / taken).mkdir()
            srv = Server(tmp_path / taken / "run")
            setattr(srv, taken, squatter.getsockname()[1])
            proc = subprocess.Popen([sys.executable, "-m", "streamer.supervisor.cli", "serve"], env=srv.environment(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                pytest.fail(f"it started on {taken} {getattr(srv, taken)}, which another socket listens on")
        assert proc.returncode == 2, err[-2000:]
        assert f"port {getattr(srv, taken)} is in use" in err


@pytest.mark.parametrize("answer", [b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64",
                                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"],
                         ids=["grpc", "metrics"])
def test_a_start_waits_past_another_server_on_its_port(tmp_path: Path, answer: bytes) -> None:
    """The harness, not the product: ports are drawn at random, and while a supervisor starts
    (before it refuses a port that turns out taken) its health is asked of whatever listens
    there. Regression: another test's gRPC port answered in HTTP/2, `BadStatusLine` escaped, and
    the test failed instead of drawing new ports."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()

        def answer_once() -> None:
            conn, _ = other.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(answer)

        t = threading.Thread(target=answer_once, daemon=True)
        t.start()
        assert Server(tmp_path / "run", port=other.getsockname()[1]).health() == (0, {})
        t.join(5)


@pytest.mark.parametrize("group", [False, True], ids=["alone", "with-its-group"])
def test_supervisor_killed_outright_takes_its_children_and_segments_with_it(fresh_server: Server,
                                                                            group: bool) -> None:
    """SIGKILL to the supervisor alone: its resource tracker unlinks the pools it registered.
    To its process group (what honcho does 5 s after its SIGTERM if the drain is not over):
    the tracker dies too. Regression: the pools stayed in /dev/shm until a reboot; now the
    children, which are not in that group, unlink them as they exit."""
    fresh_server.start()
    run_id = fresh_server.run_id()
    children = fresh_server.descendants()
    assert fresh_server.proc is not None
    if group:
        os.killpg(fresh_server.proc.pid, signal.SIGKILL)
    else:
        fresh_server.signal(signal.SIGKILL)
    fresh_server.wait(10)
    left = alive(children, grace_s=20)
    assert left == [], [(p.pid, p.cmdline()) for p in left]
    wait_for(lambda: shm_segments(run_id) == [])


def test_a_killed_fork_server_takes_no_actor_with_it(fresh_server: Server) -> None:
    """`kill -9` of the fork server (a `python -c from multiprocessing.forkserver ...` in `ps`).
    Regression: the supervisor learnt of its children's ends through pipes from the fork server,
    so its death read as every child's ("exit 255"): it started a second group beside the first,
    which lived on, orphaned, until the supervisor stopped. Now only a real death counts, a
    replacement still starts (from a new fork server), and the stop still reaches every child."""
    fresh_server.start()
    run_id = fresh_server.run_id()
    before = {a["name"]: a["pid"] for a in fresh_server.actors()}
    children = fresh_server.descendants()
    server = next(p for p in children if "multiprocessing.forkserver" in " ".join(p.cmdline()))
    server.kill()
    assert alive([server], grace_s=5) == []
    os.kill(before["model-0"], signal.SIGKILL)  # a death after it: its replacement needs a fork server
    wait_for(lambda: (a := actor(fresh_server, "model-0"))["state"] == "running" and a["pid"] != before["model-0"])
    after = {a["name"]: (a["pid"], a["restarts"]) for a in fresh_server.actors()}
    assert {n: pid for n, (pid, restarts) in after.items() if restarts == 0} == \
        {n: pid for n, pid in before.items() if n != "model-0"}, after
    x = noise(2.0)[None]
    t = asyncio.run(converse(fresh_server.ws("simple"), stream_steps(x, 16000, False)))
    check_simple_counts(t, 0, x.shape[1])
    fresh_server.signal(signal.SIGTERM)
    assert fresh_server.wait(30) == 0
    assert alive(children) == [] and shm_segments(run_id) == []
    stops = re.findall(r"supervisor: stopped (\S+): (.*)", fresh_server.log())
    # Each process (several actors may share one) stopped in its turn, by SIGTERM.
    assert dict(stops) == {**{n: "unknown (its fork server had died)" for n in process_names(fresh_server)
                              if n != "model-0"}, "model-0": "exit 0"}, stops


def test_children_outside_the_terminals_foreground_group_still_log_to_it(tmp_path: Path) -> None:
    """`streamer serve` in a terminal with `stty tostop`. Children sit in process groups of their
    own (so a signal to the supervisor's group is the supervisor's to act on), which makes them
    background jobs of that terminal: their first log line to it stopped them with SIGTTOU. The
    front logs each stream's start, so a stream answered end to end says none was stopped."""
    srv = Server(tmp_path / "run")
    env = srv.environment()
    pid, master = pty.fork()  # a session of its own on a terminal, as a shell gives
    if pid == 0:
        try:
            os.execve("/bin/sh", ["sh", "-c", 'stty tostop && exec "$0" -m streamer.supervisor.cli serve',
                                  sys.executable], env)
        finally:
            os._exit(127)
    screen = bytearray()

    def read_terminal() -> None:
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 65536):
                screen.extend(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    try:
        wait_for(lambda: srv.health()[0] == 200 and srv.all_running(), 60)
        children = [psutil.Process(a["pid"]) for a in srv.actors()]
        x = noise(1.0)[None]
        t = asyncio.run(converse(srv.ws("simple"), stream_steps(x, 16000, False), timeout=20))
        check_simple_counts(t, 0, x.shape[1])
        assert b"stream started" in screen
    finally:
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        os.close(master)
    assert os.waitstatus_to_exitcode(status) == 0
    assert alive(children) == []


def in_session(sid: int) -> list[psutil.Process]:
    """The processes of the session `sid` (a supervisor started with `start_new_session`)."""
    out = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(p.pid) == sid:
                out.append(p)
    return out


def test_a_supervisor_killed_while_its_children_still_start_leaves_no_orphan(tmp_path: Path) -> None:
    """Regression: a child whose supervisor died before the child could learn of it (once, with
    a parent-death signal set after its start) lived on, holding the pools and the port. Every
    child now holds the lifeline, a pipe whose end it reads as soon as the supervisor is gone.
    It is killed at two moments of the start: once its helpers are up, and as soon as its first
    child is forked."""
    srv = Server(tmp_path / "run")
    port_holders: list[psutil.Process] = []

    def forked() -> int:
        """Children the fork server has forked (the supervisor's grandchildren)."""
        n = 0
        for p in srv.descendants():
            with contextlib.suppress(psutil.NoSuchProcess):
                n += p.ppid() != srv.proc.pid  # type: ignore[union-attr]
        return n

    moments = [lambda: len(srv.descendants()) >= 2,  # the resource tracker and the fork server
               lambda: forked() >= 1]
    for moment in moments:
        srv.start(timeout=60, ready=moment, every=0.005)  # (a port another test took: drawn again)
        try:
            children = srv.descendants()
            srv.signal(signal.SIGKILL)
            srv.wait(10)
            # ... and whatever the fork server forked after that look: the session's every member.
            left = alive(list({*children, *in_session(srv.proc.pid)}), grace_s=20)  # type: ignore[union-attr]
            port_holders += left
            assert left == [], [(p.pid, p.cmdline()) for p in left]
        finally:
            srv.stop()
            for p in port_holders:
                p.kill()
