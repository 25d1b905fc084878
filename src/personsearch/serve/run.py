"""Running the server: the listening socket, one process or several, a clean stop on Ctrl-C.

The socket is bound before the model loads, so a port in use is said at once (and ``--port 0``
gets a free port whose number is known before the first request). A stop (Ctrl-C, SIGTERM) lets
requests in flight finish for a few seconds, closes the socket and returns normally.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from personsearch.errors import InputError

log = logging.getLogger(__name__)

#: Seconds requests in flight get to finish after a stop.
GRACEFUL_SECONDS = 5
#: Connections served at once; more get 503 (each holds a thread and a socket).
MAX_CONNECTIONS = 256


@dataclass
class ServeOptions:
    """What ``open_service`` needs; plain values, so worker processes get them as JSON."""

    index: Path | str | None = None
    run: Path | str | None = None
    weights: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    backend: str = "exact"
    nprobe: int | None = None
    verify: bool = True

    def as_json(self) -> dict[str, Any]:
        return {key: str(value) if isinstance(value, Path) else value for key, value in asdict(self).items()}


class Listener:
    """A bound, listening TCP socket and the URL it answers at."""

    def __init__(self, sock: socket.socket, host: str) -> None:
        self.socket, self.host = sock, host

    @classmethod
    def bind(cls, host: str, port: int) -> Listener:
        try:
            infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (socket.gaierror, UnicodeError) as exc:
            raise InputError(f"cannot listen on {host!r}: {exc}", hint="pass --host 127.0.0.1, 0.0.0.0 or an address "
                             "of this machine") from None
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(2048)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise InputError(f"port {port} on {host} is in use by another program",
                                 hint="pass another --port (or --port 0 for any free one)") from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise InputError(f"not allowed to listen on port {port}", hint="use a port above 1023") from None
            raise InputError(f"cannot listen on {host} port {port}: {exc.strerror or exc}",
                             hint="pass an address of this machine with --host") from None
        sock.set_inheritable(True)
        return cls(sock, host)

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def close(self) -> None:
        self.socket.close()


class _Stop(Exception):
    """SIGTERM, turned into an exception so that a stop unwinds like Ctrl-C."""


def _on_term(signum: int, frame: Any) -> None:
    raise _Stop


def serve_forever(options: ServeOptions, listener: Listener, workers: int = 1, loopback: bool = True,
                  verbose: bool = False, on_ready: Callable[[str, int], None] | None = None,
                  on_stage: Callable[[str], None] | None = None) -> None:
    """Serve until Ctrl-C or SIGTERM, then return. The index and the model are opened (and every
    problem with them reported) before the first request is accepted."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_term) if main else None
    try:
        _serve(options, listener, workers, loopback, verbose, on_ready, on_stage)
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        listener.close()


def _serve(options: ServeOptions, listener: Listener, workers: int, loopback: bool, verbose: bool,
           on_ready: Callable[[str, int], None] | None, on_stage: Callable[[str], None] | None) -> None:
    import uvicorn

    from personsearch.serve.app import LOOPBACK_HOSTS, create_app
    from personsearch.serve.service import open_service

    allowed = list(LOOPBACK_HOSTS) if loopback else None
    service = open_service(**options.as_json(), on_stage=on_stage)
    images = service.image_count
    level = "info" if verbose else "warning"
    common = dict(log_level=level, access_log=verbose, lifespan="off", timeout_graceful_shutdown=GRACEFUL_SECONDS,
                  limit_concurrency=MAX_CONNECTIONS)
    if workers > 1:
        from uvicorn.supervisors import Multiprocess

        service.close()
        del service  # each worker process loads its own copy
        os.environ["PERSONSEARCH_SERVE"] = json.dumps(
            {**options.as_json(), "allowed_hosts": allowed, "threads": max(1, (os.cpu_count() or 1) // workers)})
        config = uvicorn.Config("personsearch.serve.app:app_from_environment", factory=True, workers=workers,
                                **common)
        if on_ready is not None:
            on_ready(listener.url, images)
        import inspect

        extra = {"target": uvicorn.Server(config).run} if "target" in inspect.signature(Multiprocess).parameters else {}
        Multiprocess(config, sockets=[listener.socket], **extra).run()  # uvicorn < 0.30 takes the target
        return
    server = uvicorn.Server(uvicorn.Config(create_app(service, allowed), **common))
    try:
        if on_ready is not None:
            on_ready(listener.url, images)
        server.run(sockets=[listener.socket])
    finally:
        service.close()


__all__ = ["Listener", "ServeOptions", "serve_forever"]
