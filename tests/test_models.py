"""Bring your own model: a built-in by name, a `module:Class`, or an installed package's entry
point, configured by `[model] options`; streamed through end to end."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamer.actors import models
from streamer.actors.models.fake import FakeModel
from streamer.runtime import config

from audio import noise
from conversation import check_regions_answered, check_simple_counts, client_transcript, converse, stream_steps
from server import CLIENT, Server

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "streamer-loudness"


def test_a_model_named_module_colon_class_is_built_with_the_options() -> None:
    model = models.build("streamer.actors.models.fake:FakeModel", {"options": {"constant_factor": 0.0, "delay": 0.0}})
    assert isinstance(model, FakeModel) and model.process(noise(0.5), True) == {"count": 8000}


def test_an_unknown_model_is_an_error_that_says_what_is_known() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'nope': not built in \(fake, pocketsphinx\)"):
        models.build("nope", {})


def test_options_come_from_a_file_or_from_json_in_the_environment(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[model]\nname = "loudness"\n[model.options]\nfloor_db = -40\nmode = "x"\n')
    assert config.load(env={"STREAMER_CONFIG": str(f)}).model.options == {"floor_db": -40, "mode": "x"}
    assert config.load(env={"STREAMER_MODEL_OPTIONS": '{"floor_db": -30}'}).model.options == {"floor_db": -30}
    with pytest.raises(ValueError, match="JSON object"):
        config.load(env={"STREAMER_MODEL_OPTIONS": "[1]"})


@pytest.fixture(scope="module")
def loudness_installed() -> None:
    """The example package, pip-installed into this environment as a user would."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--disable-pip-version-check", str(EXAMPLE)], check=True, timeout=300)


def test_an_installed_packages_model_is_found_by_its_entry_point_and_streamed_through(
        loudness_installed: None, tmp_path: Path) -> None:
    assert "loudness" in models.installed()
    srv = Server(tmp_path / "run", env={"STREAMER_MODEL_NAME": "loudness",
                                        "STREAMER_MODEL_OPTIONS": '{"floor_db": -20}'}).start()
    try:
        quiet_then_loud = np.concatenate([noise(1.0, amp=0.01), noise(1.0, amp=0.5, seed=1)])
        t = asyncio.run(converse(srv.ws("simple"), stream_steps(quiet_then_loud[None, :], 16000, False)))
        assert t.close_code == 1000
        segs = t.of_type("segment")
        assert [s["loud"] for s in segs] == [False, False, True, True]  # floor_db from the options
        assert all(s["rms_db"] < -40 for s in segs[:2]) and all(s["rms_db"] > -15 for s in segs[2:])
    finally:
        srv.stop()


def test_the_fake_model_is_still_built_in_by_name(tmp_path: Path) -> None:
    srv = Server(tmp_path / "run", env={"STREAMER_MODEL_NAME": "fake"}).start()
    try:
        t = asyncio.run(converse(srv.ws("simple"), stream_steps(noise(1.0)[None, :], 16000, False)))
        check_simple_counts(t, 0, 16000)
    finally:
        srv.stop()


def test_the_client_prints_the_text_and_the_transcript_of_a_recognizer(tmp_path: Path) -> None:
    """pocketsphinx on the segmented route, one region per command, through the client script."""
    import soundfile

    from audio import speech

    grammar = ("#JSGF V1.0;\ngrammar c;\npublic <c> = <verb> the <thing>;\n<verb> = open | close | start | stop;\n"
               "<thing> = door | window | music;\n")
    s = speech(("open the door", "stop the music", "close the window"), gap_s=1.0)
    wav = tmp_path / "commands.wav"
    soundfile.write(wav, s.samples, 16000, subtype="PCM_16")
    srv = Server(tmp_path / "run", env={"STREAMER_MODEL_NAME": "pocketsphinx",
                                        "STREAMER_MODEL_POCKETSPHINX_GRAMMAR": grammar}).start()
    try:
        out = subprocess.run([*CLIENT, "-i", str(wav), "--addr", srv.ws()],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert check_regions_answered(client_transcript(out.stdout), 0) == (3, 0)
        assert "transcript (channel 0): open the door stop the music close the window" in out.stdout
        assert "final] stop the music" in out.stdout
    finally:
        srv.stop()


COMMANDS = ("#JSGF V1.0;\ngrammar c;\npublic <c> = <verb> the <thing>;\n<verb> = open | close | start | stop;\n"
            "<thing> = door | window | music;\n")


def test_pocketsphinx_with_a_grammar_leaves_no_file_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model actor's start builds the model: a file per start would pile up in /tmp with
    each restart. The grammar still decides what is heard, in every decoder of the pool."""
    import tempfile

    from streamer.actors.models.sphinx import Pocketsphinx

    from audio import speech

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkstemp and its kind write
    model = Pocketsphinx(grammar=COMMANDS)
    said = speech(("close the window",), gap_s=0.3).samples
    first = model._take()  # a decoder taken from the pool, so the next call builds another
    assert model.process(said, True)["text"] == "close the window"
    model._give(first)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="pocketsphinx could not start"):
        Pocketsphinx(grammar="not a grammar (")
    assert list(tmp_path.iterdir()) == []
