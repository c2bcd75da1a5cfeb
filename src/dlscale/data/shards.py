"""Image shards: an image folder packed into a few large tar files, for parallel file
systems (GPFS, Lustre) that serve millions of small files slowly.

``dlscale data pack FOLDER OUT`` writes ``OUT/{split}-{n:05d}.tar`` of about 256 MiB each,
holding every image's bytes unchanged as ``KEY.EXT`` beside ``KEY.cls`` (its label as
decimal text) in WebDataset's naming, so ``tar`` and the ``webdataset`` library read them
too, and ``OUT/index.json``: the class names and, per split and shard, each sample's key,
extension, byte offset and size in the tar, label and original path (columns of plain JSON
lists, so that a million-image index parses in about a second; never a pickle).

Training reads a sample by its byte offset (one ``pread`` from a tar kept open per worker
process), not by streaming the tars in order. Sample i of a split is the folder's sample i,
so everything built on indices holds unchanged: BatchOrder's global permutation, ranks
reading contiguous slices of the same global batch, exact mid-epoch resume from (seed,
epoch, step), crops seeded by (seed, epoch, index). The Splits (mode, size, augmentation,
preprocess recipe, class names) are the folder's, so a model trained on the shards
predicts on raw image files exactly alike. Broken images are found when read, as in a folder.

Why not a library (read in their wheels: webdataset 1.0.2, litdata 0.2.76, mosaicml-streaming
0.13.0): ``webdataset`` streams tars in order through IterableDatasets, shuffles in a buffer
and splits shards between ranks, so ranks do not see slices of one global batch and a
resume is not exact; its default decoders include pickle.
``litdata`` and ``mosaicml-streaming`` resume with their own orders and partitions, pull
cloud clients (boto3, obstore; gcs, azure, oci, paramiko, transformers), torchvision (not
working on these machines) or pin numpy<2.2, and store some types as pickles. Writing tar
with ``tarfile`` and an index of offsets takes a few hundred lines and keeps (seed, epoch,
step) the only state of the data order.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import tarfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dlscale.data.file_index import IMAGE_SUFFIXES
from dlscale.data.guards import require_regular_file
from dlscale.data.imagefolder import (
    SPLIT_NAMES, ImageFiles, decode_data, image_splits, is_image_folder, labelled_samples,
)
from dlscale.data.splits import Splits
from dlscale.errors import UserError
from dlscale.units import format_bytes

KIND, SCHEMA_VERSION = "shards", 1
INDEX = "index.json"
DEFAULT_SHARD_BYTES = 256 << 20
KEY_DIGITS = 6  # keys are zero-padded running numbers per split: 000000, 000001, ...
BLOCK = 512  # tar's block: every member is a header block and its data padded to whole blocks
MAX_OPEN_SHARDS = 64  # tar files kept open per process (ulimit -n is often 1024)
INDEX_HEAD = 64 << 10  # is_shard_dir reads this much of index.json, where the packer writes "kind"
SHARD_NAME = re.compile(r"(train|val|test)-\d{5,}\.tar")
EXTENSIONS = {suffix[1:] for suffix in IMAGE_SUFFIXES}
COLUMNS = {"keys": str, "exts": str, "offsets": int, "sizes": int, "labels": int, "paths": str}
PROGRESS_EVERY = 256  # samples between calls of pack_image_folder's progress


# --------------------------------------------------------------------------- writing


def pack_image_folder(src: Path, out: Path, shard_bytes: int = DEFAULT_SHARD_BYTES,
                      progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Pack image folder ``src`` into tar shards of about ``shard_bytes`` in folder ``out``,
    samples and splits exactly as ``--data src`` reads them. Written into ``out.tmp-XXXX``
    and renamed to ``out``; an existing ``out`` is replaced only when it holds an earlier
    pack's shards. ``progress(done, total)`` is called as samples are written. Returns what
    was written, for the command to print."""
    src, out = Path(src), Path(out)
    start = time.perf_counter()
    if shard_bytes < 1:
        raise UserError(f"the shard size must be at least 1 byte, got {shard_bytes}; give e.g. 256M")
    _check_pack_source(src)
    _check_pack_output(src, out)
    samples, class_names = labelled_samples(src)
    total = sum(len(s) for s in samples.values())
    temp = out.parent / f"{out.name}.tmp-{secrets.token_hex(4)}"
    try:
        os.mkdir(temp)
        writer = _ShardWriter(temp, shard_bytes, progress, total)
        index = {"kind": KIND, "schema_version": SCHEMA_VERSION, "source": str(src), "class_names": class_names,
                 "splits": {split: writer.write_split(split, samples[split], src) for split in SPLIT_NAMES}}
        _write_synced(temp / INDEX, json.dumps(index).encode() + b"\n")
        _swap_in(temp, out)
    except OSError as error:
        raise UserError(
            f"cannot pack {src} into {out} ({error.strerror or error}); check the files' permissions and the disk's space"
        ) from None
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
    shards = [shard for split in index["splits"].values() for shard in split]
    return {"kind": KIND, "path": str(out), "source": str(src), "shards": len(shards), "samples": total,
            "splits": {split: len(samples[split]) for split in SPLIT_NAMES}, "classes": len(class_names),
            "bytes": sum(shard["bytes"] for shard in shards), "seconds": round(time.perf_counter() - start, 3)}


class _ShardWriter:
    """Writes the samples of each split into tars, starting a new one at the size limit."""

    def __init__(self, folder: Path, shard_bytes: int, progress: Callable[[int, int], None] | None, total: int):
        self.folder, self.shard_bytes = folder, shard_bytes
        self.progress, self.total, self.done = progress, total, 0

    def write_split(self, split: str, samples: list[tuple[Path, int]], src: Path) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = []
        width = max(KEY_DIGITS, len(str(len(samples) - 1)))
        file = tar = None
        try:
            for number, (file_name, label) in enumerate(samples):
                path = Path(file_name)  # the folder reader lists files as strings
                data = _read_source(path)
                label_text = str(label).encode()
                member_bytes = 2 * BLOCK + _padded(len(data)) + _padded(len(label_text))
                if tar is None or (shards[-1]["keys"] and tar.offset + member_bytes + 2 * BLOCK > self.shard_bytes):
                    if tar is not None:
                        shards[-1]["bytes"] = _close(tar, file)
                    name = f"{split}-{len(shards):05d}.tar"
                    file = open(self.folder / name, "wb")
                    tar = tarfile.open(fileobj=file, mode="w", format=tarfile.USTAR_FORMAT)
                    shards.append({"file": name, "bytes": 0, **{column: [] for column in COLUMNS}})
                key, ext = f"{number:0{width}d}", path.suffix[1:].lower()
                offset = _add(tar, f"{key}.{ext}", data)
                _add(tar, f"{key}.cls", label_text)
                shard = shards[-1]
                for column, value in (("keys", key), ("exts", ext), ("offsets", offset), ("sizes", len(data)),
                                      ("labels", label), ("paths", path.relative_to(src).as_posix())):
                    shard[column].append(value)
                self.done += 1
                if self.progress is not None and (self.done % PROGRESS_EVERY == 0 or self.done == self.total):
                    self.progress(self.done, self.total)
            if tar is not None:
                shards[-1]["bytes"] = _close(tar, file)
                tar = None
        finally:
            if file is not None and not file.closed:
                file.close()
        return shards


def _read_source(path: Path) -> bytes:
    require_regular_file(path)  # a FIFO named like an image would block the pack
    try:
        return path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {path} ({error.strerror or error}); check its permissions or move it away") from None


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Append one member (no owner, time 0: the same folder packs to the same bytes); the
    byte offset of its data in the tar."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))
    return tar.offset - _padded(len(data))  # the data ends the member, padded to whole blocks


def _close(tar: tarfile.TarFile, file: Any) -> int:
    """Finish a tar and flush it to disk; its size in bytes."""
    tar.close()
    file.flush()
    os.fsync(file.fileno())
    size = file.tell()
    file.close()
    return size


def _write_synced(path: Path, body: bytes) -> None:
    with open(path, "wb") as file:
        file.write(body)
        file.flush()
        os.fsync(file.fileno())


def _swap_in(temp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an earlier pack there is moved aside first and
    removed after (put back if the rename fails)."""
    if not out.exists():
        os.rename(temp, out)
        return
    old = out.parent / f"{out.name}.old-{secrets.token_hex(4)}"
    os.rename(out, old)
    try:
        os.rename(temp, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _check_pack_source(src: Path) -> None:
    if not src.exists():
        raise UserError(f"source {src} does not exist; give an image folder (or a text file) to pack")
    if is_shard_dir(src):
        raise UserError(f"{src} holds image shards already; train on it with --data {src}")
    if not is_image_folder(src):
        raise UserError(
            f"{src} holds no class subfolders of images (png, jpg, jpeg, bmp, gif, webp), directly or under "
            "train/, val/ and test/; give such a folder to pack into shards"
        )


def _check_pack_output(src: Path, out: Path) -> None:
    """OUT's folder must exist; OUT may replace only an earlier pack of image shards, and
    holds nothing the packer did not write (it is removed whole)."""
    if not out.parent.is_dir():
        raise UserError(f"the folder of output {out} does not exist; create {out.parent} first or give another path")
    if not (out.exists() or out.is_symlink()):
        return
    resolved = out.resolve()
    if resolved == src.resolve() or resolved in src.resolve().parents:
        raise UserError(f"output {out} holds the source {src}; give an output path outside it")
    if out.is_symlink() or not is_shard_dir(out):
        raise UserError(f"{out} exists and is not image shards from dlscale data pack; move it away or give another output path")
    strangers = sorted(e.name for e in out.iterdir() if e.name != INDEX and not SHARD_NAME.fullmatch(e.name))
    if strangers:
        raise UserError(
            f"{out} holds image shards but also {strangers[0]}, which the packer did not write and replacing {out} "
            "would delete; move it away or give another output path"
        )


# --------------------------------------------------------------------------- reading


def is_shard_dir(path: Path) -> bool:
    """A folder whose index.json says kind "shards" (looked for near its start, where the packer writes it)."""
    index = Path(path) / INDEX
    if not index.is_file():
        return False
    try:
        with open(index, "rb") as file:
            head = file.read(INDEX_HEAD)
    except OSError:
        return False
    return re.search(rb'"kind"\s*:\s*"shards"', head) is not None


@dataclass(frozen=True)
class Member:
    """Where one image's bytes are: ``size`` bytes at ``offset`` of tar file ``shard``."""

    shard: Path
    offset: int
    size: int
    name: str  # as messages show it: "train-00003.tar:000123.jpg"

    def __str__(self) -> str:
        return self.name


def load_shards(path: Path, name: str, *, augment: str = "auto", image_size: int | None = None, seed: int = 0,
                skip_bad_files: bool = False) -> Splits:
    """The Splits of a shards folder, as the image folder it was packed from would give them."""
    path = Path(path)
    index = read_index(path)
    samples = {
        split: [
            (Member(path / shard["file"], offset, size, f"{shard['file']}:{key}.{ext}"), label)
            for shard in index["splits"].get(split, [])
            for key, ext, offset, size, label in zip(
                shard["keys"], shard["exts"], shard["offsets"], shard["sizes"], shard["labels"])
        ]
        for split in SPLIT_NAMES
    }
    return image_splits(name, samples, index["class_names"], augment=augment, image_size=image_size, seed=seed,
                        skip_bad_files=skip_bad_files, dataset=ShardImages, open_image=_open_member)


class ShardImages(ImageFiles):
    """ImageFiles whose images are members of tar shards, read by byte offset. ``files``
    holds the names messages show ("train-00003.tar:000123.jpg")."""

    def __init__(self, samples: list[tuple[Member, int]], mode: str, size: tuple[int, int], **options: Any):
        super().__init__([(member.name, label) for member, label in samples], mode, size, **options)
        self.shards = list(dict.fromkeys(member.shard for member, _ in samples))
        position = {shard: i for i, shard in enumerate(self.shards)}
        self.shard_of = np.array([position[member.shard] for member, _ in samples], np.int32)
        self.offsets = np.array([member.offset for member, _ in samples], np.int64)
        self.sizes = np.array([member.size for member, _ in samples], np.int64)
        self.options = options
        self._handles: OrderedDict[int, Any] = OrderedDict()  # shard number -> open file, this process's
        self._pid = os.getpid()

    def member(self, index: int) -> Member:
        return Member(self.shards[self.shard_of[index]], int(self.offsets[index]), int(self.sizes[index]),
                      self.files[index])

    def head(self, n: int) -> ShardImages:
        return ShardImages([(self.member(i), self.labels[i]) for i in range(n)], self.mode, self.size, **self.options)

    def decode(self, index: int, rng: np.random.Generator | None = None, decoder: str = "auto") -> np.ndarray:
        return decode_data(self.member_bytes(index), self.files[index], self.mode, self.size, self.crop, rng, decoder)

    def member_bytes(self, index: int) -> bytes:
        """The image's bytes, by one pread from the shard's tar, kept open in this process."""
        if os.getpid() != self._pid:  # a forked loader worker: the parent's handles are not its own
            self._handles, self._pid = OrderedDict(), os.getpid()
        number = int(self.shard_of[index])
        shard = self.shards[number]
        try:
            file = self._handles.get(number)
            if file is None:
                if len(self._handles) >= MAX_OPEN_SHARDS:
                    self._handles.popitem(last=False)[1].close()
                file = self._handles[number] = open(shard, "rb", buffering=0)
            else:
                self._handles.move_to_end(number)
            data = os.pread(file.fileno(), int(self.sizes[index]), int(self.offsets[index]))
        except OSError as error:
            raise UserError(f"cannot read shard {shard} ({error.strerror or error}); check it is there and readable") from None
        return _checked_length(data, int(self.sizes[index]), shard)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled into spawned loader workers without open files (each opens its own)."""
        return {**self.__dict__, "_handles": OrderedDict()}


def _read_member(member: Member) -> bytes:
    try:
        with open(member.shard, "rb", buffering=0) as file:
            data = os.pread(file.fileno(), member.size, member.offset)
    except OSError as error:
        raise UserError(f"cannot read shard {member.shard} ({error.strerror or error}); check it is there and readable") from None
    return _checked_length(data, member.size, member.shard)


def _checked_length(data: bytes, size: int, shard: Path) -> bytes:
    if len(data) != size:
        raise UserError(f"shard {shard} is shorter than its index.json says (it changed after packing); re-pack the folder")
    return data


@contextlib.contextmanager
def _opened(data: bytes, name: str) -> Iterator[Image.Image]:
    """Image.open of a member's bytes; any failure is one UserError naming the member."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            yield image
    except UserError:
        raise
    except Exception as error:  # Pillow raises many types for broken data (OSError, SyntaxError, ValueError, ...)
        raise UserError(f"cannot read image {name} ({error}); replace it in the source folder and re-pack") from None


@contextlib.contextmanager
def _open_member(member: Member) -> Iterator[Image.Image]:
    """A member's image header, for image_splits' probes of mode and size."""
    with _opened(_read_member(member), member.name) as image:
        yield image


# --------------------------------------------------------------------------- the index


def read_index(folder: Path) -> dict[str, Any]:
    """index.json, checked strictly: anything wrong is one UserError naming the file and what."""
    where = folder / INDEX
    require_regular_file(where)
    try:
        index = json.loads(where.read_bytes())
    except OSError as error:
        raise UserError(f"cannot read {where} ({error.strerror or error}); check its permissions") from None
    except (ValueError, RecursionError) as error:
        raise UserError(f"{where} is not valid JSON ({error}); re-pack the folder with dlscale data pack") from None

    def bad(what: str) -> UserError:
        return UserError(f"{where} is not a valid shards index: {what}; re-pack the folder with dlscale data pack SRC {folder}")

    if not isinstance(index, dict) or index.get("kind") != KIND:
        raise bad('it is not a JSON object with "kind": "shards"')
    version = index.get("schema_version")
    if type(version) is not int:
        raise bad(f"schema_version is {version!r}, not a number")
    if version > SCHEMA_VERSION:
        raise UserError(f"{where} has schema_version {version}; this dlscale reads {SCHEMA_VERSION}: upgrade dlscale or re-pack")
    class_names = index.get("class_names")
    if not (isinstance(class_names, list) and class_names and all(isinstance(c, str) for c in class_names)
            and len(set(class_names)) == len(class_names)):
        raise bad("class_names is not a list of distinct names")
    splits = index.get("splits")
    if not isinstance(splits, dict) or set(splits) - set(SPLIT_NAMES):
        raise bad(f"splits is not an object of {', '.join(SPLIT_NAMES)}")
    for split, shards in splits.items():
        if not isinstance(shards, list):
            raise bad(f"splits.{split} is not a list of shards")
        for number, shard in enumerate(shards):
            _check_shard(folder, shard, len(class_names), f"splits.{split}[{number}]", bad)
    if not any(shard["keys"] for shard in splits.get("train", [])):
        raise bad("the train split has no samples")
    return index


def _check_shard(folder: Path, shard: Any, classes: int, at: str, bad: Callable[[str], UserError]) -> None:
    if not isinstance(shard, dict):
        raise bad(f"{at} is not an object")
    file = shard.get("file")
    if not (isinstance(file, str) and file.endswith(".tar") and not file.startswith(".")
            and not any(c in file for c in "/\\\0")):
        raise bad(f"{at}.file {file!r} is not a plain .tar file name in the folder")
    path = folder / file
    require_regular_file(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise bad(f"{at}.file {file}: {error.strerror or error}") from None
    if shard.get("bytes") != size or type(shard.get("bytes")) is not int:
        raise bad(f"{file} has {format_bytes(size)} ({size} bytes) but the index says {shard.get('bytes')!r}, "
                  "so it changed after packing")
    columns = {}
    for column, kind in COLUMNS.items():
        values = shard.get(column)
        if not isinstance(values, list) or not all(type(v) is kind for v in values):
            raise bad(f"{at}.{column} is not a list of {'numbers' if kind is int else 'strings'}")
        columns[column] = values
    lengths = {len(values) for values in columns.values()}
    if len(lengths) != 1:
        raise bad(f"{at} has columns of different lengths")
    if any(abs(v) >= 1 << 62 for v in (*columns["offsets"], *columns["sizes"], *columns["labels"])):
        raise bad(f"{at} holds a number too large to be an offset, size or label")
    if columns["keys"]:
        offsets, sizes = np.array(columns["offsets"], np.int64), np.array(columns["sizes"], np.int64)
        labels = np.array(columns["labels"], np.int64)
        outside = np.flatnonzero((offsets < 0) | (sizes < 0) | (offsets + sizes > size))
        if len(outside):
            i = int(outside[0])
            raise bad(f"{at} puts sample {columns['keys'][i]} at bytes {offsets[i]}..{offsets[i] + sizes[i]}, "
                      f"outside {file} ({size} bytes)")
        wrong = np.flatnonzero((labels < 0) | (labels >= classes))
        if len(wrong):
            raise bad(f"{at} gives sample {columns['keys'][int(wrong[0])]} label {labels[wrong[0]]}, "
                      f"not one of the {classes} classes")
    odd = next((e for e in columns["exts"] if e not in EXTENSIONS), None)
    if odd is not None:
        raise bad(f"{at} has an image of extension {odd!r}; shards hold {', '.join(sorted(EXTENSIONS))}")
