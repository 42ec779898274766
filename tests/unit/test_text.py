"""Byte-level language-model data and the GPT model: split, shards, windows, causality, init."""

from __future__ import annotations

import math

import pytest
import torch

from resist.data.datasets import DatasetError
from resist.data.text import TextStream, load_text, text_eval_batches
from resist.models.gpt import GPT


@pytest.fixture
def folder(tmp_path):
    for k in range(40):
        (tmp_path / f"dir{k % 3}").mkdir(exist_ok=True)
        (tmp_path / f"dir{k % 3}" / f"f{k}.txt").write_text(f"file {k}: " + "lorem ipsum dolor " * (k + 5))
    (tmp_path / "image.png").write_bytes(b"\x89PNG not text")
    return tmp_path


def test_split_is_by_file_fixed_and_recorded(folder):
    a, b = load_text(folder, test_fraction=0.25), load_text(folder, test_fraction=0.25)
    assert a.train_files == b.train_files and a.test_files == b.test_files and a.test_files
    assert not set(a.train_files) & set(a.test_files)
    assert len(a.train_files) + len(a.test_files) == 40  # the .png is not text
    (folder / "dir0" / "new.txt").write_text("another file")  # adding a file moves no other file
    c = load_text(folder, test_fraction=0.25)
    assert set(a.test_files) <= set(c.test_files) and set(a.train_files) <= set(c.train_files)
    record = a.split_record()
    assert record["train_bytes"] == len(a.train) and len(record["train_sha256"]) == 64


def test_bad_folders_say_so(tmp_path, folder):
    with pytest.raises(DatasetError, match="does not exist"):
        load_text(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no text files"):
        load_text(tmp_path / "empty")
    with pytest.raises(DatasetError, match="too few"):
        TextStream(load_text(folder).train, 64, 4, 0, 1000, seed=0)


def test_too_few_files_for_both_splits_says_what_to_do(tmp_path, capsys):
    from resist.cli import main

    (tmp_path / "only.txt").write_text("one file " * 500)
    with pytest.raises(DatasetError, match="add files") as e:
        load_text(tmp_path)
    assert "--test-fraction" not in str(e.value)  # no such flag
    rc = main(["train", "gpt_char_cpu", "--dataset", "text", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "add files" in err and len(err.strip().splitlines()) == 1


def test_file_names_that_are_not_utf8_are_read_and_recorded(folder):
    import json
    import os

    name = os.fsdecode(b"caf\xe9 \xff.txt")  # Latin-1 bytes, as old archives hold them
    (folder / "dir1" / name).write_text("bytes of a file with a Latin-1 name " * 40)
    corpus = load_text(folder)
    files = corpus.train_files + corpus.test_files
    assert f"dir1/{name}" in files and len(files) == 41
    record = json.loads(json.dumps(corpus.split_record()))  # as split.json is written and read
    assert f"dir1/{name}" in record["train_files"] + record["test_files"]


def test_worker_shards_are_disjoint_and_targets_are_next_bytes():
    data = torch.randint(0, 256, (3000,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    streams = [TextStream(data, 16, 3, r, 4, seed=7) for r in range(3)]
    spe = streams[0].steps_per_epoch
    for epoch in range(2):
        seen = []
        for s in streams:
            for step in range(epoch * spe, (epoch + 1) * spe):
                x, y = s.batch(step)
                assert x.shape == y.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])
                seen += [bytes(row.tolist()) for row in x]
        assert len(seen) == len(set(seen))  # no window twice in an epoch, across workers
    assert torch.equal(streams[1].batch(3)[0], TextStream(data, 16, 3, 1, 4, seed=7).batch(3)[0])  # pure


def test_eval_windows_cover_the_test_text_in_order(folder):
    data = load_text(folder, test_fraction=0.25).test
    xs = torch.cat([x for x, _ in text_eval_batches(data, 16, 5)])
    assert len(xs) == (len(data) - 1) // 16 and torch.equal(xs.flatten(), data[: xs.numel()].long())
    assert sum(len(x) for x, _ in text_eval_batches(data, 16, 5, limit=7)) == 7


def test_stdlib_corpus_is_real_text():
    corpus = load_text(max_bytes=200_000)
    assert corpus.source == "python-stdlib" and len(corpus.train) == 200_000 and b"def " in bytes(corpus.train[:20000].tolist())


def test_gpt_is_causal_skippable_and_scaled():
    torch.manual_seed(0)
    model = GPT(depth=4, dim=32, heads=4, context=16).eval()
    x = torch.randint(0, 256, (2, 16))
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % 256
    assert torch.equal(model(x)[:, :10], model(y)[:, :10])  # the future does not leak into the past
    assert not torch.equal(model(x)[:, 10:], model(y)[:, 10:])
    assert model.partitionable == (1, 2) and model.skippable == (0, 1, 2, 3)
    full = model(x)
    model.skip = frozenset({1})
    skipped = model(x)
    model.skip = frozenset()
    model.set_residual_scale([1], 0.0)  # a branch scaled to zero is the block skipped
    torch.testing.assert_close(model(x), skipped)
    assert not torch.equal(full, skipped)
    with pytest.raises(ValueError, match="longer than the context"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_gpt_residual_projections_get_the_scaled_init():
    torch.manual_seed(0)
    model = GPT(depth=8, dim=256, heads=4, context=16)
    block = model.blocks[3]
    block.reset_parameters()
    assert abs(block.qkv.weight.std().item() - 0.02) < 0.002
    assert abs(block.out.weight.std().item() - 0.02 / math.sqrt(16)) < 0.0005
