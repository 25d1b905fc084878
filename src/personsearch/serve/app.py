"""The HTTP layer of ``personsearch serve``: a FastAPI application over one ``SearchService``.

API (JSON; errors are ``{"status": "error", "message", "detail", "hint"?}`` with a 4xx status):

- ``GET /api/health`` → ``{"status": "ok", "images": N, "model": FINGERPRINT}``
- ``GET /api/search?q=TEXT&k=10`` → ``{"query", "results": [{"rank", "score", "path", "pid",
  "row", "image_url"}]}``, the ranking of ``personsearch query TEXT -k 10 --json``
- ``POST /api/search/image?k=10``: a multipart field ``file`` (or a raw ``image/*`` body) → the same
  shape, ranked by image similarity
- ``GET /api/search/row/{row}?k=10``: the same, ranked by similarity to a gallery image
- ``GET /images/{row}[?size=N]``: the gallery image of a row as JPEG (a thumbnail with its longer
  side N). Images are addressed only by row: nothing a client sends becomes a path.
- ``GET /``: the search page (``static/``), no build step and nothing fetched from elsewhere.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from personsearch.errors import InputError
from personsearch.retrieval.image_query import UnsupportedImage
from personsearch.serve.service import MAX_K, SearchService, Unavailable, UnknownRow

log = logging.getLogger(__name__)

#: The largest request body accepted (an uploaded photo), in bytes.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: The page's files, by the name the page asks for, with their media types.
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
#: Host names a server bound to the loopback interface answers to (a page on another site that
#: points a DNS name at 127.0.0.1 gets 400, so it cannot read the gallery through the browser).
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY")]


def error_response(status: int, message: str, hint: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"status": "error", "message": message, "detail": message}
    if hint:
        body["hint"] = hint
    return JSONResponse(body, status_code=status)


def hit_json(hit: Any) -> dict[str, Any]:
    found = hit.to_json()
    found["row"] = hit.row
    found["image_url"] = f"/images/{hit.row}"
    return found


def result_json(result: Any) -> dict[str, Any]:
    found = result.to_json()
    found["results"] = [hit_json(hit) for hit in result.results]
    if result.truncated:
        found["truncated"] = True
    return found


def host_name(header: str) -> str:
    """The host of a Host header, without the port ("[::1]:8000" -> "[::1]")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.split(":", 1)[0]


class _Guard:
    """Adds ``SECURITY_HEADERS`` to every response and, when ``allowed_hosts`` is given, answers
    400 to a request for another host (pure ASGI: no per-request task)."""

    def __init__(self, app: Any, allowed_hosts: list[str] | None) -> None:
        self.app = app
        self.allowed = None if allowed_hosts is None else {host_name(host) for host in allowed_hosts}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        if self.allowed is not None:
            headers = dict(scope.get("headers") or [])
            host = host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in self.allowed:
                refusal = error_response(400, f"this server answers to {', '.join(sorted(self.allowed))}, "
                                              "not to the host this request names",
                                         hint="open it as http://127.0.0.1:PORT/, or start it with --host")
                await refusal(scope, receive, with_headers)
                return
        await self.app(scope, receive, with_headers)


def create_app(service: SearchService, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The application over ``service``; ``allowed_hosts`` (None: any) limits the Host header."""
    app = FastAPI(title="personsearch", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.service = service
    _errors(app)
    _api(app, service)
    _pages(app)
    app.add_middleware(_Guard, allowed_hosts=allowed_hosts)
    return app


def _errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        names = [str(error.get("loc", ["", "?"])[-1]) for error in exc.errors()]
        if "k" in names:
            return error_response(400, f"k must be an integer from 1 to {MAX_K}")
        if "size" in names:
            return error_response(400, "size must be an integer from 16 to 1024")
        if "row" in names:
            return error_response(404, "rows are numbered 0, 1, 2, ...: no such row")
        return error_response(400, "invalid request: " + ", ".join(names))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(UnsupportedImage)
    async def not_an_image(request: Request, exc: UnsupportedImage) -> JSONResponse:
        return error_response(415, exc.message, exc.hint)

    @app.exception_handler(InputError)
    async def bad_input(request: Request, exc: InputError) -> JSONResponse:
        return error_response(400, exc.message, exc.hint)

    @app.exception_handler(UnknownRow)
    async def unknown_row(request: Request, exc: UnknownRow) -> JSONResponse:
        return error_response(404, str(exc))

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, exc: Unavailable) -> JSONResponse:
        return error_response(503, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected %s answering %s: %s", type(exc).__name__, request.url.path, exc, exc_info=exc)
        return error_response(500, f"unexpected {type(exc).__name__}; the server log has the details")


K = Query(10, description=f"Results to return, 1 to {MAX_K}.")


def _api(app: FastAPI, service: SearchService) -> None:
    @app.api_route("/api/health", methods=["GET", "HEAD"])
    def health() -> dict[str, Any]:
        return service.health()

    @app.get("/api/search")
    def search(q: str = Query("", description="The description to search for."), k: int = K) -> dict[str, Any]:
        return result_json(service.search_text(q, k))

    @app.get("/api/search/row/{row}")
    def search_row(row: int, k: int = K) -> dict[str, Any]:
        return result_json(service.search_row(row, k))

    @app.post("/api/search/image")
    async def search_image(request: Request, k: int = K) -> Any:
        from fastapi.concurrency import run_in_threadpool

        from personsearch.serve.service import check_k

        check_k(k)  # before the body is read
        data, name = await _upload(request)
        result = await run_in_threadpool(service.search_photo, data, k, name)
        return result_json(result)

    @app.get("/images/{row}")
    def image(row: int, size: int | None = Query(None, description="Thumbnail: the longer side in pixels.")) -> Any:
        data = service.image(row, size)
        return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=600"})


async def _upload(request: Request) -> tuple[bytes, str]:
    """The uploaded photo and its name: a multipart field ``file``, or a raw ``image/*`` body;
    more than ``MAX_UPLOAD_BYTES`` is refused (413) without reading it all."""
    too_large = HTTPException(413, f"the upload is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_UPLOAD_BYTES + 64 * 1024):
        raise too_large if declared.isdigit() else HTTPException(400, "invalid Content-Length")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_UPLOAD_BYTES + 64 * 1024:  # the multipart framing around the file
            raise too_large
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind.startswith("image/") or kind == "application/octet-stream":
        if len(body) > MAX_UPLOAD_BYTES:
            raise too_large
        return bytes(body), "the upload"
    if kind != "multipart/form-data":
        raise HTTPException(400, "send the photo as multipart/form-data with a field named 'file' "
                                 "(or as the raw body with Content-Type image/...)")
    return await _multipart_file(request, bytes(body), too_large)


async def _multipart_file(request: Request, body: bytes, too_large: HTTPException) -> tuple[bytes, str]:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def replay() -> Any:
        yield body
        yield b""

    parser = MultiPartParser(request.headers, replay(), max_files=1, max_fields=16, max_part_size=64 * 1024)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise HTTPException(400, f"malformed multipart body: {exc.message}") from None
    except Exception as exc:  # the parser's own errors on hostile framing: a bad request, never a 500
        raise HTTPException(400, f"malformed multipart body ({type(exc).__name__})") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, "the multipart body has no file field named 'file'")
        data = await upload.read()
        if len(data) > MAX_UPLOAD_BYTES:
            raise too_large
        name = upload.filename or "the upload"
        return data, name[:200]
    finally:
        await form.close()


def _pages(app: FastAPI) -> None:
    folder = resources.files("personsearch.serve") / "static"
    page = (folder / "index.html").read_bytes()
    files = {name: ((folder / name).read_bytes(), kind) for name, kind in STATIC_FILES.items()}

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8",
                        headers={"content-security-policy": PAGE_POLICY, "cache-control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in files:
            raise HTTPException(404, "no such file")
        data, kind = files[name]
        return Response(data, media_type=kind, headers={"cache-control": "no-cache"})


def app_from_environment() -> FastAPI:
    """The application a ``serve --workers N`` worker process builds: the options come from
    ``PERSONSEARCH_SERVE`` (JSON, written by the parent), each worker loads its own model."""
    import json
    import os

    from personsearch.serve.service import open_service

    options = json.loads(os.environ["PERSONSEARCH_SERVE"])
    allowed = options.pop("allowed_hosts", None)
    threads = options.pop("threads", None)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    return create_app(open_service(**options), allowed)


__all__ = ["LOOPBACK_HOSTS", "MAX_UPLOAD_BYTES", "app_from_environment", "create_app", "result_json"]
