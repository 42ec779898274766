"""The commands as a user types them: what they print, what they write, how they fail."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from resist.cli import main
from resist.presets import PRESETS

SMOKE = ["train", "smoke", "--workers", "2", "--max-rounds", "2", "--eval-every", "1"]


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_presets_and_models(capsys):
    rc, out, _ = run(capsys, "presets")
    assert rc == 0 and all(name in out for name in PRESETS)
    rc, out, _ = run(capsys, "models")
    assert rc == 0 and "paper_resnet101" in out.split() and "preact_resnet200" in out.split()


def test_config_prints_resolved_overrides(capsys):
    rc, out, _ = run(capsys, "config", "cifar10_cpu", "--workers", "8", "--min-depth", "4", "--set", "optim.lr=0.2")
    cfg = json.loads(out)
    assert rc == 0 and cfg["algo"]["workers"] == 8 and cfg["algo"]["min_depth"] == 4 and cfg["optim"]["lr"] == 0.2


@pytest.mark.parametrize("algo", ["resist", "local_sgd", "data_parallel", "ensemble"])
def test_train_writes_run_folder(capsys, tmp_path, algo):
    rc, out, _ = run(capsys, *SMOKE, "--algo", algo, "--out", str(tmp_path / "run"))
    assert rc == 0, out
    assert f"{algo}: best test accuracy" in out
    run_dir = tmp_path / "run"
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["algo"]["name"] == algo and cfg["algo"]["workers"] == 2
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1] and all("test_acc" in r for r in rows)
    assert len(rows[0]["sent_bytes"]) == 2
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["workers"] == 2
    if algo != "ensemble":
        state = torch.load(run_dir / "model.pt", weights_only=True)
        assert any(k.startswith("blocks.") for k in state)


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "resist.cli", "presets"], capture_output=True, text=True)
    assert proc.returncode == 0 and "smoke" in proc.stdout


def test_demo_falls_back_to_digits_offline(capsys, tmp_path, monkeypatch):
    import resist.data.datasets as ds

    monkeypatch.setattr(ds, "CIFAR10_URL", (tmp_path / "nowhere.tar.gz").as_uri())
    monkeypatch.delenv("RESIST_DATA_DIR", raising=False)
    (tmp_path / "empty").mkdir()
    rc, out, err = run(capsys, "demo", "--data-dir", str(tmp_path / "empty"), "--workers", "2",
                       "--max-rounds", "1", "--out", str(tmp_path / "demo"))
    assert rc == 0
    fallback = next(line for line in err.splitlines() if "scikit-learn" in line)
    assert f"CIFAR-10 is not in {tmp_path / 'empty'} (from --data-dir)" in fallback
    assert "--data-dir DIR" in fallback and "RESIST_DATA_DIR" in fallback and "digits" in fallback
    lines = out.splitlines()
    assert any(line.startswith("resist ") for line in lines) and any(line.startswith("local_sgd ") for line in lines)
    assert (tmp_path / "demo" / "table.txt").exists()
    # The header states the epochs trained (one round), not the preset's 12.
    trained = json.loads((tmp_path / "demo" / "resist" / "summary.json").read_text())["epochs_trained"]
    assert 0 < trained < 1 and f"2 workers, {trained:.3g} epoch(s) of digits" in lines[0]
    assert f"resist plot {tmp_path / 'demo' / 'resist'} {tmp_path / 'demo' / 'local_sgd'}" in err


@pytest.mark.parametrize("where", ["flag", "env"])
def test_demo_refuses_a_data_folder_that_does_not_exist(capsys, tmp_path, monkeypatch, where):
    typo = str(tmp_path / "cifra10")
    monkeypatch.delenv("RESIST_DATA_DIR", raising=False)
    if where == "env":
        monkeypatch.setenv("RESIST_DATA_DIR", typo)
    rc, out, err = run(capsys, "demo", *(["--data-dir", typo] if where == "flag" else []), "--out", str(tmp_path / "d"))
    named = "--data-dir" if where == "flag" else "RESIST_DATA_DIR"
    assert rc == 2 and f"{named} {typo} does not exist" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def _fake_cifar(folder, labels_max=9, shape=(32, 32, 3)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(5):
        np.save(folder / f"train_x_{k:02d}.npy", rng.integers(0, 255, (8, *shape), dtype=np.uint8))
    np.save(folder / "train_y.npy", np.linspace(0, labels_max, 40).astype(np.uint8))
    np.save(folder / "test_x.npy", rng.integers(0, 255, (8, *shape), dtype=np.uint8))
    np.save(folder / "test_y.npy", np.arange(8, dtype=np.uint8))
    return folder


BAD = {
    "unknown model": (["--model", "resnet7"], "unknown model 'resnet7'"),
    "model factory returning a dict": (["--model", "builtins:dict"], "returned a dict, not a torch.nn.Module"),
    "model factory returning no stack": (["--model", "torch.nn:Identity"],
                                         "cannot partition (Identity: the model has no module 'stem')"),
    "model factory taking no keywords": (["--model", "os:getcwd"], "cannot be made with num_classes, width, layers"),
    "unknown algorithm": (["--algo", "gossip"], "unknown algorithm 'gossip'"),
    "mistyped algorithm": (["--algo", "resits"], "unknown algorithm 'resits' (did you mean 'resist'?)"),
    "mistyped model": (["--model", "paper_resnet10"],
                       "unknown model 'paper_resnet10' (did you mean 'paper_resnet101'?)"),
    "mistyped flag": (["--wrokers", "4"], "--wrokers 4 (did you mean '--workers'?)"),
    "spaced layers": (["--layers", "1", "1", "4", "1"], "--layers takes one comma-separated value: --layers 1,1,4,1"),
    "spaced decays": (["--lr-decay-at", "0.5", "0.75"], "--lr-decay-at 0.5,0.75"),
    "zero workers": (["--workers", "0"], "workers must be >= 1"),
    "negative workers": (["--workers", "-3"], "workers must be >= 1"),
    "min depth too high": (["--min-depth", "5"], "min depth 5 exceeds the 3 partitionable blocks"),
    "more workers than blocks": (["--workers", "4"], "4 workers but this model has 3 partitionable blocks"),
    "ensemble of more workers than blocks": (["--workers", "5", "--algo", "ensemble"], "use at most 3 workers"),
    "no block to deal": (["--layers", "1,1,1,1", "--workers", "3"], "ResIST would be local SGD"),
    "zero local iters": (["--local-iters", "0"], "local_iters must be >= 1"),
    "negative width": (["--width", "-1"], "width must be > 0"),
    "zero epochs": (["--epochs", "0"], "epochs must be > 0"),
    "bad bn eval": (["--bn-eval", "magic"], "unknown bn_eval 'magic'"),
    "bad partition": (["--partition", "halves"], "unknown partition mode 'halves'"),
    "bad runtime": (["--runtime", "mpi"], "unknown runtime 'mpi'"),
    "bad layers": (["--layers", "1,2"], "layers must be 4 positive block counts"),
    "not a number": (["--workers", "four"], "invalid int value: 'four'"),
    "unknown flag": (["--wrokers", "4"], "unrecognized arguments: --wrokers"),
    "unknown set field": (["--set", "algo.speed=3"], "unknown config field 'algo.speed'"),
    "set without value": (["--set", "algo.workers"], "--set takes section.field=value"),
    "num classes below dataset": (["--num-classes", "2"], "below the dataset's 4 classes"),
    "too many workers for data": (["--workers", "64", "--batch-size", "64", "--min-depth", "1"], "too small"),
    "unknown backend": (["--backend", "mpi"], "unknown backend 'mpi'"),
    "unknown device": (["--device", "tpu"], "unknown device 'tpu'"),
    "zero lr": (["--lr", "0"], "lr must be > 0"),
    "momentum of one": (["--momentum", "1"], "momentum must be in [0, 1)"),
    "negative weight decay": (["--weight-decay", "-1"], "weight_decay must be >= 0"),
    "zero batch": (["--batch-size", "0"], "batch_size must be >= 1"),
    "zero eval every": (["--eval-every", "0"], "eval_every must be >= 1"),
    "zero max rounds": (["--max-rounds", "0"], "max_rounds must be >= 1"),
    "zero timeout": (["--timeout", "0"], "timeout must be > 0"),
    "negative seed": (["--seed", "-1"], "seed must be >= 0"),
    "zero recalibration": (["--recalib-batches", "0"], "recalib_batches must be >= 1"),
    "negative warm-up": (["--warmup-epochs", "-1"], "warmup_epochs must be >= 0"),
    "warm-up without ResIST": (["--algo", "local_sgd", "--warmup-epochs", "1"], "local_sgd has none"),
    "warm-up of an ensemble": (["--algo", "ensemble", "--warmup-epochs", "1"], "ensemble has none"),
    "zero outer lr": (["--outer-lr", "0"], "outer_lr must be > 0"),
    "negative outer lr": (["--outer-lr", "-0.7"], "outer_lr must be > 0"),
    "outer momentum of one": (["--outer-momentum", "1"], "outer_momentum must be in [0, 1)"),
    "negative outer momentum": (["--outer-momentum", "-0.1"], "outer_momentum must be in [0, 1)"),
    "outer step of data parallel": (["--algo", "data_parallel", "--outer-lr", "0.7"], "data_parallel has none"),
    "outer step of an ensemble": (["--algo", "ensemble", "--outer-momentum", "0.9"], "ensemble has none"),
    "unknown inner optimizer": (["--inner-optim", "lamb"], "unknown inner optimizer 'lamb'"),
    "adamw carrying momentum": (["--inner-optim", "adamw", "--carry-momentum"], "use --inner-optim sgd"),
    "adamw data parallel": (["--inner-optim", "adamw", "--algo", "data_parallel"], "use --inner-optim sgd"),
    "unknown codec": (["--compress", "q9"], "unknown codec 'q9'"),
    "zero keep fraction": (["--compress", "topk", "--keep-fraction", "0"], "keep_fraction must be in (0, 1]"),
    "zero chunk": (["--compress", "q4", "--chunk", "0"], "chunk must be >= 1"),
    "compressed ensemble": (["--algo", "ensemble", "--compress", "q8"], "not ensemble"),
    "data parallel update": (["--algo", "data_parallel", "--compress", "q8", "--compress-what", "update"],
                             "compresses its gradients: drop --compress-what"),
    "unknown compress what": (["--compress", "q8", "--compress-what", "grads"], "unknown compress_what 'grads'"),
    "error feedback on weights": (["--compress", "q8", "--error-feedback"], "use --compress-what update"),
    "update without a codec": (["--compress-what", "update"], "need a codec"),
    "random-k with feedback": (["--compress", "randk", "--compress-what", "update", "--error-feedback"],
                               "error feedback diverges"),
    "zero checkpoint cadence": (["--checkpoint-every", "0"], "checkpoint_every must be >= 1"),
    "zero kept checkpoints": (["--keep-checkpoints", "0"], "keep_checkpoints must be >= 1"),
    "decay outside training": (["--set", "optim.lr_decay_at=[1.5]"], "lr_decay_at must lie in (0, 1)"),
    "unknown lr schedule": (["--lr-schedule", "linear"], "unknown lr_schedule 'linear'"),
    "warm-up past the end": (["--epochs", "2", "--lr-warmup-epochs", "2"], "lr_warmup_epochs must be >= 0 and below"),
    "zero eval limit": (["--set", "data.eval_limit=0"], "eval_limit must be >= 1"),
    "zero classes": (["--num-classes", "0"], "num_classes must be >= 1"),
    "bad port": (["--master-port", "70000"], "master_port must be a TCP port"),
    "unknown dataset": (["--dataset", "mnist"], "mnist"),
    "unknown stem": (["--stem", "vit"], "unknown stem 'vit'"),
    "zero bn sync": (["--bn-sync-every", "0"], "bn_sync_every must be >= 1"),
    "bn sync of data parallel": (["--algo", "data_parallel", "--bn-sync-every", "2"], "data_parallel has no round average"),
    "extra test of in-memory data": (["--extra-test", "v2=/tmp"], "read with --dataset imagefolder, not synthetic"),
    "extra test without a folder": (["--dataset", "imagefolder", "--extra-test", "v2"], "extra_test takes NAME=DIR"),
    "extra test named test": (["--dataset", "imagefolder", "--extra-test", "test=/x"], "and not 'test' or 'train'"),
    "extra test named train": (["--dataset", "imagefolder", "--extra-test", "train=/x"], "and not 'test' or 'train'"),
    "extra test twice": (["--dataset", "imagefolder", "--extra-test", "a=/x", "--extra-test", "a=/y"], "given twice"),
    "tiny crop": (["--crop-size", "4"], "crop_size must be >= 8"),
    "negative loader workers": (["--loader-workers", "-1"], "loader_workers must be >= 0"),
    "no image folder": (["--dataset", "imagefolder", "--data-dir", "/nonexistent/imagenet"],
                        "image folder /nonexistent/imagenet does not exist"),
}
if not torch.cuda.is_available():
    BAD["cuda without cuda"] = (["--device", "cuda"], "CUDA is not available")
    BAD["nccl without cuda"] = (["--backend", "nccl"], "needs CUDA")


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_exit_2_no_run_folder(capsys, tmp_path, case):
    args, message = BAD[case]
    out_dir = tmp_path / "run"
    rc, out, err = run(capsys, "train", "smoke", "--out", str(out_dir), *args)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert message in err, err
    assert not (out_dir / "metrics.jsonl").exists() and not (out_dir / "model.pt").exists()


def test_more_nccl_ranks_than_gpus(capsys, tmp_path, monkeypatch):
    """Caught before any process starts, on a machine made to look like it has one GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    out_dir = tmp_path / "run"
    rc, _, err = run(capsys, "train", "smoke", "--out", str(out_dir), "--runtime", "dist", "--backend", "nccl",
                     "--workers", "2")
    assert rc == 2 and "needs one GPU per rank: 2 workers, 1 GPUs" in err and len(err.strip().splitlines()) == 1
    assert not out_dir.exists()


def test_unknown_preset(capsys):
    rc, _, err = run(capsys, "train", "cifar11")
    assert rc == 2 and "unknown preset 'cifar11'" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run(capsys, "train", "cifar10cpu")
    assert rc == 2 and "unknown preset 'cifar10cpu' (did you mean 'cifar10_cpu'?)" in err


@pytest.mark.parametrize("flag", ["--nproc-per-node", "--nproc_per_node", "--nproc_per_node=2", "--nnodes"])
def test_torchrun_flags_point_at_torchrun(capsys, flag):
    rc, _, err = run(capsys, "train", "smoke", *([flag] if "=" in flag else [flag, "2"]))
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert f"{flag.split('=')[0]} is a flag of torchrun" in err and "torchrun --nproc-per-node N" in err
    assert "-m resist.cli train ... --runtime dist" in err


def test_out_naming_a_file_says_so(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for argv in (["train", "smoke"], ["demo"]):
        rc, _, err = run(capsys, *argv, "--out", str(tmp_path / "notes.txt"))
        assert rc == 2 and f"--out {tmp_path / 'notes.txt'} is a file, not a folder" in err
        assert len(err.strip().splitlines()) == 1
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_help_lines_are_whole_sentences_with_defaults():
    from resist.cli import first_sentence, make_parser

    train = make_parser()._subparsers._group_actions[0].choices["train"]
    text = " ".join(train.format_help().split())
    assert "Outer learning rate (DiLoCo, Douillard et al. 2023): after a round's average" in text
    assert "rises linearly to lr (Goyal et al. 2017; ViT and DeiT warm up), before the schedule; 0: none" in text
    assert "--local-iters LOCAL_ITERS Local SGD steps between synchronizations (paper default 50) (default: 50)" in text
    assert "(default: on)" in text and "(default: 0.5,0.75)" in text and "a preset changes some" in text
    assert first_sentence("One (a. b). Two.") == "One (a. b)" and first_sentence("e.g. this. Not") == "e.g. this"


@pytest.mark.parametrize("damage", ["missing", "truncated", "labels", "shape"])
def test_bad_dataset_files(capsys, tmp_path, damage):
    data = _fake_cifar(tmp_path / "cifar10", labels_max=12 if damage == "labels" else 9,
                       shape=(28, 28, 3) if damage == "shape" else (32, 32, 3))
    if damage == "missing":
        (data / "test_y.npy").unlink()
    if damage == "truncated":
        raw = (data / "train_x_02.npy").read_bytes()
        (data / "train_x_02.npy").write_bytes(raw[: len(raw) // 2])
    rc, _, err = run(capsys, "train", "smoke", "--dataset", "cifar10", "--data-dir", str(data),
                     "--out", str(tmp_path / "run"), "--max-rounds", "1")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_missing_dataset_says_download(capsys, tmp_path):
    rc, _, err = run(capsys, "train", "smoke", "--dataset", "cifar10", "--data-dir", str(tmp_path / "none"))
    assert rc == 2 and "--download" in err


def test_unwritable_run_folder(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc, _, err = run(capsys, "train", "smoke", "--out", str(blocker / "run"))
    assert rc == 2 and "cannot write the run folder" in err and len(err.strip().splitlines()) == 1


def test_port_already_in_use(capsys, tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc, _, err = run(capsys, *SMOKE, "--runtime", "dist", "--master-port", str(port), "--out", str(tmp_path / "r"))
    assert rc == 2 and f"cannot listen on port {port}" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_torchrun_world_size_must_match_workers(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    rc, _, err = run(capsys, *SMOKE, "--runtime", "dist", "--out", str(tmp_path / "r"))
    assert rc == 2 and "torchrun started 3 processes but --workers is 2" in err
    assert not (tmp_path / "r").exists()


def test_config_file_errors(capsys, tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    rc, _, err = run(capsys, "train", "--config", str(bad))
    assert rc == 2 and "is not a resist config" in err and len(err.strip().splitlines()) == 1
    bad.write_text('{"algo": {"workers": 2, "speed": 9}}')
    rc, _, err = run(capsys, "train", "--config", str(bad))
    assert rc == 2 and "unknown field(s) in config section 'algo': speed" in err


def test_every_config_field_is_a_flag_with_its_docstring_as_help(capsys):
    """One edit per new field: the flag, its type and its help come from the typed config."""
    import dataclasses

    from resist.cli import train_flags
    from resist.config import Config, field_docs

    keys = {f"{s.name}.{f.name}" for s in dataclasses.fields(Config) for f in dataclasses.fields(s.default_factory)}
    flags = {f.key: f for f in train_flags()}
    assert set(flags) == keys
    docs = field_docs()
    assert all(docs[k].replace("``", "'").startswith(f.help.split(" [")[0]) for k, f in flags.items())
    rc, out, _ = run(capsys, "config", "smoke", "--local-iters", "7", "--no-augment", "--lr-decay-at", "0.3,0.6",
                     "--no-outer-nesterov", "--eval-limit", "5")
    cfg = json.loads(out)
    assert rc == 0 and cfg["algo"]["local_iters"] == 7 and cfg["data"]["augment"] is False
    assert cfg["optim"]["lr_decay_at"] == [0.3, 0.6] and cfg["algo"]["outer_nesterov"] is False
    assert cfg["data"]["eval_limit"] == 5


# --- image folders --------------------------------------------------------------------------------

def _folder_args(tree, out, *extra):
    return ["train", "smoke", "--dataset", "imagefolder", "--data-dir", str(tree), "--crop-size", "16",
            "--loader-workers", "0", "--batch-size", "8", "--workers", "2", "--local-iters", "2", "--max-rounds", "2",
            "--eval-every", "1", "--out", str(out), *extra]


def _empty(folder):
    for f in folder.iterdir():
        f.unlink()


@pytest.mark.parametrize("damage, message", [
    (lambda t: (t / "train").rename(t / "tr"), "has no train/ folder"),
    (lambda t: _empty(t / "train" / "cat"), "train/cat has no images"),
    (lambda t: (t / "val" / "dog").rename(t / "val" / "wolf"), "classes that"),
    (lambda t: (t / "train" / "ant" / "notes.txt").write_text("ignored, as image-folder loaders do"), None),
])
def test_bad_image_trees_one_line_exit_2_nothing_written(capsys, image_tree, tmp_path, damage, message):
    damage(image_tree)
    out = tmp_path / "run"
    rc, _, err = run(capsys, *_folder_args(image_tree, out))
    if message is None:  # a non-image file is no error
        assert rc == 0 and (out / "summary.json").is_file()
        return
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_extra_test_set_with_unknown_classes(capsys, image_tree, tree_writer, tmp_path):
    _, index_layout = tree_writer
    v2 = index_layout(image_tree / "val", tmp_path / "v2")
    (v2 / "3").rename(v2 / "12")
    rc, _, err = run(capsys, *_folder_args(image_tree, tmp_path / "run", "--extra-test", f"mf={v2}"))
    assert rc == 2 and "extra test set mf" in err and "'12'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("runtime", ["inprocess", "dist"])
def test_unreadable_image_names_the_file_exit_2_files_whole(capsys, image_tree, tmp_path, runtime):
    bad = image_tree / "train" / "dog" / "0005.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    out = tmp_path / "run"
    rc, _, err = run(capsys, *_folder_args(image_tree, out, "--runtime", runtime, "--max-rounds", "8",
                                           "--eval-every", "1", "--timeout", "60"))
    errors = [line for line in err.splitlines() if line.startswith("resist: error")]  # the run began, and said so
    assert rc == 2 and len(errors) == 1 and str(bad) in errors[0] and "--skip-bad-images" in errors[0]
    assert "Traceback" not in err
    assert not (out / "summary.json").exists() and not (out / "model.pt").exists()
    assert all(json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())
    rc, _, _ = run(capsys, *_folder_args(image_tree, tmp_path / "skip", "--skip-bad-images", "--max-rounds", "8"))
    summary = json.loads((tmp_path / "skip" / "summary.json").read_text())
    assert rc == 0 and summary["skipped_images"] == {"train": 1, "test": 0, "files": [str(bad)]}


def test_skipped_image_of_an_extra_test_set_is_counted_there_with_its_path(capsys, image_tree, tree_writer, tmp_path):
    _, index_layout = tree_writer
    v2 = index_layout(image_tree / "val", tmp_path / "v2")
    bad = v2 / "2" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    rc, _, err = run(capsys, *_folder_args(image_tree, tmp_path / "run", "--extra-test", f"holdout={v2}",
                                           "--skip-bad-images"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert rc == 0 and summary["skipped_images"] == {"train": 0, "test": 0, "holdout": 1, "files": [str(bad)]}
    assert f"skipping {bad}" in err


def test_file_names_that_are_not_utf8_train_and_are_named_when_bad(capsys, image_tree, tmp_path):
    import os

    latin1 = lambda b: os.fsdecode(b)  # noqa: E731  (bytes escaped as surrogates, as os.listdir gives them)
    (image_tree / "train" / "dog").rename(image_tree / "train" / latin1(b"d\xf6g"))
    (image_tree / "val" / "dog").rename(image_tree / "val" / latin1(b"d\xf6g"))
    cat = image_tree / "train" / "cat"
    (cat / "0001.jpg").rename(cat / latin1(b"\xe9t\xe9.jpg"))
    bad = cat / latin1(b"\xff.jpg")
    bad.write_bytes((cat / "0002.jpg").read_bytes()[:200])
    rc, _, err = run(capsys, *_folder_args(image_tree, tmp_path / "stop"))
    assert rc == 2 and len(err.strip().splitlines()) == 2 and "Traceback" not in err  # the start line, the error
    assert "xff.jpg is not a readable image" in err.splitlines()[-1]
    rc, _, err = run(capsys, *_folder_args(image_tree, tmp_path / "run", "--skip-bad-images", "--max-rounds", "8"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert rc == 0 and summary["skipped_images"]["files"] == [str(bad)] and summary["skipped_images"]["train"] == 1
    assert json.loads((tmp_path / "run" / "classes.json").read_text()) == ["ant", "bee", "cat", latin1(b"d\xf6g")]


def test_model_factory_with_another_signature_is_one_line(capsys, tmp_path):
    rc, _, err = run(capsys, "train", "demo_digits", "--model", "os:getcwd", "--out", str(tmp_path / "r"))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "model os:getcwd cannot be made with num_classes, width (" in err and "as keywords" in err


@pytest.mark.parametrize("flags", [["--workers", "4", "--min-depth", "1"],  # blocks shared: each sub-ResNet has one
                                   ["--workers", "4", "--algo", "local_sgd"],
                                   ["--layers", "1,1,1,1", "--workers", "2", "--algo", "local_sgd"],
                                   ["--layers", "1,1,1,1", "--workers", "2", "--algo", "ensemble"]])
def test_dealing_that_means_something_still_runs(capsys, tmp_path, flags):
    rc, out, err = run(capsys, "train", "smoke", "--max-rounds", "1", "--out", str(tmp_path / "r"), *flags)
    assert rc == 0, err


def test_paper_presets_deal_their_blocks():
    """The paper's 8-worker ResNet101 (22 blocks, minimum depth 4: shared) and 16 workers of it pass."""
    from resist.plan import check_dealing

    cfg = PRESETS["cifar10_resnet101_paper"]()
    for workers in (2, 4, 8, 16, 32):
        check_dealing("resist", workers, 22, cfg.algo.min_depth)
    with pytest.raises(ValueError, match="23 workers but this model has 22"):
        check_dealing("resist", 23, 22, 0)


def test_models_one_line_each_and_presets_wrapped(capsys, monkeypatch):
    from resist.models import list_models

    rc, out, _ = run(capsys, "models")
    lines = out.splitlines()
    assert rc == 0 and len(lines) == len(list_models())
    for name, line in zip(list_models(), lines):
        assert line.split()[0] == name and len(line.split()) > 3, line  # a name and a description
    monkeypatch.setenv("COLUMNS", "80")
    rc, out, _ = run(capsys, "presets")
    assert rc == 0 and all(len(line) <= 80 for line in out.splitlines())
    starts = [line.split()[0] for line in out.splitlines() if not line.startswith(" ")]
    assert starts == list(PRESETS)


# --- progress ---------------------------------------------------------------------------------------

def _round_lines(err):
    return [line for line in err.splitlines() if line.startswith("round ")]


def test_a_progress_line_every_round_in_process(capsys, tmp_path):
    rc, out, err = run(capsys, *SMOKE, "--max-rounds", "4", "--eval-every", "2", "--out", str(tmp_path / "r"))
    lines = _round_lines(err)
    assert rc == 0 and [int(line.split()[1]) for line in lines] == [1, 2, 3, 4]
    assert "test" not in lines[0] and "test" in lines[1] and "loss" in lines[0] and "sent/worker" in lines[0]


def test_a_progress_line_every_round_from_dist_ranks(capfd, tmp_path):
    """The spawned ranks write to the launcher's stderr (captured at the file descriptor); rank 0 alone."""
    rc = main([*SMOKE, "--max-rounds", "3", "--eval-every", "3", "--runtime", "dist", "--timeout", "60",
               "--out", str(tmp_path / "r")])
    out, err = capfd.readouterr()
    assert rc == 0 and [int(line.split()[1]) for line in _round_lines(err)] == [1, 2, 3], err
    assert out.count("resist: best test accuracy") == 1


def test_torchrun_ranks_print_the_summary_once(capsys, tmp_path, monkeypatch):
    """torchrun runs the command once per rank; only rank 0 prints the run's last line."""
    import resist.train

    summary = {"best_acc": 50.0, "time_s": 1.0, "sent_bytes_per_worker": [10, 10]}
    monkeypatch.setattr(resist.train, "train", lambda cfg, resume=False, force=False: summary)
    monkeypatch.setenv("WORLD_SIZE", "2")
    printed = []
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        rc, out, _ = run(capsys, *SMOKE, "--runtime", "dist", "--out", str(tmp_path / "r"))
        assert rc == 0
        printed.append(out)
    assert "best test accuracy 50.00%" in printed[0] and printed[1] == ""


def test_progress_bar_shows_on_a_pseudo_terminal_of_unknown_size(tmp_path):
    """A pty opened without a size reports 0 x 0 (as `script` and some CI runners do); tqdm hid its bar there."""
    import os
    import pty

    primary, secondary = pty.openpty()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("COLUMNS", None), env.pop("LINES", None)
    proc = subprocess.Popen([sys.executable, "-m", "resist.cli", *SMOKE, "--max-rounds", "3", "--out",
                             str(tmp_path / "r")], stderr=secondary, stdout=subprocess.DEVNULL, env=env)
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=120) == 0
    os.close(primary)
    assert b"0/3" in seen and b"3/3" in seen and (b"round/s" in seen or b"s/round" in seen), seen[-500:]
