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
    THROUGHPUT_HEADERS,
    format_table,
    mode_ratios,
    percentile,
    render,
    summarize,
    targets,
    throughput_rows,
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
        'collector_window_flushes_total{trigger="quiet"} 1.0',
        "other_metric 5",
    ])
    m = parse_metrics(text)
    assert m["collector_events_consumed"] == 7
    assert m["collector_sink_rows_written"] == 12
    assert m["collector_sink_rows_written:mysql"] == 10
    assert m["collector_window_flushes:quiet"] == 1
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
                       "reference": {"events_per_s": 4000.0, "cpu_us_per_event": 250.0},
                       "quix": {"events_per_s": 12_000.0, "cpu_us_per_event": 50.0,
                                "peak_rss_mb": 110.0, "seconds": 25.0,
                                "groupby": "repartition"},
                       "pipeline": {"events_per_s": 9000.0, "cpu_us_per_event": 100.0,
                                    "peak_rss_mb": 200.0, "seconds": 30.0,
                                    "flush_tail_s": 6.5, "flush_interval_s": 5.0,
                                    "consume_only": {"events_per_s": 10_000.0,
                                                     "cpu_us_per_event": 80.0,
                                                     "seconds": 27.0}}},
            "batch50": {"pipeline": {"events_per_s": 30_000.0, "flush_tail_s": 2.0,
                                     "flush_interval_s": 5.0}},
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
    found = {t["name"]: (t["measured"], t["met"]) for t in targets(results)}
    assert found == {"single: pipeline / reference": (2.25, True),
                     "single: pipeline / quix events/s": (0.75, False),
                     "single: pipeline / quix µs CPU/event": (2.0, False),
                     "single: flush tail (s)": (6.5, False),
                     "batch50: flush tail (s)": (2.0, True),
                     "batch50: pipeline events/s": (30_000.0, False),
                     "latency p99 at 50% load (s)": (9.0, True),
                     "scaling: CPU/event change 50k (%)": (12.0, False)}
    text = render(results)
    assert "2.25x" in text and "0.018x" in text
    # issue 17, part 5: peak RSS from the smallest to the largest N, within 20%
    results["scaling"]["points"] = [  # type: ignore[index]
        {"n": 50_000, "cpu_us_per_event": 100.0, "peak_rss_mb": 221.0},
        {"n": 500_000, "cpu_us_per_event": 94.0, "peak_rss_mb": 268.0}]
    found = {t["name"]: (t["measured"], t["met"]) for t in targets(results)}
    assert found["scaling: peak RSS change 50k->500k (%)"] == (21.3, False)
    results["scaling"]["points"][1]["peak_rss_mb"] = 260.0  # type: ignore[index]
    found = {t["name"]: (t["measured"], t["met"]) for t in targets(results)}
    assert found["scaling: peak RSS change 50k->500k (%)"] == (17.6, True)
    assert "| single  | quix (repartition) " in text
    assert "flush tail s" in text and "µs/event vs quix" in text


def test_ratios_against_the_peers() -> None:
    ratios = mode_ratios(sample_results()["modes"]["single"])  # type: ignore[index]
    assert ratios == {
        "pipeline_vs_reference_events_per_s": 2.25,  # 9000 / 4000
        "pipeline_vs_reference_cpu_us_per_event": 0.4,  # 100 / 250
        "pipeline_vs_quix_events_per_s": 0.75,  # 9000 / 12000
        "pipeline_vs_quix_cpu_us_per_event": 2.0,  # 100 / 50
        "consumed_vs_quix_events_per_s": 0.8333,  # 10000 / 12000
        "consumed_vs_quix_cpu_us_per_event": 1.6,  # 80 / 50
    }
    # no peer measured (--skip-quix, --skip-reference): no ratio, not a zero
    alone = mode_ratios({"pipeline": {"events_per_s": 9000.0, "cpu_us_per_event": 100.0}})
    assert set(alone.values()) == {None}


def test_throughput_rows_quix_and_flush_tail_columns() -> None:
    rows = throughput_rows(sample_results())
    by_stage = {(r[0], r[1]): dict(zip(THROUGHPUT_HEADERS, r, strict=True)) for r in rows}
    quix = by_stage[("single", "quix (repartition)")]
    assert quix["events/s"] == 12_000.0 and quix["µs CPU/event"] == 50.0
    assert quix["vs ceiling"] == "0.024x"  # 12000 / 500000
    assert quix["vs quix"] is None and quix["flush tail s"] is None
    pipe = by_stage[("single", "pipeline")]
    assert (pipe["vs reference"], pipe["vs quix"], pipe["µs/event vs quix"]) == (
        "2.25x", "0.750x", "2.00x")
    assert pipe["flush tail s"] == 6.5
    consumed = by_stage[("single", "pipeline (consumed, not yet flushed)")]
    assert (consumed["vs quix"], consumed["µs/event vs quix"]) == ("0.833x", "1.60x")
    assert consumed["flush tail s"] is None
    # the peers come before the pipeline, in the order they run
    assert [r[1] for r in rows if r[0] == "single"] == [
        "ceiling", "reference", "quix (repartition)", "pipeline",
        "pipeline (consumed, not yet flushed)"]
    assert by_stage[("batch50", "pipeline")]["vs quix"] is None


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


def test_quix_peer_decodes_like_the_reference() -> None:
    from quixstreams.models.serializers import IgnoreMessage

    from benchmarks import quix_app

    quix_app.progress.update(messages=0, events=0, windowed=0)
    decode = quix_app.EventsDeserializer()
    assert decode.split_values
    one = decode(b'{"type": "click", "user_id": "u1"}', None)
    assert one == [{"type": "click", "user_id": "u1"}]
    envelope = decode(b'[{"type": "a"}, {"no_type": 1}, 3, {"type": "b"}]', None)
    assert [e["type"] for e in envelope] == ["a", "b"]  # only elements with a type count
    for bad in (b"{not json", b'{"user_id": "u1"}', b"[]"):
        with pytest.raises(IgnoreMessage):
            decode(bad, None)
    assert quix_app.progress["messages"] == 5 and quix_app.progress["events"] == 3
    assert quix_app.key_for("m")({"type": "click"}) == "m|click"
    quix_app.windowed({"type": "click"})
    assert quix_app.progress["windowed"] == 1


def test_batch50_goal_is_issue_17s_60000() -> None:
    results = sample_results()
    results["modes"]["batch50"]["pipeline"]["events_per_s"] = 50_000.0  # met at 40,000
    found = {t["name"]: t for t in targets(results)}["batch50: pipeline events/s"]
    assert (found["goal"], found["met"]) == (">= 60,000", False)
    results["modes"]["batch50"]["pipeline"]["events_per_s"] = 60_000.0
    assert {t["name"]: t for t in targets(results)}["batch50: pipeline events/s"]["met"]


def test_a_scaling_point_is_the_median_of_its_runs_with_every_run_kept() -> None:
    from benchmarks.run import scaling_point

    def run(cpu: float, rss: float, complete: bool = True, dead: float = 0.0) -> dict[str, object]:
        return {"events_per_s": 1000 / cpu, "cpu_us_per_event": cpu,
                "consume_only_cpu_us_per_event": cpu - 10, "peak_rss_mb": rss,
                "tag": "b0", "complete": complete, "unexpected_dead_letters": dead}

    runs = [run(116.0, 230.0), run(88.0, 214.0, dead=3.0), run(101.0, 221.0, complete=False)]
    point = scaling_point(50_000, runs)
    assert (point["cpu_us_per_event"], point["peak_rss_mb"]) == (101.0, 221.0)
    assert point["consume_only_cpu_us_per_event"] == 91.0
    assert point["complete"] is False  # one incomplete run makes the point incomplete
    assert point["unexpected_dead_letters"] == 3.0
    assert point["runs"] == runs
    text = render({"scaling": {"points": [point], "cpu_change_pct": None}})
    assert "116, 230; 88, 214; 101, 221" in text
