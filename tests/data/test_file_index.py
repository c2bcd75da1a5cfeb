"""The image folder's listing: scanned once, cached, listed again only where a folder changed."""

import json
import os
import time

from PIL import Image

from dlscale.data import file_index


def _folder(root, classes=("a", "b"), per_class=3):
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("L", (4, 4)).save(root / name / f"{i}.png")
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "a" / ".hidden.png").write_text("hidden")


def _age(root):
    """Move every folder's mtime two minutes back, out of the racy window, so the cache may trust it."""
    past = time.time() - 120
    for path in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        os.utime(path, (past, past))


def test_scan_lists_class_folders_and_their_images_only(tmp_path):
    _folder(tmp_path)
    listing = file_index.scan(tmp_path)
    assert listing.folders == ["a", "b"]
    assert listing.children["a"].images == ["0.png", "1.png", "2.png"]


def test_a_second_scan_reads_the_cache_for_unchanged_folders(tmp_path):
    _folder(tmp_path)
    _age(tmp_path)
    file_index.scan(tmp_path)
    cache = file_index.cache_file(tmp_path.resolve())
    data = json.loads(cache.read_text())
    # plant a name only the cache knows: a second scan that shows it did not list the folder again
    data["listing"]["children"]["b"]["images"].append("9.png")
    cache.write_text(json.dumps(data))
    assert "9.png" in file_index.scan(tmp_path).children["b"].images


def test_a_folder_whose_files_changed_is_listed_again(tmp_path):
    _folder(tmp_path)
    _age(tmp_path)
    file_index.scan(tmp_path)
    Image.new("L", (4, 4)).save(tmp_path / "b" / "new.png")  # moves b's mtime
    (tmp_path / "c").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "c" / "0.png")
    listing = file_index.scan(tmp_path)
    assert "new.png" in listing.children["b"].images and listing.children["c"].images == ["0.png"]


def test_a_folder_changed_just_before_the_scan_is_not_trusted_from_the_cache(tmp_path):
    _folder(tmp_path)
    file_index.scan(tmp_path)  # mtimes are "now": within the racy window
    cache = file_index.cache_file(tmp_path.resolve())
    data = json.loads(cache.read_text())
    data["listing"]["children"]["b"]["images"].append("ghost.png")
    cache.write_text(json.dumps(data))
    assert "ghost.png" not in file_index.scan(tmp_path).children["b"].images


def test_a_cache_naming_files_outside_the_folder_is_ignored(tmp_path):
    _folder(tmp_path)
    _age(tmp_path)
    file_index.scan(tmp_path)
    cache = file_index.cache_file(tmp_path.resolve())
    data = json.loads(cache.read_text())
    data["listing"]["children"]["b"]["images"].append("../../etc/passwd")
    cache.write_text(json.dumps(data))
    assert file_index.scan(tmp_path).children["b"].images == ["0.png", "1.png", "2.png"]
    cache.write_text("{not json")
    assert file_index.scan(tmp_path).children["a"].images == ["0.png", "1.png", "2.png"]


def test_a_slow_file_system_is_listed_in_threads_to_the_same_listing(tmp_path, monkeypatch):
    """Where listing a folder takes long (a parallel file system), the rest are listed in
    threads; here every folder counts as slow, and the listing is the one listed in turn."""
    _folder(tmp_path, classes=["a", *(f"c{i:02d}" for i in range(40))], per_class=2)
    one_by_one = _names(file_index.scan(tmp_path, use_cache=False))
    monkeypatch.setattr(file_index, "SLOW_LISTING_S", -1.0)
    threaded = _names(file_index.scan(tmp_path, use_cache=False))
    assert threaded == one_by_one and len(threaded[2]) == 41


def _names(folder):
    """A listing without its scan times: (folders, images, children)."""
    return folder.folders, folder.images, {name: _names(sub) for name, sub in folder.children.items()}
