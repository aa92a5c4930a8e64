"""`refbasis golden build|verify` and `refbasis conform` end to end, plus the
committed golden set itself (reproduced, nothing added or lost, small)."""

from __future__ import annotations

import json
import shutil

import numpy as np

from conformance import golden as G
from conformance.catalogue import all_specs
from refbasis.cli import main


def _build(tmp_path, suite="schedules"):
    rc = main(["golden", "build", "--suite", suite, "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    return tmp_path


def test_build_writes_every_case_and_the_index(tmp_path, capsys):
    d = _build(tmp_path)
    names = sorted(s.name for s in all_specs(["schedules"]))
    assert sorted(p.name for p in (d / "schedules").iterdir()) == names
    index = json.loads((d / "INDEX.json").read_text())["cases"]
    assert index == {"schedules": names}
    assert f"wrote {len(names)} cases" in capsys.readouterr().out


def test_verify_passes_then_catches_tampering_loss_and_additions(tmp_path, capsys):
    d = _build(tmp_path)
    assert main(["golden", "verify", "--suite", "schedules", "--golden-dir", str(d),
                 "--no-progress"]) == 0
    # A consistent edit (value and its sha256 both changed): only regeneration catches it.
    case = d / "schedules/lr_basisnet_mv3"
    g = G.load_case(case)
    g.outputs["values"] = g.outputs["values"] * np.float32(1.001)
    G.write_case(d, g)
    shutil.rmtree(d / "schedules/mixing_epsilon_step")
    shutil.copytree(d / "schedules/lr_no_warmup", d / "schedules/extra_case")
    capsys.readouterr()
    rc = main(["golden", "verify", "--suite", "schedules", "--golden-dir", str(d),
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "schedules/lr_basisnet_mv3: output values not reproduced" in out
    assert "schedules/mixing_epsilon_step: lost" in out
    assert "schedules/extra_case: added" in out


def test_rebuild_prunes_stale_cases(tmp_path):
    d = _build(tmp_path)
    (d / "schedules/old_case").mkdir()
    (d / "schedules/old_case/case.json").write_text("{}")
    _build(tmp_path)
    assert not (d / "schedules/old_case").exists()


def test_conform_on_a_fresh_build(tmp_path, capsys):
    d = _build(tmp_path)
    capsys.readouterr()
    rc = main(["conform", "--backend", "numpy", "--golden-dir", str(d), "--no-progress"])
    out = capsys.readouterr().out
    n = len(all_specs(["schedules"]))
    assert rc == 0 and out.strip().endswith(f"{n} passed, 0 failed, 0 skipped")
    assert "schedules/lr_basisnet_mv2" in out and "verdict" in out


def test_golden_without_subcommand_prints_help(capsys):
    assert main(["golden"]) == 2
    assert "build" in capsys.readouterr().out


def test_committed_set_is_reproduced_complete_and_small():
    root = G.default_golden_dir()
    assert G.verify_goldens(root, progress=False) == []
    files = [p for p in root.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    assert size < 50e6, size
    assert 80 <= len(G.list_cases(root)) <= 250
    assert not [p for p in files if p.name.endswith(".tmp")]


def test_suite_option_takes_several_and_repeats():
    import pytest

    from refbasis.cli import build_parser

    args = build_parser().parse_args(
        ["conform", "--suite", "ops", "models", "--suite", "schedules"])
    assert args.suite == ["ops", "models", "schedules"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["conform", "--suite", "opz"])
