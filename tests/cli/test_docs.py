"""The documentation's commands run and its links resolve: every ``resist ...`` command in a fenced
block of README.md or docs/*.md parses with the CLI (``train`` / ``config`` commands also build and
validate their whole config, as ``resist config`` does), and every relative link names a file."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from resist.cli import main, make_parser

ROOT = Path(__file__).parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands(path: Path) -> list[list[str]]:
    """The ``resist`` commands of a file's fenced code blocks (continuation lines joined, comments cut)."""
    out = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", path.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("$ "):
                line = line[2:]
            words = shlex.split(line) if line else []
            if "resist.cli" in words:  # torchrun ... -m resist.cli train ...
                words = ["resist", *words[words.index("resist.cli") + 1:]]
            if words[:1] == ["resist"] and len(words) > 1:
                out.append(words[1:])
    return out


ALL = [(p.relative_to(ROOT).as_posix(), argv) for p in DOCS for argv in commands(p)]


def test_the_docs_have_commands_to_check():
    assert len(ALL) >= 25 and {a[0] for _, a in ALL} >= {"train", "plot", "project", "config"}


@pytest.mark.parametrize("where,argv", ALL, ids=[f"{w}:{' '.join(a)[:60]}" for w, a in ALL])
def test_every_documented_command_parses(where, argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if argv[0] in ("train", "config"):
        # `resist config` resolves the preset plus every override and validates it, running nothing.
        flags = [a for a in argv[1:] if a not in ("--resume", "--auto-resume", "--force")]
        if "--resume" in argv:
            i = argv.index("--resume")
            flags = argv[1:i] + argv[i + 2:]
        rc = main(["config", *flags])
        out, err = capsys.readouterr()
        assert rc == 0, f"{where}: resist {' '.join(argv)}: {err.strip()}"
        return
    try:
        make_parser().parse_args(argv)
    except SystemExit as e:
        assert e.code == 0, f"{where}: resist {' '.join(argv)}: {capsys.readouterr().err.strip()}"


def links(path: Path) -> list[str]:
    return [m for m in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()) if "://" not in m]


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_every_relative_link_names_a_file(path):
    missing = [link for link in links(path) if not (path.parent / link).exists()]
    assert not missing, f"{path.relative_to(ROOT)} links to files that do not exist: {missing}"
