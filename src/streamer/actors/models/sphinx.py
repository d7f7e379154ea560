"""Speech recognition with pocketsphinx and the en-US model its wheel ships (nothing to download).

Output: `{"text": "...", "words": [{"word", "start", "end"}, ...]}`, word times in seconds
from the start of the piece (the model actor moves them to the stream's time).

* Stateless (`process`): one utterance per piece: a speech region (segmented route), the
  region so far (an interim), or a fixed chunk (simple route).
* Stateful (`open`/`feed`/`close`, the sequential route): it finds utterances itself, with
  webrtcvad and a hangover as the segmenter does, decodes each incrementally as audio comes
  (an interim is the hypothesis so far, at no extra cost) and makes it final after
  `hangover_ms` of silence, at the end of the piece that showed it (so the state after a final
  is a fresh one: that is its checkpoint), or after `max_utterance_s`.
* Grammar: `grammar` (a JSGF grammar, as text) or `keyphrase` (with `kws_threshold`) instead
  of the language model, for command-style use.

A pocketsphinx decoder holds the acoustic model and the search; one is kept per utterance in
progress, from a pool the streams of this process share (creating one takes a while).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import webrtcvad

from streamer.actors.models.base import MODEL_RATE as RATE
from streamer.actors.models.base import Audio, Final, ModelError, Partial, Said

FRAME = 480  # 30 ms, for webrtcvad
FRAMES_PER_S = 100  # pocketsphinx's frame rate


def _pcm(audio: Audio) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class Pocketsphinx:
    def __init__(self, grammar: str = "", keyphrase: str = "", kws_threshold: float = 1e-20,
                 hangover_ms: int = 450, max_utterance_s: float = 30.0, vad_aggressiveness: int = 2) -> None:
        from pocketsphinx import Decoder

        self._decoder_class = Decoder
        self._options: dict[str, Any] = {"samprate": RATE, "loglevel": "FATAL"}
        if grammar and keyphrase:
            raise ValueError("pocketsphinx: give a grammar or a keyphrase, not both")
        self._grammar = grammar
        if grammar:
            self._options["lm"] = None  # the grammar is the search: loading the language model too is waste
        elif keyphrase:
            self._options.update(keyphrase=keyphrase, kws_threshold=kws_threshold)
        self._idle: list[Any] = [self._new_decoder()]  # made now: a config error shows at start-up
        self._hangover = hangover_ms * RATE // 1000
        self._max_len = int(max_utterance_s * RATE)
        self._aggressiveness = vad_aggressiveness

    def _new_decoder(self) -> Any:
        """A decoder with the configured search. A grammar is handed over as text, not as a file:
        a file would have to outlive every decoder the pool may still build, and each start of a
        model actor (every restart) would leave one behind in /tmp."""
        try:
            decoder = self._decoder_class(**self._options)
            if self._grammar:
                decoder.add_jsgf_string("grammar", self._grammar)
                decoder.activate_search("grammar")
            return decoder
        except (ValueError, RuntimeError, KeyError) as e:
            raise ValueError(f"pocketsphinx could not start: {e}") from None

    def _take(self) -> Any:
        return self._idle.pop() if self._idle else self._new_decoder()

    def _give(self, decoder: Any) -> None:
        self._idle.append(decoder)

    @staticmethod
    def _result(decoder: Any) -> dict[str, Any]:
        hyp = decoder.hyp()
        words = [{"word": s.word, "start": round(s.start_frame / FRAMES_PER_S, 3),
                  "end": round((s.end_frame + 1) / FRAMES_PER_S, 3)}
                 for s in (decoder.seg() or ()) if not s.word.startswith(("<", "[")) and s.word != "(NULL)"]
        return {"text": hyp.hypstr if hyp is not None else "", "words": words}

    # -- stateless: one utterance per piece ------------------------------------------------------

    def process(self, audio: Audio, is_final: bool | None) -> dict[str, Any]:
        decoder = self._take()
        try:
            decoder.start_utt()
            decoder.process_raw(_pcm(audio), False, True)
            decoder.end_utt()
            return self._result(decoder)
        except RuntimeError as e:
            raise ModelError(f"pocketsphinx: {e}") from None
        finally:
            self._give(decoder)

    # -- stateful: utterances found and decoded as the stream goes -------------------------------

    def open(self) -> dict[str, Any]:
        return {"vad": webrtcvad.Vad(self._aggressiveness), "carry": np.zeros(0, np.float32), "decoder": None,
                "start": 0, "voiced_at": 0, "fed": 0, "text": None}

    def feed(self, state: dict[str, Any], audio: Audio, at: int) -> list[Said]:
        """Decide speech 30 ms at a time, and cut utterances where the decisions say, wherever
        that falls in the piece (a piece may hold the end of one sentence, a pause and the next)."""
        end = at + audio.shape[0]
        samples = np.concatenate([state["carry"], audio]) if state["carry"].size else audio
        whole = samples.shape[0] - samples.shape[0] % FRAME
        state["carry"] = samples[whole:].copy()
        raw = _pcm(samples[:whole])
        first = end - samples.shape[0]  # the stream sample of samples[0]
        said: list[Said] = []
        done = 0  # samples of `audio` already handed to a decoder (or passed over in silence)
        for k in range(whole // FRAME):
            frame_start, frame_end = first + k * FRAME, first + (k + 1) * FRAME
            if state["vad"].is_speech(raw[k * 2 * FRAME : (k + 1) * 2 * FRAME], RATE):
                state["voiced_at"] = frame_end
                if state["decoder"] is None:  # an utterance begins with this frame
                    done = max(done, frame_start - at)
                    fresh = self._take()
                    fresh.start_utt()
                    state["decoder"], state["start"], state["text"] = fresh, at + done, None
            elif state["decoder"] is not None and (frame_end - state["voiced_at"] >= self._hangover
                                                   or frame_end - state["start"] >= self._max_len):
                cut = max(done, frame_end - at)
                self._decode(state, audio[done:cut])
                said.append(self._end(state, at + cut))
                done = cut
        if state["decoder"] is None:
            return said
        self._decode(state, audio[done:])
        if end - state["start"] >= self._max_len:
            said.append(self._end(state, end))
            return said
        hyp = state["decoder"].hyp()
        text = hyp.hypstr if hyp is not None else ""
        if text and text != state["text"]:  # an interim only when the hypothesis moved
            state["text"] = text
            said.append(Partial(state["start"], end, self._result(state["decoder"])))
        return said

    @staticmethod
    def _decode(state: dict[str, Any], audio: Audio) -> None:
        if audio.shape[0]:
            try:
                state["decoder"].process_raw(_pcm(audio), False, False)
            except RuntimeError as e:
                raise ModelError(f"pocketsphinx: {e}") from None

    def close(self, state: dict[str, Any], at: int) -> list[Said]:
        return [self._end(state, at)] if state["decoder"] is not None else []

    def at_rest(self, state: dict[str, Any]) -> bool:
        """No utterance in progress: a fresh state would do from here (webrtcvad's adaptation
        and the last few milliseconds of its frame aside), so silence costs no replay memory."""
        return state["decoder"] is None

    def _end(self, state: dict[str, Any], end: int) -> Final:
        decoder = state["decoder"]
        decoder.end_utt()
        final = Final(state["start"], end, self._result(decoder))
        self._give(decoder)
        state["decoder"], state["text"] = None, None
        return final
