"""VOC parsing, the dataset's resize/flip/normalization, batching, shards, and one-line errors for bad input."""

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import COUNTS, make_voc_like
from resist.data import DatasetError
from resist.data.sharding import batch_indices
from resist.data.voc import (TEST_SPLITS, TRAIN_SPLITS, VOC_CLASSES, DetectionBatchStream, Targets,
                                        VOCDetection, batch_keys, collate, eval_batches, flip_boxes, load_index,
                                        parse_splits, shard_indices)


def devkit(root):
    return root / "VOCdevkit"


# ------------------------------------------------------------------------------------------- parsing

def test_index_reads_the_generated_objects_back(voc_tree):
    records = load_index(voc_tree, TRAIN_SPLITS)
    assert len(records) == COUNTS["2007", "trainval"] + COUNTS["2012", "trainval"]
    assert records[0].image.name == "000000.jpg" and records[-1].image.name == "2012_200011.jpg"
    # Regenerate image 3 of 2007 trainval and compare: 0-based inclusive pixels [x0, x1] are the
    # continuous interval [x0, x1 + 1], i.e. VOC's (xmin - 1, xmax).
    rng = np.random.default_rng([0, 0, 3])
    img, objects = make_voc_like.make_image(rng, list(make_voc_like.CLASSES), (64, 96), None)
    rec = records[3]
    assert (rec.width, rec.height) == img.size
    expected = torch.tensor([[o["box"][0], o["box"][1], o["box"][2] + 1, o["box"][3] + 1] for o in objects],
                            dtype=torch.float32)
    assert torch.equal(rec.boxes, expected)
    assert rec.labels.tolist() == [VOC_CLASSES.index(o["name"]) for o in objects]
    assert rec.difficult.tolist() == [o["difficult"] for o in objects]


def test_test_split_and_difficult_flags_present(voc_tree):
    records = load_index(voc_tree, TEST_SPLITS)
    assert len(records) == COUNTS["2007", "test"]
    assert all(r.image.parent.parent.name == "VOC2007" for r in records)
    every = load_index(voc_tree, TRAIN_SPLITS + TEST_SPLITS)
    flags = torch.cat([r.difficult for r in every])
    assert flags.any() and not flags.all()  # the fixture exercises both kinds


def test_data_dir_may_be_the_devkit_itself(voc_tree):
    assert len(load_index(devkit(voc_tree), TEST_SPLITS)) == COUNTS["2007", "test"]


def test_parse_splits():
    assert parse_splits("2007-trainval+2012-trainval") == TRAIN_SPLITS
    assert parse_splits("2007-test") == TEST_SPLITS
    with pytest.raises(DatasetError, match="YEAR-SPLIT"):
        parse_splits("2007trainval")


# ------------------------------------------------------------------------------------- bad input

def edit_xml(path, fn):
    tree = ET.parse(path)
    fn(tree.getroot())
    tree.write(path)


def set_first_box(**values):
    def fn(root):
        bb = root.find("object/bndbox")
        for k, v in values.items():
            bb.find(k).text = str(v)
    return fn


def one_line_naming(excinfo, path):
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


def year07(root):
    return devkit(root) / "VOC2007"


def test_malformed_xml(voc_copy):
    xml = year07(voc_copy) / "Annotations" / "000001.xml"
    xml.write_text(xml.read_text()[:120])
    with pytest.raises(DatasetError) as e:
        load_index(voc_copy, TRAIN_SPLITS)
    assert "malformed XML" in one_line_naming(e, xml)


def test_annotation_missing_a_field(voc_copy):
    xml = year07(voc_copy) / "Annotations" / "000001.xml"
    edit_xml(xml, lambda r: r.find("object").remove(r.find("object/bndbox")))
    with pytest.raises(DatasetError) as e:
        load_index(voc_copy, TRAIN_SPLITS)
    assert "bndbox/xmin" in one_line_naming(e, xml)


@pytest.mark.parametrize("change, words", [
    (dict(xmax=10_000), "outside"),
    (dict(xmin=0), "outside"),
    (dict(ymax=10_000), "outside"),
])
def test_box_outside_the_image(voc_copy, change, words):
    xml = year07(voc_copy) / "Annotations" / "000002.xml"
    edit_xml(xml, set_first_box(**change))
    with pytest.raises(DatasetError) as e:
        load_index(voc_copy, TRAIN_SPLITS)
    assert words in one_line_naming(e, xml)


@pytest.mark.parametrize("axis", ["x", "y"])
def test_box_with_max_not_above_min(voc_copy, axis):
    xml = year07(voc_copy) / "Annotations" / "000002.xml"
    root = ET.parse(xml).getroot()
    lo = root.find(f"object/bndbox/{axis}min").text
    edit_xml(xml, set_first_box(**{f"{axis}max": lo}))  # x2 == x1
    with pytest.raises(DatasetError) as e:
        load_index(voc_copy, TRAIN_SPLITS)
    assert "empty box" in one_line_naming(e, xml)


def test_unknown_class(voc_copy):
    xml = year07(voc_copy) / "Annotations" / "000004.xml"
    edit_xml(xml, lambda r: setattr(r.find("object/name"), "text", "unicorn"))
    with pytest.raises(DatasetError) as e:
        load_index(voc_copy, TRAIN_SPLITS)
    assert "'unicorn'" in one_line_naming(e, xml)


def test_generated_classes_are_unknown_to_a_narrower_class_list(voc_tree):
    with pytest.raises(DatasetError, match="unknown class"):
        load_index(voc_tree, TRAIN_SPLITS, classes=("aeroplane",))


@pytest.mark.parametrize("folder, ext", [("JPEGImages", "jpg"), ("Annotations", "xml")])
def test_listed_image_missing(voc_copy, folder, ext):
    f = devkit(voc_copy) / "VOC2012" / folder / f"2012_200005.{ext}"
    f.unlink()
    with pytest.raises(DatasetError) as e:
        load_index(voc_copy, TRAIN_SPLITS)
    assert "ImageSets/Main/trainval.txt" in one_line_naming(e, f)


def test_empty_split_file(voc_copy):
    f = year07(voc_copy) / "ImageSets" / "Main" / "test.txt"
    f.write_text("\n  \n")
    with pytest.raises(DatasetError) as e:
        load_index(voc_copy, TEST_SPLITS)
    assert "no images" in one_line_naming(e, f)


def test_missing_split_file(voc_copy):
    f = year07(voc_copy) / "ImageSets" / "Main" / "test.txt"
    f.unlink()
    with pytest.raises(DatasetError) as e:
        load_index(voc_copy, TEST_SPLITS)
    one_line_naming(e, f)


def test_missing_year(voc_tree, tmp_path):
    with pytest.raises(DatasetError) as e:
        load_index(voc_tree, (("2010", "trainval"),))
    assert "VOCdevkit/VOC2010" in one_line_naming(e, devkit(voc_tree) / "VOC2010")
    with pytest.raises(DatasetError) as e:
        load_index(tmp_path, TRAIN_SPLITS)
    one_line_naming(e, tmp_path / "VOC2007")


def test_corrupt_jpeg_named_in_one_line_from_a_loader_worker(voc_copy):
    jpg = year07(voc_copy) / "JPEGImages" / "100002.jpg"
    jpg.write_bytes(b"not a jpeg")
    ds = VOCDetection(voc_copy, TEST_SPLITS, size=32)
    with pytest.raises(DatasetError) as e:
        ds[2]
    one_line_naming(e, jpg)
    with pytest.raises(DatasetError) as e:  # raised in a DataLoader process: still one line
        list(eval_batches(ds, batch_size=4, num_workers=1))
    msg = one_line_naming(e, jpg)
    assert "Traceback" not in msg


def test_postscript_named_jpg_never_reaches_the_eps_plugin(voc_copy, postscript_spy):
    from PIL import Image

    jpg = year07(voc_copy) / "JPEGImages" / "100002.jpg"
    Image.new("RGB", (8, 8)).save(jpg, "EPS")
    ds = VOCDetection(voc_copy, TEST_SPLITS, size=32)
    with pytest.raises(DatasetError, match="cannot decode image"):
        ds[2]
    assert postscript_spy == []


def test_image_size_disagreeing_with_its_annotation(voc_copy):
    jpg = year07(voc_copy) / "JPEGImages" / "100001.jpg"
    Image.new("RGB", (7, 9)).save(jpg)
    with pytest.raises(DatasetError) as e:
        VOCDetection(voc_copy, TEST_SPLITS, size=32)[1]
    assert "7x9" in one_line_naming(e, jpg)


# ------------------------------------------------------------------------------- resize, flip, batch

def single_image_tree(root, width=80, height=40):
    """One black image with a white rectangle at 0-based pixels x 10..29, y 5..14 (VOC: 11, 6, 30, 15)."""
    base = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (base / sub).mkdir(parents=True)
    a = np.zeros((height, width, 3), np.uint8)
    a[5:15, 10:30] = 255
    Image.fromarray(a).save(base / "JPEGImages" / "im.jpg", quality=100)
    obj = {"name": "car", "box": (10, 5, 29, 14), "difficult": False}
    (base / "Annotations" / "im.xml").write_bytes(make_voc_like.annotation_xml("2007", "im", width, height, [obj]))
    (base / "ImageSets" / "Main" / "test.txt").write_text("im\n")
    return root


def test_resize_scales_boxes_with_the_image(tmp_path):
    ds = VOCDetection(single_image_tree(tmp_path), TEST_SPLITS, size=40, mean=(0, 0, 0), std=(1, 1, 1))
    x, t = ds[0]
    assert x.shape == (3, 40, 40) and x.dtype == torch.float32
    assert torch.allclose(t["boxes"], torch.tensor([[10 / 80, 5 / 40, 30 / 80, 15 / 40]]))
    assert t["labels"].tolist() == [VOC_CLASSES.index("car")]
    # The box in pixels of the 40 x 40 input is x 5..15, y 5..15: white inside, black well outside.
    gray = x.mean(0)
    assert gray[6:14, 6:14].min() > 0.9
    assert gray[:, 18:].max() < 0.1 and gray[18:, :].max() < 0.1


def test_flip_mirrors_image_and_boxes(tmp_path):
    ds = VOCDetection(single_image_tree(tmp_path), TEST_SPLITS, size=40, mean=(0, 0, 0), std=(1, 1, 1))
    x, t = ds[0]
    xf, tf = ds[(0, True)]
    assert torch.equal(xf, x.flip(-1))
    assert torch.allclose(tf["boxes"], torch.tensor([[1 - 30 / 80, 5 / 40, 1 - 10 / 80, 15 / 40]]))
    assert torch.equal(flip_boxes(flip_boxes(t["boxes"])), t["boxes"])
    assert xf.mean(0)[6:14, 26:34].min() > 0.9  # the rectangle now sits at x 25..35


def test_normalization(tmp_path):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    ds = VOCDetection(single_image_tree(tmp_path), TEST_SPLITS, size=40, mean=mean, std=std)
    raw = VOCDetection(single_image_tree(tmp_path / "b"), TEST_SPLITS, size=40, mean=(0, 0, 0), std=(1, 1, 1))
    expected = (raw[0][0] - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(ds[0][0], expected, atol=1e-6)


def test_collate_pads_variable_box_counts(voc_tree):
    ds = VOCDetection(voc_tree, TRAIN_SPLITS, size=48)
    items = [ds[i] for i in range(6)]
    x, t = collate(items)
    counts = [len(it[1]["labels"]) for it in items]
    assert x.shape == (6, 3, 48, 48) and len(set(counts)) > 1  # the fixture has different counts
    assert t.boxes.shape == (6, max(counts), 4) and t.labels.shape == (6, max(counts))
    for k, (_, target) in enumerate(items):
        n = counts[k]
        assert torch.equal(t.boxes[k, :n], target["boxes"]) and torch.equal(t.labels[k, :n], target["labels"])
        assert torch.equal(t.difficult[k, :n], target["difficult"])
        assert (t.labels[k, n:] == -1).all() and not t.difficult[k, n:].any() and (t.boxes[k, n:] == 0).all()
    assert t.valid.sum().item() == sum(counts)
    assert t.index.tolist() == list(range(6))
    moved = t.to("cpu")
    assert isinstance(moved, Targets) and torch.equal(moved.labels, t.labels)


# --------------------------------------------------------------------------------- shards and streams

def test_shards_are_disjoint_pure_and_match_the_batches():
    n, world, bs, seed = 103, 3, 4, 7
    for epoch in (0, 1):
        shards = [shard_indices(n, world, r, epoch, seed) for r in range(world)]
        flat = torch.cat(shards)
        assert len(flat) == world * (n // world) and len(set(flat.tolist())) == len(flat)
        assert torch.equal(shards[1], shard_indices(n, world, 1, epoch, seed))
        spe = (n // world) // bs
        for r in range(world):  # walking a shard in batches gives the classification batches exactly
            walked = torch.cat([batch_indices(n, world, r, epoch * spe + k, bs, seed) for k in range(spe)])
            assert torch.equal(walked, shards[r][:spe * bs])
            keys = [batch_keys(n, world, r, epoch * spe + k, bs, seed) for k in range(spe)]
            assert [i for b in keys for i, _ in b] == walked.tolist()
    assert not torch.equal(shard_indices(n, world, 0, 0, seed), shard_indices(n, world, 0, 1, seed))


def test_flips_are_a_pure_function_of_seed_rank_and_step():
    keys = [batch_keys(1000, 2, 0, s, 50, 3, flip=True) for s in range(4)]
    assert keys == [batch_keys(1000, 2, 0, s, 50, 3, flip=True) for s in range(4)]
    flips = [f for b in keys for _, f in b]
    assert 60 < sum(flips) < 140  # about half of 200
    assert not any(f for _, f in batch_keys(1000, 2, 0, 0, 50, 3, flip=False))


def test_stream_gives_the_keyed_batches_through_loader_workers(voc_tree):
    ds = VOCDetection(voc_tree, TRAIN_SPLITS, size=32)
    stream = DetectionBatchStream(ds, world_size=2, rank=1, batch_size=3, seed=5, total_steps=6, flip=True,
                                  num_workers=1)
    assert stream.steps_per_epoch == 4
    for step in (0, 1, 2, 5, 3):  # in order, then a jump ahead and one back (a resume)
        x, t = stream.batch(step)
        ex, et = collate([ds[k] for k in batch_keys(len(ds), 2, 1, step, 3, 5, flip=True)])
        assert torch.equal(x, ex) and torch.equal(t.boxes, et.boxes) and torch.equal(t.index, et.index)
    with pytest.raises(ValueError):
        stream.batch(6)


def test_eval_batches_cover_the_test_set_in_order(voc_tree):
    ds = VOCDetection(voc_tree, TEST_SPLITS, size=32)
    batches = list(eval_batches(ds, batch_size=3, num_workers=0))
    assert [len(t) for _, t in batches] == [3, 3, 2]
    assert torch.cat([t.index for _, t in batches]).tolist() == list(range(len(ds)))
