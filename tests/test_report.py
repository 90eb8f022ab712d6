import json
import re
import shutil

import pytest

from mixwise import Plan
from mixwise.cli import main
from mixwise.report import build_report

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SIZES = {"count": 50, "colour": 40, "ocr": 30}


def history(offset: float, targets=("count", "ocr")):
    entries = []
    for k in range(1, 11):
        entries.append({"step": k, "loss": 5 - 0.1 * k + offset, "grad_norm": 1.0, "learning_rate": 1e-3})
        entries.append({"step": k, **{f"probe_loss/{t}": 4 - 0.05 * k + offset for t in targets}})
        entries.append({"step": k, **{f"train_loss_by_source/{s}": 5 - 0.2 * k for s in SIZES}})
        if k % 5 == 0:
            entries.append({"step": k, **{f"eval/{t}/exact_match": 0.1 * k / 10 + offset for t in targets}})
    return entries


def write_run(path, plan, offset=0.0, consumed=None, grpo=False):
    plan.save(path)
    log = history(offset)
    if grpo:
        log += [{"step": k, "reward": 0.1 * k, "rewards_by_source/count/exact_match": 0.05 * k} for k in range(1, 11)]
    (path / "trainer_state.json").write_text(json.dumps({"log_history": log}))
    if consumed is not None:
        (path / "consumed.json").write_text(json.dumps({"consumed": consumed, "planned": plan.counts}))
    return path


def dataprophet_run(tmp_path):
    plan = Plan.from_weights({"count": 2, "colour": 1, "ocr": 1}, SIZES, 80, method="dataprophet", seed=1)
    plan.extra["metric"] = {s: {"t1": 0.5 + 0.1 * i, "t2": 0.4} for i, s in enumerate(SIZES)}
    plan.extra["terms"] = {
        t: {s: {"t1": 0.3 + 0.1 * i, "t2": 0.2} for i, s in enumerate(SIZES)}
        for t in ("qsim", "asim", "isim", "ppl_ratio", "diversity")
    }
    return write_run(tmp_path / "dp", plan, consumed={"count": 40, "colour": 20, "ocr": 19})


def icons_run(tmp_path):
    plan = Plan.from_rows({"count": [1, 2, 3], "colour": [0], "ocr": [5, 6]}, SIZES, method="icons")
    plan.extra.update(
        vote_histogram={"all": [3, 10, 5, 2], "selected": [0, 1, 5, 2]},
        tasks=["t1", "t2", "t3"],
        top_set_overlap=[[1.0, 0.25, 0.5], [0.25, 1.0, 0.1], [0.5, 0.1, 1.0]],
    )
    return write_run(tmp_path / "icons", plan, offset=0.3, consumed={"count": 3, "colour": 1, "ocr": 2}, grpo=True)


def cadc_run(tmp_path):
    stages = [
        Plan.from_weights({"count": 1, "colour": 0, "ocr": 0}, SIZES, 4, extra={"capability": "counting"}),
        Plan.from_weights({"count": 0, "colour": 1, "ocr": 1}, SIZES, 6, extra={"capability": "reading"}),
    ]
    plan = Plan.staged(stages, method="cadc")
    plan.extra.update(
        capability_map={"t1": {"counting": 1, "reading": 0}, "t2": {"counting": 0, "reading": 1}},
        self_influence_curves={"counting": [3.0, 2.0, 1.0], "reading": [3.0, 2.8, 2.7]},
    )
    return write_run(tmp_path / "cadc", plan, offset=-0.2)


def test_report_compares_runs_side_by_side(tmp_path):
    runs = [dataprophet_run(tmp_path), icons_run(tmp_path), cadc_run(tmp_path)]
    path = build_report(runs, tmp_path / "compare.html")
    page = path.read_text()
    for title in (
        "Runs",
        "Allocation",
        "Planned vs consumed rows",
        "Training loss",
        "Training loss per source",
        "Loss per target (probe sets)",
        "Target metrics",
        "Reward per source",
        "DataProphet metric M(s→t)",
        "DataProphet terms",
        "ICONS votes",
        "Overlap of per-task top sets",
        "CADC capability map",
        "CADC self-influence",
        "CADC stages",
    ):
        assert title in page, title
    # one column per run in the summary, with each run's final values
    assert all(f"</span>{name}</th>" in page for name in ("dp", "icons", "cadc"))
    assert "<td>final eval/count/exact_match</td><td>0.1</td><td>0.4</td><td>-0.1</td>" in page
    assert "<td>final loss" not in page and "<td>final training loss</td><td>4</td><td>4.3</td><td>3.8</td>" in page
    # planned vs consumed per source
    assert "<tr><td>ocr</td><td>0.2500</td><td>20</td><td>19</td><td>30</td><td></td></tr>" in page
    assert re.search(r"<td>1: counting</td><td>4</td><td>4</td><td>0</td><td>0</td>", page)


def test_single_run_report_and_missing_run(tmp_path):
    run = dataprophet_run(tmp_path)
    (run / "trainer_state.json").unlink()
    (run / "consumed.json").unlink()
    page = build_report(run).read_text()  # RUN/report.html
    assert "mixwise run report" in page and "Allocation" in page
    assert "Training loss" not in page and "Planned vs consumed" not in page
    with pytest.raises(FileNotFoundError, match="not a mixwise run directory"):
        build_report(tmp_path / "nowhere")


def test_cli_report_takes_several_runs(tmp_path, capsys):
    runs = [str(dataprophet_run(tmp_path)), str(icons_run(tmp_path))]
    out = tmp_path / "page.html"
    assert main(["report", *runs, "--names", "A", "B", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    page = out.read_text()
    assert "</span>A</th>" in page and "</span>B</th>" in page and "2 runs compared" in page
    assert main(["report", str(tmp_path / "nowhere")]) == 2


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason="needs Debian's chromium + chromium-driver")
def test_report_renders_in_headless_chromium(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    path = build_report([dataprophet_run(tmp_path), icons_run(tmp_path), cadc_run(tmp_path)], tmp_path / "r.html")
    n_images = path.read_text().count('src="data:image/png;base64,')
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(path.as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);"
        )
        assert len(images) == n_images >= 14
        for alt, complete, width, height in images:
            assert complete and width > 100 and height > 100, alt
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
        assert "mixwise report" in driver.title
    finally:
        driver.quit()
