"""Token .bin files, nanoGPT's format for corpora larger than memory: a flat little-endian
array of token ids, memory-mapped when training, so that only the batches are ever in memory.

- ``pack_text`` writes a text's byte-level tokens as such a file (``dlscale data pack``),
  with a JSON sidecar ``FILE.bin.json`` saying dtype, vocabulary and tokenizer.
- ``load_token_bin`` reads ``--data FILE.bin``: the sidecar's dtype and vocabulary, or
  without one nanoGPT's defaults (uint16, GPT-2's 50257 ids).
- ``load_nanogpt_dir`` reads ``--data DIR`` holding nanoGPT's ``train.bin`` and ``val.bin``.

Every token id is checked against the vocabulary when the file is opened (in chunks: a
1 GB file scans in about a second), so that a bad id is one error line naming the file
instead of an index error deep in a DataLoader worker. Nothing here unpickles: nanoGPT's
``meta.pkl`` is never opened.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np

from dlscale.data import preprocess
from dlscale.data.guards import names_a_file, require_regular_file
from dlscale.data.splits import Splits
from dlscale.data.text import TokenWindows, is_text_file, split_90_5_5
from dlscale.errors import UserError

SCHEMA_VERSION = 1
SUFFIX = ".bin"
DTYPES = {"uint8": np.dtype("<u1"), "uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
NANOGPT_DTYPE, NANOGPT_VOCAB = "uint16", 50257  # nanoGPT's GPT-2 tokens, when nothing says otherwise
COPY_CHUNK = 16 << 20  # bytes copied at once while packing
CHECK_CHUNK = 1 << 24  # token ids checked at once against the vocabulary
MAX_META_BYTES = 1 << 20  # a sidecar or meta.json is a few lines; anything larger is not one


def sidecar_of(path: Path) -> Path:
    """Where the JSON description of a token file lives: FILE.bin.json."""
    return path.with_suffix(path.suffix + ".json")


# --------------------------------------------------------------------------- writing


def pack_text(src: Path, out: Path) -> dict[str, Any]:
    """Write the byte-level tokens of text ``src`` to ``out`` (uint8, vocabulary 256) and its
    sidecar, both atomically (a temporary file in out's folder, then os.replace), copying in
    chunks so that a text larger than memory packs too. ``out`` may replace only an earlier
    pack output. Returns what was written, for the command to print."""
    src, out = Path(src), Path(out)
    start = time.perf_counter()
    _check_pack_source(src)
    _check_pack_output(src, out)
    dtype = "uint8"
    temps: list[Path] = []  # removed at the end, whatever happened; replaced ones are gone already
    try:
        temps.append(_temp_beside(out))
        copied = _copy(src, temps[0])
        meta = {"kind": "tokens", "schema_version": SCHEMA_VERSION, "dtype": dtype, "vocab_size": 256,
                "tokens": copied, "tokenizer": "bytes", "source": src.name}
        temps.append(_temp_beside(sidecar_of(out)))
        temps[1].write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        # The .bin first: between the two replaces an older sidecar's token count no longer
        # matches, which load_token_bin refuses rather than misreads.
        os.replace(temps[0], out)
        os.replace(temps[1], sidecar_of(out))
    except OSError as error:
        raise UserError(f"cannot pack {src} into {out} ({error.strerror or error}); check the files' permissions and the disk's space") from None
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
    return {"path": str(out), "sidecar": str(sidecar_of(out)), "source": str(src), "tokens": copied,
            "bytes": copied * DTYPES[dtype].itemsize, "dtype": dtype, "vocab_size": 256,
            "seconds": round(time.perf_counter() - start, 3)}


def _check_pack_source(src: Path) -> None:
    if not src.exists():
        raise UserError(f"source {src} does not exist; give a text file to pack")
    if src.is_dir():
        raise UserError(f"source {src} is a folder; give a text file to pack")
    require_regular_file(src, f"source {src}")
    try:
        text = is_text_file(src)
    except OSError as error:
        raise UserError(f"cannot read {src} ({error.strerror or error}); check the path and its permissions") from None
    if not text:
        raise UserError(f"{src} is not a text file (its start is not UTF-8); give a .txt or UTF-8 text file to pack")


def _check_pack_output(src: Path, out: Path) -> None:
    """OUT must be a .bin in an existing folder, and may replace only an earlier pack output."""
    if out.suffix.lower() != SUFFIX:
        raise UserError(f"output {out} does not end in .bin; name it e.g. {out.with_suffix(SUFFIX).name}, so that --data reads it as tokens")
    if not out.parent.is_dir():
        raise UserError(f"the folder of output {out} does not exist; create {out.parent} first or give another path")
    if out.exists() and src.resolve() == out.resolve():
        raise UserError(f"output {out} is the source itself; give another output path")
    side = sidecar_of(out)
    ours = _is_our_sidecar(side)
    for path, replaceable in ((out, ours and out.is_file() and not out.is_symlink()), (side, ours)):
        if (path.exists() or path.is_symlink()) and not replaceable:
            raise UserError(
                f"{path} exists and is not the output of dlscale data pack; move it away or give another output path"
            )


def _is_our_sidecar(side: Path) -> bool:
    """A regular file holding a sidecar this module wrote."""
    if not side.is_file() or side.is_symlink():
        return False
    try:
        meta = json.loads(side.read_text(encoding="utf-8")) if side.stat().st_size <= MAX_META_BYTES else None
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("kind") == "tokens" and "schema_version" in meta


def _temp_beside(path: Path) -> Path:
    """A new empty file in path's folder (so that os.replace is atomic), hidden by a dot, with
    the permissions the umask gives any new file (mkstemp's would be owner-only)."""
    temp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return temp


def _copy(src: Path, dst: Path) -> int:
    """Copy src into dst in COPY_CHUNK pieces, flushed to disk; the number of bytes copied."""
    copied = 0
    with open(src, "rb") as reader, open(dst, "wb") as writer:
        while chunk := reader.read(COPY_CHUNK):
            writer.write(chunk)
            copied += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return copied


# --------------------------------------------------------------------------- reading


def load_token_bin(path: Path, name: str, seq_len: int) -> Splits:
    """Windows of seq_len + 1 tokens from a contiguous 90/5/5 split of a token .bin file.

    dtype and vocabulary come from the sidecar FILE.bin.json when there is one, else
    nanoGPT's uint16 and 50257 (a sidecar-less file of an odd size is refused). Every id is
    checked against the vocabulary first, in chunks (about a second per GB)."""
    path = Path(path)
    fmt = _sidecar_format(path) or _nanogpt_default()
    tokens = _open_tokens(path, fmt)
    window = seq_len + 1
    if len(tokens) * 9 // 10 < window:
        needed = (10 * window + 8) // 9
        raise UserError(
            f"{path} has {len(tokens)} tokens, too short for one training window of {window} tokens "
            f"(seq_len {seq_len} + 1); give at least {needed} tokens or a shorter sequence length"
        )
    train, val, test = split_90_5_5(tokens, window)
    return _splits(name, seq_len, fmt, train, val, test)


def is_nanogpt_dir(path: Path) -> bool:
    """A folder with nanoGPT's train.bin."""
    return names_a_file(path / "train.bin")


def load_nanogpt_dir(path: Path, name: str, seq_len: int) -> Splits:
    """nanoGPT's data folder: train from train.bin; val.bin's first half validates and its
    second half tests. When val.bin holds fewer than two windows, all of it validates and
    there is no test split (so validation is never lost to a test split of nothing).

    dtype and vocabulary: each file's own sidecar (FILE.bin.json, from dlscale data pack),
    else the folder's meta.json ({"vocab_size": V, "dtype": "uint16"}), else uint16 and
    50257. nanoGPT's meta.pkl is a pickle, which can run any code when loaded: it is never
    opened, and a folder with only meta.pkl reads as uint16/50257 (for a character-level
    set that is a larger vocabulary than needed, which trains all the same)."""
    path = Path(path)
    train_path, val_path = path / "train.bin", path / "val.bin"
    if not names_a_file(val_path):
        raise UserError(
            f"{name} has train.bin but no val.bin; put nanoGPT's val.bin beside it, or give "
            f"--data {train_path} to split train.bin 90/5/5"
        )
    folder = _meta_json(path / "meta.json")
    train_fmt = _sidecar_format(train_path) or folder or _nanogpt_default()
    val_fmt = _sidecar_format(val_path) or folder or _nanogpt_default()
    if (train_fmt["dtype"], train_fmt["vocab_size"]) != (val_fmt["dtype"], val_fmt["vocab_size"]):
        raise UserError(
            f"{train_path} holds {train_fmt['dtype']} ids of a {train_fmt['vocab_size']}-token vocabulary but "
            f"{val_path} {val_fmt['dtype']} ids of {val_fmt['vocab_size']}; pack both with the same tokenizer"
        )
    window = seq_len + 1
    train_tokens = _open_tokens(train_path, train_fmt)
    if len(train_tokens) < window:
        raise UserError(
            f"{train_path} has {len(train_tokens)} tokens, too short for one training window of {window} tokens "
            f"(seq_len {seq_len} + 1); give more data or a shorter sequence length"
        )
    val_tokens = _open_tokens(val_path, val_fmt)
    half = len(val_tokens) // 2
    if half >= window:
        val, test = TokenWindows(val_tokens[:half], window), TokenWindows(val_tokens[half:], window)
    else:
        val, test = (TokenWindows(val_tokens, window) if len(val_tokens) >= window else None), None
    return _splits(name, seq_len, train_fmt, TokenWindows(train_tokens, window), val, test)


def _splits(name: str, seq_len: int, fmt: dict[str, Any], train, val, test) -> Splits:
    vocab = fmt["vocab_size"]
    recipe = preprocess.byte_tokens() if fmt["tokenizer"] == "bytes" else preprocess.token_ids(vocab)
    return Splits(name=name, kind="tokens", input_shape=(seq_len,), num_classes=vocab,
                  train=train, val=val, test=test, preprocess=recipe)


def _nanogpt_default() -> dict[str, Any]:
    return {"dtype": NANOGPT_DTYPE, "vocab_size": NANOGPT_VOCAB, "tokenizer": None, "tokens": None, "from": None}


def _sidecar_format(path: Path) -> dict[str, Any] | None:
    """The format FILE.bin.json describes, or None without one."""
    side = sidecar_of(path)
    if not names_a_file(side):
        return None
    meta = _read_json(side)
    if meta.get("kind") != "tokens":
        raise UserError(f"{side} is not a token file's description (kind {meta.get('kind')!r}, not 'tokens'); move it away or re-pack {path.name}")
    version = meta.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise UserError(f"{side} has schema_version {version!r}; this dlscale reads {SCHEMA_VERSION}: upgrade dlscale or re-pack {path.name}")
    return _format(meta, side)


def _meta_json(path: Path) -> dict[str, Any] | None:
    """A nanoGPT folder's meta.json: vocab_size, and dtype (default uint16)."""
    if not names_a_file(path):
        return None
    meta = _read_json(path)
    return _format({"dtype": NANOGPT_DTYPE, **meta, "tokens": None}, path)  # one description of two files: no count


def _read_json(path: Path) -> dict[str, Any]:
    require_regular_file(path)
    try:
        if path.stat().st_size > MAX_META_BYTES:
            raise UserError(f"{path} is over {MAX_META_BYTES} bytes, too large to be a token file's description; move it away")
        meta = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UserError(f"cannot read {path} ({error.strerror or error}); check its permissions") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); fix it or move it away") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} is not a JSON object; write {{\"vocab_size\": V, \"dtype\": \"uint16\"}}")
    return meta


def _format(meta: dict[str, Any], where: Path) -> dict[str, Any]:
    """dtype, vocab_size, tokenizer and token count, checked."""
    dtype, vocab, tokens = meta.get("dtype"), meta.get("vocab_size"), meta.get("tokens")
    if dtype not in DTYPES:
        raise UserError(f"{where} gives dtype {dtype!r}; token files hold {', '.join(DTYPES)}")
    if type(vocab) is not int or vocab < 1:
        raise UserError(f"{where} gives vocab_size {vocab!r}; give the tokenizer's number of ids, a positive integer")
    if tokens is not None and (type(tokens) is not int or tokens < 0):
        raise UserError(f"{where} gives tokens {tokens!r}, not a count; re-pack the file")
    tokenizer = meta.get("tokenizer")
    if tokenizer == "bytes" and vocab != 256:
        raise UserError(f"{where} says byte tokens with a vocabulary of {vocab}; bytes have 256: fix vocab_size or the tokenizer")
    return {"dtype": dtype, "vocab_size": vocab, "tokenizer": tokenizer, "tokens": tokens, "from": where}


def _open_tokens(path: Path, fmt: dict[str, Any]) -> np.ndarray:
    """The ids of ``path`` as a read-only memory map, checked for size and range."""
    require_regular_file(path)
    dtype = DTYPES[fmt["dtype"]]
    try:
        size = path.stat().st_size
        if size % dtype.itemsize:
            if fmt["from"] is None:
                raise UserError(
                    f"{path} has an odd number of bytes ({size}), so it is not uint16 token ids as nanoGPT writes them; "
                    f"describe its format in {sidecar_of(path).name} ({{\"kind\": \"tokens\", \"schema_version\": 1, "
                    f"\"dtype\": ..., \"vocab_size\": ...}}) or pack the text with dlscale data pack"
                )
            raise UserError(f"{path} has {size} bytes, not a whole number of {fmt['dtype']} ids as {fmt['from']} says; re-pack it")
        count = size // dtype.itemsize
        if fmt["tokens"] is not None and fmt["tokens"] != count:
            raise UserError(f"{path} holds {count} tokens but {fmt['from']} says {fmt['tokens']}; the pack was interrupted or the file changed: re-pack it")
        tokens = np.memmap(path, dtype=dtype, mode="r") if count else np.zeros(0, dtype)
    except OSError as error:
        raise UserError(f"cannot read {path} ({error.strerror or error}); check the path and its permissions") from None
    _check_ids(tokens, fmt["vocab_size"], path)
    return tokens


def _check_ids(tokens: np.ndarray, vocab: int, path: Path) -> None:
    """Refuse an id >= vocab, naming the first one and where it is. Read in chunks (about a second per GB)."""
    if vocab >= 1 << (8 * tokens.dtype.itemsize):
        return  # the dtype cannot hold an id that large
    for start in range(0, len(tokens), CHECK_CHUNK):
        chunk = tokens[start : start + CHECK_CHUNK]
        if int(chunk.max()) >= vocab:
            at = int(np.argmax(chunk >= vocab))
            raise UserError(
                f"{path} holds token id {int(chunk[at])} at position {start + at}, but the vocabulary has {vocab} ids "
                f"(0..{vocab - 1}); give the right vocab_size and dtype in {sidecar_of(path).name} (or the folder's meta.json), "
                "or re-tokenize the data"
            )
