"""The web view in a real headless Chromium: the numbers it renders are the API's.

Chromium loads ``/`` (which fetches ``/api/v1/summary`` and ``/api/v1/stats/events``,
and ``/api/v1/aggregates/{name}`` for the aggregates the summary says are configured),
``--dump-dom`` gives the rendered DOM, and the page's stable ids and data attributes are
compared with what the API answers.  The screenshot is kept under ``test-artifacts/``;
with ``COLLECTOR_UPDATE_SCREENSHOT=1`` it also replaces ``docs/web-view.png``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import shutil
import subprocess
import time
import urllib.error
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.config import Settings
from collector.db import connect
from collector.kafka.topics import ensure_topics
from tests.e2e.kafka_io import produce, settings_for
from tests.e2e.test_configured_aggregates_e2e import drop_table
from tests.e2e.tools import ROOT, get, keep_artifact
from tests.e2e.workers import Worker, isolated_env
from tests.oracle import group_by_oracle
from tests.programs import ensure_program

pytestmark = pytest.mark.e2e


class Elements(HTMLParser):
    """Every element's attributes, by id, plus the rows of each table by ``data-*``."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str]] = {}
        self.rows: list[dict[str, str]] = []
        self.tags: list[str] = []
        self.series: list[dict[str, str]] = []  # legend entries, in order
        self.ticks: dict[str, list[float]] = {"x": [], "y": []}  # chart axis ticks, in order

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if "id" in values:
            self.by_id[values["id"]] = values
        if tag == "tr" and any(k.startswith("data-") for k in values):
            self.rows.append(values)
        if "data-series" in values:
            self.series.append(values)
        for axis in ("x", "y"):
            if f"data-tick-{axis}" in values:
                self.ticks[axis].append(float(values[f"data-tick-{axis}"]))

    def rows_with(self, attr: str) -> dict[str, dict[str, str]]:
        return {row[attr]: row for row in self.rows if attr in row}


def chromium(binary: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", f"--user-data-dir={tmp / 'chromium-profile'}",
           "--virtual-time-budget=8000", *args]
    return subprocess.run(cmd, capture_output=True, timeout=120, check=True)


TOKEN = "view-test-token"


def summary(base: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(get(f"{base}/api/v1/summary", token=TOKEN))
    return result


def wait_settled(base: str, consumed: int, limit_s: float = 60.0) -> dict[str, Any]:
    """The summary once every produced event is counted and a sink flush has happened."""
    deadline = time.monotonic() + limit_s
    while True:
        body = summary(base)
        written = body["sinks"].get("mysql", {}).get("rows_written", 0)
        if body["totals"]["consumed"] >= consumed and written > 0:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.5)


def stats_events(base: str, now_ms: int) -> dict[str, Any] | None:
    """The windows the page asks for, or None while that endpoint does not exist."""
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((now_ms - 15 * 60_000) / 1000))
    to = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((now_ms + 60_000) / 1000))
    try:
        url = f"{base}/api/v1/stats/events?from={iso}&to={to}"
        result: dict[str, Any] = json.loads(get(url, token=TOKEN))
    except urllib.error.HTTPError as exc:
        if exc.code in (400, 404, 405):
            return None
        raise
    return result


async def test_web_view_renders_the_api_numbers(
    worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    browser = ensure_program("chromium", "chromium")
    env = isolated_env(tmp_path, COLLECTOR_WEB__API_TOKEN=TOKEN)
    settings = settings_for(env)
    await ensure_topics(settings)
    worker = worker_factory(env).start()
    worker.wait_ready()
    base = f"http://127.0.0.1:{worker.port}"

    now = int(time.time() * 1000)
    # oldest first, over several minutes: a chart with several windows, none of them late
    web = [(f"u{i % 5:05d}".encode(), orjson.dumps(
        {"event_id": f"w{i}", "user_id": f"u{i % 5:05d}", "type": "view" if i % 3 else "click",
         "ts": now - 13_000 * (29 - i), "value": float(i)})) for i in range(30)]
    web += [(None, b"{broken")] * 4
    mobile = [(b"u00002", orjson.dumps({"event_id": f"m{i}", "user_id": "u00002",
                                        "type": "open", "ts": now - 45_000 * (5 - i)}))
              for i in range(6)]
    mobile += [(b"u00002", orjson.dumps({"event_id": "m-bad", "ts": "yesterday"}))]
    await produce(settings, settings.kafka.raw_topic("web"), web)
    await produce(settings, settings.kafka.raw_topic("mobile"), mobile)
    with pytest.raises(urllib.error.HTTPError) as denied:
        get(f"{base}/api/v1/summary")
    assert denied.value.code == 401  # the API needs the token; the page passes ?token=
    expected = wait_settled(base, consumed=41)
    assert expected["totals"] == {"consumed": 41, "valid": 36, "dead_lettered": 5}
    # a row another deployment (or a benchmark) wrote to the same database, bigger than
    # all of ours: the page must leave it out, or it takes the chart over
    foreign = "x" + uuid.uuid4().hex[:8]
    await foreign_window(settings, foreign, now, "insert")

    dom = chromium(browser, tmp_path, "--dump-dom", "--window-size=1280,900",
                   f"{base}/?token={TOKEN}&user=u00002").stdout.decode()
    (tmp_path / "web-view.html").write_text(dom)
    page = Elements()
    page.feed(dom)
    api = summary(base)
    assert api["totals"] == expected["totals"], "counters moved while the page rendered"

    ids = page.by_id
    assert ids["total-consumed"]["data-value"] == "41"
    assert ids["total-valid"]["data-value"] == "36"
    assert ids["total-dead"]["data-value"] == "5"
    assert ids["ready"]["data-ready"] in {"true", "false"}
    assert float(ids["hit-ratio"]["data-ratio"]) == pytest.approx(api["enrichment"]["hit_ratio"])
    assert ids["events-per-s"]["data-value"] != "" or api["rates"]["events_per_s"] is None
    assert {r: float(row["data-count"]) for r, row in page.rows_with("data-reason").items()} \
        == api["dead_letters"]
    # only reasons that happened have a series (sink_rejected is labelled on first use)
    assert api["dead_letters"] == {"malformed_json": 4, "schema_violation": 1}
    sources = page.rows_with("data-source")
    assert {s: (float(r["data-consumed"]), float(r["data-valid"]), float(r["data-dead"]),
                float(r["data-duplicates"])) for s, r in sources.items()} == {
        s: (t["consumed"], t["valid"], t["dead_lettered"], t["duplicates"])
        for s, t in api["by_source"].items()}
    outcomes = page.rows_with("data-outcome")
    assert {o: float(r["data-count"]) for o, r in outcomes.items()} == {
        o: api["enrichment"][o] for o in ("hit", "miss", "negative", "degraded")}
    sinks = page.rows_with("data-sink")
    assert set(sinks) == set(api["sinks"]) == {"mysql", "influxdb"}
    for name, row in sinks.items():
        assert row["data-healthy"] == str(api["sinks"][name]["healthy"]).lower()

    windows = stats_events(base, now)
    status = ids["windows-status"]["data-status"]
    if windows is None:
        assert status == "unavailable"
    else:
        assert status == "ok"
        latest: dict[str, dict[str, Any]] = {}
        for w in windows["windows"]:
            key = f"{w['key']['source']}|{w['key']['type']}"
            if key not in latest or w["window_start_ms"] > latest[key]["window_start_ms"]:
                latest[key] = w
        # other tests' windows (their own sources) may sit at the edge of the page's
        # 15-minute range, which the page and this test compute a moment apart
        ours = tuple(f"{source}|" for source in settings.kafka.sources)
        latest = {k: w for k, w in latest.items() if k.startswith(ours)}
        shown = {k: r for k, r in page.rows_with("data-key").items() if k.startswith(ours)}
        assert latest, "the page's windows of this test are missing from the API"
        assert set(shown) == set(latest)
        for key, w in latest.items():
            assert int(shown[key]["data-window-start-ms"]) == w["window_start_ms"]
            assert float(shown[key]["data-count"]) == w["values"]["count"]
        if latest:
            assert "windows-chart" in ids and "polyline" in page.tags
        # the chart: the six biggest series, one colour each, a legend with their totals
        legend = [(s["data-series"], float(s["data-total"])) for s in page.series]
        assert 0 < len(legend) <= 6 and page.tags.count("polyline") == len(legend)
        assert [t for _, t in legend] == sorted((t for _, t in legend), reverse=True)
        for key, total in legend:
            if key.startswith(ours):  # others' windows may sit at the range's edge
                assert total == sum(w["values"]["count"] for w in windows["windows"]
                                    if f"{w['key']['source']}|{w['key']['type']}" == key)
        assert ("more-series" in ids) == (len(page.rows_with("data-key")) > len(legend))
        assert any(w["key"]["source"] == foreign for w in windows["windows"])  # in the API
        assert {k.split("|")[0] for k in page.rows_with("data-key")} | {
            k.split("|")[0] for k, _ in legend} <= set(settings.kafka.sources)
        # axes a reader can take in: no label cut off, counts on round whole steps from 0
        # up to at least the tallest point, times on whole windows
        assert ids["windows-chart"]["data-clipped"] == "", "chart labels outside the chart"
        yticks, xticks = page.ticks["y"], page.ticks["x"]
        steps = {b - a for a, b in itertools.pairwise(yticks)}
        assert yticks[0] == 0 and len(steps) == 1 and len(yticks) <= 6, yticks
        (step,) = steps
        assert step >= 1 and step / 10 ** math.floor(math.log10(step)) in {1, 2, 2.5, 5}, step
        ours_shown = [w["values"]["count"] for w in windows["windows"]
                      if f"{w['key']['source']}|{w['key']['type']}" in dict(legend)
                      and w["key"]["source"] in settings.kafka.sources]
        assert max(ours_shown, default=0) <= yticks[-1], (ours_shown, yticks)
        window_ms = windows["window_seconds"] * 1000
        assert 0 < len(xticks) <= 6 and all(t % window_ms == 0 for t in xticks), xticks

    # the sessions card (?user=): the user's sessions as the API answers them
    day = f"from={now - 86_400_000}&to={int(time.time() * 1000) + 60_000}"
    sessions = json.loads(get(f"{base}/api/v1/users/u00002/sessions?{day}", token=TOKEN))
    assert ids["sessions-status"]["data-status"] == "ok"
    shown_sessions = page.rows_with("data-session-start-ms")
    assert {int(k): float(r["data-count"]) for k, r in shown_sessions.items()} == {
        w["window_start_ms"]: w["values"]["count"] for w in sessions["windows"]}
    ours = [w for w in sessions["windows"] if w["window_start_ms"] >= now - 13_000 * 29]
    assert sum(w["values"]["count"] for w in ours) == 12  # 6 web + 6 mobile events

    assert ids["cards"]["data-overflow"] == "", "cards wider than their box at 1280 px"
    assert "updated " in dom and " UTC" in dom
    await foreign_window(settings, foreign, now, "delete")

    shot = tmp_path / "web-view.png"
    chromium(browser, tmp_path, f"--screenshot={shot}", "--window-size=1280,900",
             f"{base}/?token={TOKEN}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep_artifact(shot)
    keep_artifact(tmp_path / "web-view.html")
    if os.environ.get("COLLECTOR_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "web-view.png")


async def foreign_window(settings: Settings, source: str, now_ms: int, action: str) -> None:
    """Write (or remove) one big event_stats row of a source this worker does not read."""
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        if action == "insert":
            start = datetime.fromtimestamp(now_ms // 60_000 * 60, UTC).replace(tzinfo=None)
            await cur.execute(
                "INSERT INTO event_stats (window_start, window_seconds, source, type, count, "
                "value_count, value_sum, final, updated_at) VALUES (%s, 60, %s, 'foreign', "
                "1000000, 0, 0, TRUE, %s)", (start, source, start))
        else:
            await cur.execute("DELETE FROM event_stats WHERE source = %s", (source,))


async def test_web_view_says_when_there_are_no_recent_windows(
    worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    browser = ensure_program("chromium", "chromium")
    tag = "v" + uuid.uuid4().hex[:8]
    # the API answers every source's MySQL rows of the range, and other tests write some:
    # a database that does not exist leaves the (empty) tables only, marked incomplete
    dsn = settings_for({}).mysql.dsn.get_secret_value().rsplit("/", 1)[0] + f"/no_{tag}"
    env = isolated_env(tmp_path, COLLECTOR_WEB__API_TOKEN=TOKEN,
                       COLLECTOR_KAFKA__SOURCES=f"{tag}a,{tag}b", COLLECTOR_MYSQL__DSN=dsn)
    await ensure_topics(settings_for(env))
    worker = worker_factory(env).start()
    worker.wait_ready()
    base = f"http://127.0.0.1:{worker.port}"
    dom = chromium(browser, tmp_path, "--dump-dom", "--window-size=1280,900",
                   f"{base}/?token={TOKEN}").stdout.decode()
    page = Elements()
    page.feed(dom)
    assert page.by_id["windows-status"]["data-status"] == "empty"
    assert page.by_id["windows-status"]["data-complete"] == "false"
    assert "No windows in the last 15 minutes" in dom
    assert "Older windows could not be read" in dom
    assert "windows-chart" not in page.by_id and not page.series
    assert page.by_id["cards"]["data-overflow"] == ""
    # nothing configured without code: no card for it
    assert "hidden" in page.by_id["card-aggregates"]
    assert page.by_id["aggregates-status"]["data-status"] == "unconfigured"


def aggregate_rows(page: Elements, name: str) -> list[tuple[int, dict[str, str], Any]]:
    """The card's rows of ``name``, in page order: (window start, key, values)."""
    return [(int(r["data-window-start-ms"]), json.loads(r["data-key"]),
             json.loads(r["data-values"])) for r in page.rows if r.get("data-aggregate") == name]


def newest_first(windows: list[dict[str, Any]]) -> list[tuple[int, dict[str, str], Any]]:
    ordered = sorted(windows, key=lambda w: (-w["window_start_ms"], tuple(w["key"].values())))
    return [(w["window_start_ms"], w["key"], w["values"]) for w in ordered]


async def test_web_view_shows_the_configured_aggregates(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    """A tumbling, a hopping and a session aggregate, configured through the environment:
    the summary lists them, the card shows the chosen one's windows (a session one's for
    ?user=) as /api/v1/aggregates/{name} answers them (and the oracle), newest first, at
    most AGG_ROWS of them, and says so when the query fails."""
    browser = ensure_program("chromium", "chromium")
    tag = "a" + uuid.uuid4().hex[:8]
    plans, buys, hops = f"plans_{tag}", f"buys_{tag}", f"hops_{tag}"
    p, b = f"COLLECTOR_AGGREGATES__{plans.upper()}__", f"COLLECTOR_AGGREGATES__{buys.upper()}__"
    h = f"COLLECTOR_AGGREGATES__{hops.upper()}__"
    env = isolated_env(tmp_path, COLLECTOR_WEB__API_TOKEN=TOKEN,
                       COLLECTOR_WINDOWS__FLUSH_INTERVAL_SECONDS="0.5", **{
                           p + "GROUP_BY": "type,properties.plan", p + "SINKS": "mysql",
                           p + "MEASURES": "count,sum(value),users=distinct(user_id)",
                           b + "WINDOW": "session", b + "SINKS": "mysql",
                           b + "MEASURES": "count,revenue=sum(properties.amount)",
                           h + "WINDOW": "hopping", h + "SIZE_SECONDS": "120",
                           h + "STEP_SECONDS": "60", h + "GROUP_BY": "device_id",
                           h + "SINKS": "mysql", h + "MEASURES": "count"})
    settings = settings_for(env)
    await ensure_topics(settings)
    try:
        worker = worker_factory(env).start()
        worker.wait_ready()
        base = f"http://127.0.0.1:{worker.port}"
        assert [(a["name"], a["window"], a["keys"]) for a in summary(base)["aggregates"]] == [
            (buys, "session", ["user_id"]), (hops, "hopping", ["device_id"]),
            (plans, "tumbling", ["type", "properties_plan"])]

        now = int(time.time() * 1000)
        events: list[dict[str, Any]] = [{"event_id": f"{tag}-{i}", "user_id": f"{tag}u{i % 3}",
                   "type": "view" if i % 2 else "click", "ts": now - 20_000 * (24 - i),
                   "value": float(i), "properties": {"amount": 1.5 * i}}
                  for i in range(24)]
        for i, event in enumerate(events):
            if i % 5:  # the others are grouped under "unknown"
                event["properties"]["plan"] = ("free", "pro")[i % 2 and i % 3 != 0]
        # 60 devices in the same minutes, 2 hopping windows each: more than the card's
        # AGG_ROWS (50).  Clicks on "free", so plans gains at most a row per minute
        devices: list[dict[str, Any]] = [{
            "event_id": f"{tag}-d{i}", "user_id": f"{tag}h", "type": "click",
            "device_id": f"{tag}d{i:02}", "ts": now - 20_000 * (24 - i % 24) - 1_000,
            "properties": {"plan": "free"}} for i in range(60)]
        events += devices
        await produce(settings, settings.kafka.raw_topic(settings.kafka.sources[0]),
                      [(e["user_id"].encode(), orjson.dumps(e)) for e in events])
        user = f"{tag}u0"

        def query(name: str, **extra: str) -> dict[str, Any]:
            to = int(time.time() * 1000) + 60_000
            params = "&".join(f"{k}={v}" for k, v in extra.items())
            url = f"{base}/api/v1/aggregates/{name}?from={now - 86_400_000}&to={to}&{params}"
            body: dict[str, Any] = json.loads(get(url, token=TOKEN))
            return body

        deadline = time.monotonic() + 60
        while (sum(w["values"]["count"] for w in query(plans)["windows"]) < len(events)
               or sum(w["values"]["count"] for w in query(hops)["windows"]) < 2 * len(events)
               or sum(w["values"]["count"] for w in query(buys, user_id=user)["windows"]) < 8):
            assert time.monotonic() < deadline, (query(plans), query(buys, user_id=user))
            await asyncio.sleep(0.5)

        def render(url_params: str) -> tuple[Elements, str]:
            dom = chromium(browser, tmp_path, "--dump-dom", "--window-size=1280,900",
                           f"{base}/?token={TOKEN}&{url_params}").stdout.decode()
            page = Elements()
            page.feed(dom)
            return page, dom

        page, dom = render(f"aggregate={plans}")
        ids = page.by_id
        card = ids["card-aggregates"]
        assert "hidden" not in card and card["data-aggregate"] == plans
        assert ids["aggregates-status"]["data-status"] == "ok"
        shown = aggregate_rows(page, plans)
        assert shown == newest_first(query(plans)["windows"])
        want = group_by_oracle(events, plans, ["type", "properties.plan"], dict(
            count=("count", None), sum_value=("sum", "value"), users=("distinct", "user_id")))
        assert {(ws, tuple(key.values())): v for ws, key, v in shown} == {
            (ws, key): v for (_, ws, _, key), v in want.items()}
        assert {key["properties_plan"] for _, key, _ in shown} == {"free", "pro", "unknown"}
        assert int(ids["aggregates-status"]["data-shown"]) == len(shown) > 3  # several windows
        assert '<th class="n">users</th>' in dom and "<th>properties_plan</th>" in dom
        assert ids["cards"]["data-overflow"] == ""

        # hopping: every event in two windows; the newest 50 of them, and the card says so
        page, dom = render(f"aggregate={hops}")
        ids = page.by_id
        assert (ids["card-aggregates"]["data-aggregate"],
                ids["aggregates-status"]["data-status"]) == (hops, "ok")
        shown = aggregate_rows(page, hops)
        windows = query(hops)["windows"]
        assert shown == newest_first(windows)[:50] and len(windows) > 50
        want = group_by_oracle(events, hops, ["device_id"], {"count": ("count", None)},
                               size_ms=120_000, step_ms=60_000)
        assert len(want) == len(windows)
        assert shown == sorted(((ws, {"device_id": key[0]}, v)
                                for (_, ws, _, key), v in want.items()),
                               key=lambda w: (-w[0], w[1]["device_id"]))[:50]
        assert int(ids["aggregates-status"]["data-shown"]) == 50
        assert f"The newest 50 of {len(windows)} windows." in dom
        assert f">{hops} (hopping, 2 min)</option>" in dom and "<th>device_id</th>" in dom

        page, dom = render(f"aggregate={buys}&user={user}")
        shown = aggregate_rows(page, buys)
        assert shown == newest_first(query(buys, user_id=user)["windows"]) and len(shown) == 1
        assert (page.by_id["card-aggregates"]["data-aggregate"],
                page.by_id["aggregates-status"]["data-status"]) == (buys, "ok")
        ((start, key, values),) = shown
        mine = [e for e in events if e["user_id"] == user]
        assert (key, start, values["count"]) == ({"user_id": user}, mine[0]["ts"], 8)
        assert values["revenue"] == pytest.approx(sum(e["properties"]["amount"] for e in mine))
        assert '<th class="n">minutes</th>' in dom and '<th class="n">first_ts</th>' not in dom

        # a user id the API refuses (400): the card says so, and shows no rows
        page, dom = render(f"aggregate={buys}&user=no%7Csuch%7Cuser")
        assert page.by_id["aggregates-status"]["data-status"] == "unavailable"
        assert f"windows of {buys} not available (HTTP 400)" in dom
        assert aggregate_rows(page, buys) == []
    finally:
        for name in (plans, buys, hops):
            await drop_table(settings, name)
