"""Writing outputs: files and directories whose modes follow the umask (as ``save_pretrained``'s
do), written whole or not at all, and a full disk said in one sentence.

``tempfile.mkdtemp``/``mkstemp`` create ``0700``/``0600`` entries whatever the umask; an
output built in one and renamed into place keeps that mode, so it is set from the umask here.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from evomerge.errors import OutputError

__all__ = ["umask_mode", "follow_umask", "write_text_atomic", "disk_full", "check_free_space",
           "is_disk_full", "markdown_text"]

_FULL = (errno.ENOSPC, errno.EDQUOT)


def umask_mode(directory: bool) -> int:
    """The mode a new directory (0777) or file (0666) gets under the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def follow_umask(path: Path) -> None:
    """Give ``path`` (a file, or a directory and everything in it) the modes ``open`` and
    ``mkdir`` would have given it under the umask."""
    path = Path(path)
    if path.is_dir():
        for sub in path.rglob("*"):
            sub.chmod(umask_mode(sub.is_dir()))
        path.chmod(umask_mode(True))
    else:
        path.chmod(umask_mode(False))


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _FULL


def disk_full(path: Path, needed: int) -> OutputError:
    """The one-sentence error for a full disk (or quota) while writing ``path``."""
    try:
        free = shutil.disk_usage(Path(path).parent).free
        have = f"; {free:,} bytes are free"
    except OSError:
        have = ""
    return OutputError(f"No space left on the device of {str(path)!r}: writing it needs "
                       f"{needed:,} bytes{have}. Nothing was written; free space or choose "
                       "another path.")


def check_free_space(path: Path, needed: int) -> None:
    """Refuse before writing when the filesystem of ``path``'s parent has less than
    ``needed`` bytes free."""
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        return
    if free < needed:
        raise disk_full(path, needed)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it and a rename: a reader
    (or a crash, a full disk) sees the old file or the whole new one, never part of it."""
    path = Path(path)
    data = text.encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, umask_mode(False))
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(path, len(data)) from None
        raise


# What can break out of literal text: HTML, code spans, links, table cells, lines. (Emphasis
# marks stay: "add_l1" reads better unescaped and cannot inject anything.)
_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`[]|"} | {
    "<": "&lt;", ">": "&gt;", "&": "&amp;", "\n": " ", "\r": " "})


def markdown_text(value: object) -> str:
    """``value`` as literal Markdown text on one line: no HTML tag, code span, link or table
    cell break in it takes effect where a viewer renders the file.

    >>> markdown_text("a|b <script>")
    'a\\\\|b &lt;script&gt;'
    """
    return str(value).translate(_MD_SPECIAL)
