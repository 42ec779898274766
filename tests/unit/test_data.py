"""Tests for resist.data: loading (on fake CIFAR files in the real formats), augmentation and sharding."""
import hashlib
import io
import os
import pickle
import sys
import tarfile
import urllib.error

import numpy as np
import pytest
import torch

from resist.data import (DATASETS, BatchStream, Dataset, DatasetError, ImageArrays, augment, batch_generator,
                         batch_indices, eval_batches, load_dataset, steps_per_epoch, to_float)
from resist.data import datasets as ds_mod

PER_BATCH = 20


# ------------------------------------------------------------------------------- fake CIFAR on disk

def fake_cifar(num_classes=10, seed=0):
    """Train (5 x 20) and test (20) images as HWC uint8 with int labels, like the real data."""
    rng = np.random.default_rng(seed)
    return dict(train_x=rng.integers(0, 256, (5 * PER_BATCH, 32, 32, 3), dtype=np.uint8),
                train_y=rng.integers(0, num_classes, 5 * PER_BATCH).astype(np.uint8),
                test_x=rng.integers(0, 256, (PER_BATCH, 32, 32, 3), dtype=np.uint8),
                test_y=rng.integers(0, num_classes, PER_BATCH).astype(np.uint8))


def write_numpy(d, a):
    d.mkdir(parents=True, exist_ok=True)
    for k in range(5):
        np.save(d / f"train_x_{k:02d}.npy", a["train_x"][k * PER_BATCH:(k + 1) * PER_BATCH])
    for f in ("train_y", "test_x", "test_y"):
        np.save(d / f"{f}.npy", a[f])
    return d


def _batch(x, y, label_key):
    flat = x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # official rows are CHW-flattened
    return {b"batch_label": b"fake", label_key: [int(v) for v in y], b"data": flat,
            b"filenames": [b"img_%d.png" % i for i in range(len(x))]}


def write_batches(d, a, name="cifar10", protocol=2):
    """The official python-version folder; protocol 2 like the (Python 2) originals."""
    if name == "cifar10":
        folder = d / "cifar-10-batches-py"
        files = {f"data_batch_{k + 1}": (slice(k * PER_BATCH, (k + 1) * PER_BATCH), "train") for k in range(5)}
        files["test_batch"] = (slice(None), "test")
        key = b"labels"
    else:
        folder = d / "cifar-100-python"
        files = {"train": (slice(None), "train"), "test": (slice(None), "test")}
        key = b"fine_labels"
    folder.mkdir(parents=True)
    for fname, (sl, split) in files.items():
        with open(folder / fname, "wb") as f:
            pickle.dump(_batch(a[f"{split}_x"][sl], a[f"{split}_y"][sl], key), f, protocol=protocol)
    return folder


def write_tarball(path, a, name="cifar10"):
    src = path.parent / f"src-{path.name}"
    folder = write_batches(src, a, name)
    with tarfile.open(path, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return hashlib.md5(path.read_bytes()).hexdigest()


def assert_equal(ds, a):
    for split in ("train", "test"):
        arr = getattr(ds, split)
        assert arr.x.dtype == torch.uint8 and arr.y.dtype == torch.int64
        np.testing.assert_array_equal(arr.x.numpy(), a[f"{split}_x"])
        np.testing.assert_array_equal(arr.y.numpy(), a[f"{split}_y"])


def raises_one_line(match, fn, *args, **kw):
    with pytest.raises(DatasetError, match=match) as e:
        fn(*args, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


# ------------------------------------------------------------------------------------------ loading

def test_three_formats_load_equal(tmp_path, monkeypatch):
    a = fake_cifar()
    ds_np = load_dataset("cifar10", write_numpy(tmp_path / "np" / "cifar10", a).parent)
    ds_np_direct = load_dataset("cifar10", tmp_path / "np" / "cifar10")
    write_batches(tmp_path / "py", a)
    ds_py = load_dataset("cifar10", tmp_path / "py")
    (tmp_path / "tar").mkdir()
    monkeypatch.setattr(ds_mod, "CIFAR10_MD5", write_tarball(tmp_path / "tar" / "cifar-10-python.tar.gz", a))
    ds_tar = load_dataset("cifar10", tmp_path / "tar")
    assert (tmp_path / "tar" / "cifar-10-batches-py" / "data_batch_5").is_file()
    for ds in (ds_np, ds_np_direct, ds_py, ds_tar):
        assert isinstance(ds, Dataset) and ds.name == "cifar10" and ds.num_classes == 10
        assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2470, 0.2435, 0.2616)
        assert "\n" not in ds.source
        assert_equal(ds, a)
    assert "numpy" in ds_np.source and "cifar-10-batches-py" in ds_py.source and "tar.gz" in ds_tar.source


def test_cifar100_folder_and_tarball(tmp_path, monkeypatch):
    a = fake_cifar(num_classes=100, seed=1)
    a["train_y"][0] = 99
    write_batches(tmp_path / "py", a, "cifar100", protocol=pickle.DEFAULT_PROTOCOL)
    ds = load_dataset("cifar100", tmp_path / "py")
    assert ds.num_classes == 100 and ds.mean == (0.5071, 0.4865, 0.4409)
    assert_equal(ds, a)
    (tmp_path / "tar").mkdir()
    md5 = write_tarball(tmp_path / "tar" / "cifar-100-python.tar.gz", a, "cifar100")
    monkeypatch.setattr(ds_mod, "CIFAR100_MD5", md5)
    assert_equal(load_dataset("cifar100", tmp_path / "tar"), a)


def test_numpy_layout_preferred_and_other_cifar_folder_not_confused(tmp_path):
    a, b = fake_cifar(seed=0), fake_cifar(seed=1)
    write_numpy(tmp_path, a)
    write_batches(tmp_path, b)
    assert_equal(load_dataset("cifar10", tmp_path), a)
    write_numpy(tmp_path / "x" / "cifar10", a)
    raises_one_line("cifar100 not found", load_dataset, "cifar100", tmp_path / "x" / "cifar10")


def test_hwc_conversion_known_pixel(tmp_path):
    a = fake_cifar()
    write_batches(tmp_path, a)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch = pickle.loads(path.read_bytes(), encoding="bytes")
    for c, v in enumerate((200, 100, 50)):  # image 3, row 2, column 5, channel c
        batch[b"data"][3, c * 1024 + 2 * 32 + 5] = v
    path.write_bytes(pickle.dumps(batch, protocol=2))
    ds = load_dataset("cifar10", tmp_path)
    assert ds.test.x[3, 2, 5].tolist() == [200, 100, 50]


def test_nothing_found(tmp_path):
    msg = raises_one_line("not found", load_dataset, "cifar10", tmp_path)
    assert str(tmp_path) in msg and "--download" in msg and "train_x_00.npy" in msg and "cifar-10-batches-py" in msg


def test_unknown_dataset_and_option():
    raises_one_line("unknown dataset", load_dataset, "mnist")
    raises_one_line("does not take", load_dataset, "synthetic", colour=True)
    assert DATASETS == ("cifar10", "cifar100", "digits", "synthetic", "imagefolder", "pystdlib", "text", "voc")


@pytest.mark.parametrize("damage, match", [
    (lambda d: (d / "train_x_03.npy").unlink(), "missing file .*train_x_03"),
    (lambda d: (d / "test_y.npy").unlink(), "missing file .*test_y"),
    (lambda d: (d / "train_x_01.npy").write_bytes((d / "train_x_01.npy").read_bytes()[:500]), "not a valid .npy"),
    (lambda d: (d / "test_x.npy").write_bytes(b"GARBAGE" * 100), "not a valid .npy"),
    (lambda d: (d / "test_y.npy").write_bytes(b""), "not a valid .npy"),
    (lambda d: np.save(d / "test_y.npy", np.array([1, 2], dtype=object)), "not a valid .npy"),
    (lambda d: np.save(d / "train_y.npy", np.full(5 * PER_BATCH, 10)), r"labels must be in \[0, 10\)"),
    (lambda d: np.save(d / "test_y.npy", np.full(PER_BATCH, -1)), r"labels must be in \[0, 10\)"),
    (lambda d: np.save(d / "test_y.npy", np.zeros(PER_BATCH, dtype=np.float32)), "integer"),
    (lambda d: np.save(d / "test_y.npy", np.zeros(PER_BATCH + 1, dtype=np.uint8)), "20 images but 21 labels"),
    (lambda d: np.save(d / "test_x.npy", np.zeros((PER_BATCH, 28, 28, 3), np.uint8)), r"\(N, 32, 32, 3\) uint8"),
    (lambda d: np.save(d / "test_x.npy", np.zeros((PER_BATCH, 3, 32, 32), np.uint8)), r"\(N, 32, 32, 3\) uint8"),
    (lambda d: np.save(d / "test_x.npy", np.zeros((PER_BATCH, 32, 32, 3), np.float32)), r"\(N, 32, 32, 3\) uint8"),
])
def test_numpy_layout_errors(tmp_path, damage, match):
    write_numpy(tmp_path, fake_cifar())
    damage(tmp_path)
    raises_one_line(match, load_dataset, "cifar10", tmp_path)


def _rewrite(path, fn):
    path.write_bytes(fn(path.read_bytes()))


@pytest.mark.parametrize("damage, match", [
    (lambda f: (f / "data_batch_4").unlink(), "missing file .*data_batch_4"),
    (lambda f: _rewrite(f / "data_batch_2", lambda b: b[:len(b) // 2]), "truncated or corrupt"),
    (lambda f: _rewrite(f / "test_batch", lambda b: b"not a pickle at all"), "truncated or corrupt"),
    (lambda f: (f / "test_batch").write_bytes(b""), "truncated or corrupt"),
    (lambda f: (f / "test_batch").write_bytes(pickle.dumps([1, 2, 3], protocol=2)), "not a CIFAR batch"),
    (lambda f: (f / "test_batch").write_bytes(pickle.dumps(
        {b"data": np.zeros((4, 1000), np.uint8), b"labels": [0] * 4}, protocol=2)), r"\(N, 3072\) uint8"),
    (lambda f: (f / "test_batch").write_bytes(pickle.dumps(
        {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 12]}, protocol=2)), r"in \[0, 10\)"),
    (lambda f: (f / "test_batch").write_bytes(pickle.dumps(
        {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2]}, protocol=2)), "4 images but 3 labels"),
])
def test_pickle_errors(tmp_path, damage, match):
    damage(write_batches(tmp_path, fake_cifar()))
    raises_one_line(match, load_dataset, "cifar10", tmp_path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_malicious_pickle_rejected(tmp_path):
    folder = write_batches(tmp_path, fake_cifar())
    marker = tmp_path / "pwned"
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(str(marker)), b"labels": []}))
    raises_one_line("refusing to unpickle", load_dataset, "cifar10", tmp_path)
    assert not marker.exists()


def test_corrupt_and_unsafe_tarballs(tmp_path, monkeypatch):
    tarball = tmp_path / "cifar-10-python.tar.gz"
    tarball.write_bytes(b"\x1f\x8b not really gzip")
    monkeypatch.setattr(ds_mod, "CIFAR10_MD5", hashlib.md5(tarball.read_bytes()).hexdigest())
    raises_one_line("not a valid .tar.gz", load_dataset, "cifar10", tmp_path)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    tarball.write_bytes(buf.getvalue())
    monkeypatch.setattr(ds_mod, "CIFAR10_MD5", hashlib.md5(buf.getvalue()).hexdigest())
    raises_one_line("unsafe member", load_dataset, "cifar10", tmp_path)
    assert not (tmp_path.parent / "escape.txt").exists()

    monkeypatch.setattr(ds_mod, "CIFAR10_MD5", "0" * 32)
    raises_one_line("md5 .* expected 0{32}", load_dataset, "cifar10", tmp_path)
    assert tarball.exists()  # a user's own file is never deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-python.tar.gz"]


# ----------------------------------------------------------------------------------------- download

def test_download_success(tmp_path, monkeypatch):
    a = fake_cifar()
    served = tmp_path / "server" / "cifar-10-python.tar.gz"
    served.parent.mkdir()
    monkeypatch.setattr(ds_mod, "CIFAR10_MD5", write_tarball(served, a))
    monkeypatch.setattr(ds_mod, "CIFAR10_URL", served.as_uri())
    data_dir = tmp_path / "data"
    raises_one_line("--download", load_dataset, "cifar10", data_dir)
    ds = load_dataset("cifar10", data_dir, download=True)
    assert_equal(ds, a)
    assert sorted(p.name for p in data_dir.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    served.unlink()
    assert_equal(load_dataset("cifar10", data_dir, download=True), a)  # already there: no second download


def test_download_with_patched_urlopen(tmp_path, monkeypatch):
    a = fake_cifar(num_classes=100)
    served = tmp_path / "served.tar.gz"
    monkeypatch.setattr(ds_mod, "CIFAR100_MD5", write_tarball(served, a, "cifar100"))
    urls = []

    def fake_urlopen(url, timeout=None):
        urls.append(url)
        return open(served, "rb")

    monkeypatch.setattr(ds_mod.urllib.request, "urlopen", fake_urlopen)
    assert_equal(load_dataset("cifar100", tmp_path / "data", download=True), a)
    assert urls == [ds_mod.CIFAR100_URL] == ["https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"]


def test_download_checksum_mismatch_removes_file(tmp_path, monkeypatch):
    served = tmp_path / "served.tar.gz"
    write_tarball(served, fake_cifar())
    monkeypatch.setattr(ds_mod, "CIFAR10_URL", served.as_uri())
    monkeypatch.setattr(ds_mod, "CIFAR10_MD5", "f" * 32)
    data_dir = tmp_path / "data"
    raises_one_line("md5 .* expected f{32}; it was removed", load_dataset, "cifar10", data_dir, download=True)
    assert list(data_dir.iterdir()) == []


def test_download_no_network(tmp_path, monkeypatch):
    def no_network(url, timeout=None):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution\nsecond line"))

    monkeypatch.setattr(ds_mod.urllib.request, "urlopen", no_network)
    msg = raises_one_line("could not download .*no network", load_dataset, "cifar10", tmp_path, download=True)
    assert str(tmp_path) in msg and "--data-dir" in msg
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(ds_mod, "CIFAR10_URL", (tmp_path / "missing.tar.gz").as_uri())
    raises_one_line("could not download", load_dataset, "cifar10", tmp_path, download=True)


# ------------------------------------------------------------------------------ synthetic and digits

def test_image_arrays_validation():
    x, y = torch.zeros(4, 8, 8, 3, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64)
    assert len(ImageArrays(x, y)) == 4
    raises_one_line("uint8", ImageArrays, x.float(), y)
    raises_one_line(r"\(N, H, W, 3\)", ImageArrays, x[..., :1], y)
    raises_one_line("int64", ImageArrays, x, y.int())
    raises_one_line("4 images but 3 labels", ImageArrays, x, y[:3])


def test_synthetic_shapes_and_determinism():
    ds = load_dataset("synthetic")
    assert ds.train.x.shape == (512, 16, 16, 3) and ds.test.x.shape == (256, 16, 16, 3)
    assert ds.num_classes == 4 and torch.bincount(ds.train.y).tolist() == [128] * 4
    assert ds.source == "synthetic (seed 0)" and all(0 < m < 1 for m in ds.mean) and all(0 < s < 1 for s in ds.std)
    again = load_dataset("synthetic")
    assert torch.equal(ds.train.x, again.train.x) and torch.equal(ds.test.y, again.test.y)
    other = load_dataset("synthetic", n_train=40, n_test=10, num_classes=3, size=8, seed=1)
    assert other.train.x.shape == (40, 8, 8, 3) and other.num_classes == 3 and other.test.y.max() < 3


def test_synthetic_is_learnable():
    torch.manual_seed(0)
    ds = load_dataset("synthetic")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(128, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    stream = BatchStream(ds.train, ds.mean, ds.std, world_size=1, rank=0, batch_size=32, seed=0)
    for step in range(40):
        x, y = stream.batch(step)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in eval_batches(ds.test, ds.mean, ds.std, 100))
    assert correct / len(ds.test) > 0.6


def test_digits():
    ds = load_dataset("digits")
    assert ds.train.x.shape == (1437, 16, 16, 3) and ds.test.x.shape == (360, 16, 16, 3)
    assert ds.train.x.dtype == torch.uint8 and ds.num_classes == 10 and ds.source == "scikit-learn digits"
    assert ds.train.x.max() == 255 and torch.equal(ds.train.x[..., 0], ds.train.x[..., 2])
    assert torch.equal(ds.train.x[:, ::2, ::2], ds.train.x[:, 1::2, 1::2])  # nearest 2x upsampling
    assert set(torch.bincount(ds.test.y).tolist()) <= {35, 36, 37}  # stratified
    assert torch.equal(load_dataset("digits").test.x, ds.test.x)


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    raises_one_line("pip install scikit-learn", load_dataset, "digits")


# ------------------------------------------------------------------------------------- augmentation

def test_to_float():
    x = torch.zeros(2, 4, 5, 3, dtype=torch.uint8)
    x[1, 2, 3] = torch.tensor([255, 0, 51], dtype=torch.uint8)
    out = to_float(x, (0.5, 0.0, 0.1), (0.5, 1.0, 0.1))
    assert out.shape == (2, 3, 4, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out[1, :, 2, 3], torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([-1.0, 0.0, -1.0]))


def test_augment_deterministic_shape_and_global_rng_untouched():
    x = torch.randn(16, 3, 10, 12)
    state = torch.random.get_rng_state()
    a = augment(x, torch.Generator().manual_seed(3))
    b = augment(x, torch.Generator().manual_seed(3))
    c = augment(x, torch.Generator().manual_seed(4))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_crop_is_a_slice_of_the_padded_image():
    x, pad = torch.randn(32, 3, 8, 8), 3
    out = augment(x, torch.Generator().manual_seed(0), pad=pad, flip=False)
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    offsets = set()
    for i in range(len(x)):
        found = [(r, c) for r in range(2 * pad + 1) for c in range(2 * pad + 1)
                 if torch.equal(out[i], padded[i, :, r:r + 8, c:c + 8])]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 5  # offsets vary per sample


def test_augment_flip():
    x = torch.randn(64, 3, 6, 7)
    out = augment(x, torch.Generator().manual_seed(0), pad=0, flip=True)
    same = [torch.equal(o, s) for o, s in zip(out, x)]
    flipped = [torch.equal(o, s.flip(-1)) for o, s in zip(out, x)]
    assert all(s != f for s, f in zip(same, flipped)) and 10 < sum(flipped) < 54
    assert torch.equal(augment(x, torch.Generator().manual_seed(0), pad=0, flip=False), x)


def test_augment_crop_and_flip_together():
    x, pad = torch.randn(32, 3, 8, 8), 2
    out = augment(x, torch.Generator().manual_seed(1), pad=pad)
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    for i in range(len(x)):
        assert any(torch.equal(out[i], view) for r in range(2 * pad + 1) for c in range(2 * pad + 1)
                   for view in (padded[i, :, r:r + 8, c:c + 8], padded[i, :, r:r + 8, c:c + 8].flip(-1)))


def test_training_batches_pad_with_black_pixels_not_the_mean_colour():
    """The crop's border is pixel value 0 (normalized: -mean/std), as in the standard CIFAR recipe."""
    white = ImageArrays(torch.full((64, 8, 8, 3), 255, dtype=torch.uint8), torch.zeros(64, dtype=torch.int64))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    x, _ = BatchStream(white, mean, std, world_size=1, rank=0, batch_size=64, seed=0).batch(0)
    black = torch.tensor([(0 - m) / s for m, s in zip(mean, std)]).view(1, 3, 1, 1)
    full = torch.tensor([(1 - m) / s for m, s in zip(mean, std)]).view(1, 3, 1, 1)
    is_black = torch.isclose(x, black.expand_as(x))
    assert (is_black | torch.isclose(x, full.expand_as(x))).all()  # no third (mean-colour) value
    assert is_black.any() and not is_black.all()


# ----------------------------------------------------------------------------------------- sharding

def test_steps_per_epoch():
    assert steps_per_epoch(100, 3, 8) == 4  # floor(floor(100/3)/8)
    assert steps_per_epoch(50000, 8, 128) == 48
    with pytest.raises(ValueError, match="too small"):
        steps_per_epoch(10, 4, 3)


@pytest.mark.parametrize("n, world, batch", [(100, 3, 8), (64, 4, 4), (37, 1, 5)])
def test_shards_of_an_epoch_are_disjoint_and_cover(n, world, batch):
    spe = steps_per_epoch(n, world, batch)
    for epoch in range(2):
        per_rank = [torch.cat([batch_indices(n, world, r, epoch * spe + k, batch, seed=7) for k in range(spe)])
                    for r in range(world)]
        everything = torch.cat(per_rank)
        assert len(everything) == spe * batch * world and len(set(everything.tolist())) == len(everything)
        assert everything.min() >= 0 and everything.max() < n
    # contiguous shards of floor(n/world) each: with batch 1, one epoch covers floor(n/W)*W items
    full = torch.cat([batch_indices(n, world, r, k, 1, seed=7) for r in range(world) for k in range(n // world)])
    assert len(set(full.tolist())) == (n // world) * world


def test_batch_indices_deterministic_and_epochs_differ():
    n, world, batch = 200, 2, 10
    spe = steps_per_epoch(n, world, batch)
    assert torch.equal(batch_indices(n, world, 1, 13, batch, 5), batch_indices(n, world, 1, 13, batch, 5))
    assert not torch.equal(batch_indices(n, world, 1, 3, batch, 5), batch_indices(n, world, 1, 3 + spe, batch, 5))
    assert not torch.equal(batch_indices(n, world, 1, 3, batch, 5), batch_indices(n, world, 1, 3, batch, 6))
    assert batch_indices(n, world, 0, 0, batch, 5).dtype == torch.int64
    state = torch.random.get_rng_state()
    batch_indices(n, world, 0, 0, batch, 5)
    assert torch.equal(torch.random.get_rng_state(), state)
    with pytest.raises(ValueError):
        batch_indices(n, world, 2, 0, batch, 5)


def test_batch_generator():
    draw = lambda g: torch.rand(4, generator=g)
    assert torch.equal(draw(batch_generator(1, 2, 3)), draw(batch_generator(1, 2, 3)))
    assert not torch.equal(draw(batch_generator(1, 2, 3)), draw(batch_generator(1, 2, 4)))
    assert not torch.equal(draw(batch_generator(1, 2, 3)), draw(batch_generator(1, 3, 3)))


def test_batch_stream_and_eval_batches():
    ds = load_dataset("synthetic", n_train=64, n_test=30, size=8)
    s = BatchStream(ds.train, ds.mean, ds.std, world_size=2, rank=1, batch_size=8, seed=3)
    x, y = s.batch(5)
    assert x.shape == (8, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    resumed = BatchStream(ds.train, ds.mean, ds.std, world_size=2, rank=1, batch_size=8, seed=3)
    x2, y2 = resumed.batch(5)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    plain = BatchStream(ds.train, ds.mean, ds.std, 2, 1, 8, 3, augment=False)
    idx = batch_indices(64, 2, 1, 5, 8, 3)
    xp, yp = plain.batch(5)
    assert torch.equal(xp, to_float(ds.train.x[idx], ds.mean, ds.std)) and torch.equal(yp, ds.train.y[idx])
    assert not torch.equal(x, xp)
    batches = list(eval_batches(ds.test, ds.mean, ds.std, batch_size=8))
    assert [len(b[1]) for b in batches] == [8, 8, 8, 6]
    assert torch.equal(torch.cat([b[1] for b in batches]), ds.test.y)
    assert torch.equal(torch.cat([b[0] for b in batches]), to_float(ds.test.x, ds.mean, ds.std))
