"""Decoding and cropping one image: torchvision's crops, Pillow's draft mode, every mode."""

import numpy as np
import pytest
from PIL import Image

from dlscale.data import images


def _photo(path, size=(500, 375), mode="RGB"):
    """A smooth gradient (JPEG keeps it), saved at ``path``."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (w + h)], -1).astype(np.uint8)
    Image.fromarray(rgb).convert(mode).save(path, quality=95)
    return path


def test_random_crops_stay_inside_the_image_within_the_scale_and_aspect_bounds():
    rng = np.random.default_rng(0)
    for width, height in [(500, 375), (64, 64), (3, 3), (1000, 10), (10, 1000)]:
        for _ in range(200):
            left, top, right, bottom = images.random_crop_box(rng, width, height)
            assert 0 <= left < right <= width and 0 <= top < bottom <= height
            if width == 500:  # an ordinary photo: the first tries succeed
                area = (right - left) * (bottom - top) / (width * height)
                aspect = (right - left) / (bottom - top)
                assert 0.07 <= area <= 1.0 and 0.7 <= aspect <= 1.4


def test_the_same_seed_gives_the_same_crop_and_another_seed_another():
    box = lambda seed: images.random_crop_box(np.random.default_rng((0, 1, seed)), 500, 375)
    assert box(7) == box(7) and box(7) != box(8)


def test_center_crop_is_the_middle_square_of_224_256_of_the_shorter_side():
    left, top, right, bottom = images.center_crop_box(500, 375)
    assert right - left == bottom - top == pytest.approx(375 * 224 / 256)
    assert (left + right) / 2 == 250 and (top + bottom) / 2 == 187.5


def test_draft_mode_decodes_a_shrunk_crop_like_a_full_decode(tmp_path):
    """A JPEG crop that will be shrunk 9x is decoded at 1/8 scale inside libjpeg, and its pixels
    agree with decoding the whole image, then cropping and resizing (within JPEG rounding)."""
    path = _photo(tmp_path / "big.jpg", (2000, 1500))
    box = (0, 0, 2000, 1500)
    with Image.open(path) as image:
        fast = images.decode(image, "RGB", (224, 168), box)
        assert image.size == (250, 188)  # drafted: libjpeg scaled by 1/8, still larger than the output
    with Image.open(path) as image:
        image.load()  # a loaded image cannot be drafted: the full decode
        full = images.decode(image, "RGB", (224, 168), box)
    assert fast.shape == full.shape == (3, 168, 224) and fast.dtype == np.uint8
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 3


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "CMYK", "I;16", "1"])
def test_every_mode_decodes_to_the_asked_channels(tmp_path, mode):
    image = Image.new("RGB", (40, 30), (200, 100, 50)).convert(mode)
    suffix = ".jpg" if mode == "CMYK" else ".png"
    image.save(tmp_path / f"x{suffix}")
    for want, channels in (("RGB", 3), ("L", 1)):
        with Image.open(tmp_path / f"x{suffix}") as opened:
            out = images.decode(opened, want, (16, 12), images.center_crop_box(40, 30))
        assert out.shape == (channels, 12, 16) and out.dtype == np.uint8 and out.flags.writeable


def test_flip_mirrors_left_and_right(tmp_path):
    pixels = np.zeros((4, 6), np.uint8)
    pixels[:, 0] = 255
    Image.fromarray(pixels).save(tmp_path / "edge.png")
    with Image.open(tmp_path / "edge.png") as image:
        flipped = images.decode(image, "L", (6, 4), flip=True)
    assert flipped[0, :, -1].tolist() == [255] * 4 and flipped[0, :, 0].tolist() == [0] * 4


@pytest.mark.parametrize("crop", ["center", "random"])
def test_simplejpeg_and_pillow_decode_the_same_crop_alike(tmp_path, crop):
    """JPEGs go through simplejpeg where it imports; its pixels match Pillow's for the same
    crop and flip (both are libjpeg-turbo; within rounding of the scaled DCT)."""
    from dlscale.data.imagefolder import decode_data

    assert images.simplejpeg is not None  # a dependency: the fast path is what training uses
    data = _photo(tmp_path / "p.jpg", (1200, 900)).read_bytes()
    assert images.fast_jpeg(data) and not images.fast_jpeg(data, "pillow")
    rng = (lambda: np.random.default_rng(3)) if crop == "random" else (lambda: None)
    fast = decode_data(data, "p.jpg", "RGB", (96, 96), 0.875, rng(), "auto")
    slow = decode_data(data, "p.jpg", "RGB", (96, 96), 0.875, rng(), "pillow")
    assert fast.shape == slow.shape == (3, 96, 96) and np.abs(fast.astype(int) - slow.astype(int)).mean() < 2
    grey = decode_data(data, "p.jpg", "L", (32, 24), None)
    assert grey.shape == (1, 24, 32)


def test_a_cmyk_or_broken_jpeg_goes_to_pillow_which_names_the_file(tmp_path):
    from dlscale.data.imagefolder import decode_data
    from dlscale.errors import UserError

    Image.new("CMYK", (40, 30), (0, 50, 100, 0)).save(tmp_path / "c.jpg")
    data = (tmp_path / "c.jpg").read_bytes()
    assert not images.fast_jpeg(data) and decode_data(data, "c.jpg", "RGB", (8, 8), None).shape == (3, 8, 8)
    with pytest.raises(UserError, match=r"cannot read image cut\.jpg \("):
        decode_data(_photo(tmp_path / "x.jpg").read_bytes()[:500], "cut.jpg", "RGB", (8, 8), None)
