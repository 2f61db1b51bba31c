"""`invoke bench --model`'s bookkeeping that needs no build: the upstream comparison from repeated rounds
and the --no-keep cleanup (the rounds themselves run real builds and containers; they are exercised by
`invoke bench`, not here, because a bench is not a test)."""

from __future__ import annotations

from builders import bench_nodes


def _sample(step_s, direct_s, rc=0, peak=100.0):
    return {"step_s": step_s, "direct": {"seconds": direct_s, "rc": rc, "container_peak_rss_mb": peak}}


def test_upstream_ratio_is_median_over_median_with_samples_listed():
    rows = bench_nodes._upstream("gguf-convert", [_sample(9.0, 10.0), _sample(30.0, 9.0, peak=120.0),
                                                  _sample(10.0, 11.0)])
    assert rows["step_s"] == 10.0 and rows["upstream_s"] == 10.0 and rows["step_over_upstream"] == 1.0
    assert rows["step_samples_s"] == [9.0, 30.0, 10.0] and rows["upstream_samples_s"] == [10.0, 9.0, 11.0]
    assert rows["samples"] == 3 and rows["upstream_peak_rss_mb"] == 120.0  # one slow outlier does not move it
    assert rows["step"] == "convert"


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
