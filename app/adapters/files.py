"""Where adapters live on disk. The registry directory (GATEWAY_LORA_DIR,
shared by every replica) holds one sub-directory per adapter; what the
engine loads is a private copy of the checked bytes under GATEWAY_DATA_DIR,
kept while any request may use it, so a directory rewritten or removed on
the shared volume can never reach the engine half-written or gone."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from app.adapters.check import CONFIG, WEIGHTS

# `name` or `name@N` (version N of name).
NAME = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,63})(?:@([0-9]{1,9}))?")  # whole names only
UNLOADED = ".unloaded"  # where an adapter the admin unloaded is moved to


def split_name(name: str) -> tuple[str, int | None] | None:
    """(family, version) of a valid adapter name, else None."""
    match = NAME.fullmatch(name)
    if match is None:
        return None
    return match[1], int(match[2]) if match[2] is not None else None


def listing(lora_dir: Path | None) -> dict[str, Path]:
    """The registry directory's adapters by name (hidden entries skipped)."""
    if lora_dir is None or not lora_dir.is_dir():
        return {}
    return {
        entry.name: Path(entry.path)
        for entry in os.scandir(lora_dir)
        if not entry.name.startswith(".") and entry.is_dir()
    }


def fingerprint(path: Path) -> tuple[int, int, int, int] | None:
    """Sizes and mtimes of both files: unchanged means not read again."""
    try:
        a, b = (path / CONFIG).stat(), (path / WEIGHTS).stat()
    except OSError:
        return None
    return a.st_size, a.st_mtime_ns, b.st_size, b.st_mtime_ns


class Staging:
    """This process's copies of checked adapters, one directory per content."""

    def __init__(self, data_dir: Path):
        self.root = data_dir / "adapters"
        self.home = self.root / str(os.getpid())
        # Copies left by gateways that are gone (a restart; in a container
        # the new process may even have the old one's pid).
        if self.root.is_dir():
            for old in self.root.iterdir():
                if old == self.home or (old.name.isdigit() and not _alive(int(old.name))):
                    shutil.rmtree(old, ignore_errors=True)

    def put(self, key: str, files: tuple[bytes, bytes]) -> Path:
        """A copy of `files` that lives until dropped (`key`: unique per adapter)."""
        target = self.home / key
        if not target.is_dir():
            _write_dir(target, files)
        return target

    def drop(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)


def persist(lora_dir: Path, name: str, files: tuple[bytes, bytes]) -> bool:
    """Write an adapter into the registry directory as `name` (all or
    nothing); False if that name is taken."""
    target = lora_dir / name
    if target.exists():
        return False
    _write_dir(target, files)
    return True


def remove(lora_dir: Path, name: str) -> None:
    """Take back an adapter `persist` wrote that the engine then refused."""
    shutil.rmtree(lora_dir / name, ignore_errors=True)


def withdraw(lora_dir: Path, name: str) -> None:
    """Move an adapter out of the registry (kept under .unloaded/, not deleted)."""
    away = lora_dir / UNLOADED
    away.mkdir(exist_ok=True)
    os.rename(lora_dir / name, away / f"{name}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}")


def _write_dir(target: Path, files: tuple[bytes, bytes]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=target.parent))
    try:
        for file, data in zip((CONFIG, WEIGHTS), files, strict=True):
            (tmp / file).write_bytes(data)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
