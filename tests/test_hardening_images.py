"""PNG of every bit depth and colour type read correctly (16 bits scaled by 65535, never clipped), other modes refused
in one line. The files are written here with PIL, or byte by byte (zlib + the PNG chunk layout) where PIL cannot
write the mode (16-bit RGB, 2- and 4-bit gray)."""

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from fsg.data.images import ImageFile
from fsg.errors import UserError


def write_png(path, pixels: np.ndarray, depth: int, color_type: int) -> None:
    """A PNG from scratch: IHDR, one zlib IDAT of filter-0 rows (big-endian samples, packed below 8 bits), IEND."""
    h, w = pixels.shape[:2]
    if depth == 16:
        rows = [pixels[i].astype(">u2").tobytes() for i in range(h)]
    elif depth == 8:
        rows = [pixels[i].astype(np.uint8).tobytes() for i in range(h)]
    else:
        rows = [np.packbits(np.unpackbits(pixels[i].astype(np.uint8)[:, None], axis=1)[:, -depth:].ravel()).tobytes()
                for i in range(h)]

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    raw = b"".join(b"\x00" + r for r in rows)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def image(path):
    return ImageFile(path.parent, path.name)


def test_16_bit_gray_is_scaled_by_65535_not_clipped(tmp_path):
    values = np.array([[0, 1000, 32768, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")                                   # PIL's mode I;16
    x = image(tmp_path / "g16.png").read_unit(1)
    expected = torch.tensor([[[-1.0, 1000 / 32767.5 - 1, 32768 / 32767.5 - 1, 1.0]]])   # v / 65535 * 2 - 1
    assert x.dtype == torch.float32 and torch.allclose(x, expected, atol=1e-7)
    # the nearest 8-bit value: round(v * 255 / 65535) = round(v / 257): 1000 -> 4 (PIL's clipping gave 255)
    assert image(tmp_path / "g16.png").read(1).tolist() == [[[0, 4, 128, 255]]]


def test_16_bit_rgb_and_rgba_keep_their_low_bytes(tmp_path):
    rgb = np.array([[[65535, 0, 257], [1, 2, 65534]]], np.uint16)                        # (1, 2, 3)
    write_png(tmp_path / "rgb16.png", rgb, 16, 2)
    x = image(tmp_path / "rgb16.png").read_unit(3)                                        # (3, 1, 2)
    assert torch.allclose(x, torch.from_numpy(rgb.astype(np.float64) / 32767.5 - 1).permute(2, 0, 1).float())
    assert image(tmp_path / "rgb16.png").read(3)[:, 0, 0].tolist() == [255, 0, 1]        # 257 / 257 = 1
    rgba = np.concatenate([rgb, np.full((1, 2, 1), 7, np.uint16)], -1)                    # alpha dropped
    write_png(tmp_path / "rgba16.png", rgba, 16, 6)
    assert torch.equal(image(tmp_path / "rgba16.png").read_unit(3), x)


def test_16_bit_rgb_to_gray_by_the_luma_weights(tmp_path):
    write_png(tmp_path / "red.png", np.array([[[65535, 0, 0]]], np.uint16), 16, 2)
    gray = image(tmp_path / "red.png").read_unit(1)
    assert gray.shape == (1, 1, 1) and gray.item() == pytest.approx(19595 / 32767.5 - 1)  # round(0.299 * 65535)
    write_png(tmp_path / "ga16.png", np.array([[[40000, 3]]], np.uint16), 16, 4)         # gray + alpha
    assert image(tmp_path / "ga16.png").read_unit(3)[:, 0, 0].tolist() == pytest.approx([40000 / 32767.5 - 1] * 3)


@pytest.mark.parametrize("mode,pixel,gray", [
    ("1", 1, 255), ("L", 77, 77), ("LA", (77, 10), 77), ("RGB", (255, 0, 0), 76), ("RGBA", (0, 0, 255, 0), 29),
])
def test_8_bit_and_1_bit_modes(tmp_path, mode, pixel, gray):
    """PIL's luma of pure red is 76 (0.299 * 255 = 76.2) and of blue 29 (0.114 * 255 = 29.1); alpha is dropped."""
    Image.new(mode, (3, 2), pixel).save(tmp_path / "a.png")
    f = image(tmp_path / "a.png")
    assert f.read(1).unique().tolist() == [gray]
    assert torch.allclose(f.read_unit(1), torch.full((1, 2, 3), gray / 127.5 - 1))


def test_palette_and_packed_gray_depths(tmp_path):
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.save(tmp_path / "p.png")
    assert image(tmp_path / "p.png").read(3)[:, 0, 1].tolist() == [10, 200, 30]
    for depth in (2, 4):                      # levels 0..2^d - 1 spread over 0..255: 255 * v / (2^d - 1)
        top = 2**depth - 1
        write_png(tmp_path / f"g{depth}.png", np.array([[0, 1, top, 0]], np.uint8), depth, 0)
        assert image(tmp_path / f"g{depth}.png").read(1).tolist() == [[[0, 255 // top, 255, 0]]]


def test_modes_without_a_pixel_meaning_are_refused_in_one_line(tmp_path):
    Image.new("F", (2, 2), 0.5).save(tmp_path / "float.tiff", format="TIFF")
    (tmp_path / "float.png").write_bytes((tmp_path / "float.tiff").read_bytes())      # PIL goes by content
    with pytest.raises(UserError, match=r"float\.png: F images are not supported") as e:
        image(tmp_path / "float.png").read(1)
    assert "\n" not in str(e.value)
    (tmp_path / "cut.png").write_bytes((tmp_path / "float.tiff").read_bytes()[:40])
    with pytest.raises(UserError, match="cannot decode"):
        image(tmp_path / "cut.png").read(1)


def test_a_folder_data_set_trains_on_the_16_bits(tmp_path):
    from fsg.data import build_dataset
    from fsg.data.config import DataConfig

    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(tmp_path / "imgs" / "a.png")
    data = build_dataset(DataConfig(source="folder", path=str(tmp_path / "imgs"), channels=1), "train")
    assert torch.allclose(data[0]["x"], torch.full((1, 4, 4), 1000 / 32767.5 - 1))
