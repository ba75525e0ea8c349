"""The demo report as a user meets it: index.html opened in headless Chromium (Debian's ``chromium`` package,
which ``make test`` installs where it can), served over HTTP on 127.0.0.1 from the run folder, so every picture
must load by its relative path and every step must show a headline.

A check page served beside index.html loads it in an iframe (same origin, so its DOM is readable) and writes what
it found into its own page, which Chromium prints with ``--dump-dom``.
"""

from __future__ import annotations

import copy
import functools
import http.server
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_demo import DEMO_STEPS

from landformer.core.viz import save_png, write_gif
from landformer.demo import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Without the background-networking switches Chromium keeps trying hosts this closed machine cannot reach.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=15000",
]
CHECK_PAGE = """<!doctype html><meta charset='utf-8'>
<iframe id='report' src='index.html' width='1200' height='800'></iframe><pre id='result'>pending</pre>
<script>
document.getElementById('report').addEventListener('load', () => {
  const page = document.getElementById('report').contentDocument;
  const images = Array.from(page.images);
  const sections = Array.from(page.querySelectorAll('section'));
  document.getElementById('result').textContent = JSON.stringify({
    images: images.map((img) => ({src: img.getAttribute('src'), loaded: img.complete && img.naturalWidth > 0})),
    sections: sections.map((section) => ({
      id: section.id,
      headline: (section.querySelector('p.headline') || {textContent: ''}).textContent.trim(),
    })),
  });
});
</script>
"""

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (`make test` installs Debian's chromium where it can)"
)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Any]:
    """serve(folder) -> the http:// address of ``folder`` on 127.0.0.1 (stopped after the test)."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(folder: Path) -> str:
        handler = functools.partial(QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def open_in_chromium(run: Path, address: str, profile: Path) -> dict[str, Any]:
    """What the check page found in ``run/index.html`` as loaded by Chromium: images and section headlines."""
    (run / "check.html").write_text(CHECK_PAGE)
    command = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", f"{address}/check.html"]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    found = re.search(r"<pre id=\"result\">(.*?)</pre>", dom, re.S)
    assert found is not None and found.group(1) != "pending", dom[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def report_with_pictures(run: Path) -> tuple[Path, list[str]]:
    """A demo report of the real steps' shape whose steps name real PNG and GIF files in nested folders."""
    steps = copy.deepcopy(DEMO_STEPS)
    rng = np.random.default_rng(0)
    pictures = {
        "landcover": ["landcover/samples.png", "landcover/animation.gif"],
        "terrain": ["terrain/evaluate/expanded.png"],
        "forecast": ["forecast/maps.png"],
    }
    for step, names in pictures.items():
        for name in names:
            path = run / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix == ".gif":
                write_gif(path, [rng.integers(0, 255, (24, 24, 3), dtype=np.uint8) for _ in range(3)])
            else:
                save_png(path, rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
            steps[step][Path(name).stem] = str(path)
    index = write_report(run, {"landformer": "0.1", "seed": 0, "steps": steps})
    return index, [name for names in pictures.values() for name in names]


def test_every_picture_loads_and_every_step_has_a_headline_in_chromium(tmp_path: Path, serve: Any) -> None:
    run = tmp_path / "run"
    _, pictures = report_with_pictures(run)
    moved = tmp_path / "moved"
    shutil.move(run, moved)  # the report works from wherever the folder goes
    found = open_in_chromium(moved, serve(moved), tmp_path / "profile")
    assert sorted(image["src"] for image in found["images"]) == sorted(pictures)
    assert all(image["loaded"] for image in found["images"]), found["images"]
    assert [section["id"] for section in found["sections"]] == list(DEMO_STEPS)
    for section in found["sections"]:
        assert re.search(r"\d", section["headline"]), section  # a sentence built from the step's numbers


def test_a_broken_picture_is_seen_as_broken(tmp_path: Path, serve: Any) -> None:
    run = tmp_path / "run"
    _, pictures = report_with_pictures(run)
    (run / pictures[0]).write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    found = open_in_chromium(run, serve(run), tmp_path / "profile")
    loaded = {image["src"]: image["loaded"] for image in found["images"]}
    assert loaded == {name: name != pictures[0] for name in pictures}
