import json
import shutil

import pytest

from mixwise import Plan
from mixwise.report import build_report

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def make_run(tmp_path, with_signals=True):
    sizes = {"count": 50, "colour": 40, "ocr": 30}
    plan = Plan.from_weights({"count": 2, "colour": 1, "ocr": 1}, sizes, 80, method="dataprophet", seed=1)
    if with_signals:
        plan.extra["metric"] = {s: {"t1": 0.5 + 0.1 * i, "t2": 0.4} for i, s in enumerate(sizes)}
        plan.extra["vote_histogram"] = {"all": [3, 10, 5, 2], "selected": [0, 1, 5, 2]}
        plan.extra["tasks"] = ["t1", "t2"]
        plan.extra["top_set_overlap"] = [[1.0, 0.25], [0.25, 1.0]]
    plan.save(tmp_path)
    history = [
        {"step": k, "loss": 5 - 0.1 * k, "probe_loss/count": 4 - 0.05 * k, "probe_loss/ocr": 4.5, "reward": 0.1 * k}
        for k in range(1, 11)
    ] + [{"step": k, "rewards_by_source/count/exact_match": 0.05 * k} for k in range(1, 11)]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    return plan


def test_report_has_every_section(tmp_path):
    make_run(tmp_path)
    page = build_report(tmp_path).read_text()
    for title in (
        "Allocation",
        "DataProphet metric",
        "ICONS votes",
        "Training loss",
        "probe sets",
        "Reward per source",
    ):
        assert title in page
    assert page.count('src="data:image/png;base64,') == 8
    assert "<td>count</td><td>0.5000</td><td>40</td>" in page


def test_report_without_signals_or_logs(tmp_path):
    make_run(tmp_path, with_signals=False)
    (tmp_path / "trainer_state.json").unlink()
    page = build_report(tmp_path).read_text()
    assert page.count("<img") == 1  # the allocation only
    with pytest.raises(FileNotFoundError, match="not a mixwise run directory"):
        build_report(tmp_path / "nowhere")


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason="needs Debian's chromium + chromium-driver")
def test_report_renders_in_headless_chromium(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    make_run(tmp_path)
    path = build_report(tmp_path)
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
        assert len(images) == 8
        for alt, complete, width, height in images:
            assert complete and width > 100 and height > 100, alt
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
        assert "mixwise run report" in driver.title or "mixwise report" in driver.title
    finally:
        driver.quit()
