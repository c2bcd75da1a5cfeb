"""The listing of an image folder, cached (and listed in threads where the file system is
slow to answer, as parallel file systems are), so that start-up does
not grow with the number of files: a second start on a folder of 100,000 images reads one
JSON file and stats the class folders, not the images.

A folder's list of names changes exactly when its mtime does (a file added, removed or
renamed in it), so the cache keeps each scanned folder's mtime and the next start lists
again only the folders whose mtime moved. A folder changed within ``RACY_SECONDS`` of
its scan is listed again anyway: a file added in the same clock tick as the scan would
leave the mtime unchanged (git's "racy clean" rule).

The cache is JSON under ``cache_dir()/file-index/``, one file per folder (keyed by its
real path); a cache that cannot be read or written is ignored, never fatal. Names read
back from it are checked to be plain names, so an edited cache cannot point outside
the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlscale.hardware.peaks import cache_dir

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
IMAGE_EXTENSIONS = {suffix[1:] for suffix in IMAGE_SUFFIXES}
SCHEMA_VERSION = 1
RACY_SECONDS = 2.0
SCAN_THREADS = 16  # on a slow file system listing a folder is a wait, so threads overlap even on few cores
PROBE_FOLDERS = 16  # folders listed one by one before deciding whether threads would pay
SLOW_LISTING_S = 0.002  # a folder listed slower than this: a network file system, listed in threads
DEPTH = 3  # root / [train|val|test] / class / images


@dataclass
class Folder:
    """One listed folder: its visible subfolders and image files (names, sorted)."""

    mtime_ns: int
    scanned_at: float
    folders: list[str]
    images: list[str]
    children: dict[str, Folder] = field(default_factory=dict)


def scan(root: Path, *, use_cache: bool = True) -> Folder:
    """``root`` listed three levels deep, reusing the cached listing of every folder whose
    mtime has not moved."""
    root = os.path.realpath(root)  # strings, not Paths, for 100,000 names: a Path costs more than the listing
    cached = _read_cache(root) if use_cache else None
    top = _list(root, cached)
    level = [(top, root, cached)]
    for _ in range(DEPTH - 1):
        jobs = [
            (parent, name, os.path.join(path, name), old.children.get(name) if old is not None else None)
            for parent, path, old in level
            for name in parent.folders
        ]
        found = _list_many([(path, old) for _, _, path, old in jobs])
        level = []
        for (parent, name, path, old), folder in zip(jobs, found):
            if folder is not None:  # removed or unreadable meanwhile: left out, as a hidden one
                parent.children[name] = folder
                level.append((folder, path, old))
    if use_cache and top != cached:
        _write_cache(root, top)
    return top


def _list_many(jobs: list[tuple[str, Folder | None]]) -> list[Folder | None]:
    """The folders listed one after another while that is quick (a local disk answers in
    microseconds, and threads would only contend for the interpreter); when the first
    ones take over ``SLOW_LISTING_S`` each (a parallel file system's round trips), the
    rest in ``SCAN_THREADS`` threads, whose waits overlap."""
    found: list[Folder | None] = []
    start = time.perf_counter()
    for path, old in jobs[:PROBE_FOLDERS]:
        found.append(_list_or_none(path, old))
    rest = jobs[len(found):]
    if rest and (time.perf_counter() - start) / max(1, len(found)) > SLOW_LISTING_S:
        with ThreadPoolExecutor(SCAN_THREADS) as pool:
            return found + list(pool.map(lambda job: _list_or_none(*job), rest))
    return found + [_list_or_none(path, old) for path, old in rest]


def image_suffix(name: str) -> bool:
    """An image file's name: a known suffix, not hidden (macOS archives carry '._name.png' files that are not images)."""
    base, dot, suffix = name.rpartition(".")
    return bool(dot) and bool(base) and not name.startswith(".") and suffix.lower() in IMAGE_EXTENSIONS


def _list(path: str, cached: Folder | None) -> Folder:
    """One folder's subfolders and images: the cached ones while its mtime stands."""
    stat = os.stat(path)
    now = time.time()
    if cached is not None and cached.mtime_ns == stat.st_mtime_ns and stat.st_mtime < cached.scanned_at - RACY_SECONDS:
        return Folder(cached.mtime_ns, cached.scanned_at, cached.folders, cached.images)
    folders, images = [], []
    for name in os.listdir(path):  # names only, read in one call: no per-entry work but ours
        if name[0] == ".":
            continue
        suffix = name.rpartition(".")[2]  # image_suffix inline: it runs for every file
        if suffix != name and suffix.lower() in IMAGE_EXTENSIONS:  # a FIFO or folder named like an image is kept: reading it is refused by name
            images.append(name)
        elif os.path.isdir(os.path.join(path, name)):
            folders.append(name)
    return Folder(stat.st_mtime_ns, now, sorted(folders), sorted(images))


def _list_or_none(path: str, cached: Folder | None) -> Folder | None:
    try:
        return _list(path, cached)
    except (FileNotFoundError, PermissionError, NotADirectoryError):
        return None


# --------------------------------------------------------------------------- the cache file


def cache_file(root: str | Path) -> Path:
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:24]
    return cache_dir() / "file-index" / f"{digest}.json"


def _read_cache(root: str) -> Folder | None:
    try:
        data = json.loads(cache_file(root).read_text())
        if data.get("schema_version") != SCHEMA_VERSION or data.get("root") != str(root):
            return None
        return _folder_from(data["listing"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


def _folder_from(data: dict[str, Any]) -> Folder:
    names = [*data["folders"], *data["images"], *data["children"]]
    if not all(isinstance(n, str) and n and "/" not in n and "\0" not in n and n not in (".", "..") for n in names):
        raise ValueError("not a plain file name")
    return Folder(
        mtime_ns=int(data["mtime_ns"]), scanned_at=float(data["scanned_at"]),
        folders=list(data["folders"]), images=list(data["images"]),
        children={name: _folder_from(sub) for name, sub in data["children"].items()},
    )


def _folder_dict(folder: Folder) -> dict[str, Any]:
    return {
        "mtime_ns": folder.mtime_ns, "scanned_at": folder.scanned_at, "folders": folder.folders,
        "images": folder.images, "children": {name: _folder_dict(sub) for name, sub in folder.children.items()},
    }


def _write_cache(root: str, listing: Folder) -> None:
    path = cache_file(root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"schema_version": SCHEMA_VERSION, "root": str(root), "listing": _folder_dict(listing)})
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as tmp:
            tmp.write(body)
        os.replace(tmp.name, path)
    except OSError:
        return  # a read-only home or a full disk: the next start scans again
