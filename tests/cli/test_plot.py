"""``resist plot`` and ``resist project``: the PNG, the labels, one-line errors, and the projection
arithmetic checked by hand on synthetic rows."""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

import pytest

from resist.cli import main
from resist.analysis import projection as pj
from resist.analysis.plot import labels_for, read_run
from resist.train.metrics import human_bytes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny run folders, local SGD first (the baseline) and ResIST."""
    root = tmp_path_factory.mktemp("runs")
    dirs = {}
    for algo in ("local_sgd", "resist"):
        dirs[algo] = root / algo
        rc = main(["train", "smoke", "--algo", algo, "--workers", "2", "--max-rounds", "3", "--eval-every", "1",
                   "--out", str(dirs[algo])])
        assert rc == 0
    return dirs


def one_line_error(rc, err, *needles):
    assert rc == 2
    assert err.startswith("resist: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert str(needle) in err, err


# --- resist plot ----------------------------------------------------------------------------------
def test_plot_two_runs_default_output(capsys, runs):
    rc, out, err = run(capsys, "plot", runs["local_sgd"], runs["resist"])
    png = runs["resist"].parent / "accuracy.png"
    assert rc == 0, err
    assert out.strip().splitlines()[-1] == str(png)
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_plot_one_run_default_output_and_explicit_out(capsys, runs, tmp_path):
    rc, out, _ = run(capsys, "plot", runs["resist"])
    assert rc == 0 and out.strip().splitlines()[-1] == str(runs["resist"] / "accuracy.png")
    assert (runs["resist"] / "accuracy.png").read_bytes().startswith(PNG_MAGIC)
    target = tmp_path / "figs" / "mine.png"
    rc, out, _ = run(capsys, "plot", runs["local_sgd"], runs["resist"], "--out", target, "--labels", "LSGD,ResIST")
    assert rc == 0 and out.strip().splitlines()[-1] == str(target) and target.read_bytes().startswith(PNG_MAGIC)


def test_plot_log_bytes_axis(capsys, runs, tmp_path):
    linear, log = tmp_path / "linear.png", tmp_path / "log.png"
    assert run(capsys, "plot", runs["local_sgd"], runs["resist"], "--out", linear)[0] == 0
    assert run(capsys, "plot", runs["local_sgd"], runs["resist"], "--out", log, "--log-bytes")[0] == 0
    assert log.read_bytes().startswith(PNG_MAGIC) and log.read_bytes() != linear.read_bytes()


def test_labels(runs):
    both = [read_run(runs["local_sgd"]), read_run(runs["resist"])]
    assert labels_for(both) == ["local_sgd S=2", "resist S=2"]
    assert labels_for(both, ["a", "b"]) == ["a", "b"]
    assert labels_for([both[1], both[1]]) == ["resist S=2 (resist)"] * 2  # same algo twice: + folder name
    with pytest.raises(ValueError, match="2 run folder"):
        labels_for(both, ["only one"])


def test_plot_wrong_number_of_labels(capsys, runs):
    rc, _, err = run(capsys, "plot", runs["local_sgd"], runs["resist"], "--labels", "a,b,c")
    one_line_error(rc, err, "--labels")


def test_plot_missing_folder(capsys, tmp_path):
    rc, _, err = run(capsys, "plot", tmp_path / "nope")
    one_line_error(rc, err, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    rc, _, err = run(capsys, "plot", tmp_path / "empty")
    one_line_error(rc, err, tmp_path / "empty", "metrics.jsonl")


def _copy(run_dir, dst):
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns("*.pt", "checkpoints"))
    return dst


def test_plot_no_evaluated_round(capsys, runs, tmp_path):
    bad = _copy(runs["resist"], tmp_path / "noeval")
    rows = [json.loads(line) for line in (bad / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("test_acc"), row.pop("best_acc")
    (bad / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, _, err = run(capsys, "plot", bad)
    one_line_error(rc, err, bad / "metrics.jsonl", "no evaluated round")
    rc, out, _ = run(capsys, "project", bad)  # the projection needs no accuracy
    assert rc == 0 and "PROJECTION" in out


def test_plot_corrupt_line(capsys, runs, tmp_path):
    bad = _copy(runs["resist"], tmp_path / "corrupt")
    lines = (bad / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]  # a torn write
    (bad / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    for command in ("plot", "project"):
        rc, _, err = run(capsys, command, bad)
        one_line_error(rc, err, bad / "metrics.jsonl", "line 2")


def test_plot_without_matplotlib(capsys, runs, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    rc, _, err = run(capsys, "plot", runs["resist"], "--out", tmp_path / "x.png")
    one_line_error(rc, err, "matplotlib", "resist[plot]")
    assert not (tmp_path / "x.png").exists()


# --- the projection, by hand ----------------------------------------------------------------------
def rows(*rounds, step=4):
    """Synthetic metrics rows from (compute_s, cumulative sent_bytes per worker) pairs."""
    out, t = [], 0.0
    for r, (compute, sent) in enumerate(rounds):
        t += compute
        out.append({"round": r, "step": step * (r + 1), "compute_s": compute, "comm_s": 0.0, "time_s": t,
                    "sent_bytes": list(sent)})
    return out


def test_projection_one_round_by_hand():
    # compute 1 s + 1e9 bytes at 1 Gbit/s (8 s) + 2(W-1) = 2 messages * 50 us
    p = pj.project_run(rows((1.0, [1e9, 1e9])), "r", gbits=[1, 10, 100], latency_us=50)
    assert p.projected_s[1] == pytest.approx(1 + 8 + 2 * 50e-6)
    assert p.projected_s[10] == pytest.approx(1 + 0.8 + 100e-6)
    assert p.projected_s[100] == pytest.approx(1 + 0.08 + 100e-6)
    assert p.compute_s == 1.0 and p.sent_per_round == 1e9 and p.messages_per_round == 2
    assert pj.projected_round_s(1.0, 1e9, 0, 1.0, 0.0) == pytest.approx(9.0)


def test_projection_takes_the_slowest_worker_of_each_round():
    # round 1: worker 0 sends 1e9, worker 1 2e9 -> 2e9; round 2: +1e9 and +0.5e9 -> 1e9
    r = rows((1.0, [1e9, 2e9]), (2.0, [2e9, 2.5e9]))
    assert pj.round_sent(r) == [2e9, 1e9]
    assert pj.cumulative_sent(r) == [2e9, 2.5e9]
    p = pj.project_run(r, "r", gbits=[1], latency_us=0)
    assert p.projected_s[1] == pytest.approx((1 + 16) + (2 + 8))
    assert p.measured_s == 3.0


def test_projection_counter_restart_and_messages():
    # resumed on 4 workers after 1 round on 2: the counters restart, the totals carry on
    r = rows((1.0, [100, 100]), (1.0, [50, 60, 70, 80]))
    assert pj.round_sent(r) == [100, 80]
    assert pj.cumulative_sent(r) == [100, 180]
    assert pj.round_messages(r) == [2, 6]  # 2(W-1) per all-reduce
    assert pj.round_messages(r, "data_parallel") == [2 * 5, 6 * 5]  # 4 steps + the buffers, per round
    assert pj.round_messages(rows((1.0, [0, 0]))) == [0]  # nothing sent (ensembles): no message
    recorded = rows((1.0, [10, 10]))
    recorded[0]["messages"] = 7
    assert pj.round_messages(recorded) == [7]


def test_projection_speedup_relative_to_first():
    base = pj.project_run(rows((1.0, [1e9, 1e9])), "base", gbits=[1, 100], latency_us=0)  # 9 s, 1.08 s
    fast = pj.project_run(rows((1.0, [0.25e9, 0.25e9])), "fast", gbits=[1, 100], latency_us=0)  # 3 s, 1.02 s
    pj.compare([base, fast])
    assert base.speedup == {1: 1.0, 100: 1.0}
    assert fast.speedup[1] == pytest.approx(3.0) and fast.speedup[100] == pytest.approx(1.08 / 1.02)
    table = pj.format_table([base, fast], 0)
    assert "PROJECTION" in table and "3.00x" in table


@pytest.mark.parametrize("gbits,latency", [([0], 50), ([-1], 50), ([1], -1), ([], 50)])
def test_projection_rejects_bad_links(gbits, latency):
    with pytest.raises(ValueError):
        pj.project_run(rows((1.0, [1, 1])), "r", gbits=gbits, latency_us=latency)


# --- resist project -------------------------------------------------------------------------------
def test_project_prints_table(capsys, runs):
    rc, out, err = run(capsys, "project", runs["local_sgd"], runs["resist"])
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("PROJECTION")
    header = lines[1]
    for speed in ("1 Gbit/s", "10 Gbit/s", "100 Gbit/s"):
        assert f"proj. {speed}" in header
    assert lines[2].startswith("local_sgd S=2") and lines[3].startswith("resist S=2")
    assert "best % (higher better)" in header  # what each run reached, beside its speed-up
    best = max(json.loads(line).get("test_acc") or -1 for line in (runs["resist"] / "metrics.jsonl").open())
    assert f"{best:.2f}%" in lines[3]
    assert lines[2].count("(1.00x)") == 3  # the first run is the reference
    assert "2(W-1)" in out  # the message-count assumption is stated


def test_project_json_and_options(capsys, runs):
    rc, out, _ = run(capsys, "project", runs["local_sgd"], runs["resist"], "--gbits", "1", "25",
                     "--latency-us", "0", "--labels", "L,R", "--json")
    assert rc == 0
    rep = json.loads(out)
    assert rep["projection"] is True and rep["gbits"] == [1.0, 25.0] and rep["notes"]
    first, second = rep["runs"]
    assert [first["label"], second["label"]] == ["L", "R"]
    rows_ = [json.loads(line) for line in (runs["resist"] / "metrics.jsonl").read_text().splitlines()]
    compute = sum(r["compute_s"] for r in rows_)
    prev, sent = [0, 0], 0
    for r in rows_:  # the slowest worker's bytes of each round
        sent += max(s - p for s, p in zip(r["sent_bytes"], prev))
        prev = r["sent_bytes"]
    assert second["measured_compute_s"] == pytest.approx(compute)
    assert second["projected"][0]["time_s"] == pytest.approx(compute + sent * 8 / 1e9)
    assert second["projected"][1]["time_s"] == pytest.approx(compute + sent * 8 / 25e9)
    for p in first["projected"]:
        assert p["speedup_vs_first"] == 1.0
    for g, p in zip([1.0, 25.0], second["projected"]):
        ref = next(q for q in first["projected"] if q["gbits"] == g)
        assert p["speedup_vs_first"] == pytest.approx(ref["time_s"] / p["time_s"])


@pytest.mark.parametrize("extra,needle", [(["--gbits", "0"], "positive"), (["--latency-us", "-5"], "latency")])
def test_project_bad_options(capsys, runs, extra, needle):
    rc, _, err = run(capsys, "project", runs["resist"], *extra)
    one_line_error(rc, err, needle)


def test_projection_charges_the_busier_direction_and_counted_messages():
    from resist.analysis.projection import project_run

    rows = [{"round": 0, "step": 1, "compute_s": 1.0, "time_s": 1.0, "sent_bytes": [10**9, 0],
             "recv_bytes": [0, 3 * 10**9], "messages": 7},
            {"round": 1, "step": 2, "compute_s": 1.0, "time_s": 2.0, "sent_bytes": [2 * 10**9, 10**9],
             "recv_bytes": [3 * 10**9, 3 * 10**9], "messages": 0}]
    p = project_run(rows, "x", gbits=[8.0], latency_us=1000.0)
    # round 0: rank 1 received 3 GB -> 3 s at 8 Gbit/s, + 7 ms; round 1: rank 0 received 3 GB more -> 3 s
    assert p.projected_s[8.0] == pytest.approx(1 + 3 + 0.007 + 1 + 3)


# --- language-model runs: the headline is bits per byte, lower is better ----------------------------
def fake_run(path, algo, scores, task="lm", config=True):
    """A run folder as training writes it, without training: 2 workers, one evaluation per round with
    ``scores`` as the task's headline (bits per byte, or accuracy for ``task="classification"``)."""
    from resist.presets import preset

    path.mkdir(parents=True)
    name = "gpt_char_cpu" if task == "lm" else "smoke"
    if config:
        cfg = preset(name).replace(**{"algo.name": algo, "algo.workers": 2})
        (path / "config.json").write_text(cfg.dumps())
    rows, best = [], None
    for r, score in enumerate(scores):
        row = {"round": r, "step": 10 * (r + 1), "loss": 3.0, "compute_s": 1.0 + r, "comm_s": 0.0,
               "time_s": float(sum(range(1, r + 2))), "sent_bytes": [1000 * (r + 1)] * 2}
        if task == "lm":
            best = score if best is None else min(best, score)
            row.update(test_loss=score * 0.6931, test_bpb=score, best_bpb=best)
        else:
            best = score if best is None else max(best, score)
            row.update(test_acc=score, test_top5=score, best_acc=best)
        rows.append(row)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    key = "bpb" if task == "lm" else "acc"
    (path / "summary.json").write_text(json.dumps({"algo": algo, f"best_{key}": best, f"final_{key}": scores[-1]}))
    return path


@pytest.fixture
def lm_runs(tmp_path):
    return {"local_sgd": fake_run(tmp_path / "lsgd", "local_sgd", [4.0, 3.2, 2.9, 3.0]),
            "resist": fake_run(tmp_path / "resist", "resist", [4.1, 3.5, 3.1, 2.95])}


def test_lm_run_reads_bits_per_byte(lm_runs):
    r = read_run(lm_runs["resist"], need_eval=True)
    assert r.task == "lm" and r.headline.key == "test_bpb" and not r.headline.higher_is_better
    assert len(r.evaluated) == 4 and r.best() == 2.95  # the lowest, not the highest or the last
    (lm_runs["resist"] / "config.json").unlink()  # a folder copied without its config: summary.json tells
    assert read_run(lm_runs["resist"]).task == "lm"


def test_plot_lm_runs(capsys, lm_runs):
    rc, out, err = run(capsys, "plot", lm_runs["local_sgd"], lm_runs["resist"])
    png = lm_runs["resist"].parent / "bits_per_byte.png"
    assert rc == 0, err
    assert out.strip().splitlines()[-1] == str(png) and png.read_bytes().startswith(PNG_MAGIC)


def test_plot_lm_axis_is_bits_per_byte(lm_runs, monkeypatch, tmp_path):
    from resist.analysis import plot as plot_mod

    drawn = []
    real = plot_mod.plot_runs

    def spy(runs, labels, out, log_bytes=False, targets=()):
        path = real(runs, labels, out, log_bytes, targets)
        drawn.append([[r[runs[0].headline.key] for r in run.evaluated] for run in runs])
        return path

    monkeypatch.setattr(plot_mod, "plot_runs", spy)
    assert main(["plot", str(lm_runs["resist"]), "--out", str(tmp_path / "p.png")]) == 0
    assert drawn == [[[4.1, 3.5, 3.1, 2.95]]]


def test_plot_and_project_refuse_mixed_tasks(capsys, lm_runs, tmp_path):
    image = fake_run(tmp_path / "image", "resist", [10.0, 20.0], task="classification")
    for command in ("plot", "project"):
        rc, _, err = run(capsys, command, lm_runs["resist"], image)
        one_line_error(rc, err, "different tasks", "(lm)", "(classification)")


def test_project_lm_shows_best_bits_per_byte(capsys, lm_runs):
    rc, out, err = run(capsys, "project", lm_runs["local_sgd"], lm_runs["resist"])
    assert rc == 0, err
    lines = out.splitlines()
    assert "best bits/byte (lower better)" in lines[1]
    assert "2.9000" in lines[2] and "2.9500" in lines[3]  # each run's lowest, not its last (3.0 / 2.95)
    rc, out, _ = run(capsys, "project", lm_runs["local_sgd"], lm_runs["resist"], "--json")
    best = [r["best"] for r in json.loads(out)["runs"]]
    assert best == [{"metric": "test_bpb", "value": 2.9, "higher_is_better": False},
                    {"metric": "test_bpb", "value": 2.95, "higher_is_better": False}]


def test_headlines_match_the_tasks():
    """plot's table of headlines (kept free of torch) says what each task records and prefers."""
    from resist.analysis.plot import HEADLINES
    from resist.registry import TASKS
    from resist.tasks import make_task

    scores = {"test/top1": 50.0, "test/top5": 90.0, "test/loss": 2.0, "test/bpb": 2.9, "test/map50": 10.0,
              "test/map50_voc07": 9.0}
    assert set(HEADLINES) == set(TASKS)
    for name in TASKS:
        task = make_task(name)
        assert HEADLINES[name].higher_is_better == task.higher_is_better
        assert HEADLINES[name].key in task.record(scores, task.worst)


# --- time and bytes to a target ------------------------------------------------------------------
def _rows(scores, step=10, sent=100, epoch_steps=40):
    """Metrics rows: one round of ``step`` steps each, ``sent`` bytes per worker per round."""
    return [{"round": i, "step": step * (i + 1), "epoch": step * (i + 1) / epoch_steps, "compute_s": 1.0,
             "time_s": 2.0 * (i + 1), "elapsed_s": 3.0 * (i + 1), "sent_bytes": [sent * (i + 1)] * 2,
             **({} if s is None else {"test_acc": s})} for i, s in enumerate(scores)]


def _run(rows, algo="resist", task="classification", **algo_cfg):
    from resist.analysis.plot import Run

    cfg = {"algo": {"name": algo, "workers": 2, "local_iters": 10, **algo_cfg}, "optim": {"epochs": 1.0},
           "model": {"name": "paper_resnet101", "width": 0.125}, "data": {"task": task}}
    return Run(pathlib.Path("x"), rows, cfg, task)


def test_time_to_target_is_the_first_evaluation_at_least_as_good():
    from resist.analysis.target import time_to

    run = _run(_rows([40.0, None, 55.0, 50.0, 60.0]))
    got = time_to(run, 55.0)
    assert (got.round, got.steps, got.time_s, got.wall_s, got.sent_bytes) == (2, 30, 6.0, 9.0, 300)
    assert time_to(run, 60.5) is None
    lm = _run([{**r, "test_bpb": r.pop("test_acc")} if "test_acc" in r else r for r in _rows([3.0, 2.5, 2.6])],
              task="lm")
    assert time_to(lm, 2.55).round == 1 and time_to(lm, 2.4) is None  # lower is better


def test_default_targets_are_the_lowest_best_and_local_sgds_final_less_half_a_point():
    from resist.analysis.target import default_targets

    lsgd, resist = _run(_rows([50.0, 62.0, 61.0]), "local_sgd"), _run(_rows([45.0, 59.0, 58.0]))
    got = {t.name: t.value for t in default_targets([lsgd, resist])}
    assert got == {"lowest best": 59.0, "local SGD final - 0.5": 60.5}
    assert [t.name for t in default_targets([resist])] == ["lowest best"]


def test_deterministic_cost_counts_the_busiest_workers_blocks_and_whole_rounds():
    """22 partitionable blocks over 2 workers: 11 each; the warm-up's round (0) and the cool-down's last
    (round 3 of 4: 40 steps an epoch, 10 a round, cool-down 0.25 epoch) train all 22."""
    from resist.analysis.target import StepCost

    cost = StepCost(full_s=1.0, per_block_s=0.02, blocks=22, source="test")
    run = _run(_rows([1, 2, 3, 4]), warmup_epochs=0.25, cooldown_epochs=0.25)
    assert cost.held_by_slowest(run) == [22, 11, 11, 22]
    assert cost.cumulative(run) == pytest.approx([10.0, 17.8, 25.6, 35.6])
    assert cost.held_by_slowest(_run(_rows([1, 2]), "local_sgd")) == [22, 22]
    assert cost.held_by_slowest(_run(_rows([1]), min_depth=14)) == [14]


def test_project_and_plot_report_time_to_target(capsys, runs, tmp_path):
    rc, out, err = run(capsys, "project", runs["local_sgd"], runs["resist"], "--target", "101")
    assert rc == 0, err
    assert "To --target = 101.00%" in out and out.count("not reached") == 2
    rc, out, err = run(capsys, "project", runs["local_sgd"], runs["resist"])
    assert rc == 0 and "To lowest best" in out and "To local SGD final - 0.5" in out
    rc, out, _ = run(capsys, "project", runs["local_sgd"], runs["resist"], "--json")
    body = json.loads(out)
    assert body["runs"][0]["to_target"]["lowest best"]["reached"]["round"] >= 0
    png = tmp_path / "t.png"
    rc, out, err = run(capsys, "plot", runs["local_sgd"], runs["resist"], "--out", png, "--target", "10")
    assert rc == 0, err
    assert "To --target = 10.00%" in out and out.strip().splitlines()[-1] == str(png)


def test_step_costs_file_that_is_not_a_step_breakdown_is_one_line(capsys, runs, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    rc, _, err = run(capsys, "project", runs["local_sgd"], "--step-costs", bad)
    one_line_error(rc, err, "is not a step_breakdown result")


def test_project_rounds_mean_message_counts():
    one = pj.RunProjection("a", 3, 3, 3, 1.0, 1.0, 1e6, 61 / 3, {1.0: 1.0}, {1.0: 1.0})
    two = pj.RunProjection("b", 3, 3, 3, 1.0, 1.0, 1e6, 12.0, {1.0: 1.0}, {1.0: 1.0})
    table = pj.format_table([one, two], 50)
    assert " 20.3 " in table and "20.333" not in table and " 12 " in table and "12.0" not in table


def test_demo_table_and_project_agree_on_bytes_per_round(capsys, tmp_path, monkeypatch):
    import resist.data.datasets as ds

    monkeypatch.setattr(ds, "CIFAR10_URL", (tmp_path / "nowhere.tar.gz").as_uri())
    monkeypatch.delenv("RESIST_DATA_DIR", raising=False)
    (tmp_path / "empty").mkdir()
    # 4 workers, 4 rounds: per worker, what it sent and what it received differ, and the busiest worker
    # changes from round to round; a table of the busiest total sent over rounds read 1.70 MB where
    # resist project read 1.74.
    rc, out, err = run(capsys, "demo", "--data-dir", str(tmp_path / "empty"), "--workers", "4", "--max-rounds", "4",
                       "--out", str(tmp_path / "demo"))
    assert rc == 0, err
    shown = {line.split()[0]: " ".join(line.split()[-2:]) for line in out.splitlines()
             if line.startswith(("resist ", "local_sgd "))}
    demo = tmp_path / "demo"
    rc, out, _ = run(capsys, "project", str(demo / "resist"), str(demo / "local_sgd"), "--json")
    projected = {r["run_dir"].split("/")[-1]: r["sent_bytes_per_round"] for r in json.loads(out)["runs"]}
    assert shown == {algo: human_bytes(b) for algo, b in projected.items()}
