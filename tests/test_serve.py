"""``personsearch serve``'s application: the JSON API against ``personsearch query``, search by photo
and by row, images by row only, every refusal as a 4xx JSON error, the host check, batching of
concurrent text queries, and 400 requests from 16 threads over a live server."""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image
from tests.live_server import live_server
from typer.testing import CliRunner

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from personsearch.cli.app import app as cli_app  # noqa: E402
from personsearch.retrieval.export import export_run  # noqa: E402
from personsearch.retrieval.gallery import GalleryIndex  # noqa: E402
from personsearch.serve.app import LOOPBACK_HOSTS, MAX_UPLOAD_BYTES, create_app  # noqa: E402
from personsearch.serve.service import SearchService, open_service  # noqa: E402

QUERY = "a woman in a red coat with a black bag"


@pytest.fixture(scope="module")
def gallery(trained_run: Path, synthetic_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the synthetic images beside an index of them (``imgs/`` and ``index/``)."""
    folder = tmp_path_factory.mktemp("serve")
    shutil.copytree(synthetic_raw / "imgs", folder / "imgs")
    export_run(trained_run, folder / "index", images=folder / "imgs", device="cpu")
    return folder


@pytest.fixture(scope="module")
def service(gallery: Path):
    with open_service(gallery / "index", device="cpu") as opened:
        yield opened


@pytest.fixture(scope="module")
def client(service: SearchService) -> TestClient:
    return TestClient(create_app(service))


def _error(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status"] == "error" and isinstance(body["message"], str) and body["message"]
    return body


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_health_names_the_gallery_size_and_the_model(client, gallery):
    assert client.head("/api/health").status_code == 200  # for monitors that only ask whether it is up
    body = client.get("/api/health").json()
    index = GalleryIndex.open(gallery / "index", verify=False)
    assert body == {"status": "ok", "images": len(index), "model": index.model_fingerprint}


def test_text_search_is_the_query_verbs_ranking(client, gallery):
    served = client.get("/api/search", params={"q": QUERY, "k": 10})
    assert served.status_code == 200
    cli = CliRunner().invoke(cli_app, ["query", QUERY, "--index", str(gallery / "index"), "-k", "10",
                                       "--device", "cpu", "--json"])
    assert cli.exit_code == 0, cli.output
    expected = json.loads(cli.stdout)
    body = served.json()
    assert body["query"] == expected["query"] == QUERY
    assert len(body["results"]) == len(expected["results"]) == 10
    for hit, want in zip(body["results"], expected["results"], strict=True):
        assert {key: hit[key] for key in ("rank", "score", "path", "pid")} == want
        assert hit["image_url"] == f"/images/{hit['row']}"
    assert [hit["rank"] for hit in body["results"]] == list(range(1, 11))


def test_k_larger_than_the_gallery_returns_every_image(client, service):
    body = client.get("/api/search", params={"q": QUERY, "k": 1000}).json()
    assert len(body["results"]) == service.image_count


def test_result_images_are_served_by_row_as_jpeg_thumbnails(client, gallery):
    hit = client.get("/api/search", params={"q": QUERY, "k": 3}).json()["results"][0]
    full = client.get(hit["image_url"])
    assert full.status_code == 200 and full.headers["content-type"] == "image/jpeg"
    original = Image.open(gallery / "imgs" / Path(hit["path"]).relative_to("imgs")
                          if hit["path"].startswith("imgs/") else gallery / "imgs" / hit["path"])
    assert Image.open(io.BytesIO(full.content)).size == original.size
    thumb = client.get(hit["image_url"], params={"size": 24})
    assert thumb.status_code == 200
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 24
    assert client.get(hit["image_url"], params={"size": 24}).content == thumb.content  # cached


def test_a_gallery_image_searched_by_photo_ranks_itself_first(client, service):
    for row in (0, len(service.index) // 2, len(service.index) - 1):
        photo = service.index.image_path(row).read_bytes()
        body = client.post("/api/search/image", params={"k": 5},
                           files={"file": ("me.jpg", photo, "image/jpeg")}).json()
        assert body["results"][0]["row"] == row, body
        assert body["results"][0]["score"] == pytest.approx(1.0, abs=2e-3)  # fp16 storage
        assert body["query"] == "me.jpg"
        raw = client.post("/api/search/image?k=5", content=photo, headers={"content-type": "image/jpeg"}).json()
        assert [hit["row"] for hit in raw["results"]] == [hit["row"] for hit in body["results"]]


def test_more_like_a_row_ranks_that_row_first(client):
    body = client.get("/api/search/row/3", params={"k": 4}).json()
    assert body["results"][0]["row"] == 3 and len(body["results"]) == 4


@pytest.mark.parametrize("params", [{"q": ""}, {"q": "   "}, {}, {"q": "x" * 2001}])
def test_an_empty_or_absurd_query_is_400(client, params):
    _error(client.get("/api/search", params=params), 400)


@pytest.mark.parametrize("k", ["0", "-1", "1001", "abc", "1e9", "10**12", "", "2.5"])
def test_k_outside_1_to_1000_is_400(client, k):
    body = _error(client.get("/api/search", params={"q": QUERY, "k": k}), 400)
    assert "1 to 1000" in body["message"]
    _error(client.post("/api/search/image", params={"k": k}, files={"file": ("a.png", b"x", "image/png")}), 400)
    _error(client.get("/api/search/row/0", params={"k": k}), 400)


@pytest.mark.parametrize("path", ["/images/100000", "/images/-1", "/images/abc", "/images/1.5",
                                  "/api/search/row/100000", "/images/", "/images/0/../../etc/passwd",
                                  "/images/..%2f..%2fetc%2fpasswd", "/static/..%2fapp.py", "/static/index.html",
                                  "/etc/passwd", "/%2e%2e/%2e%2e/etc/passwd"])
def test_unknown_rows_and_paths_are_404_and_never_a_file(client, path):
    response = client.get(path)
    assert response.status_code == 404, (path, response.status_code, response.text[:200])
    assert b"root:" not in response.content


def test_a_thumbnail_size_outside_the_range_is_400(client):
    for size in ("0", "15", "1025", "big"):
        _error(client.get("/images/0", params={"size": size}), 400)


def test_uploads_that_are_not_images_are_415(client):
    for data in (b"", b"hello, not an image", b"%PDF-1.4\n", _png(Image.new("RGB", (4, 4)))[:40]):
        _error(client.post("/api/search/image", files={"file": ("x.png", data, "image/png")}), 415)


def test_a_decompression_bomb_is_refused_undecoded(client):
    bomb = _png(Image.new("1", (10_000, 8_000)))  # 80 million pixels in a few kilobytes
    assert len(bomb) < 200_000
    body = _error(client.post("/api/search/image", files={"file": ("bomb.png", bomb, "image/png")}), 415)
    assert "pixels" in body["message"]


def test_bodies_over_the_limit_are_413(client):
    big = b"\0" * (MAX_UPLOAD_BYTES + 100_000)
    _error(client.post("/api/search/image", files={"file": ("big.png", big, "image/png")}), 413)
    _error(client.post("/api/search/image", content=big, headers={"content-type": "image/png"}), 413)


def test_malformed_or_missing_multipart_is_400(client):
    bad = b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n\x89PNG"  # never closed
    for body, kind in ((bad, "multipart/form-data; boundary=xyz"), (b"garbage", "multipart/form-data"),
                       (b"q=1", "application/x-www-form-urlencoded"), (b"{}", "application/json")):
        _error(client.post("/api/search/image", content=body, headers={"content-type": kind}), 400)
    _error(client.post("/api/search/image", files={"photo": ("a.png", b"x", "image/png")}), 400)
    _error(client.post("/api/search/image", data={"file": "not a file"}), 400)


def test_wrong_methods_are_json_405(client):
    _error(client.post("/api/search", params={"q": QUERY}), 405)
    _error(client.delete("/images/0"), 405)


def test_every_response_carries_the_security_headers(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for response in (page, client.get("/api/health"), client.get("/images/0"), client.get("/nope")):
        assert response.headers["x-content-type-options"] == "nosniff"


def test_the_page_loads_nothing_from_elsewhere(client):
    html = client.get("/").text
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    for name in ("app.js", "style.css"):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and "http" not in asset.text
    assert "innerHTML" not in client.get("/static/app.js").text  # results are built with textContent


def test_a_loopback_server_refuses_other_host_names(service):
    guarded = TestClient(create_app(service, allowed_hosts=list(LOOPBACK_HOSTS)))
    for host in ("127.0.0.1:8000", "localhost", "LOCALHOST:1", "[::1]:8000"):
        assert guarded.get("/api/health", headers={"host": host}).status_code == 200, host
    for host in ("evil.example", "127.0.0.1.evil.example", "", "[::1"):
        _error(guarded.get("/api/health", headers={"host": host}), 400)


def test_concurrent_text_queries_share_one_encoder_call(service):
    expected = {text: service.search_text(text, 5) for text in ("a man", "a red coat", "a woman with a bag")}
    sizes: list[int] = []
    original = service._rank_texts

    def counting(texts, k):
        sizes.append(len(texts))
        return original(texts, k)

    taken = threading.Event()
    run = service._run

    def taking(batch):
        taken.set()
        return run(batch)

    service._rank_texts, service._run = counting, taking
    asked = [("a man", 5), ("a red coat", 3), ("a woman with a bag", 5), ("a man", 2)]
    try:
        with ThreadPoolExecutor(4) as pool:
            with service._index_lock:  # the worker takes the first query and waits; the rest queue up
                futures = [pool.submit(service.search_text, *asked[0])]
                assert taken.wait(60)  # the worker took it and waits for the lock
                futures += [pool.submit(service.search_text, text, k) for text, k in asked[1:]]
                while len(service._jobs) < 3:
                    threading.Event().wait(0.01)
            found = [future.result(timeout=60) for future in futures]
    finally:
        del service._rank_texts, service._run
    assert sizes == [1, 3]
    for (text, k), result in zip(asked, found, strict=True):
        assert result.query == text
        assert [(hit.row, round(hit.score, 5)) for hit in result.results] == \
            [(hit.row, round(hit.score, 5)) for hit in expected[text].results[:k]]


def test_an_image_that_escapes_the_gallery_after_opening_is_not_served(gallery, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(gallery, copy)
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(secret)
    with open_service(copy / "index", device="cpu") as opened:
        victim = opened.index.image_path(0)
        os.remove(victim)
        os.symlink(secret, victim)  # made after the index was opened and checked
        client = TestClient(create_app(opened))
        _error(client.get("/images/0"), 404)
        os.remove(victim)
        _error(client.get("/images/0"), 404)  # gone: said, not a 500


def test_400_requests_from_16_threads_all_succeed(service):
    queries = ["a man in a blue jacket", "a woman in a red coat", "a person with a black backpack",
               "someone in white trousers"]

    with live_server(create_app(service)) as url:
        def one(number: int) -> int:
            kind = number % 4
            if kind == 3:
                target = f"{url}/images/{number % len(service.index)}?size=64"
            elif kind == 2:
                target = f"{url}/api/health"
            else:
                text = urllib.request.quote(queries[number % len(queries)])
                target = f"{url}/api/search?q={text}&k=10"
            try:
                with urllib.request.urlopen(target, timeout=120) as response:
                    response.read()
                    return response.status
            except urllib.error.HTTPError as exc:
                return exc.code

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(one, range(400)))
    assert statuses == [200] * 400
