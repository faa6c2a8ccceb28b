"""Atomic file writes: a reader never sees a half-written file, and a crash never damages what was there before."""

from __future__ import annotations

import glob
import os
import re
import socket
import tempfile
from pathlib import Path


def _host() -> str:
    """This machine's name as it goes into a temporary file's name (letters, digits and dashes)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file in the same folder, fsync it, then rename it over ``path``. The temporary's
    name carries this host and process (``.NAME.HOST.PID.XXXX.tmp``), so that a later write of the same file removes
    what a killed writer left (``remove_orphans``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_host()}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    remove_orphans(path)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_orphans(path: Path) -> list[Path]:
    """Remove the temporaries of ``path`` left by writers on this host whose process is gone (a SIGKILL skips the
    clean-up above, and the file would stay forever; the kill-and-resume fault test caught one). A temporary of a
    live process, of this process (another thread may be writing) or of another host is left alone. Returns the
    removed paths."""
    host, me = _host(), os.getpid()
    prefix = f".{path.name}.{host}."
    removed = []
    for p in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = p.name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == me or _alive(int(pid)):
            continue
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:  # another writer removed it first
            pass
    return removed
