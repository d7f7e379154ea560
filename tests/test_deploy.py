"""Past one machine: instances behind Debian's HAProxy (deploy/haproxy.cfg), on loopback.

Two instances and HAProxy; twenty sessions stream through it. One instance is stopped with
SIGTERM mid-run: its sessions get their finals and 1001, new sessions go to the other one,
none is refused or loses a result. Then an instance's supervisor is SIGKILLed: its sessions
see 1006, the client script reconnects through HAProxy, the other sessions go on."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile

from audio import noise, speech
from conversation import Transcript, check_regions_answered, check_simple_counts, converse, stream_steps
from server import CLIENT, Server, alive, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = ("The quick brown fox jumps over the lazy dog.", "Please call me back tomorrow morning.",
             "Every region gets exactly one final result.")


class Balancer:
    def __init__(self, a: Server, b: Server, addr: str = "127.0.0.1", config: Path = ROOT / "deploy" / "haproxy.cfg",
                 ) -> None:
        self.port = free_port()
        env = dict(os.environ, STREAMER_LB_ADDR=addr, STREAMER_LB_PORT=str(self.port),
                   STREAMER_A=f"127.0.0.1:{a.port}", STREAMER_B=f"127.0.0.1:{b.port}")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(config)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.health() == 200, 20)

    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/segmented"

    def health(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/health", timeout=2) as r:
                return int(r.status)
        except OSError:
            return 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def active_sessions(srv: Server) -> float:
    """Sessions open on every front of `srv`, from each front's own page: the group's `/metrics`
    leaves out a front that answers it slowly, and a loaded machine has slow fronts."""
    try:
        return sum(srv.per_front("streamer_front_sessions_active").values())
    except OSError:
        return 0.0


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Server, Server, Balancer]]:
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is required (bash .ci/run installs it)")
    # Admission is not what the pair is about: a busy instance must not turn the moved sessions away.
    env = {"STREAMER_SUPERVISOR_DRAIN_S": "20", "STREAMER_ADMISSION_MAX_BUSY": "1000",
           "STREAMER_ADMISSION_MAX_QUEUE_DELAY_S": "1000"}
    a = Server(tmp_path / "a", env=env).start()
    b = Server(tmp_path / "b", env=env).start()
    lb = Balancer(a, b)
    try:
        yield a, b, lb
    finally:
        lb.stop()
        a.stop()
        b.stop()


@pytest.fixture
def single(tmp_path: Path) -> Iterator[tuple[Server, Balancer]]:
    """One light instance behind HAProxy (both of its servers point at it), for what the
    balancer itself decides."""
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is required (bash .ci/run installs it)")
    a = Server(tmp_path / "a", env={"STREAMER_ACTORS_MODELS": "1", "STREAMER_ACTORS_FRONTS": "1"}).start()
    try:
        lb = Balancer(a, a)
    except BaseException:
        a.stop()
        raise
    try:
        yield a, lb
    finally:
        lb.stop()
        a.stop()


def get(port: int, target: str, host: str = "127.0.0.1", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request with `target` sent byte for byte (HTTP libraries would tidy it up first)."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def sessions(url: str, steps: list[object], n: int, stagger_s: float = 0.05) -> list[Transcript]:
    async def one(i: int) -> Transcript:
        await asyncio.sleep(i * stagger_s)  # pacing: clients arrive one after another, not all at once
        return await converse(url, steps, pace_s=0.05, timeout=90)  # type: ignore[arg-type]

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def test_a_draining_instance_finishes_its_sessions_and_new_ones_go_elsewhere(
        pair: tuple[Server, Server, Balancer]) -> None:
    a, b, lb = pair
    steps = stream_steps(speech(SENTENCES, gap_s=0.8).samples[None, :], 16000, False)
    late: list[Transcript] = []
    failures: list[BaseException] = []

    def drain_a_then_start_more() -> None:
        try:
            wait_for(lambda: active_sessions(a) + active_sessions(b) == 20, 30)  # mid-run: all of them open
            a.signal(signal.SIGTERM)
            # Once both of a's fronts drain, a refuses new sessions (503) and HAProxy retries them on b,
            # before its health check has taken a out of rotation.
            # (A front's process is `front-k`, or `front-k+decoder-k+segmenter-k` in a shard.)
            wait_for(lambda: len(re.findall(r"front-\d\S*\[\d+\] INFO front: stopping", a.log())) == 2, 30)
            late.extend(asyncio.run(sessions(lb.ws(), steps, 5)))
        except BaseException as e:
            failures.append(e)

    t = threading.Thread(target=drain_a_then_start_more)
    t.start()
    first = asyncio.run(sessions(lb.ws(), steps, 20))
    t.join()
    assert not failures, failures
    assert a.wait(30) == 0
    drained = [x for x in first if x.close_code == 1001]
    assert drained and len(drained) < 20, [x.close_code for x in first]
    for x in first:
        assert x.close_code in (1000, 1001) and not x.of_type("error"), (x.close_code, x.messages[-2:])
        finals, errors = check_regions_answered(x, 0, close_code=x.close_code or 0)  # 1001: finished, then closed
        assert errors == 0 and (x.close_code == 1001 or finals == 3)
    assert [x.close_code for x in late] == [1000] * 5 and all(check_regions_answered(x, 0) == (3, 0) for x in late)


@pytest.mark.long
def test_a_killed_instance_drops_its_sessions_and_the_client_reconnects_through_the_balancer(
        pair: tuple[Server, Server, Balancer], tmp_path: Path) -> None:
    a, b, lb = pair
    s = speech(SENTENCES, gap_s=0.8)
    wav = tmp_path / "speech.wav"
    soundfile.write(wav, s.samples, 16000, subtype="PCM_16")
    client = subprocess.Popen([*CLIENT, "-i", str(wav), "--addr", lb.ws(),
                               "--real-time"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # A new interpreter importing numpy, aiohttp and soundfile, beside five other tests' servers:
    # on a loaded 2-core machine its session can take well over 10 s to show in /metrics.
    wait_for(lambda: client.poll() is not None or active_sessions(a) + active_sessions(b) >= 1, 40)
    assert client.poll() is None, client.communicate()
    victim, other = (a, b) if active_sessions(a) >= 1 else (b, a)
    steps = stream_steps(s.samples[None, :], 16000, False)
    others: list[Transcript] = []
    children = victim.descendants()

    failures: list[BaseException] = []

    def kill_mid_run() -> None:
        try:
            wait_for(lambda: active_sessions(a) + active_sessions(b) == 11, 30)  # the client's and the ten others
        except BaseException as e:
            failures.append(e)
        finally:
            victim.signal(signal.SIGKILL)

    t = threading.Thread(target=kill_mid_run)
    t.start()
    others = asyncio.run(sessions(lb.ws(), steps, 10, stagger_s=0.1))
    t.join()
    assert not failures, failures
    out, err = client.communicate(timeout=90)
    assert client.returncode == 0, err
    assert "connection lost (close code 1006): reconnecting" in err
    assert "reconnected 1 times" in out and out.count('"is_final": true') >= 3
    codes = sorted(x.close_code or 0 for x in others)
    assert set(codes) <= {1000, 1006}, codes
    for x in others:
        if x.close_code == 1000:  # on the instance that lived: untouched
            assert check_regions_answered(x, 0) == (3, 0)
    assert other.health()[0] == 200
    assert alive(children) == []


def test_the_kubernetes_manifests_validate_against_a_current_kubernetes() -> None:
    import kubernetes_validate
    import yaml

    docs = [d for f in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
            for d in yaml.safe_load_all(f.read_text()) if d]
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "PodDisruptionBudget"}
    for doc in docs:
        kubernetes_validate.validate(doc, "1.37.0", strict=True)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/api/v1/health"
    assert pod["terminationGracePeriodSeconds"] >= 10 + 5 * 4 + 3  # drain, each role's stop, the pre-stop pause
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"


def test_the_load_balancer_and_prometheus_configurations_are_valid() -> None:
    assert subprocess.run(["haproxy", "-c", "-q", "-f", str(ROOT / "deploy" / "haproxy.cfg")]).returncode == 0
    for f in ("prometheus.yml", "prometheus-instances.yml"):
        out = subprocess.run(["promtool", "check", "config", str(ROOT / "deploy" / f)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


def test_prometheus_finds_every_instance_in_a_targets_file_and_grafana_splits_by_instance(
        pair: tuple[Server, Server, Balancer], tmp_path: Path) -> None:
    import json

    a, b, _ = pair
    targets = tmp_path / "targets"
    targets.mkdir()
    config = (ROOT / "deploy" / "prometheus-instances.yml").read_text().replace('"targets/*.json"',
                                                                                   f'"{targets}/*.json"')
    (tmp_path / "prometheus.yml").write_text(config.replace("scrape_interval: 5s", "scrape_interval: 1s"))
    port = free_port()
    prom = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--web.listen-address=127.0.0.1:{port}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # An instance appears by writing its file: no restart, no hand-kept list.
        (targets / "a.json").write_text(json.dumps([{"targets": [f"127.0.0.1:{a.port}"]}]))
        (targets / "b.json").write_text(json.dumps([{"targets": [f"127.0.0.1:{b.port}"]}]))

        def instances() -> set[str]:
            # One supervisor per instance, whatever its placement (a shard's page is labelled by its process).
            q = urllib.parse.urlencode({"query": 'sum by (instance) (process_cpu_seconds_total{role="supervisor"})'})
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?{q}", timeout=5) as r:
                    return {x["metric"]["instance"] for x in json.loads(r.read())["data"]["result"]}
            except OSError:
                return set()

        wait_for(lambda: instances() == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}, 60)
    finally:
        prom.terminate()
        prom.wait(10)
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert all("sum by (" not in e or "sum by (instance" in e for e in exprs), exprs


# Spellings of the admin endpoints that aiohttp routes to their handlers: unreserved characters
# percent-encoded anywhere, either case of hex, the absolute form, a query, a fragment.
ROUTED = ("/%6Detrics", "/%6detrics", "/m%65trics", "/%6D%65%74%72%69%63%73", "/%6detrics?", "/metrics?self=1",
          "/api/v1/%61ctors", "/%61pi/v1/actors", "/api/v1/%61%63tors?", "http://127.0.0.1/%6Detrics", "/metrics#frag")
# Spellings that aiohttp answers 404 but other servers (or another aiohttp) resolve: repeated
# slashes and dot segments, plain or percent-encoded. Denied as well.
RESOLVED_ELSEWHERE = ("//metrics", "///metrics", "/api//v1/actors", "//api/v1/actors", "/./metrics", "/x/../metrics",
                      "/api/v1/../../metrics", "/api/v1/./actors", "/api/v1/x/../actors", "/x/%2e%2e/metrics",
                      "/%2E%2E/metrics", "/web/../metrics", "http://127.0.0.1//metrics")


def test_the_balancer_denies_the_admin_endpoints_however_they_are_spelled(single: tuple[Server, Balancer]) -> None:
    a, lb = single
    for target in ROUTED:  # the instance itself, from loopback: every one of these reaches the handler
        assert get(a.port, target)[0] == 200, target
    for target in (*ROUTED, *RESOLVED_ELSEWHERE):
        status, body = get(lb.port, target)
        # HAProxy refuses a fragment in a request line outright (400); everything else is denied.
        assert status == (400 if "#" in target else 403), (target, status, body[:80])
    if shutil.which("curl") is None:
        pytest.fail("curl is required (bash .ci/run installs it)")
    for target in ("/%6Detrics", "/api/v1/%61ctors"):  # HTTP/2 without TLS: HAProxy speaks it on the same port
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "--path-as-is",
                              "--http2-prior-knowledge", f"http://127.0.0.1:{lb.port}{target}"],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout == "403 2", (target, out.stdout, out.stderr)
    # What the public may use still passes, however spelled, WebSockets included.
    assert get(lb.port, "/api/v1/%68ealth")[0] == 200
    assert get(lb.port, "/web/../api/v1/health")[0] == 200
    t = asyncio.run(converse(f"ws://127.0.0.1:{lb.port}/api/v1//%73imple", stream_steps(noise(1.0)[None, :], 16000,
                                                                                        False)))
    assert t.close_code == 1000
    check_simple_counts(t, 0, 16000)


def test_behind_the_balancer_the_instance_knows_the_real_client(tmp_path: Path) -> None:
    """Through HAProxy every client reaches the instance from 127.0.0.1. With the balancer in
    `[server] trusted_proxies`, its X-Forwarded-For names the real client, for the access log
    and for the admin rule, which then holds even where the balancer's own deny rule is gone
    (a copy of the configuration without it). What a client writes in X-Forwarded-For itself
    counts for nothing: the balancer replaces it."""
    from test_hostile import _outward_address

    outward = _outward_address()
    if outward is None:
        pytest.skip("this machine has no non-loopback address to call from")
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is required (bash .ci/run installs it)")
    config = (ROOT / "deploy" / "haproxy.cfg").read_text()
    deny = re.search(r"^ *http-request deny .*\n", config, re.M)
    assert deny is not None
    (tmp_path / "no-deny.cfg").write_text(config.replace(deny.group(0), ""))
    a = Server(tmp_path / "a", env={"STREAMER_ACTORS_MODELS": "1", "STREAMER_ACTORS_FRONTS": "1",
                                    "STREAMER_SERVER_TRUSTED_PROXIES": "127.0.0.1"}).start()
    balancers: list[Balancer] = []
    try:
        balancers.append(lb := Balancer(a, a, addr="0.0.0.0"))
        balancers.append(open_lb := Balancer(a, a, addr="0.0.0.0", config=tmp_path / "no-deny.cfg"))

        def logged_client(host: str, forged: str) -> str:
            mark = f"/who-{uuid.uuid4().hex}"  # a 404 of its own, to find its access log line
            assert get(lb.port, mark, host=host, headers={"X-Forwarded-For": forged})[0] == 404
            wait_for(lambda: mark in a.log(), 10)
            (line,) = [x for x in a.log().splitlines() if mark in x]
            return line.split("aiohttp.access: ", 1)[1].split(" ", 1)[0]

        assert logged_client(outward, forged="127.0.0.1") == outward
        assert logged_client("127.0.0.1", forged="203.0.113.9") == "127.0.0.1"
        for path in ("/metrics", "/api/v1/actors"):
            assert get(open_lb.port, path, host=outward, headers={"X-Forwarded-For": "127.0.0.1"})[0] == 403
            assert get(open_lb.port, path, headers={"X-Forwarded-For": "203.0.113.9"})[0] == 200  # a local client
            assert get(a.port, path)[0] == 200  # straight from loopback: no header, the peer is the client
            assert get(a.port, path, headers={"X-Forwarded-For": "198.51.100.7"})[0] == 403  # a proxy's remote client
            assert get(a.port, path, headers={"X-Forwarded-For": "unknown"})[0] == 403  # no address: nobody known
    finally:
        for b in balancers:
            b.stop()
        a.stop()
