import json
import re
import subprocess
import sys

import datasets
import pytest

from mixwise import Plan
from mixwise.cli import main


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("demo", "toy", "allocate"):
        assert name in out


@pytest.mark.parametrize("command", ["demo", "toy", "allocate"])
def test_each_command_has_help(command):
    proc = subprocess.run([sys.executable, "-m", "mixwise.cli", command, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage: mixwise " + command in proc.stdout


def test_unknown_command(capsys):
    assert main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err


def test_toy_writes_one_folder_per_source(tmp_path, capsys):
    assert main(["toy", "--out", str(tmp_path), "--n_train", "5", "--n_test", "2", "--families", "count", "ocr"]) == 0
    for fam in ("count", "ocr"):
        dd = datasets.load_from_disk(str(tmp_path / fam))
        assert len(dd["train"]) == 5 and len(dd["test"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["count", "ocr"]


def test_allocate_from_weights_and_sources_on_disk(tmp_path, capsys):
    main(["toy", "--out", str(tmp_path / "toy"), "--n_train", "4", "--n_test", "1", "--families", "count", "ocr"])
    (tmp_path / "w.json").write_text(json.dumps({"count": 1, "ocr": 4}))
    args = ["allocate", "--weights", str(tmp_path / "w.json"), "--budget", "10", "--out", str(tmp_path / "p.json")]
    assert main(args + ["--sources", str(tmp_path / "toy" / "count"), str(tmp_path / "toy" / "ocr")]) == 0
    plan = Plan.load(tmp_path / "p.json")
    assert plan.counts == {"count": 2, "ocr": 8} and plan.sizes == {"count": 4, "ocr": 4}
    assert plan.sources["ocr"].repeated
    assert "repeats rows" in capsys.readouterr().out
    # a selection.json is accepted as the weights file too
    assert main(["allocate", "--weights", str(tmp_path / "p.json"), "--budget", "7", "--out", str(tmp_path)]) == 0
    assert sum(Plan.load(tmp_path).counts.values()) == 7


def test_allocate_rejects_bad_weights(tmp_path):
    (tmp_path / "w.json").write_text(json.dumps({"count": -1, "ocr": 3}))
    with pytest.raises(ValueError, match="source 'count'.*negative"):
        main(["allocate", "--weights", str(tmp_path / "w.json"), "--budget", "10", "--out", str(tmp_path / "p.json")])


def test_yaml_config_with_override(tmp_path):
    (tmp_path / "w.json").write_text(json.dumps({"a": 1, "b": 1}))
    (tmp_path / "s.json").write_text(json.dumps({"a": 10, "b": 10}))
    (tmp_path / "cfg.yaml").write_text(
        f"weights: {tmp_path / 'w.json'}\nsizes: {tmp_path / 's.json'}\nbudget: 5\nout: {tmp_path / 'p.json'}\n"
    )
    assert main(["allocate", "--config", str(tmp_path / "cfg.yaml"), "--budget", "9"]) == 0
    assert Plan.load(tmp_path / "p.json").budget == 9


@pytest.mark.slow
def test_demo_trains_a_selected_and_a_baseline_mixture_and_compares_them(tmp_path):
    # a small base (built into the test's own cache) keeps it fast; the figures themselves are the README's
    base = json.dumps({"pretrain_rows": 6, "pretrain_epochs": 2})
    args = ["demo", "--out", str(tmp_path / "demo"), "--n_train", "8", "--budget", "16", "--test_rows", "8"]
    args += ["--target_rows", "8", "--cache_dir", str(tmp_path / "cache"), "--base", base]
    proc = subprocess.run([sys.executable, "-m", "mixwise.cli", *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "demo"
    plan = Plan.load(out / "selection.json")
    assert plan.method == "dataprophet" and plan.budget == 16 and sum(plan.counts.values()) == 16
    assert set(plan.sources) == {"count", "colour", "spatial", "ocr", "chart", "digits", "shape", "unrelated"}
    assert any((out / "model").iterdir()) and len(list((tmp_path / "cache").glob("toy-base-*"))) == 1
    report = (out / "report.md").read_text()
    rows = [line.split("|") for line in report.splitlines() if line.startswith("| ") and line.count("|") == 8]
    rows = [r for r in rows if r[1].strip() in plan.sources]
    assert {r[1].strip(): int(r[3]) for r in rows} == plan.counts  # planned, as the plan says
    assert sum(int(r[4]) for r in rows) == 16 * 4 and sum(int(r[7]) for r in rows) == 16 * 4  # 4 epochs consumed
    for label in ("base (no fine-tuning)", "uniform", "dataprophet"):
        assert re.search(rf"^  {re.escape(label)} +[01]\.\d{{3}}", proc.stdout, re.M), proc.stdout


def test_demo_refuses_an_unknown_target(capsys):
    assert main(["demo", "--target", "weather"]) == 2
    assert "unknown target family 'weather'" in capsys.readouterr().err


def test_report_command_takes_the_run_dir_positionally(tmp_path, capsys):
    Plan.uniform({"a": 3, "b": 4}, 5).save(tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report.html").exists() and "wrote" in capsys.readouterr().out
