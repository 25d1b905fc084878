"""Files and folders written safely: atomic writes and folder swaps (``atomic``), regular-file
reads and appends (``files``), the folder lock (``lock``), and the outputs this tool owns
(``marker``, ``ownership``)."""

from personsearch.io.atomic import (
    atomic_directory,
    atomic_open,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    sha256_file,
)
from personsearch.io.files import (
    IMAGE_FORMATS,
    MAX_JSONL_LINE,
    NotRegularFile,
    append_line,
    iter_jsonl,
    open_regular,
    read_jsonl,
)
from personsearch.io.lock import RunLock
from personsearch.io.marker import OWNER_FORMAT, OWNER_MARKER, OWNER_VERSION, owner_kind
from personsearch.io.ownership import ensure_replaceable, ensure_writable, safe_component, write_owner_marker

__all__ = [
    "IMAGE_FORMATS",
    "MAX_JSONL_LINE",
    "NotRegularFile",
    "OWNER_FORMAT",
    "OWNER_MARKER",
    "OWNER_VERSION",
    "RunLock",
    "append_line",
    "atomic_directory",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "ensure_replaceable",
    "ensure_writable",
    "iter_jsonl",
    "open_regular",
    "owner_kind",
    "read_jsonl",
    "safe_component",
    "sha256_file",
    "write_owner_marker",
]
