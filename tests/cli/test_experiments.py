"""experiments/: the runner's help, every suite's run list, the launcher's reuse / resume / fresh decisions
(with ``resist train`` faked), a table written from committed run folders, and the micro-benchmarks'
imports."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))

import common  # noqa: E402
import run  # noqa: E402

SUITE_ARGS = {"transformers": ["--variant", "gpt"]}


def test_run_help_lists_the_suites():
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), "--help"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for suite in ("cifar10", "imagefolder_cifar", "voc", "transformers", "rate_limited", "fair_baselines", "tta",
                  "headline"):
        assert suite in proc.stdout


@pytest.mark.parametrize("suite", run.SUITES)
def test_every_suite_imports_and_lists_its_runs(suite, capsys):
    run.main([suite, *SUITE_ARGS.get(suite, []), "--list"])
    listed = capsys.readouterr().out.splitlines()
    assert listed, f"{suite} lists no runs"
    names = [line.split()[0] for line in listed]
    assert len(set(names)) == len(names), f"{suite} names two runs alike"


def test_flags_after_the_double_dash_reach_every_run(capsys):
    """The runner's documented form `run.py SUITE [options] -- [train flags]` (argparse alone refused it)."""
    run.main(["hetero", "--seeds", "0", "--list", "--", "--max-rounds", "3", "--eval-limit", "64"])
    listed = capsys.readouterr().out.splitlines()
    assert listed and all(line.endswith("--max-rounds 3 --eval-limit 64") for line in listed)


def test_hetero_records_the_slowdown_in_the_command(tmp_path):
    spec = next(s for s in load("hetero").specs(argparse.Namespace(seeds=[1], epochs=4.0, short_rounds=6, workers=4))
                if s.name == "slow2_depthsteps_s1")
    assert spec.env == {"RESIST_FAULTS": "slow:rank=1:speed=0.5;slow:rank=2:speed=0.5"}
    assert "--balance depth+steps" in " ".join(spec.flags)


def test_tta_records_the_command_its_running_runs_were_started_with():
    """The suite's runs in progress (started by bench/tta_suite.py) must be reused / resumed, not restarted:
    the command the launcher records is the one they recorded."""
    spec = next(s for s in load("tta").specs() if s.name == "base_lsgd_w4_s0")
    assert " ".join(["resist", *common.train_args(spec, Path("/r"), "/d")]) == (
        "resist train cifar10_cpu_long --algo local_sgd --workers 4 --seed 0 --data-dir /d --out /r/base_lsgd_w4_s0 "
        "--eval-every 1")


def test_the_best_recipe_is_the_fast_preset():
    """cifar10_cpu_fast is cifar10_cpu_long plus part 3's outer step, the warm preset adds the warm-up, the lean
    one keeps the blocks out of the outer step, and the GPU twin scales the lean preset."""
    from resist.presets import preset
    long, fast = preset("cifar10_cpu_long").to_dict(), preset("cifar10_cpu_fast").to_dict()
    assert (fast["algo"].pop("outer_lr"), fast["algo"].pop("outer_momentum")) == (1.0, 0.5)
    long["algo"].pop("outer_lr"), long["algo"].pop("outer_momentum")
    assert fast == long
    # The GPU twin repeats the lean preset at 14 epochs: its 1 warm-up epoch of 8 becomes 1.75.
    assert load("tta").recipe(14) == ["--outer-lr", "1", "--outer-momentum", "0.5", "--no-outer-blocks",
                                      "--warmup-epochs", "1.75"]
    warm = preset("cifar10_cpu_fast_warm").to_dict()
    assert warm["algo"].pop("warmup_epochs") == 1.0 and fast["algo"].pop("warmup_epochs") == 0.0
    lean = preset("cifar10_cpu_fast_lean").to_dict()
    assert lean["algo"].pop("outer_blocks") is False and warm["algo"]["outer_blocks"] is True
    lean["algo"]["outer_blocks"] = True
    assert lean == preset("cifar10_cpu_fast_warm").to_dict()
    warm["algo"].pop("outer_lr"), warm["algo"].pop("outer_momentum")
    assert warm == fast


@pytest.mark.parametrize("name,variant", [("cifar10_cpu_fast_warm", "var_outer10m05warm1_w4_s0"),
                                          ("cifar10_cpu_fast_lean", "var_outer10m05warm1sh_w4_s0")])
def test_the_warm_presets_are_the_gap_study_variants_they_name(name, variant):
    """cifar10_cpu_fast_warm / _lean train what the tta suite's var_outer10m05warm1 / warm1sh runs trained."""
    from resist.cli import build_config, make_parser

    spec = next(s for s in load("tta").specs() if s.name == variant)
    via_flags = build_config(make_parser().parse_args(["train", spec.preset, *spec.flags]))
    via_preset = build_config(make_parser().parse_args(["train", name, "--algo", "resist",
                                                        "--workers", "4", "--seed", "0"]))
    assert via_flags.to_dict() == via_preset.to_dict()


def load(name):
    return importlib.import_module(f"suites.{name}")


REAL_POPEN = subprocess.Popen


def fake_popen(argv, **kwargs):
    return FakeTrain(argv) if "resist.cli" in argv else REAL_POPEN(argv, **kwargs)  # git stays real


class FakeTrain:
    """``resist train`` as the launcher starts it: records argv, writes a summary, exits 0."""

    calls: list[list[str]] = []

    def __init__(self, argv):
        FakeTrain.calls.append(argv)
        out = Path(argv[argv.index("--out") + 1] if "--out" in argv else argv[argv.index("--resume") + 1])
        (out / "summary.json").write_text("{}")
        self.returncode = 0

    def communicate(self):
        return "", ""


def test_launch_trains_reuses_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(common.subprocess, "Popen", fake_popen)
    monkeypatch.setattr(common, "_force", [])
    FakeTrain.calls = []
    spec = common.Spec("a_w2_s0", "smoke", ["--algo", "resist"])
    out = common.launch(spec, tmp_path, "data")
    cmd = (out / "command.txt").read_text()
    assert cmd == f"resist train smoke --algo resist --data-dir data --out {tmp_path / 'a_w2_s0'}"
    assert (out / "wall_s.txt").is_file() and (out / "library.txt").is_file() and len(FakeTrain.calls) == 1
    common.launch(spec, tmp_path, "data")  # finished, same command: reused
    assert len(FakeTrain.calls) == 1
    # cut short: the same command started, a checkpoint, no finished record -> --resume
    (out / "command.txt").unlink()
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "round_3.pt").write_bytes(b"")
    (out / "wall_s.txt").write_text("10.0\n")
    common.launch(spec, tmp_path, "data")
    assert FakeTrain.calls[-1][3:] == ["train", "--resume", str(out)]
    assert float((out / "wall_s.txt").read_text()) >= 10.0
    # another command into the folder: a fresh run, with --force where `resist train` has it
    monkeypatch.setattr(common, "_force", ["--force"])
    common.launch(common.Spec("a_w2_s0", "smoke", ["--algo", "local_sgd"]), tmp_path, "data")
    assert "--resume" not in FakeTrain.calls[-1] and FakeTrain.calls[-1][-1] == "--force"


def test_cifar10_tables_from_the_committed_run_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", common.RESULTS)
    run.main(["cifar10", "--only-existing", "--runs", str(ROOT / "docs/results/cifar10_outer"), "--parts", "outer",
              "--workers", "4", "--name", "outer_check", "--results", str(tmp_path)])
    md = (tmp_path / "outer_check_tables.md").read_text()
    body = json.loads((tmp_path / "outer_check.json").read_text())
    assert "python experiments/run.py cifar10" in body["command"] and body["command"] in md and body["env"]["library"]
    assert len(body["runs"]) == 24
    rows = [line for line in md.splitlines() if line.startswith("| 4 |")]
    committed = (ROOT / "docs/results/cifar10_outer_tables.md").read_text().splitlines()
    assert len(rows) == 12 and all(row in committed for row in rows)  # the numbers of the committed table


def test_spread():
    assert common.spread([]) == "-" and common.spread([None]) == "-"
    assert common.spread([1.0]) == "1.00" and common.spread([1.0, 3.0]) == "2.00 ± 1.41"
    assert common.spread([1.0, 3.0], "{:+.1f}") == "+2.0 ± 1.4"


@pytest.mark.parametrize("path", sorted((ROOT / "experiments" / "micro").glob("*.py")), ids=lambda p: p.stem)
def test_micro_benchmarks_import(path):
    spec = importlib.util.spec_from_file_location(f"micro_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.main)


def _scores_run(path, algo, accs, sent=10**6):
    """A loopback run folder with one evaluation per round (classification), as training writes it; each
    worker sends ``sent`` bytes a round."""
    path.mkdir(parents=True)
    rows = [{"round": r, "step": 25 * (r + 1), "epoch": 0.25 * (r + 1), "compute_s": 1.0, "comm_s": 0.0,
             "time_s": float(r + 1), "sent_bytes": [sent * (r + 1)] * 4, "test_acc": a, "best_acc": max(accs[:r + 1])}
            for r, a in enumerate(accs)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "summary.json").write_text(json.dumps({"algo": algo, "best_acc": max(accs), "final_acc": accs[-1]}))


def test_streaming_tables_bound_accuracy_and_time_to_target(tmp_path, monkeypatch):
    """The streaming suite's verdicts from link round times and loopback runs: the round-time bound,
    overlapped minus blocking accuracy, and the composed time to target (rounds x that link's rounds)."""
    suite = load("streaming")
    ap = argparse.ArgumentParser()
    suite.add_arguments(ap)
    args = ap.parse_args(["--overlap", "20", "--merges", "mix", "--acc-runs", str(tmp_path / "acc"),
                          "--acc-seeds", "0"])
    args.extra, args.command, args.name = [], "python experiments/run.py streaming", "streaming_test"
    accs = {"local_sgd": [40, 50, 60, 61], "resist": [35, 45, 58, 60], "overlap20": [34, 44, 57, 59.8],
            "streaming_diloco": [30, 40, 55, 60]}
    for m, a in accs.items():
        _scores_run(tmp_path / "acc" / f"{m}_w4_s0", m, a)
    link = lambda m, wall, compute, comm: {"workers": 4, "ratio": 1.0, "mbit": 2.0, "goodput_mbit": 1.8,  # noqa: E731
                                           "method": m, "rounds": 6, "steady_rounds": 4, "compute_s": compute,
                                           "comm_s": comm, "wall_s": wall, "first_wall_s": wall, "bytes": 10**6}
    links = [link("local_sgd", 20.0, 10.0, 10.0), link("resist", 14.0, 7.0, 7.0), link("overlap20", 7.5, 7.5, 0.0),
             link("streaming_diloco", 12.0, 12.0, 0.0)]
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    suite.tabulate(args, {"links": links, "accuracy": suite.accuracy(args)}, common.environment())
    md = (tmp_path / "results" / "streaming_test.md").read_text()
    # C = 7, L = 14 - 7 = 7: bound 7; overlapped 7.5 -> 1.07x, within 1.10
    assert "| 4 | 2 | 1.800 | 1x | 7.00 | 7.00 | 7.00 | 14.00 | overlap20 | 7.50 | 1.07x | met | 0.54x |" in md
    assert "overlap20 minus blocking ResIST, final test accuracy (mean over seeds [0]): -0.200 (goal: at most 0.5 below; met)" in md
    # lowest best = 59.8 (overlap20's): reached in round 4 by all but... resist 60 at round 4, local SGD 60 at 3
    assert "| lowest best (59.8%) | overlap20 | 1/1 | 4.0 | 30.0 | 4.00 | 1.60x |" in md  # 7.5 x 4; SDL 12 x 4 = 48
    assert "| lowest best (59.8%) | local_sgd | 1/1 | 3.0 | 60.0 |" in md
    assert "lowest best: first to reach it: overlap20; overlap20: 30 s, Streaming DiLoCo 48 s (goal: overlap20 first and Streaming DiLoCo's time >= 1.5x its own: met)" in md
    assert (tmp_path / "results" / "streaming_test.png").is_file()


def test_streaming_prefetch_methods_have_their_own_link_run():
    """``--prefetch TAU`` adds overlapTAU-prefetch, timed by a link run of its own (it sends more bytes,
    earlier), while the merges of one tau share theirs."""
    suite = load("streaming")
    ap = argparse.ArgumentParser()
    suite.add_arguments(ap)
    args = ap.parse_args(["--overlap", "20", "--merges", "mix", "delta", "--prefetch", "12"])
    assert suite.methods(args) == ["local_sgd", "resist", "overlap20", "overlap20-delta", "overlap12-prefetch-mix",
                                   "overlap12-prefetch", "streaming_diloco"]
    assert suite.link_method("overlap20-delta") == "overlap20"
    assert suite.link_method("overlap12-prefetch") == suite.link_method("overlap12-prefetch-mix") == "overlap12-prefetch"
    assert suite.method_flags("overlap12-prefetch", args) == ["--algo", "resist", "--overlap", "12",
                                                              "--overlap-merge", "delta", "--prefetch"]
    assert suite.method_flags("overlap12-prefetch-mix", args) == ["--algo", "resist", "--overlap", "12",
                                                                  "--mix-alpha", "0.5", "--prefetch"]


def test_streaming_restart_methods_share_their_taus_link_run():
    """``--restart TAU`` adds overlapTAU-restart (the delta merge, momentum restarted at it): the same bytes
    in the same steps as its tau's other merges, so the same link run times it."""
    suite = load("streaming")
    ap = argparse.ArgumentParser()
    suite.add_arguments(ap)
    args = ap.parse_args(["--overlap", "5", "--merges", "delta", "--restart", "5"])
    assert suite.methods(args) == ["local_sgd", "resist", "overlap5-delta", "overlap5-restart", "streaming_diloco"]
    assert suite.link_method("overlap5-restart") == "overlap5"
    assert suite.method_flags("overlap5-restart", args) == ["--algo", "resist", "--overlap", "5", "--overlap-merge",
                                                            "delta", "--overlap-restart"]


def test_rate_limited_to_target_stops_at_the_target(tmp_path, monkeypatch):
    """--to-target (issue 20, part 4): local SGD trains its schedule over the link, ResIST stops at the
    target (--stop-at) and the table says where each got there. The namespaces and the link probe are
    replaced by in-process runs of the same `resist train` command and a fixed probe."""
    from resist.cli import main as train

    suite = load("rate_limited")
    launched = []

    def in_process(workers, mbit, args, what, argv):
        argv = list(argv[2:])  # after `-m resist.cli`
        argv[argv.index("--runtime") + 1] = "inprocess"
        del argv[argv.index("--backend"):argv.index("--backend") + 2]
        launched.append(argv)
        assert train(argv) == 0, what

    monkeypatch.setattr(suite, "launch", in_process)
    monkeypatch.setattr(suite, "probe", lambda w, mbit, args, out, n: {"goodput_mbit": 8.0 if mbit else 800.0,
                                                                       "latency_us": 50.0, "probe_bytes": n})
    monkeypatch.setattr(suite, "cleanup", lambda: None)
    monkeypatch.setattr(suite.os, "geteuid", lambda: 0)
    monkeypatch.setattr(suite.shutil, "which", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(suite.signal, "signal", lambda *a: None)
    run.main(["rate_limited", "--preset", "smoke", "--workers", "2", "--ratios", "1", "--algos", "local_sgd", "resist",
              "--to-target", "--target", "1", "--resist-flags", "--min-depth 1", "--runs", str(tmp_path / "runs"),
              "--results", str(tmp_path / "results"), "--name", "rl_test", "--", "--eval-every", "1"])
    resist_link = next(a for a in launched if "resist" in a and "--stop-at" in a)
    assert resist_link[resist_link.index("--stop-at") + 1] == "1.0000" and "--min-depth" in resist_link
    assert not any("--stop-at" in a for a in launched if "local_sgd" in a)
    rows = json.loads((tmp_path / "results" / "rl_test.json").read_text())["rows"]
    got = {r["algo"]: r for r in rows}
    assert got["resist"]["reached"]["round"] == 1 and got["resist"]["rounds"] == 1  # stopped at its first evaluation
    assert got["local_sgd"]["rounds"] > 1  # the reference trains its whole schedule
    md = (tmp_path / "results" / "rl_test.md").read_text()
    assert "## To the target" in md and "| 2 | " in md.split("## To the target")[1]
    lsgd = suite.load_run(tmp_path / "runs" / "local_sgd_w2_r1")
    args = argparse.Namespace(target=None)
    assert suite.target_of(args, lsgd) == pytest.approx(lsgd["summary"]["final_acc"] - 0.5)
    assert md.count("| equal accuracy |") == 2 and "Runs trained by library" in md  # --reuse can be told apart
    assert (tmp_path / "results" / "rl_test_w2_r1.png").stat().st_size > 0 and "(rl_test_w2_r1.png)" in md
    # the headline table's row for it: time and bytes ratios at equal accuracy, from the same file
    headline = load("headline")
    (tmp_path / "results" / "rate_limited_to_target.json").write_text((tmp_path / "results" / "rl_test.json").read_text())
    monkeypatch.setattr(headline, "OUT", tmp_path / "results")
    (row,) = [r for r in headline.rate_limited_rows() if "rate_limited_to_target.json" in r[0]]
    assert len(row) == len(headline.HEAD) and row[8] == "1/1" and "--min-depth 1" in row[0]
    assert got["resist"]["lowest_best"] == min(got["resist"]["best_acc"], got["local_sgd"]["best_acc"])
    want = got["local_sgd"]["reached_lowest"]["sent_mb"] / got["resist"]["reached_lowest"]["sent_mb"]
    assert row[7] == f"{want:.2f}x" and row[5].endswith("x")


def test_streaming_erase_ablations_share_their_taus_link_run():
    """``--erase TAU`` adds the ablations between blocking ResIST and tau: overlapTAU-alpha0 (the steps
    before the merge dropped from the weights) and overlapTAU-erase (from the momentum too), timed by
    their tau's link run, and their control resist-cutTAU (blocking ResIST with as many steps)."""
    suite = load("streaming")
    ap = argparse.ArgumentParser()
    suite.add_arguments(ap)
    args = ap.parse_args(["--overlap", "1", "--merges", "delta", "--erase", "1"])
    assert suite.methods(args) == ["local_sgd", "resist", "overlap1-delta", "overlap1-alpha0", "overlap1-erase",
                                   "resist-cut1", "streaming_diloco"]
    assert suite.link_method("overlap1-erase") == suite.link_method("overlap1-alpha0") == "overlap1"
    # the control: blocking ResIST with 1 of the preset's 25 steps per round cut (8 epochs -> 7.68)
    assert suite.link_method("resist-cut1") == "resist"
    assert suite.method_flags("resist-cut1", args) == ["--algo", "resist", "--epochs", "7.68"]
    assert suite.method_flags("overlap1-alpha0", args) == ["--algo", "resist", "--overlap", "1", "--mix-alpha", "0"]
    assert suite.method_flags("overlap1-erase", args) == ["--algo", "resist", "--overlap", "1", "--mix-alpha", "0",
                                                          "--overlap-restart"]


def test_bn_eval_reproduces_a_runs_logged_accuracy_and_pairs_the_gap(tmp_path, monkeypatch, capsys):
    """experiments/micro/bn_eval.py on two finished runs (local SGD and ResIST, synthetic data): with the
    averaged running statistics it scores each model as its run logged it (so the weights, the evaluation
    scale and the data are the run's), and the gap table pairs the two; a folder that is not a finished run
    is refused in one line."""
    from resist.cli import main as cli

    runs = []
    for algo in ("local_sgd", "resist"):
        out = tmp_path / algo
        assert cli(["train", "smoke", "--algo", algo, "--workers", "2", "--max-rounds", "2", "--out", str(out)]) == 0
        runs.append(str(out))
    spec = importlib.util.spec_from_file_location("micro_bn_eval", ROOT / "experiments" / "micro" / "bn_eval.py")
    bn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bn)
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(sys, "argv", ["bn_eval.py", "--runs", *runs, "--recal", "2", "--batch-sizes", "8",
                                      "--name", "bn_test"])
    bn.main()
    got = json.loads((tmp_path / "results" / "bn_test.json").read_text())["rows"]
    for row in got:
        assert row["scores"]["average"] == pytest.approx(row["final_logged"], abs=1e-9)
        assert set(row["scores"]) == {"average", "batch 8", "recalibrated 2"}
    md = (tmp_path / "results" / "bn_test.md").read_text()
    assert "| resist | local_sgd |" in md
    monkeypatch.setattr(sys, "argv", ["bn_eval.py", "--runs", str(tmp_path)])
    with pytest.raises(SystemExit, match="not a finished run folder"):
        bn.main()


def test_tta_eight_workers_table_compares_each_method_with_local_sgd(tmp_path):
    """Part 2's 8-worker table: each run gets its equal-accuracy ratios and whether it reaches local SGD's
    final - 0.5; the shallow ensemble sends nothing, so it has no byte ratio."""
    tta = load("tta")
    _scores_run(tmp_path / "w8_lsgd_w8_s0", "local_sgd", [40.0, 50.0, 52.0])
    _scores_run(tmp_path / "w8_resist_w8_s0", "resist", [45.0, 52.0, 53.0])
    _scores_run(tmp_path / "w8_ensemble_w8_s0", "ensemble", [30.0, 45.0, 49.0], sent=0)
    lines, raw = tta.workers8(tmp_path, {})  # no step costs measured: no cost ratio
    md = "\n".join(lines)
    assert "| local SGD | 52.00 | 52.00 |" in md
    resist = next(r for r in raw if r["run"] == "w8_resist_w8_s0")
    assert resist["final_gap"] == pytest.approx(1.0) and resist["match_reached"]
    assert "| ResIST | 53.00 | 53.00 | +1.00 |" in md and "yes: " in md
    assert "| shallow ensemble (no communication) | 49.00 | 49.00 | -3.00 |" in md
    ensemble = next(r for r in raw if r["run"] == "w8_ensemble_w8_s0")
    assert ensemble["common_bytes"] is None and not ensemble["match_reached"]
    assert tta.workers8(tmp_path / "nothing", {}) == ([], [])


def test_tta_variants_table_counts_every_seed_with_both_runs(tmp_path):
    """Part 3's table averages over the seeds that have both runs, the third seed included, and a seed
    missing one of its pair is left out (not paired with another seed's run)."""
    tta = load("tta")
    for seed, (lsgd, resist) in enumerate([(60.0, 61.0), (62.0, 60.0), (64.0, 63.0)]):
        _scores_run(tmp_path / f"base_lsgd_w4_s{seed}", "local_sgd", [40.0, lsgd])
        _scores_run(tmp_path / f"var_outer10m05_w4_s{seed}", "resist", [45.0, resist])
    _scores_run(tmp_path / "base_resist_w4_s1", "resist", [45.0, 59.0])
    lines, raw = tta.variants_table(tmp_path, ["var_outer10m05_w4_s0"], {})
    got = {r["variant"]: r["seeds"] for r in raw}
    assert [g["seed"] for g in got["var_outer10m05"]] == [0, 1, 2]
    assert [g["final_gap"] for g in got["var_outer10m05"]] == pytest.approx([1.0, -2.0, -1.0])
    assert [g["seed"] for g in got["base_resist"]] == [1]
    assert "| var_outer10m05 | 3 |" in "\n".join(lines)


def test_tta_bytes_table_separates_whole_and_partitioned_rounds(tmp_path):
    """Part 3's bytes criterion taken apart: a warm-up round (every block held) and a partitioned round are
    measured apart from each run's own bytes, and the bytes ratio at local SGD's final - 0.5 is local SGD's
    cumulative bytes over ResIST's at the rounds each reached it."""
    tta = load("tta")
    _scores_run(tmp_path / "base_lsgd_w4_s0", "local_sgd", [40.0, 50.0, 60.0, 62.0], sent=4 * 10**6)
    run = tmp_path / "var_outer10m05warm05_w4_s0"
    run.mkdir()
    sent, held = [4, 4, 2, 2], [[22] * 4, [22] * 4, [6, 6, 5, 5], [6, 6, 5, 5]]
    rows = [{"round": r, "step": 25 * (r + 1), "epoch": 0.25 * (r + 1), "compute_s": 1.0, "comm_s": 0.0,
             "time_s": float(r + 1), "sent_bytes": [10**6 * sum(sent[:r + 1])] * 4, "blocks_per_worker": held[r],
             "test_acc": a, "best_acc": a} for r, a in enumerate([40.0, 55.0, 62.0, 63.0])]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").write_text(json.dumps({"algo": "resist", "best_acc": 63.0, "final_acc": 63.0,
                                                  "scaled_blocks": list(range(8, 30))}))
    (run / "config.json").write_text(json.dumps({"model": {"name": "paper_resnet101", "width": 0.125}}))
    (run / "library.txt").write_text("65d1ad2abcdef\n")
    lines, raw = tta.where_bytes_go(tmp_path)
    assert len(raw) == 1
    got = raw[0]
    assert (got["whole_round_bytes"], got["whole_rounds"], got["part_round_bytes"]) == (4e6, 2, 2e6)
    assert (got["lsgd_rounds_to_target"], got["rounds_to_target"]) == (4, 3)
    assert got["bytes_ratio_there"] == pytest.approx(16 / 10)
    assert "| var_outer10m05warm05 | 0 | 65d1ad2abc | 4.00 | 4.00 | 2 | 2.00 | 0.50 | 4 / 3 | 1.60x |" in "\n".join(lines)
    assert tta.where_bytes_go(tmp_path / "nothing") == ([], [])
