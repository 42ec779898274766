"""``resist comm``: the paper's Table 1 convention, bytes measured on real gloo processes, pipeline
bytes, and one-line failures (paper §2.3, Table 1)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from resist.cli import main
from resist.models import create_model
from resist.train.comm_report import paper_convention, pipeline_bytes

TINY = ["--model", "paper_resnet", "--layers", "1,1,5,1", "--width", "0.0625", "--num-classes", "10"]


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_paper_table1_exactly(capsys):
    conv = paper_convention("paper_resnet101", 100, 1.0, [2, 4, 8], min_depth=4)
    assert conv["params"] == {"total": 41_396_900, "shared": 15_422_116, "block": 1_180_672,
                              "partitionable_blocks": 22}
    for row, s in zip(conv["rows"], (2, 4, 8)):
        assert row["local_sgd_bytes"] == 2 * 4 * s * 41_396_900
        assert row["resist_bytes"] == 2 * 4 * s * (15_422_116 + max(math.ceil(22 / s), 4) * 1_180_672)
    rc, out, _ = run(capsys, "comm", "--model", "paper_resnet101", "--num-classes", "100", "--workers", "2", "4",
                     "8", "--min-depth", "4", "--no-measure")
    assert rc == 0
    for number in ("0.6624", "1.325", "2.649", "0.4546", "0.7202", "1.289"):
        assert number in out
    assert "paper's Table 1" in out and "0.454 / 0.720 / 1.289" in out


def expected_resist_bytes(model, s: int, rounds: int, way: str) -> list[list[int]]:
    """[rank][round] bytes from the plan (§2.5): the shared layers' ring all-reduce, one flat buffer per
    dtype, plus each block from each holder to each *other* holder of the next round."""
    from resist.plan import candidate_blocks, make_plan

    cands = candidate_blocks(model.partitionable, model.skippable, "section3")

    def nbytes(module):
        return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])

    shared = [model.stem, model.head] + [model.blocks[i] for i in range(len(model.blocks)) if i not in cands]
    by_dtype: dict[torch.dtype, int] = {}
    for t in [t for m in shared for t in [*m.parameters(), *m.buffers()]]:
        by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + t.numel() * t.element_size()
    ring = sum(round(2 * (s - 1) / s * n) for n in by_dtype.values())
    out = []
    for me in range(s):
        row = []
        for r in range(rounds):
            cur, nxt = make_plan(0, r, s, cands, 0), make_plan(0, r + 1, s, cands, 0)
            moved = 0
            for b in cands:
                if way == "sent" and me in cur.holders(b):
                    moved += nbytes(model.blocks[b]) * len([d for d in nxt.holders(b) if d != me])
                if way == "received" and me in nxt.holders(b) and cur.holders(b) != (me,):
                    moved += nbytes(model.blocks[b]) * len([h for h in cur.holders(b) if h != me])
            row.append(ring + moved)
        out.append(row)
    return out


def test_measured_on_gloo(capsys):
    rc, out, _ = run(capsys, "comm", *TINY, "--workers", "2", "3", "--rounds", "2", "--json")
    assert rc == 0
    rep = json.loads(out)
    with torch.device("meta"):
        model = create_model("paper_resnet", num_classes=10, width=0.0625, layers=(1, 1, 5, 1))
    tensors = list(model.parameters()) + list(model.buffers())
    by_dtype: dict[torch.dtype, int] = {}
    for t in tensors:  # one flat buffer per dtype: floats, BatchNorm's int64 batch counters
        by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + t.numel() * t.element_size()
    for row in rep["rows"]:
        s = row["workers"]
        local, resist = row["local_sgd"]["measured"], row["resist"]["measured"]
        assert resist["sent"] == expected_resist_bytes(model, s, 2, "sent")
        assert resist["received"] == expected_resist_bytes(model, s, 2, "received")
        ring = sum(round(2 * (s - 1) / s * n) for n in by_dtype.values())  # per rank, each way
        assert local["sent"] == [[ring] * 2] * s and local["received"] == [[ring] * 2] * s
        assert local["per_round"] == [2 * s * ring] * 2


def test_pipeline_bytes_by_hand():
    # paper_resnet (1,1,1,1) at width 1/16: channels 4/8/16/32. Parameters: stem 108, blocks 304, 920,
    # 3632, 14432, head 330 (total 19,726). Half is 9,863; the nearest cut is after block 2 (4,964), whose
    # output is 16 x 8 x 8 = 1,024 values per sample: 2 x 4 bytes x batch 2 x 1,024 = 16,384 per step.
    p = pipeline_bytes("paper_resnet", 10, 0.0625, 2, batch=2, local_iters=3, layers=(1, 1, 1, 1))
    assert p["cuts"] == [4] and p["stage_params"] == [4964, 14762] and p["boundary_numel"] == [1024]
    assert p["bytes_per_step"] == 16384 and p["bytes"] == 3 * 16384
    assert pipeline_bytes("paper_resnet101", 100, 1.0, 1)["bytes"] == 0
    # ResNet101 on 2 stages: cut inside section 3 (256 x 8 x 8 per sample), batch 128, 50 steps.
    assert pipeline_bytes("paper_resnet101", 100, 1.0, 2)["bytes"] == 2 * 4 * 128 * 256 * 8 * 8 * 50


@pytest.mark.parametrize("argv", [
    ["--model", "no_such_net"],
    ["--workers", "0"],
    ["--min-depth", "23"],
    ["--workers", "2", "x"],
    ["--model", "paper_resnet"],  # the generic factory needs --layers
])
def test_bad_input_is_one_line(capsys, argv):
    rc, out, err = run(capsys, "comm", *argv, "--no-measure")
    assert rc == 2 and out == ""
    assert err.startswith("resist: error: ") and len(err.strip().splitlines()) == 1


def test_measured_with_a_codec(capsys):
    rc, out, _ = run(capsys, "comm", *TINY, "--workers", "2", "--rounds", "1", "--json")
    plain = json.loads(out)["rows"][0]
    rc8, out8, _ = run(capsys, "comm", *TINY, "--workers", "2", "--rounds", "1", "--json", "--compress", "q8")
    q8 = json.loads(out8)["rows"][0]
    assert rc == rc8 == 0 and json.loads(out8)["compress"] == "q8"
    for algo in ("local_sgd", "resist"):
        assert q8[algo]["convention_bytes"] == plain[algo]["convention_bytes"]
        assert q8[algo]["measured"]["mean_bytes"] < 0.35 * plain[algo]["measured"]["mean_bytes"]
    rc, _, err = run(capsys, "comm", *TINY, "--workers", "2", "--compress", "q12", "--no-measure")
    assert rc == 2 and "unknown codec 'q12'" in err
