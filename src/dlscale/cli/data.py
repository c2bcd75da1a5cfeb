"""``dlscale data pack SRC OUT``: data turned into the files that train without fitting in
memory or without millions of small files: a text file becomes a token .bin
(``dlscale.data.token_bin.pack_text``), an image folder a folder of tar shards
(``dlscale.data.shards.pack_image_folder``)."""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

from dlscale.errors import UserError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "data",
        help="prepare data files: pack a text into a token .bin, an image folder into tar shards",
        description="Prepare data for dlscale train: files that are read in pieces, never whole.",
    )
    actions = p.add_subparsers(dest="data_action", metavar="ACTION", parser_class=type(p))
    pack = actions.add_parser(
        "pack",
        help="write a text's byte-level tokens as a .bin, or an image folder as tar shards, for --data",
        description=textwrap.fill(
            "A text file: write SRC's tokens to OUT, a flat little-endian array (nanoGPT's .bin format; uint8 "
            "byte-level tokens, vocabulary 256), with OUT.json describing it. Both are written atomically and "
            "streamed in chunks, so a text larger than memory packs. "
            "An image folder (class subfolders, optionally under train/, val/, test/): write folder OUT of tar "
            "shards of about --shard-size each (WebDataset naming: KEY.jpg and KEY.cls) and OUT/index.json, "
            "the splits exactly as --data SRC reads them; a cluster file system then serves a few large files "
            "instead of millions of small ones. "
            "OUT may replace only an earlier pack output. Train on it with dlscale train --data OUT.",
            width=88,
        ),
        epilog=(
            "examples:\n"
            "  dlscale data pack book.txt book.bin\n"
            "  dlscale train --model gpt-tiny --data book.bin --max-steps 500\n"
            "  dlscale data pack photos/ photos-shards --shard-size 512M\n"
            "  dlscale train --model resnet18 --data photos-shards"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pack.add_argument("src", metavar="SRC", help="a text file (UTF-8), or a folder of class subfolders of images")
    pack.add_argument("out", metavar="OUT", help="the .bin file, or for images the shards folder, to write (its folder must exist)")
    pack.add_argument("--shard-size", metavar="SIZE", default=None,
                      help="images: bytes per tar shard, with K, M or G (powers of 1024; default 256M)")
    pack.add_argument("--json", action="store_true", help="print the result as one JSON object on the last stdout line")
    pack.set_defaults(handler=run)
    p.set_defaults(handler=lambda args: _missing_action(p))


def _missing_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from dlscale.runs.files import to_json

    shard_bytes = parse_shard_size(args.shard_size) if args.shard_size is not None else None
    result = _pack(Path(args.src).expanduser(), Path(args.out).expanduser(), shard_bytes)
    print(describe(result), file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.json:
        print(to_json(result), flush=True)
    return 0


_SIZE = re.compile(r"(\d+)\s*([KMG]?)(?:I?B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_shard_size(text: str) -> int:
    """``"256M"`` -> 268435456: whole bytes with an optional K, M or G (powers of 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if not match or int(match[1]) < 1:
        raise UserError(f"--shard-size {text.strip()!r} is not a size; give bytes with an optional K, M or G, e.g. 256M")
    return int(match[1]) * _UNITS[match[2].upper()]


def _pack(src: Path, out: Path, shard_bytes: int | None = None) -> dict[str, Any]:
    """The one place that picks the packer by what SRC is."""
    if src.is_dir():
        from dlscale.data.shards import DEFAULT_SHARD_BYTES, pack_image_folder

        return pack_image_folder(src, out, shard_bytes or DEFAULT_SHARD_BYTES, progress=_progress())
    if shard_bytes is not None:
        raise UserError(f"--shard-size is for image folders, and {src} is a file; leave it out to pack a text")
    from dlscale.data.token_bin import pack_text

    return pack_text(src, out)


def _progress():
    """On a terminal, a line on stderr that counts the images packed; elsewhere nothing."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        print(f"\rpacking images: {done:,} of {total:,}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    return show


def describe(result: dict[str, Any]) -> str:
    from dlscale.units import format_bytes

    if result.get("kind") == "shards":
        counts = ", ".join(f"{n:,} {split}" for split, n in result["splits"].items() if n)
        return (
            f"packed {result['source']} into {result['path']}: {result['samples']:,} images ({counts}) of "
            f"{result['classes']} classes in {result['shards']} tar shards ({format_bytes(result['bytes'])}) "
            f"in {result['seconds']:.2f} s; train with --data {result['path']}"
        )
    return (
        f"packed {result['source']} into {result['path']}: {result['tokens']:,} {result['dtype']} tokens "
        f"({format_bytes(result['bytes'])}, vocabulary {result['vocab_size']}) in {result['seconds']:.2f} s; "
        f"train with --data {result['path']}"
    )
