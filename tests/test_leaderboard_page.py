"""The rendered board in a real browser: Debian's headless Chromium (installed by `make setup`), driven by playwright.

The page is opened from a file:// URL with every request recorded: one row per entry, sorting by a column changes
the order (and back), the trade-off plot has a marker per plotted entry, nothing is fetched from anywhere but the
page's own file, and the console stays free of errors. A screenshot is kept as a test artifact (in the test's
tmp folder, and in $EMBENCH_TEST_ARTIFACTS when set).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from embench.leaderboard import Tags, publish, render_board
from tests.test_leaderboard import leaderboard_runs

CHROMIUM = Path("/usr/bin/chromium")
# Headless flags for a container: no sandbox (root), no GPU, and none of Chromium's own background traffic.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def rendered_board(tmp_path_factory, lora_adapter) -> Path:
    """Three real entries (one judged by another judge, allowed and flagged), rendered."""
    runs = leaderboard_runs(tmp_path_factory, lora_adapter)
    board = tmp_path_factory.mktemp("page") / "leaderboards" / "tiny"
    publish(board, [runs["base"], runs["lora"]])
    publish(board, [runs["other-judge"]], Tags(defense="judge-swap"), allow_mixed_judges=True)
    render_board(board)
    return board


def header(page, name: str):
    headers = page.locator("#leaderboard thead th")
    return headers.nth([text.strip() for text in headers.all_inner_texts()].index(name))


def column(page, name: str) -> list[str]:
    index = int(header(page, name).evaluate("cell => cell.cellIndex"))
    return [row.locator("td").nth(index).get_attribute("data-value")
            for row in page.locator("#leaderboard tbody tr").all()]


def test_board_page_in_headless_chromium(rendered_board, tmp_path):
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: `make setup` installs Debian's chromium (apt-get)"
    from playwright.sync_api import sync_playwright

    board = json.loads((rendered_board / "leaderboard.json").read_text())
    problems, requests = [], []
    screenshot = tmp_path / "leaderboard.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto((rendered_board / "index.html").as_uri())

            assert page.locator("#leaderboard tbody tr").count() == len(board["entries"]) == 3
            assert column(page, "#") == ["1", "2", "3"]
            assert column(page, "Model") == [row["model"] for row in board["entries"]]
            assert page.locator("#mixed-judges").is_visible()
            assert page.locator("#leaderboard .flag").count() == 1

            # Sorting by a column reorders the rows, ascending then descending; "#" restores the ranking.
            def click(name: str) -> list[str]:
                header(page, name).locator("button").click()
                return column(page, name)

            incoherent = column(page, "Incoherent")
            assert click("Incoherent") == sorted(incoherent, key=float)
            assert page.locator("th[aria-sort=ascending]").all_inner_texts() == ["Incoherent"]
            assert click("Incoherent") == sorted(incoherent, key=float, reverse=True)
            ids = [row["evaluation_id"] for row in board["entries"]]
            assert click("Evaluation") == sorted(ids) and click("Evaluation") == sorted(ids, reverse=True)
            assert column(page, "Evaluation") != ids or sorted(ids) != ids, "a click changed the order"
            assert click("#") == ["1", "2", "3"] and column(page, "Evaluation") == ids

            plotted = [row for row in board["entries"] if row["em_rate"] and row["in_domain_misaligned"]]
            assert page.locator("#trade-off g.point").count() == len(plotted) == 3
            legend = {row["defense"] or "no defense" for row in plotted}
            assert all(page.locator("#trade-off text", has_text=defense).count() == 1 for defense in legend)
            page.screenshot(path=str(screenshot), full_page=True)

            page.goto((rendered_board.parent / "index.html").as_uri())
            assert page.locator("#boards tbody tr a").all_inner_texts() == ["tiny"]
        finally:
            browser.close()
    assert problems == [], f"console errors: {problems}"
    page_urls = {(rendered_board / "index.html").as_uri(), (rendered_board.parent / "index.html").as_uri()}
    assert set(requests) <= page_urls | {"data:,"}, f"the page fetched {set(requests) - page_urls}"
    assert screenshot.stat().st_size > 20_000 and screenshot.read_bytes().startswith(b"\x89PNG")
    if os.environ.get("EMBENCH_TEST_ARTIFACTS"):
        artifacts = Path(os.environ["EMBENCH_TEST_ARTIFACTS"])
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, artifacts / "leaderboard.png")
