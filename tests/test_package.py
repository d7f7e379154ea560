"""What `pip install .` puts into site-packages: one package, `streamer`, and its metadata.

Seven generic top-level names (`actors`, `client`, `runtime`, ...) used to land there and
collide with any other project's. The wheel is built from a copy of the tracked files, so the
checkout is left as it was."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tracked_copy(into: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


@pytest.mark.long
@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout to know the tracked files")
def test_the_wheel_holds_one_top_level_package_with_its_data(tmp_path: Path) -> None:
    tree = tracked_copy(tmp_path / "tree")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", str(tmp_path / "dist"), str(tree)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("streamer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"streamer", wheel.name.split("-py")[0] + ".dist-info"}
    assert "streamer/runtime/defaults.toml" in names  # the embedded defaults the server starts on
    assert "streamer/api/streamer.proto" in names
    entry_points = zipfile.ZipFile(wheel).read(wheel.name.split("-py")[0] + ".dist-info/entry_points.txt").decode()
    assert "streamer = streamer.supervisor.cli:main" in entry_points
    assert "streamer-client = streamer.client.streamer_client:main" in entry_points
    # Installed from the wheel alone, it finds its embedded defaults by its own name.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-c", "import streamer; from streamer.runtime import config; "
                          "print(streamer.__file__, config.load(env={}).server.port)"],
                         env={"PYTHONPATH": str(tmp_path / "site")}, cwd="/", capture_output=True, text=True,
                         check=True)
    where, port = out.stdout.split()
    assert where.startswith(str(tmp_path / "site")) and int(port) > 0


def test_the_package_imports_by_its_one_name() -> None:
    out = subprocess.run([sys.executable, "-c", "import streamer, streamer.front.app, streamer.supervisor.cli; "
                          "print(streamer.__version__)"], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip()
