"""`invoke bench --model`'s bookkeeping that needs no build: the upstream comparison from repeated rounds
and the --no-keep cleanup (the rounds themselves run real builds and containers; they are exercised by
`invoke bench`, not here, because a bench is not a test)."""

from __future__ import annotations

from builders import bench_nodes


def _sample(step_s, direct_s, rc=0, peak=100.0, step_cpu=None, direct_cpu=None):
    return {"step_s": step_s, "step_cpu_s": step_cpu,
            "direct": {"seconds": direct_s, "rc": rc, "cpu_seconds": direct_cpu, "container_peak_rss_mb": peak}}


def test_upstream_ratio_is_median_over_median_with_samples_listed():
    rows = bench_nodes._upstream("gguf-convert", [_sample(9.0, 10.0), _sample(30.0, 9.0, peak=120.0),
                                                  _sample(10.0, 11.0)])
    assert rows["step_s"] == 10.0 and rows["upstream_s"] == 10.0 and rows["step_over_upstream"] == 1.0
    assert rows["step_samples_s"] == [9.0, 30.0, 10.0] and rows["upstream_samples_s"] == [10.0, 9.0, 11.0]
    assert rows["samples"] == 3 and rows["upstream_peak_rss_mb"] == 120.0  # one slow outlier does not move it
    assert rows["step"] == "convert"
    assert "step_over_upstream_cpu" not in rows  # no CPU figures measured: none reported


def test_cpu_ratio_is_median_over_median_of_cpu_seconds():
    rows = bench_nodes._upstream("gguf-quantize", [_sample(8.0, 6.0, step_cpu=7.2, direct_cpu=7.0),
                                                   _sample(5.0, 9.0, step_cpu=7.4, direct_cpu=7.4),
                                                   _sample(9.0, 6.4, step_cpu=7.3, direct_cpu=7.1)])
    assert rows["step_cpu_s"] == 7.3 and rows["upstream_cpu_s"] == 7.1 and rows["step_over_upstream_cpu"] == 1.03
    assert rows["step_over_upstream"] == 1.25


def test_cpu_seconds_are_read_from_the_wrapper_line():
    assert bench_nodes._cpu_from_log("llama.cpp says\nBENCH_CPU_SECONDS 7.125\n") == 7.125
    assert bench_nodes._cpu_from_log("crashed before the end\n") is None


def test_a_failed_direct_run_is_reported_not_averaged():
    rows = bench_nodes._upstream("gguf-quantize", [_sample(5.0, 6.0), _sample(5.0, 0.5, rc=1)])
    assert "step_over_upstream" not in rows and rows["upstream_failed"]["rc"] == 1


def test_a_node_without_a_direct_command_says_so():
    rows = bench_nodes._upstream("gguf-convert", [{"skip": "no direct run for gguf-convert (convert step None)"}])
    assert rows == {"upstream": "no direct run for gguf-convert (convert step None)"}


def test_clean_keeps_only_the_figures(tmp_path):
    (tmp_path / ".store" / "abc" / "out").mkdir(parents=True)
    (tmp_path / ".store" / "abc" / "out" / "w.gguf").write_bytes(b"x" * 10)
    (tmp_path / "model").mkdir()
    (tmp_path / "index.json").write_text("{}")
    (tmp_path / "bench-nodes.json").write_text("{}")
    bench_nodes.clean(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["bench-nodes.json"]
