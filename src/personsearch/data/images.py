"""Finding the images of a folder: which files a gallery holds, in a stable order, and why the
others were left out.

Files are found recursively (jpg, jpeg, png, webp, bmp, any case) and sorted by relative path, so
two looks at the same folder give the same list. Nothing is opened here, only looked up with
stat: a FIFO or device named like an image can never hang the caller. Symbolic links are followed
only while they stay inside the folder, and names that are not UTF-8 text are left out (what is
found is recorded as text).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from personsearch.errors import InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})

#: Why a special file named like an image is left out (also when it was swapped in after discovery).
NOT_REGULAR = "not a regular file (a FIFO, socket, device or folder); left unread"
#: Why a symbolic link is not followed: what is found (and later read through an index) stays
#: inside the image folder. The index refuses rows that leave it (``GalleryIndex.image_path``).
LINK_OUTSIDE = "symbolic link points outside the image folder"
_NOT_UTF8 = "name is not valid UTF-8 text; rename it to index it"


def printable_path(path: str) -> str:
    """``path`` as valid text for reports and JSON: an undecodable byte becomes U+FFFD."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def is_utf8(text: str) -> bool:
    """Whether ``text`` (a path from the file system) can be written as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_inside(path: str, root: str) -> bool:
    """Whether the resolved ``path`` is ``root`` or below it (both already real paths)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_image_root(root: Path, of: str | Path | None = None) -> None:
    """Refuse an image folder (``of``: the prepared dataset it belongs to) whose name the index
    could not record as text."""
    if not is_utf8(str(root)):
        folder = printable_path(str(root))
        named = f"the image folder {folder} of {of}" if of is not None else f"image folder {folder}"
        raise InputError(
            f"{named} has a name that is not valid UTF-8 text",
            hint="rename it (the index records the image folder as text)",
        )


def discover_images(root: str | Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files under ``root`` (recursive, sorted by relative path) and the entries left out.

    Symbolic links (to files or folders) are followed only while they stay inside ``root``; a
    link pointing outside, a broken link and a link or folder loop are reported as skipped. So are
    special files named like images (a FIFO, socket, device: never opened, so they cannot hang the
    export) and names that are not UTF-8 text (the index and its JSON hold text only).
    """
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise InputError(f"image folder not found: {printable_path(str(root))}",
                         hint="pass --images DIR, a folder of images")
    check_image_root(root)
    real_root = os.path.realpath(root)
    found: list[tuple[str, Path]] = []
    skipped: list[tuple[str, str]] = []
    seen_dirs = {real_root}

    def walk_error(exc: OSError) -> None:
        where = os.path.relpath(exc.filename, root) if exc.filename else "?"
        skipped.append((printable_path(Path(where).as_posix()), f"cannot list folder: {exc.strerror or exc}"))

    for folder, dirs, files in os.walk(root, followlinks=True, onerror=walk_error):
        base = Path(folder)
        keep = []
        for name in sorted(dirs):
            full = base / name
            rel = full.relative_to(root).as_posix()
            if not is_utf8(name):
                skipped.append((printable_path(rel) + "/", f"folder {_NOT_UTF8}"))
                continue
            real = os.path.realpath(full)
            if not is_inside(real, real_root):
                skipped.append((rel + "/", LINK_OUTSIDE))
            elif real in seen_dirs:
                skipped.append((rel + "/", "folder already visited (symbolic link loop or duplicate)"))
            else:
                seen_dirs.add(real)
                keep.append(name)
        dirs[:] = keep
        for name in files:
            if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            full = base / name
            rel = full.relative_to(root).as_posix()
            if not is_utf8(name):
                skipped.append((printable_path(rel), f"file {_NOT_UTF8}"))
                continue
            _, reason = inspect_image(full, real_root, parents_inside=True)
            if reason is not None:
                skipped.append((rel, reason))
                continue
            found.append((rel, full))
    found.sort(key=lambda item: item[0])
    skipped.sort()
    return [full for _, full in found], skipped


def inspect_image(full: Path, real_root: str, parents_inside: bool) -> tuple[os.stat_result | None, str | None]:
    """The stat of ``full`` when it is a regular file inside the root, else why it cannot be
    indexed. Looked up with stat only, never opened. ``parents_inside``: its folder is known to lie
    inside the root (the walk checked it), so only a link at the file itself is resolved."""
    try:
        link = full.is_symlink()
        info = os.stat(full)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, "symbolic link loop"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR) and full.is_symlink():
            return None, "broken symbolic link"
        return None, f"cannot read: {exc.strerror or exc}"
    except ValueError:
        return None, "cannot read: invalid file name"
    if (link or not parents_inside) and not is_inside(os.path.realpath(full), real_root):
        return None, LINK_OUTSIDE
    if not stat.S_ISREG(info.st_mode):
        return None, NOT_REGULAR
    return info, None


def describe_left_out(skipped: list[tuple[str, str]], reasons: int = 3) -> str:
    """The entries discovery left out, in one line: how many, for which reasons (most frequent
    first, with counts), and the first of them: "12 left out: symbolic link points outside the
    image folder (12); first: a.jpg"."""
    from collections import Counter

    counts = Counter(reason for _, reason in skipped).most_common()
    shown = "; ".join(f"{reason} ({count})" for reason, count in counts[:reasons])
    more = f"; {len(counts) - reasons} other reasons" if len(counts) > reasons else ""
    return f"{len(skipped)} left out: {shown}{more}; first: {skipped[0][0]}" if skipped else "nothing left out"


__all__ = [
    "IMAGE_SUFFIXES",
    "LINK_OUTSIDE",
    "NOT_REGULAR",
    "check_image_root",
    "describe_left_out",
    "discover_images",
    "inspect_image",
    "is_inside",
    "is_utf8",
    "printable_path",
]
