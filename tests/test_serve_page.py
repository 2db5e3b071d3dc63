"""The node's web page in a real headless browser (Debian's chromium through selenium):
the served models, the catalogue of every listing on chain with its lineage graph, a
streamed chat that shows its sources, and the task view's table and plot.

The listings are real: tasks run round by round through the TaskRegistry and listed in the
Market on a py-evm scratch chain (tests/listed_chain.py), one with a hostile name.

The task view is fed a fixed list here (the daemon's own view needs a running task, which
tests/test_serve_daemon.py covers without a browser); everything else is the real server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from listed_chain import XSS_NAME, shared_listings
from serve_tiny import tiny_model_dir

from flockd.market.catalogue import ListingCatalogue
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
    chain, ids = shared_listings()
    tiny = ServedLM("tiny", tiny_model_dir(tmp_path_factory))
    # as market_fetch would leave it once it fetched and verified listing 1 (flockd.market.held.listing_of)
    tiny.listing = {"listing_id": ids["first"], "task_id": 1, "lineage_root": "0x" + "00" * 32, "rounds": 2,
                    "lister": "0x" + "00" * 20, "licence": "MIT"}
    app = ServeApp([tiny], index=index, tasks=two_rounds)
    app.listings = ListingCatalogue(*chain.clients(), chain.arena_client()).page
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

    # the catalogue: every listing on chain, the hostile name as text, each lineage a graph
    wait.until(seen.text_to_be_present_in_element((By.ID, "listing-cards"), "digits-winner"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#listing-cards .listing-card")) == 5
    assert "listings 1–5 of 5" in browser.find_element(By.ID, "listings-status").text
    assert browser.find_element(By.CSS_SELECTOR, "#listing-2 .listing-name").text == XSS_NAME
    assert "<script>alert(2)</script>" in browser.find_element(By.ID, "listing-2").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#listings img, #listings script, #listings b")
    served = browser.find_element(By.ID, "listing-1")
    assert "served here as tiny" in served.text and "served here" not in browser.find_element(By.ID, "listing-2").text
    graph = served.find_elements(By.CSS_SELECTOR, "svg .node")  # task → round 0 → round 1 → listing
    assert len(graph) == 4 and len(served.find_elements(By.CSS_SELECTOR, "svg .edge")) == 3
    graph[1].click()
    details = served.find_element(By.CSS_SELECTOR, ".node-details").text
    assert "round 0: 1/1 accepted" in details and "model_hash" in details
    started = browser.find_elements(By.CSS_SELECTOR, "#listing-3 svg .node")  # listing 1 → task → round 0 → listing
    assert len(started) == 4 and "started from" in started[0].text
    seeded = browser.find_elements(By.CSS_SELECTOR, "#listing-4 svg .node")  # Arena → task → round 0 → listing
    assert len(seeded) == 4 and "winner scored" in seeded[0].text
    winner = browser.find_element(By.ID, "listing-5")  # an Arena winner listed as it is: Arena → listing
    assert len(winner.find_elements(By.CSS_SELECTOR, "svg .node")) == 2 and "Arena winner" in winner.text
    catalogue_shot = os.environ.get("FLOCKD_SERVE_CATALOGUE_SCREENSHOT")
    if catalogue_shot:  # docs/serving-catalogue.png is taken this way, the whole section in view
        browser.set_window_size(1100, 2400)
        browser.find_element(By.ID, "listings").screenshot(catalogue_shot)
        browser.set_window_size(1100, 1400)
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

