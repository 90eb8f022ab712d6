import json
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
def test_demo_runs_and_writes_a_valid_manifest(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mixwise.cli", "demo", "--out", str(tmp_path), "--n_train", "8", "--budget", "16"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = Plan.load(tmp_path / "selection.json")
    assert plan.budget == 16 and sum(plan.counts.values()) == 16
    assert set(plan.sources) >= {"count", "colour", "spatial", "ocr", "chart", "digits"}
    assert (tmp_path / "report.md").exists() and any((tmp_path / "model").iterdir())
    report = (tmp_path / "report.md").read_text()
    consumed = [
        int(line.split("|")[4])
        for line in report.splitlines()
        if line.startswith("| ") and "---" not in line and "source |" not in line
    ]
    assert sum(consumed) == 16


def test_report_command_takes_the_run_dir_positionally(tmp_path, capsys):
    Plan.uniform({"a": 3, "b": 4}, 5).save(tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report.html").exists() and "wrote" in capsys.readouterr().out
