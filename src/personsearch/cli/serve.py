"""``personsearch serve``: a search page and JSON API over an index, with the model kept warm."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from personsearch.cli.common import state, stderr, terminal_safe
from personsearch.errors import InputError

Option = typer.Option
#: What the verb needs beyond the base install (the ``[serve]`` extra).
SERVE_MODULES = ("fastapi", "uvicorn", "python_multipart")


def serve(
    index: Annotated[Path | None, Option(
        "--index", "-i", help="Index folder (default: RUN/index of the most recent run that has one).")] = None,
    run: Annotated[Path | None, Option(
        "--run", help="Model to encode with (default: the one the index header records); must match it.")] = None,
    weights: Annotated[str | None, Option(
        "--weights", help="Plain CLIP weights the index was exported with (zero-shot; default: recorded).")] = None,
    host: Annotated[str, Option("--host", help="Address to listen on; 0.0.0.0 shows the gallery to the network.")]
    = "127.0.0.1",
    port: Annotated[int, Option("--port", "-p", min=0, max=65535, help="Port (0: any free one).")] = 8000,
    device: Annotated[str, Option("--device", help="auto, cpu, cuda, cuda:N.")] = "auto",
    precision: Annotated[str, Option("--precision", help="fp32, bf16, fp16 (CUDA) or auto.")] = "fp32",
    workers: Annotated[int, Option(
        "--workers", min=1, max=64, help="Server processes, each with its own copy of the model.")] = 1,
    faiss: Annotated[bool, Option("--faiss", help="Search the index's approximate FAISS index.")] = False,
    nprobe: Annotated[int | None, Option("--nprobe", min=1, help="FAISS lists to probe (implies --faiss).")] = None,
    verify: Annotated[bool, Option(
        "--verify/--no-verify", help="Check every shard's sha256 before serving.")] = True,
) -> None:
    """Serve a search page and a JSON API over a gallery index until Ctrl-C.

    Open http://HOST:PORT/ in a browser: search by description or by photo, click a result to
    enlarge it, share the URL. The API: GET /api/health, GET /api/search?q=TEXT&k=10,
    POST /api/search/image?k=10 (multipart field "file"), GET /api/search/row/ROW?k=10,
    GET /images/ROW?size=256. Needs the [serve] extra: pip install 'personsearch[serve]'.
    """
    _check_installed()
    from personsearch.serve.run import Listener, ServeOptions, serve_forever

    loopback = _is_loopback(host)
    if not loopback:
        stderr.print(Text(f"warning: listening on {host}: anyone who can reach this machine can search the "
                          "gallery and see its images (there is no login)", style="yellow"))
    options = ServeOptions(index=index, run=run, weights=weights, device=device, precision=precision,
                           backend="faiss" if faiss or nprobe is not None else "exact", nprobe=nprobe, verify=verify)
    listener = Listener.bind(host, port)

    def ready(url: str, images: int) -> None:
        stderr.print(terminal_safe(f"serving {images:,} images at {url}  (Ctrl-C to stop)"))

    def stage(text: str) -> None:
        if not state.quiet:
            stderr.print(terminal_safe(text), style="dim")

    serve_forever(options, listener, workers=workers, loopback=loopback, verbose=state.verbose,
                  on_ready=ready, on_stage=stage)
    stderr.print("stopped", style="dim")


def _check_installed() -> None:
    import importlib

    missing = []
    for name in SERVE_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name.replace("_", "-"))
    if missing:
        raise InputError(f"the server needs {' and '.join(missing)}, not installed here",
                         hint="pip install 'personsearch[serve]'")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
