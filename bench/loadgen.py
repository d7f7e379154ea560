"""A real-time load generator: N sessions stream speech with pauses in 20 ms frames.

Every session streams the same speech track (espeak-ng sentences with pauses, 16 kHz s16
mono), each from its own offset and with its own phase, so regions do not line up across
sessions. Each frame is sent at its audio time (start + k x 20 ms); the generator records
when it actually went out. The latency of a final is its arrival time minus the moment the
frame holding its `end_time` was sent: what a user feels after the audio left their hands.

Only finals that arrive while their session is still streaming count (a `stop` closes the
open region at once, which is a different latency). A session refused at the handshake
(HTTP 503) is counted as refused, with its Retry-After.

A second latency is measured from the region's last voiced frame (the moment the frame
holding it was sent): what a server can at best do is wait out the hangover after it and run
the model. The generator finds that frame by running the same VAD rules (`actors.regions`,
the server's configuration) over exactly the audio each session sent, after the run.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from streamer.actors.regions import Piece, RegionRules, SpeechRegions

from audio import speech

FRAME_S = 0.02
RATE = 16000
FRAME_BYTES = int(FRAME_S * RATE) * 2
TRACK_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Streaming speech recognition needs careful engineering.",
    "Please call me back tomorrow morning.",
    "Every region gets exactly one final result.",
    "Results come back while the audio still arrives.",
)


def track() -> bytes:
    """The speech every session streams: five sentences, with a second of silence between them."""
    s = speech(TRACK_SENTENCES, gap_s=1.0, lead_s=0.5)
    pcm = (np.clip(s.samples, -1, 1) * 32767).round().astype("<i2").tobytes()
    return pcm[: len(pcm) - len(pcm) % FRAME_BYTES]


@dataclass
class Session:
    """What one session saw."""

    refused: int = 0  # handshakes answered 503
    sent_at: list[float] = field(default_factory=list)  # wall time of each frame
    stop_at: float = math.inf
    finals: list[tuple[float, float, float]] = field(default_factory=list)  # (start, end, latency s)
    arrivals: dict[tuple[float, float], float] = field(default_factory=dict)  # (start, end) -> arrival
    voiced: list[float] = field(default_factory=list)  # latency from each final's last voiced frame
    offset: int = 0  # where in the track this session's audio began (bytes)
    interims: int = 0
    errors: list[str] = field(default_factory=list)
    close_code: int | None = None

    def latency_of(self, end_time: float, arrived: float) -> float | None:
        k = max(0, math.ceil(round(end_time / FRAME_S, 6)) - 1)
        if k >= len(self.sent_at):
            return None
        return arrived - self.sent_at[k]


async def one_session(http: aiohttp.ClientSession, url: str, pcm: bytes, offset: int, begin: float,
                      seconds: float, interim: bool) -> Session:
    out = Session(offset=offset)
    frames = int(seconds / FRAME_S)
    await asyncio.sleep(max(0.0, begin - time.monotonic()))
    while True:
        try:
            ws = await http.ws_connect(url, max_msg_size=0, autoping=True)
            break
        except aiohttp.WSServerHandshakeError as e:
            if e.status != 503:
                raise
            out.refused += 1
            out.errors.append(f"refused: 503, Retry-After {(e.headers or {}).get('Retry-After')}")
            return out

    async def read() -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            now = time.monotonic()
            m = json.loads(msg.data)
            if m["type"] == "segment":
                if m.get("is_final") is False:
                    out.interims += 1
                elif now < out.stop_at:
                    lat = out.latency_of(m["end_time"], now)
                    if lat is not None:
                        out.finals.append((m["start_time"], m["end_time"], lat))
                        out.arrivals[(m["start_time"], m["end_time"])] = now
            elif m["type"] == "error":
                out.errors.append(m["message"])

    reader = asyncio.get_running_loop().create_task(read())
    try:
        await ws.send_str(json.dumps({"request": "start", "interim_results": interim, "format": {
            "channels": 1, "sample_rate": RATE, "bit_depth": 16, "is_float": False}}))
        t0 = time.monotonic()
        n = len(pcm)
        for k in range(frames):
            lo = (offset + k * FRAME_BYTES) % n
            if ws.closed:
                break
            await ws.send_bytes(pcm[lo : lo + FRAME_BYTES])
            out.sent_at.append(time.monotonic())
            delay = t0 + (k + 1) * FRAME_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        out.stop_at = time.monotonic()
        if not ws.closed:
            await ws.send_str(json.dumps({"request": "stop", "disconnect": True}))
        await asyncio.wait_for(reader, 120)
    finally:
        if not reader.done():
            reader.cancel()
        await ws.close()
        out.close_code = ws.close_code
    return out


async def run(url: str, sessions: int, seconds: float, interim: bool = False, ramp_s: float = 2.0,
              seed: int = 1, rules: RegionRules | None = None) -> list[Session]:
    """Start `sessions` sessions spread over `ramp_s` (each with its own track offset); each
    streams `seconds` of audio in real time. With `rules` (the server's VAD rules), each final's
    latency from its last voiced frame is worked out afterwards."""
    pcm = track()
    rng = random.Random(seed)
    frames_in_track = len(pcm) // FRAME_BYTES
    begin = time.monotonic() + 0.2
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        runs = list(await asyncio.gather(*(
            one_session(http, url, pcm, rng.randrange(frames_in_track) * FRAME_BYTES,
                        begin + ramp_s * i / max(1, sessions), seconds, interim)
            for i in range(sessions))))
    if rules is not None:
        for r in runs:
            voiced_latencies(r, pcm, rules)
    return runs


def voiced_latencies(s: Session, pcm: bytes, rules: RegionRules) -> None:
    """Replay what `s` sent through the server's VAD rules; for each final it received, the
    time from sending its last voiced frame to its arrival."""
    cutter = SpeechRegions(rules, interim=False)
    n = len(pcm)
    for k in range(len(s.sent_at)):
        lo = (s.offset + k * FRAME_BYTES) % n
        x = np.frombuffer(pcm[lo : lo + FRAME_BYTES], "<i2").astype(np.float32) / np.float32(32768.0)
        for o in cutter.feed(x):
            if isinstance(o, Piece) and o.is_final:
                key = (round(o.start / RATE, 4), round(o.end / RATE, 4))
                arrived = s.arrivals.get(key)
                lat = None if arrived is None else s.latency_of(o.voiced_end / RATE, arrived)
                if lat is not None:
                    s.voiced.append(lat)


@dataclass
class Summary:
    sessions: int
    refused: int
    finals: int
    p50: float | None
    p99: float | None
    max: float | None
    voiced_p50: float | None  # from the region's last voiced frame
    voiced_p99: float | None
    voiced_p90: float | None  # steadier than p99 when a run has a few dozen finals (p99 is then the max)
    voiced_mean: float | None
    voiced_matched: int  # finals matched to a region of the replay
    longest_region_s: float
    median_region_s: float
    interims_per_session: float
    errors: int
    incomplete: int  # sessions that did not end with 1000

    @classmethod
    def of(cls, runs: list[Session]) -> Summary:
        admitted = [r for r in runs if not r.refused]
        lats = sorted(lat for r in admitted for _, _, lat in r.finals)
        voiced = sorted(lat for r in admitted for lat in r.voiced)
        lengths = [e - s for r in admitted for s, e, _ in r.finals]
        longest = max(lengths, default=0.0)
        return cls(sessions=len(admitted), refused=sum(1 for r in runs if r.refused), finals=len(lats),
                   p50=statistics.median(lats) if lats else None,
                   p99=lats[min(len(lats) - 1, int(0.99 * len(lats)))] if lats else None,
                   max=lats[-1] if lats else None, voiced_p50=statistics.median(voiced) if voiced else None,
                   voiced_p99=voiced[min(len(voiced) - 1, int(0.99 * len(voiced)))] if voiced else None,
                   voiced_p90=voiced[min(len(voiced) - 1, int(0.90 * len(voiced)))] if voiced else None,
                   voiced_mean=statistics.fmean(voiced) if voiced else None,
                   voiced_matched=len(voiced), longest_region_s=longest,
                   median_region_s=statistics.median(lengths) if lengths else 0.0,
                   interims_per_session=sum(r.interims for r in admitted) / max(1, len(admitted)),
                   errors=sum(len(r.errors) for r in admitted),
                   incomplete=sum(1 for r in admitted if r.close_code != 1000))

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
