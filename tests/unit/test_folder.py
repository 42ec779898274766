"""Image-folder datasets (paper §5's ImageNet pipeline): the transforms against their definitions, the
tree scan and its errors, and the streamed batches (shards, determinism, loader processes, bad files)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from resist.data import BadImages, DatasetError, batch_indices, load_dataset
from resist.data.folder import FileTable, evenly_spaced, images_in
from resist.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, center_crop, decode, eval_size, eval_transform,
                                    random_resized_crop_box, resize_shorter, to_uint8_chw, train_transform)


def noise_image(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def one_line(match, fn, *args, **kw):
    with pytest.raises(DatasetError, match=match) as e:
        fn(*args, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


# ------------------------------------------------------------------------------------------ transforms

def test_random_resized_crop_box_area_ratio_and_position():
    """Every box lies inside the image; its area is 8%-100% of the image's and its aspect ratio within
    3/4-4/3, up to the rounding of w and h to pixels; and the draws cover that range."""
    fractions, ratios = [], []
    for seed in range(400):
        width, height = random.Random(seed).choice([(500, 375), (375, 500), (64, 64), (97, 211)])
        left, top, w, h = random_resized_crop_box(width, height, random.Random(seed))
        assert 0 <= left and left + w <= width and 0 <= top and top + h <= height and w > 0 and h > 0
        # w = round(sqrt(A r)), h = round(sqrt(A / r)): each is off by at most half a pixel.
        lo_area, hi_area = (w - 0.5) * (h - 0.5), (w + 0.5) * (h + 0.5)
        assert hi_area >= 0.08 * width * height and lo_area <= width * height
        assert (w + 0.5) / (h - 0.5) >= 3 / 4 and (w - 0.5) / (h + 0.5) <= 4 / 3
        fractions.append(w * h / (width * height))
        ratios.append(w / h)
    assert min(fractions) < 0.15 and max(fractions) > 0.85
    assert min(ratios) < 0.8 and max(ratios) > 1.25


def test_random_resized_crop_falls_back_to_the_central_box():
    """A 1000x10 image admits no box of ratio <= 4/3 and area >= 8%: the central box of ratio 4/3 and
    full height."""
    assert random_resized_crop_box(1000, 10, random.Random(0)) == ((1000 - 13) // 2, 0, 13, 10)
    assert random_resized_crop_box(10, 1000, random.Random(0)) == (0, (1000 - 13) // 2, 10, 13)


def test_train_transform_is_a_crop_resized_and_sometimes_flipped():
    img = noise_image(40, 30)
    flips = 0
    for seed in range(60):
        out = train_transform(img, 16, random.Random(seed))
        left, top, w, h = random_resized_crop_box(40, 30, random.Random(seed))
        crop = img.crop((left, top, left + w, top + h)).resize((16, 16), Image.Resampling.BILINEAR)
        got = np.asarray(out)
        plain, mirrored = np.asarray(crop), np.asarray(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
        assert out.size == (16, 16)
        assert np.array_equal(got, plain) or np.array_equal(got, mirrored)
        flips += not np.array_equal(got, plain)
    assert 15 < flips < 45
    assert np.array_equal(np.asarray(train_transform(img, 16, random.Random(3))),
                          np.asarray(train_transform(img, 16, random.Random(3))))


def test_eval_transform_resizes_the_shorter_side_then_crops_the_center():
    assert eval_size(224) == 256 and eval_size(56) == 64
    img = noise_image(300, 200, seed=1)
    resized = resize_shorter(img, 73)
    assert resized.size == (109, 73)  # 300 * 73 / 200 = 109.5, truncated
    assert resize_shorter(noise_image(50, 90), 64).size == (64, 115)
    cropped = center_crop(resized, 64)
    assert np.array_equal(np.asarray(cropped), np.asarray(resized)[4:68, 22:86])  # round(4.5) = 4, round(22.5) = 22
    assert np.array_equal(np.asarray(eval_transform(img, 64)), np.asarray(cropped))
    same = noise_image(73, 80)
    assert resize_shorter(same, 73) is same  # nothing to resize


def test_decode_gives_rgb_and_refuses_truncated_and_foreign_files(tmp_path):
    Image.fromarray(np.full((5, 7), 200, np.uint8), mode="L").save(tmp_path / "grey.png")
    img = decode(str(tmp_path / "grey.png"))
    assert img.mode == "RGB" and img.size == (7, 5) and to_uint8_chw(img).shape == (3, 5, 7)
    assert to_uint8_chw(img).dtype == torch.uint8 and int(to_uint8_chw(img)[1, 2, 3]) == 200
    noise_image(64, 64).save(tmp_path / "whole.jpg", quality=90)
    raw = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(raw[:len(raw) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(OSError):
        decode(str(tmp_path / "cut.jpg"))
    with pytest.raises(OSError):
        decode(str(tmp_path / "text.jpg"))


def test_decode_tries_only_image_formats_never_postscript(tmp_path, postscript_spy):
    Image.new("RGB", (8, 8)).save(tmp_path / "ps.jpg", "EPS")
    assert postscript_spy == []
    with pytest.raises(OSError):  # an unrestricted open hands it to the EPS plugin, which declines here
        Image.open(tmp_path / "ps.jpg")
    assert len(postscript_spy) == 1
    postscript_spy.clear()
    with pytest.raises(OSError, match="cannot identify"):
        decode(str(tmp_path / "ps.jpg"))
    assert postscript_spy == []
    for fmt, ext in (("PNG", "png"), ("BMP", "bmp"), ("TIFF", "tif"), ("PPM", "ppm"), ("WEBP", "webp")):
        noise_image(9, 6).save(tmp_path / f"ok.{ext}", fmt)
        assert decode(str(tmp_path / f"ok.{ext}")).size == (9, 6)


# -------------------------------------------------------------------------------------------- the tree

def test_tree_scan_classes_labels_and_ignored_files(image_tree):
    (image_tree / "train" / "cat" / "notes.txt").write_text("not an image")
    (image_tree / "train" / "cat" / ".hidden.jpg").write_bytes(b"")
    (image_tree / "train" / ".cache").mkdir()
    (image_tree / "train" / "LICENSE").write_text("a loose file beside the class folders")
    deep = image_tree / "train" / "dog" / "more"
    deep.mkdir()
    (deep / "x.JPEG").write_bytes((image_tree / "train" / "dog" / "0000.jpg").read_bytes())
    ds = load_dataset("imagefolder", image_tree, crop_size=16)
    assert ds.classes == ("ant", "bee", "cat", "dog") and ds.num_classes == 4
    assert ds.n_train == 4 * 16 + 1 and len(ds.test) == 16
    paths = [ds.train.path(i) for i in range(ds.n_train)]
    assert all(p.startswith(str(image_tree / "train")) for p in paths)
    assert [ds.classes[y] for y in ds.train.labels] == [p.split("/")[-2] if "more" not in p else "dog" for p in paths]
    assert str(deep / "x.JPEG") in paths and not any(p.endswith((".txt", ".hidden.jpg")) for p in paths)
    assert ds.test.labels.tolist() == sorted(ds.test.labels.tolist())
    assert ds.source == f"image folders in {image_tree} (4 classes)"


@pytest.mark.parametrize("links", [
    {"train/cat/loop": ".."},  # back up to train/: every class again, under cat, until the path is too long
    {"train/cat/self": "."},
    {"train/ant/x": "../bee", "train/bee/y": "../ant"},  # a cycle through two links
])
def test_links_that_loop_are_refused_naming_the_link(image_tree, links):
    for link, target in links.items():
        (image_tree / link).symlink_to(target)
    msg = one_line("links to", load_dataset, "imagefolder", image_tree, crop_size=16)
    assert "again and again" in msg and "remove the link" in msg and any(link in msg for link in links)


def test_links_to_folders_elsewhere_are_followed(image_tree, tmp_path):
    elsewhere = tmp_path / "more_cats"
    elsewhere.mkdir()
    (elsewhere / "extra.jpg").write_bytes((image_tree / "train" / "cat" / "0000.jpg").read_bytes())
    (image_tree / "train" / "cat" / "more").symlink_to(elsewhere)
    (image_tree / "train" / "dog" / "same_cats").symlink_to(elsewhere)  # the same folder twice, no cycle
    ds = load_dataset("imagefolder", image_tree, crop_size=16)
    assert ds.n_train == 4 * 16 + 2


def test_file_table_is_flat_arrays():
    table = FileTable("/r", ["a/1.jpg", "bé/2.png"], [0, 1])
    assert len(table) == 2 and table.path(1) == "/r/bé/2.png" and table.labels.dtype == np.int64
    assert isinstance(table.blob, np.ndarray) and table.offsets.tolist() == [0, 7, 16]


def test_images_in_sorts_whatever_the_directory_order(tmp_path):
    for name in ("b.jpg", "a.png", "c.txt", "sub/z.jpg", "sub/y.bmp"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert images_in(tmp_path) == ["a.png", "b.jpg", "sub/y.bmp", "sub/z.jpg"]


def _unlink_all(folder):
    for f in folder.iterdir():
        f.unlink()


@pytest.mark.parametrize("damage, match", [
    (lambda t: t.rename(t.parent / "elsewhere"), "does not exist"),
    (lambda t: (t / "train").rename(t / "training"), r"has no train/ folder; an image-folder dataset is DIR/train/"),
    (lambda t: (t / "val").rename(t / "valid"), "has no val/ folder"),
    (lambda t: _unlink_all(t / "train" / "bee"), r"class folder .*train/bee has no images"),
    (lambda t: _unlink_all(t / "val" / "cat"), r"class folder .*val/cat has no images"),
    (lambda t: (t / "val" / "cat").rename(t / "val" / "cow"), r"val has classes that .*train lacks: 'cow'"),
    (lambda t: [(t / "train" / c).rename(t / c) for c in ("ant", "bee", "cat", "dog")], r"train has no class folders"),
])
def test_tree_errors_name_the_folder(image_tree, damage, match):
    damage(image_tree)
    one_line(match, load_dataset, "imagefolder", image_tree)


def test_extra_test_sets_by_class_name_or_index(image_tree, tree_writer):
    _, index_layout = tree_writer
    by_index = index_layout(image_tree / "val", image_tree.parent / "v2")
    ds = load_dataset("imagefolder", image_tree, extra_test={"named": str(image_tree / "val"), "v2": str(by_index)})
    assert list(ds.extra) == ["named", "v2"]
    assert ds.extra["v2"].labels.tolist() == ds.extra["named"].labels.tolist() == ds.test.labels.tolist()
    (by_index / "7").mkdir()
    (by_index / "7" / "a.jpg").write_bytes((by_index / "0" / "0000.jpg").read_bytes())
    msg = one_line(r"extra test set v2 \(.*v2\) has folders that are neither training class names nor class "
                   r"indices 0..3: '7'", load_dataset, "imagefolder", image_tree, extra_test={"v2": str(by_index)})
    assert "'0'" not in msg
    (by_index / "7").rename(by_index / "cat")  # names and indices mixed: neither rule fits
    one_line("neither training class names", load_dataset, "imagefolder", image_tree, extra_test={"v2": str(by_index)})
    one_line("extra test set gone: folder .* does not exist", load_dataset, "imagefolder", image_tree,
             extra_test={"gone": str(image_tree / "nowhere")})


# ----------------------------------------------------------------------------------------------- streams

def test_training_batches_are_the_shards_of_the_in_memory_path(image_tree):
    """The same (seed, epoch, rank) shards as batch_indices, across an epoch boundary, and a restart at
    any step gives what walking there gives; without augmentation each image is its evaluation crop."""
    ds = load_dataset("imagefolder", image_tree, crop_size=16)
    streams = [ds.train_stream(2, r, 8, seed=5, augment=False) for r in range(2)]
    spe = streams[0].steps_per_epoch
    assert spe == (64 // 2) // 8
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    seen = []
    for step in range(spe + 2):
        for r, s in enumerate(streams):
            x, y = s.batch(step)
            idx = batch_indices(ds.n_train, 2, r, step, 8, 5)
            assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32 and torch.equal(y, torch.from_numpy(ds.train.labels[idx.numpy()]))
            first = to_uint8_chw(eval_transform(decode(ds.train.path(int(idx[0]))), 16)).float() / 255
            torch.testing.assert_close(x[0], (first - mean) / std)
            if step < spe:
                seen += idx.tolist()
    assert len(seen) == len(set(seen)) == spe * 8 * 2  # disjoint shards
    again = ds.train_stream(2, 1, 8, seed=5, augment=False)
    x3, _ = again.batch(3)
    x1, _ = again.batch(1)  # backwards: the loader restarts there
    torch.testing.assert_close(x3, streams[1].batch(3)[0])
    torch.testing.assert_close(x1, streams[1].batch(1)[0])


def test_augmentation_is_a_pure_function_of_seed_rank_and_step(image_tree):
    """Whichever loader process decodes an image, its crop and flip are the same: 2 loader processes
    give the bits of decoding in the training process."""
    ds = load_dataset("imagefolder", image_tree, crop_size=16)
    inline = ds.train_stream(2, 1, 8, seed=3)
    forked = ds.train_stream(2, 1, 8, seed=3, loader_workers=2)
    for step in (0, 1, 2, 5):
        a, ya = inline.batch(step)
        b, yb = forked.batch(step)
        assert torch.equal(a, b) and torch.equal(ya, yb)
    forked.close()
    other = ds.train_stream(2, 1, 8, seed=4).batch(0)[0]
    assert not torch.equal(other, inline.batch(0)[0])
    plain = ds.train_stream(2, 1, 8, seed=3, augment=False).batch(0)[0]
    assert not torch.equal(plain, inline.batch(0)[0])


def test_a_bad_image_stops_the_run_naming_it_or_is_skipped_once(image_tree):
    bad_path = image_tree / "train" / "bee" / "0003.jpg"
    raw = bad_path.read_bytes()
    bad_path.write_bytes(raw[:len(raw) // 3])
    ds = load_dataset("imagefolder", image_tree, crop_size=16)
    where = next(i for i in range(ds.n_train) if ds.train.path(i) == str(bad_path))
    stream = ds.train_stream(1, 0, 8, seed=0)
    step = next(s for s in range(stream.steps_per_epoch) if where in batch_indices(ds.n_train, 1, 0, s, 8, 0).tolist())
    msg = one_line(r"0003.jpg is not a readable image \(OSError: .*\); replace or remove it, or pass --skip-bad-images",
                   stream.batch, step)
    assert str(bad_path) in msg
    bad = BadImages(skip=True)
    skipping = ds.train_stream(1, 0, 8, seed=0, bad=bad)
    sizes = [len(skipping.batch(s)[1]) for s in range(2 * skipping.steps_per_epoch)]
    assert sizes.count(7) == 2 and sizes.count(8) == len(sizes) - 2  # once in each epoch
    assert bad.seen == {"train": {where: str(bad_path)}}
    (image_tree / "val" / "ant" / "0001.jpg").write_text("not a jpeg")
    test_bad = BadImages(skip=True)
    sets = ds.eval_sets(batch_size=5, bad=test_bad)
    assert sum(len(y) for _, y in sets["test"]()) == 15 and list(test_bad.seen["test"].values()) == [
        str(image_tree / "val" / "ant" / "0001.jpg")]


def test_eval_sets_in_order_limited_to_evenly_spaced_images(image_tree):
    ds = load_dataset("imagefolder", image_tree, crop_size=16, extra_test={"again": str(image_tree / "val")})
    sets = ds.eval_sets(batch_size=3)
    assert list(sets) == ["test", "again"]
    ys = torch.cat([y for _, y in sets["test"]()])
    assert torch.equal(ys, torch.from_numpy(ds.test.labels))
    limited = torch.cat([y for _, y in ds.eval_sets(batch_size=3, limit=4)["test"]()])
    assert limited.tolist() == [0, 1, 2, 3]  # one image of each class, not the first class four times
    assert evenly_spaced(10, 3) == [0, 4, 9] and evenly_spaced(5, None) == [0, 1, 2, 3, 4]
    assert evenly_spaced(5, 9) == [0, 1, 2, 3, 4]
