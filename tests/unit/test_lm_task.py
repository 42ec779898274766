"""The language-modelling task through the trainer: it learns, both runtimes agree, resume is exact, and
bad combinations are refused; the task seam leaves classification alone (the golden tests pin that)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from resist import registry
from resist.cli import main
from resist.presets import preset
from resist.data.text import TextDataset, load_text
from resist.faults import InjectedFault
from resist.tasks import TASK_FACTORIES, make_task
from resist.train import train


@pytest.fixture(scope="module")
def corpus():
    return TextDataset(load_text(max_bytes=60_000), context=16)


def lm_cfg(out, **over):
    return preset("gpt_char_cpu").replace(**{
        "model.width": 0.125, "data.context": 16, "data.batch_size": 8, "data.eval_limit": 32,
        "data.text_bytes": 60_000, "algo.local_iters": 3, "algo.workers": 2, "algo.min_depth": 0,
        "run.max_rounds": 4, "run.eval_every": 2, "run.checkpoint_every": 1, "run.timeout": 120,
        "run.out": str(out), **over})


def final(out):
    return torch.load(out / "model.pt", weights_only=True)


def test_registry_names_every_task():
    assert tuple(TASK_FACTORIES) == registry.TASKS
    assert make_task("lm").better(1.0, 2.0) and make_task("classification").better(2.0, 1.0)


@pytest.mark.parametrize("algo", ["resist", "local_sgd"])
def test_gpt_learns_below_eight_bits_per_byte(tmp_path, corpus, algo):
    s = train(lm_cfg(tmp_path, **{"algo.name": algo, "run.max_rounds": 8}), corpus)
    assert s["best_bpb"] < 7.0  # uniform over 256 byte values is 8 bits
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["source"] == "python-stdlib" and split["train_files"] and split["test_files"]
    assert s["best_bpb"] == min(r["test_bpb"] for r in map(eval_row, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "test_bpb" in r)
    if algo == "resist":
        assert s["eval_scale"] == pytest.approx(0.5) and s["scaled_blocks"] == [1, 2, 3, 4, 5, 6]


def eval_row(line):
    import json

    return json.loads(line)


@pytest.mark.timeout(240)
def test_inprocess_equals_gloo_on_text(tmp_path, corpus, one_thread):
    a = train(lm_cfg(tmp_path / "a", **{"run.max_rounds": 2}), corpus)
    b = train(lm_cfg(tmp_path / "b", **{"run.max_rounds": 2, "run.runtime": "dist"}), corpus)
    ma, mb = final(tmp_path / "a"), final(tmp_path / "b")
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)  # 2 workers: bitwise
    assert a["sent_bytes_per_worker"] == b["sent_bytes_per_worker"] and a["best_bpb"] == b["best_bpb"]


def test_resume_is_bitwise(tmp_path, corpus, monkeypatch):
    train(lm_cfg(tmp_path / "whole"), corpus)
    monkeypatch.setenv("RESIST_FAULTS", "raise:rank=1:round=2:step=7")
    with pytest.raises(InjectedFault):
        train(lm_cfg(tmp_path / "cut"), corpus)
    monkeypatch.setenv("RESIST_FAULTS", "")
    resumed = train(lm_cfg(tmp_path / "cut"), corpus, resume=True)
    a, b = final(tmp_path / "whole"), final(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a) and resumed["resumed_at_round"] == 2


@pytest.mark.parametrize("flags,message", [
    (["smoke", "--task", "lm"], "cannot learn from dataset synthetic"),
    (["smoke", "--dataset", "pystdlib"], "cannot learn from dataset pystdlib"),
    (["smoke", "--task", "lm", "--dataset", "pystdlib"], "does not fit task lm"),
    (["gpt_char_cpu", "--layers", "1,1,4,1"], "--layers shapes ResNets"),
    (["gpt_char_cpu", "--algo", "ensemble"], "for classification"),
    (["gpt_char_cpu", "--dataset", "text", "--data-dir", "/nonexistent"], "does not exist"),
    (["gpt_char_cpu", "--context", "1"], "context must be >= 2"),
    (["gpt_char_cpu", "--channels-last"], "drop --channels-last"),
])
def test_bad_lm_input_is_one_line(capsys, flags, message):
    rc = main(["train", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_cli_trains_a_language_model_and_says_bits_per_byte(capsys, tmp_path):
    rc = main(["train", "gpt_char_cpu", "--width", "0.125", "--context", "16", "--batch-size", "8",
               "--text-bytes", "60000", "--eval-limit", "16", "--local-iters", "2", "--max-rounds", "1",
               "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 0 and "bits per byte" in out and (tmp_path / "run" / "split.json").is_file()


def test_bits_per_byte_is_nats_over_ln2(corpus):
    from resist.models import create_model

    evaluator = make_task("lm").evaluator(corpus.eval_sets(8, 16), None, "average", torch.device("cpu"))
    torch.manual_seed(0)
    model = create_model("gpt_char", num_classes=256, width=0.125, context=16)
    scores = evaluator.metric(model)
    assert scores["test/bpb"] == pytest.approx(scores["test/loss"] / math.log(2))
    assert evaluator.score(evaluator.predict(model))["test/loss"] == pytest.approx(scores["test/loss"], rel=1e-5)
