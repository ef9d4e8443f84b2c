"""The review page in a real headless Chromium (Debian's chromium, driven by Playwright) against
`prefmill review` servers on loopback: keyboard reviews, reload and restart resume, two people
at once, hostile model text, a screenshot, and the page time on 100k pairs (logged, not asserted).

Needs `apt-get install -y chromium` and `pip install playwright` (no browser download).
Set PREFMILL_REVIEW_SCREENSHOT=docs/img/review.png to refresh the README screenshot.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import statistics
import time
from pathlib import Path

import polars as pl
import pytest

from review_support import CHROMIUM, CHROMIUM_ARGS, SHOWCASE, build_fixture, start_server, stop_server

playwright = pytest.importorskip("playwright.async_api", reason="pip install playwright (the Python package only)")
if not shutil.which(CHROMIUM):
    pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium", allow_module_level=True)

log = logging.getLogger("prefmill.test.review")
KEYS = ["1", "2", "t", "x", "1", "2", "s", "1", "b", "a"]          # 10 decisions, as typed
CHOICE = {"1": "A", "a": "A", "2": "B", "b": "B", "t": "tie", "x": "both_bad", "s": "skip"}


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return build_fixture(tmp_path_factory.mktemp("review-browser") / "store", n_prompts=60)


async def _browser(p):
    return await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def _pair(url: str) -> str:
    return url.split("/pair/")[1].split("?")[0]


async def _review(page, keys: list[str]) -> list[tuple[str, str]]:
    """Press each key on the current pair page; return (pair_id, key) in order."""
    done = []
    for k in keys:
        pid = _pair(page.url)
        async with page.expect_navigation():
            await page.keyboard.press(k)
        assert _pair(page.url) != pid
        done.append((pid, k))
    return done


def test_keyboard_review_two_people_reload_and_restart(fx):
    from filters.reviews import decision_of
    from flows.review.session import page_id
    proc, url = start_server(fx.root, fx.pairs, reviewer="alice")
    assert url.startswith("http://127.0.0.1:")                      # loopback unless --host

    async def run():
        async with playwright.async_playwright() as p:
            browser = await _browser(p)
            alice = await (await browser.new_context()).new_page()
            bob = await (await browser.new_context()).new_page()
            await alice.goto(url + "/")
            await bob.goto(url + "/")
            await bob.fill("#reviewer", "bob")
            async with bob.expect_navigation():
                await bob.click("form.who button")
            assert await bob.input_value("#reviewer") == "bob"
            a, b = await asyncio.gather(_review(alice, KEYS), _review(bob, KEYS))
            here = _pair(alice.url)
            await alice.reload()
            assert _pair(alice.url) == here and await alice.get_attribute("#progress", "data-mine") == "10"
            await browser.close()
            return a, b, here

    try:
        a, b, here = asyncio.run(run())
    finally:
        out = stop_server(proc)
    assert "20 decisions this session" in out and "recorded with lineage" in out
    skipped = {p for p, k in a + b if k == "s"}
    assert {p for p, _ in a} & {p for p, _ in b} <= skipped              # two people, different pairs (a skip is
                                                                        # left for the other to decide)
    assert here not in {p for p, _ in a}
    rows = fx.store.read("demo.reviews")
    assert rows.height == 20 and rows["review_id"].n_unique() == 20       # no decision lost or doubled
    for who, seen in (("alice", a), ("bob", b)):
        mine = rows.filter(pl.col("reviewer") == who)
        assert mine.height == 10
        got = {page_id(r["pair_id"]): r for r in mine.iter_rows(named=True)}   # URLs carry page ids
        for pid, key in seen:
            r = got[pid]
            assert r["choice"] == CHOICE[key] and r["decision"] == decision_of(CHOICE[key], r["shown_first"])
            assert r["seconds"] is not None and r["pairs_table"] == fx.pairs

    proc, url = start_server(fx.root, fx.pairs, reviewer="alice")        # a restart resumes the queue

    async def resume():
        async with playwright.async_playwright() as p:
            browser = await _browser(p)
            page = await browser.new_page()
            await page.goto(url + "/")
            pid, mine = _pair(page.url), await page.get_attribute("#progress", "data-mine")
            await browser.close()
            return pid, mine

    try:
        pid, mine = asyncio.run(resume())
    finally:
        stop_server(proc)
    assert mine == "10" and pid not in {p for p, _ in a} | {p for p, _ in b}
    assert fx.store.read("demo.reviews").height == 20


def test_hostile_model_text_renders_inert_and_screenshot(fx, tmp_path):
    from pipelines.reviews import build_queue
    q = build_queue(fx.store, fx.pairs).candidates
    hostile = q.filter(pl.col("prompt_id") == fx.hostile_prompt_id)["pair_id"][0]
    showcase = q.filter(pl.col("prompt").list.first().struct.field("content") == SHOWCASE[0][0])["pair_id"][0]
    proc, url = start_server(fx.root, fx.pairs, reviewer="carol")

    async def run():
        async with playwright.async_playwright() as p:
            browser = await _browser(p)
            page = await browser.new_page(viewport={"width": 1360, "height": 900})
            dialogs = []
            page.on("dialog", lambda d: (dialogs.append(d.message), asyncio.ensure_future(d.dismiss())))
            resp = await page.goto(f"{url}/pair/{hostile}")
            assert "script-src 'self'" in resp.headers["content-security-policy"]
            text = await page.inner_text("section.answers")
            found = {
                "pwned": await page.evaluate("typeof window.__pwned"),
                "scripts": await page.locator("section.answers script").count(),
                "imgs": await page.locator("section.answers img").count(),
                "onerror": await page.locator("[onerror]").count(),
                "js_links": await page.locator("a[href^='javascript' i]").count(),
            }
            for label in ("click me", "also", "raw link"):
                await page.get_by_text(label).first.click()
            await page.wait_for_timeout(300)
            found["pwned_after_click"] = await page.evaluate("typeof window.__pwned")
            await page.goto(f"{url}/pair/{showcase}")
            await page.keyboard.press("i")                   # open the signals panel for the picture
            shot = tmp_path / "review.png"
            await page.screenshot(path=str(shot), full_page=True)
            await browser.close()
            return text, found, dialogs, shot

    try:
        text, found, dialogs, shot = asyncio.run(run())
    finally:
        stop_server(proc)
    assert "<script>window.__pwned = 1" in text and "onerror=" in text and "javascript:" in text   # shown as text
    assert found == {"pwned": "undefined", "scripts": 0, "imgs": 0, "onerror": 0, "js_links": 0,
                     "pwned_after_click": "undefined"}
    assert dialogs == []
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    if os.environ.get("PREFMILL_REVIEW_SCREENSHOT"):
        Path(os.environ["PREFMILL_REVIEW_SCREENSHOT"]).write_bytes(data)


@pytest.mark.slow
def test_page_time_on_100k_pairs_is_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="prefmill.test.review")
    t0 = time.perf_counter()
    fx = build_fixture(tmp_path / "store", n_prompts=160_000, hostile=False)   # ~0.68 kept pairs a prompt
    n = fx.store.count(fx.pairs)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    proc, url = start_server(fx.root, fx.pairs, reviewer="alice", timeout=600)
    start_s = time.perf_counter() - t0

    async def run():
        async with playwright.async_playwright() as p:
            browser = await _browser(p)
            page = await browser.new_page()
            await page.goto(url + "/")
            times = []
            for _ in range(20):                          # decision -> next pair, as a reviewer sees it
                t = time.perf_counter()
                async with page.expect_navigation():
                    await page.keyboard.press("1")
                await page.wait_for_load_state("load")
                times.append((time.perf_counter() - t) * 1000)
            await browser.close()
            return times

    def server_times() -> list[float]:            # the pair page alone, as the server answers it
        import httpx
        with httpx.Client(base_url=url) as c:
            page = str(c.get("/next", follow_redirects=True).url).replace(url, "")
            out = []
            for _ in range(20):
                t = time.perf_counter()
                assert c.get(page).status_code == 200
                out.append((time.perf_counter() - t) * 1000)
        return out

    try:
        times = asyncio.run(run())
        pages = server_times()
    finally:
        stop_server(proc)
    assert n >= 100_000 and len(times) == 20 and fx.store.read("demo.reviews").height == 20
    msg = (f"review page on {n} pairs: GET pair page median {statistics.median(pages):.0f} ms (max {max(pages):.0f}); "
           f"keypress -> decision committed -> next pair loaded in the browser median {statistics.median(times):.0f} ms "
           f"(max {max(times):.0f}); N=20 each; fixture {build_s:.0f} s, server start {start_s:.0f} s; shared machine")
    log.info(msg)
    print("\n" + msg)
