"""The design a user would write instead of ours: one aiohttp process, the model in a pool.

It speaks the segmented route of shared/PROTOCOL.md (start, binary PCM, stop; `active`,
`inactive`, interim and final `segment`s, errors) with the same rules as the product: the
same decoder (`actors.pcm`), the same VAD and region rules (`actors.regions`, configured
from the same `[segmenter]` table) and the same fake model (`[model.fake]`, real CPU).
DecoderStream, resampling and VAD run in the event loop, frame by frame, as they arrive; each
speech region goes to the pool, and so does every interim, computed the straightforward
way: the model re-runs the region so far. Each session sends its messages in the order it
produced them, waiting for each model answer in turn.

    python bench/peers/monolith.py --pool process --workers 2 --port 8090

`--pool thread` runs the model in a ThreadPoolExecutor (the GIL decides how much of it runs
at once), `--pool process` in a ProcessPoolExecutor. `--read-only` drops every audio frame as it
comes (no decoding, no VAD, no model; `stop` still ends the session): what reading a client's
frames alone costs aiohttp, the floor under the peer's and our own cost per frame. Configuration comes from the same
sources as the product's (defaults, STREAMER_CONFIG, STREAMER_* variables), so a benchmark
sets both the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import sys
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from streamer.actors.models.fake import FakeModel
from streamer.actors.pcm import PcmDecoder, UnsupportedFormat
from streamer.actors.regions import Activity, Piece, RegionRules, SpeechRegions
from streamer.runtime import config

_model: FakeModel | None = None


def _load_model(settings: dict[str, Any]) -> None:
    global _model
    _model = FakeModel(**settings, seed=os.getpid())


def infer(audio: Any, is_final: bool, settings: dict[str, Any]) -> dict[str, Any]:
    """Runs in the pool: a thread of this process, or a worker process."""
    if _model is None:
        _load_model(settings)
    assert _model is not None
    return _model.process(audio, is_final)


class Monolith:
    def __init__(self, cfg: config.Config, pool: concurrent.futures.Executor, read_only: bool = False) -> None:
        s = cfg.segmenter
        self.rules = RegionRules(s.vad_aggressiveness, s.min_speech_ms, s.hangover_ms, s.pad_ms,
                                 s.max_segment_s, s.interim_interval_s, interim_growth=1.0)  # the straightforward way
        self.model_settings = cfg.to_dict()["model"]["fake"]
        self.pool = pool
        self.read_only = read_only

    async def segmented(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[Any] = asyncio.Queue()  # dicts, or futures of dicts, in the order produced

        async def sender() -> None:
            while (item := await out.get()) is not None:
                if isinstance(item, asyncio.Future):
                    item = await item
                await ws.send_json(item)

        async def run_model(ch: int, piece: Piece) -> dict[str, Any]:
            msg: dict[str, Any] = {"type": "segment", "channel": ch, "start_time": round(piece.start / 16000, 4),
                                   "end_time": round(piece.end / 16000, 4), "is_final": bool(piece.is_final)}
            try:
                msg.update(await loop.run_in_executor(self.pool, infer, piece.audio, bool(piece.is_final),
                                                      self.model_settings))
            except Exception as e:  # the client gets an error naming the region
                return {"type": "error", "channel": ch, "message": f"inference failed: {e}",
                        "start_time": msg["start_time"], "end_time": msg["end_time"]}
            return msg

        def emit(ch: int, outputs: list[Any]) -> None:
            for o in outputs:
                if isinstance(o, Activity):
                    out.put_nowait({"type": o.kind, "channel": ch, "time": round(o.time, 4)})
                else:
                    out.put_nowait(asyncio.ensure_future(run_model(ch, o)))

        sending = loop.create_task(sender())
        decoder: PcmDecoder | None = None
        cutters: list[SpeechRegions] = []
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                req = json.loads(msg.data)
                if req.get("request") == "start":
                    f = req["format"]
                    try:
                        decoder = PcmDecoder(f["channels"], f["sample_rate"], f["bit_depth"], f["is_float"])
                    except UnsupportedFormat as e:
                        await ws.send_json({"type": "error", "channel": 0, "message": f"unsupported format: {e}"})
                        await ws.close(code=1003)
                        break
                    cutters = [SpeechRegions(self.rules, bool(req.get("interim_results")))
                               for _ in range(f["channels"])]
                elif req.get("request") == "stop" and decoder is not None:
                    audio = decoder.flush()
                    for ch, cutter in enumerate(cutters):
                        emit(ch, cutter.feed(audio[ch]) + cutter.flush())
                    decoder = None
                    out.put_nowait(None)
                    await sending
                    await ws.close()
                    break
            elif msg.type == WSMsgType.BINARY and decoder is not None and not self.read_only:
                audio = decoder.feed(msg.data)
                for ch, cutter in enumerate(cutters):
                    emit(ch, cutter.feed(audio[ch]))
        if not sending.done():
            sending.cancel()
        return ws


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", choices=("thread", "process"), default="process")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio's own loop")
    parser.add_argument("--read-only", action="store_true", help="drop every audio frame as it comes (the floor)")
    args = parser.parse_args(argv)
    cfg = config.load()
    pool: concurrent.futures.Executor
    if args.pool == "thread":
        pool = concurrent.futures.ThreadPoolExecutor(args.workers)
    else:
        import multiprocessing

        pool = concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"),
                                                      initializer=_load_model,
                                                      initargs=(cfg.to_dict()["model"]["fake"],))
    app = web.Application()
    app.router.add_get("/api/v1/segmented", Monolith(cfg, pool, args.read_only).segmented)
    app.router.add_get("/api/v1/health", lambda _: web.json_response({"status": "healthy"}))
    loop = None
    if args.uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
    try:
        web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=loop)
    finally:
        pool.shutdown(cancel_futures=True)


if __name__ == "__main__":
    main()
