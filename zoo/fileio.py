"""The zoo's small shared file helpers, written once: atomic writes, dtype names, sha256 and its sidecar record.

- ``atomic_write``: a file appears whole or not at all (a locked temporary beside it, then ``os.replace``)
- ``DTYPES`` / ``SAFETENSORS_DTYPES`` / ``SAFETENSORS_CODES``: dtype names as users and safetensors spell them
- ``file_sha256``, ``sidecar_path``, ``write_sidecar``, ``read_sidecar``: a file's hash, recorded beside it
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

try:
    import fcntl
except ImportError:  # not POSIX: stale temporary files are told apart by their process id alone
    fcntl = None  # type: ignore[assignment]

# dtype names accepted by the API and the command line (--dtype), as torch names them
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# safetensors' dtype codes
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
SAFETENSORS_CODES: dict[torch.dtype, str] = {d: code for code, d in SAFETENSORS_DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def lock(fd: int, block: bool = True) -> bool:
    """An exclusive ``flock`` on ``fd`` (held until closed); False when another process holds it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def create_temp(path: Path, suffix: str = ".partial") -> tuple[int, Path]:
    """A new, locked temporary file beside ``path``, named with this process's id; mode 0666 less the umask.

    Returns its open descriptor (write-only) and its path.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    lock(fd)
    return fd, tmp


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (another user's, or a pid that cannot be asked about, counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def stale_temp(tmp: Path, pid: str) -> bool:
    """Whether ``tmp``, a file ``create_temp`` made for process ``pid``, was left by a stopped writer: that process
    is gone and no process holds the file's lock. A live writer's file is never stale."""
    if not pid.isdigit() or pid_alive(int(pid)) or not tmp.is_file():
        return False
    try:
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return lock(fd, block=False)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[IO[bytes]], None], suffix: str = ".tmp") -> None:
    """Write ``path`` whole or not at all: ``data`` (text as UTF-8, bytes, or a ``write(file)`` callable) goes
    into a temporary file beside it, synced, then renamed over ``path``; on any failure the temporary goes."""
    path = Path(path)
    fd, tmp = create_temp(path, suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """``data`` as indented JSON, written atomically."""
    atomic_write(path, json.dumps(data, indent=1) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the zoo records a file's sha256 (beside the real file, symlinks resolved)."""
    real = Path(os.path.realpath(path))
    return real.with_name(real.name + ".sha256.json")


def file_stamp(st: os.stat_result) -> dict[str, int]:
    """What tells a file changed since it was hashed. ctime changes on every write and cannot be set back
    with os.utime: an in-place edit is always seen."""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def write_sidecar(path: str | os.PathLike, sha256: str) -> None:
    """Record ``sha256`` for ``path`` in its sidecar, with the file's current size/mtime/ctime/inode."""
    data = {"sha256": sha256, **file_stamp(os.stat(path)), "verified": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_json(sidecar_path(path), data)


def read_sidecar(path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar record of ``path`` (None when absent or unreadable)."""
    try:
        data = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) and isinstance(data.get("sha256"), str) else None
    except (OSError, ValueError):
        return None


__all__ = [
    "DTYPES", "SAFETENSORS_CODES", "SAFETENSORS_DTYPES", "atomic_write", "atomic_write_json", "create_temp", "dtype_name",
    "file_sha256", "file_stamp", "lock", "pid_alive", "read_sidecar", "sidecar_path", "stale_temp", "write_sidecar",
]
