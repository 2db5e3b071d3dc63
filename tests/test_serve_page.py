"""The node's web page in a real headless browser (Debian's chromium through selenium):
the catalogue, a streamed chat that shows its sources, and the task view's table and plot.

The task view is fed a fixed list here (the daemon's own view needs a running task, which
tests/test_serve_daemon.py covers without a browser); everything else is the real server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from serve_tiny import tiny_model_dir

from flockd.serve.app import ServeApp
from flockd.serve.lm import ServedLM
from flockd.serve.retrieval import KnowledgeIndex
from flockd.serve.thread import ServerThread

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FACT = "The observatory on Mount Keldra opened in 1911."

pytestmark = pytest.mark.skipif(
    not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)),
    reason=f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); scripts/test installs them",
)


async def two_rounds() -> list[dict]:
    history = [{"round": r, "accepted": 2, "rejected": 0, "test_accuracy": acc, "test_loss": 0.5 - acc / 4}
               for r, acc in enumerate((0.61, 0.78, 0.86))]
    return [{"task_id": 0, "state": "finished", "recipe": "digits-mlp", "rounds": 3, "round": 3,
             "model_hash": "0x" + "ab" * 32, "history": history}]


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    knowledge = tmp_path_factory.mktemp("knowledge")
    (knowledge / "astronomy.md").write_text("# Observatories\n\n" + FACT + "\n\nIts telescope is a refractor.")
    (knowledge / "gardening.txt").write_text("Roses want sun and little water.")
    index = KnowledgeIndex(knowledge, tmp_path_factory.mktemp("index") / "k.sqlite")
    index.refresh()
    app = ServeApp([ServedLM("tiny", tiny_model_dir(tmp_path_factory))], index=index, tasks=two_rounds)
    with ServerThread(app) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,1400"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_the_page_shows_models_chats_with_sources_and_plots_tasks(page_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.wait import WebDriverWait

    wait = WebDriverWait(browser, 60)  # a bound on waiting, not a speed assertion
    browser.get(page_server.url + "/")
    wait.until(seen.text_to_be_present_in_element((By.ID, "models"), "tiny"))
    assert "causal-lm" in browser.find_element(By.ID, "models").text
    assert "(2 chunks indexed)" in browser.find_element(By.ID, "knowledge").text

    browser.find_element(By.ID, "chat-input").send_keys("When did the observatory on Mount Keldra open?")
    browser.find_element(By.ID, "chat-send").click()
    wait.until(seen.text_to_be_present_in_element((By.ID, "chat-status"), "generated"))
    sources = browser.find_elements(By.CSS_SELECTOR, "#conversation ol.sources li")
    assert sources and "astronomy.md" in sources[0].text and "1911" in sources[0].text
    assert browser.find_element(By.CSS_SELECTOR, "#conversation .msg.user").text.endswith("Mount Keldra open?")

    wait.until(seen.text_to_be_present_in_element((By.ID, "task-list"), "digits-mlp"))
    assert browser.find_element(By.ID, "task-plot").is_displayed()
    assert "3 / 3" in browser.find_element(By.ID, "task-list").text
    shot = Path(os.environ.get("FLOCKD_SERVE_SCREENSHOT", tmp_path / "page.png"))  # docs/ takes one by hand
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_the_page_says_what_is_not_there_without_a_daemon(tmp_path_factory, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.wait import WebDriverWait

    app = ServeApp([ServedLM("tiny", tiny_model_dir(tmp_path_factory))])
    with ServerThread(app) as running:
        browser.get(running.url + "/")
        WebDriverWait(browser, 60).until(seen.text_to_be_present_in_element((By.ID, "task-list"), "daemon"))
        assert "not listed on chain" in browser.find_element(By.ID, "models").text
        assert "No knowledge folder" in browser.find_element(By.ID, "knowledge").text

