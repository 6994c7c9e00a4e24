"""The pure parts of the benchmark harness: statistics, curve matching, table, docs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.latency import match_curves
from benchmarks.pipeline import parse_metrics
from benchmarks.report import (
    BEGIN,
    END,
    format_table,
    percentile,
    render,
    summarize,
    targets,
    update_docs,
)


def test_percentile_interpolates() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0) == 1
    assert percentile(values, 100) == 100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert math.isnan(percentile([], 50))
    assert summarize([2.0, 1.0, 3.0]) == {"count": 3, "mean": 2.0, "p50": 2.0, "p99": 2.98,
                                          "max": 3.0}


def test_match_curves_fifo() -> None:
    # 3 valid events sent at t=0, 1 (two), 2; visible counts 1 at t=0.5, 3 at t=3
    sent = [(0.0, 1), (1.0, 3), (2.0, 3)]  # the last message was malformed: no new valid
    visible = [(0.5, 1), (1.5, 1), (3.0, 3)]
    latencies, missing = match_curves(sent, visible)
    assert latencies == [0.5, 2.0, 2.0]
    assert missing == 0
    latencies, missing = match_curves([(0.0, 2)], [(1.0, 1)])
    assert (latencies, missing) == ([1.0], 1)


def test_parse_metrics_sums_labels_and_sinks() -> None:
    text = "\n".join([
        "# HELP collector_events_consumed_total x",
        'collector_events_consumed_total{source="a"} 3.0',
        'collector_events_consumed_total{source="b"} 4.0',
        'collector_events_consumed_created{source="b"} 1.7e9',
        'collector_sink_rows_written_total{sink="mysql"} 10.0',
        'collector_sink_rows_written_total{sink="influxdb"} 2.0',
        "other_metric 5",
    ])
    m = parse_metrics(text)
    assert m["collector_events_consumed"] == 7
    assert m["collector_sink_rows_written"] == 12
    assert m["collector_sink_rows_written:mysql"] == 10
    assert "other_metric" not in m


def test_table_aligns_numbers_right() -> None:
    table = format_table(("name", "rate", "ratio"), [["a", 1234.5, "2.00x"], ["bb", None, None]])
    lines = table.splitlines()
    assert lines[0] == "| name |  rate | ratio |"
    assert lines[1] == "|------|------:|------:|"
    assert lines[2] == "| a    | 1,234 | 2.00x |"
    assert lines[3] == "| bb   |     - |     - |"


def sample_results() -> dict[str, object]:
    return {
        "modes": {
            "single": {"ceiling": {"events_per_s": 500_000.0, "cpu_us_per_event": 1.5},
                       "reference": {"events_per_s": 4000.0},
                       "pipeline": {"events_per_s": 9000.0, "cpu_us_per_event": 100.0,
                                    "peak_rss_mb": 200.0, "seconds": 30.0}},
            "batch50": {"pipeline": {"events_per_s": 30_000.0}},
        },
        "latency": {"mode": "single", "offered_events_per_s": 4500.0,
                    "achieved_send_events_per_s": 4490.0, "seconds": 60.0, "p50_s": 4.0,
                    "p99_s": 9.0, "max_s": 9.5, "not_visible": 0, "flush_interval_s": 5.0},
        "scaling": {"points": [{"n": 50_000, "events_per_s": 1.0, "cpu_us_per_event": 100.0,
                                "peak_rss_mb": 1.0}],
                    "cpu_change_pct": 12.0},
    }


def test_targets_and_render() -> None:
    results = sample_results()
    found = {t["name"]: t["met"] for t in targets(results)}
    assert found == {"single: pipeline / reference": True, "batch50: pipeline events/s": False,
                     "latency p99 at 50% load (s)": True,
                     "scaling: CPU/event change 50k (%)": False}
    text = render(results)
    assert "2.25x" in text and "0.018x" in text


def test_update_docs_replaces_only_the_section(tmp_path: Path) -> None:
    doc = tmp_path / "b.md"
    doc.write_text(f"intro\n{BEGIN}\nSTALE-CONTENT\n{END}\noutro\n")
    assert update_docs(sample_results(), doc)
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("\noutro\n")
    assert "STALE-CONTENT" not in text and "| single " in text
    assert not update_docs(sample_results(), tmp_path / "missing.md")


def test_summarize_py_spy_raw() -> None:
    from benchmarks.profile import summarize_raw

    raw = ("main (a.py:1);RawProcessor.process (p.py:2);Aggregator.apply (g.py:3) 3\n"
           "main (a.py:1);Service.wait_first (mode/services.py:9) 1\n")
    s = summarize_raw(raw)
    assert s["samples"] == 4
    assert s["self_pct"][0] == [75.0, "Aggregator.apply (g.py)"]
    assert [100.0, "main (a.py)"] in s["inclusive_pct"]
    groups = {name: pct for pct, name in s["groups_pct"]}
    assert groups["aggregator (window state)"] == 75.0
    assert groups["mode Service.wait_first"] == 25.0
    assert summarize_raw("") == {"samples": 0}


def test_sample_curve() -> None:
    from benchmarks.latency import sample_curve

    curve = sample_curve([(0.5, 10), (1.5, 20)], [(1.2, 5), (2.2, 20)], 0.0)
    assert curve[:4] == [[0.0, 0, 0], [1.0, 10, 0], [2.0, 20, 5], [3.0, 20, 20]]


def test_warnings_name_failures_and_late_dead_letters() -> None:
    from benchmarks.report import warnings

    results = {
        "modes": {"single": {"errors": ["reference: boom"],
                             "pipeline": {"complete": False,
                                          "counters": {"unexpected_dead_letters": 52102.0}}}},
        "scaling": {"points": [{"n": 500_000, "complete": True,
                                "unexpected_dead_letters": 7.0}]},
    }
    notes = warnings(results)
    assert notes[0] == "single: reference: boom"
    assert any("stalled" in n for n in notes)
    assert any("52,102 events dead-lettered" in n for n in notes)
    assert any(n.startswith("scaling N=500,000: 7 events") for n in notes)
