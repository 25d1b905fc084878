"""The search page in a real browser: headless Chromium loads ``/?q=...`` from a live server, the
page runs its search, and every result image must have rendered (the page records how many of its
images loaded with pixels); a screenshot must show them. Skipped only where no Chromium exists
(``.ci/run`` installs Debian's ``chromium`` when it is missing).

Set ``PERSONSEARCH_SCREENSHOT=PATH`` to keep the screenshot, and ``PERSONSEARCH_SCREENSHOT_INDEX`` (an
index whose model is at hand) and ``PERSONSEARCH_SCREENSHOT_QUERY`` to show another gallery: the
README's picture is the demo's test gallery, made so."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.live_server import find_chromium, live_server

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")

from personsearch.retrieval.export import export_run  # noqa: E402
from personsearch.serve.app import create_app  # noqa: E402
from personsearch.serve.service import open_service  # noqa: E402

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt-get install chromium)")


def _browser(profile: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Headless Chromium with its own profile folder (``profile``: a test's tmp_path)."""
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile / 'chromium-profile'}",
               "--virtual-time-budget=20000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def page_server(trained_run: Path, synthetic_raw: Path, tmp_path_factory: pytest.TempPathFactory):
    index = os.environ.get("PERSONSEARCH_SCREENSHOT_INDEX")
    if not index:
        folder = tmp_path_factory.mktemp("serve_browser")
        shutil.copytree(synthetic_raw / "imgs", folder / "imgs")
        index = folder / "index"
        export_run(trained_run, index, images=folder / "imgs", device="cpu")
    with open_service(index, device="cpu") as service, live_server(create_app(service)) as url:
        yield url


def test_the_page_renders_the_result_images_of_a_query_in_the_url(page_server, tmp_path):
    url = f"{page_server}/?{urllib.parse.urlencode({'q': 'a woman in a red coat', 'k': 10})}"
    done = _browser(tmp_path, "--dump-dom", url)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert re.search(r'<body[^>]*data-state="ready"', dom), dom[-3000:]
    grid = re.search(r'id="grid"[^>]*data-loaded="(\d+)" data-failed="(\d+)"', dom)
    assert grid is not None, dom[-3000:]
    assert (int(grid.group(1)), int(grid.group(2))) == (10, 0)
    assert dom.count('class="card"') == 10
    assert "10 results for" in dom
    assert 'value="a woman in a red coat"' in dom or "a woman in a red coat" in dom


def test_a_screenshot_shows_the_results(page_server, tmp_path):
    shot = Path(os.environ.get("PERSONSEARCH_SCREENSHOT") or tmp_path / "page.png")
    query = os.environ.get("PERSONSEARCH_SCREENSHOT_QUERY", "a man in a blue jacket")
    url = f"{page_server}/?{urllib.parse.urlencode({'q': query, 'k': 16})}"
    done = _browser(tmp_path, f"--screenshot={shot}", "--window-size=1280,860", url)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (860, 1280)
    lower = pixels[300:]  # below the header: the grid of result images, not a blank page
    assert lower.std() > 20, "the screenshot shows no images"


def test_a_hostile_query_in_the_url_is_shown_as_text(page_server, tmp_path):
    hostile = '<img src=x onerror="document.body.dataset.pwned=1"><script>document.title="pwned"</script>'
    done = _browser(tmp_path, "--dump-dom", f"{page_server}/?{urllib.parse.urlencode({'q': hostile, 'k': 3})}")
    assert done.returncode == 0
    assert "data-pwned" not in done.stdout and "<title>pwned" not in done.stdout
    assert re.search(r'<body[^>]*data-state="ready"', done.stdout)
