"""--paper: the Table 5 shapes from ViT-L-14 (config only, no weights), the table arithmetic, a tiny run."""

from __future__ import annotations

import pytest

from mope_deploy.bench.paper import (PAPER_MODELS, default_batch, kept_blocks, paper_configs, paper_markdown,
                                     paper_table, run_paper, student_config)
from mope_deploy.bench.run import BenchSettings
from mope_deploy.models import load_config, model_stats
from mope_deploy.models.tiny import tiny_config


def stand_in():
    return tiny_config(width=128, heads=8, head_dim=16, depth=4)


@pytest.fixture(scope="module")
def vit_l_configs():
    return paper_configs(load_config("ViT-L-14"))  # built on the meta device: no weights


# Table 5: (vision width, depth, text width, depth) and vision+text params (M)
TABLE5 = {"CLIP-ViT-L/14": (1024, 24, 768, 12, 304 + 85), "MoPE-CLIP large": (512, 24, 384, 12, 152 + 42),
          "MoPE-CLIP base": (384, 18, 384, 12, 86 + 42), "MoPE-CLIP small": (384, 18, 192, 12, 86 + 21)}


def test_students_have_table5_shapes(vit_l_configs):
    assert list(vit_l_configs) == [m.name for m in PAPER_MODELS]
    for name, (vw, vd, tw, td, params) in TABLE5.items():
        cfg = vit_l_configs[name]
        for tower, width, depth in ((cfg.vision, vw, vd), (cfg.text, tw, td)):
            assert tower.depth == depth
            assert all(b.heads * tower.head_dim == width and b.mlp == 4 * width for b in tower.blocks), name
        assert cfg.vision.width == 1024 and cfg.text.width == 768  # pruning keeps the residual width
        got = model_stats(cfg)["params"] / 1e6
        assert got == pytest.approx(params, rel=0.02), (name, got)


def test_depth_pruned_blocks_keep_teacher_sources(vit_l_configs):
    srcs = [b.source for b in vit_l_configs["MoPE-CLIP base"].vision.blocks]
    assert len(srcs) == 18 and srcs[0] == 0 and srcs[-1] == 23 and srcs == sorted(set(srcs))


def test_kept_blocks():
    assert kept_blocks(24, 24) == list(range(24))
    assert kept_blocks(4, 3) == [0, 2, 3] or kept_blocks(4, 3) == [0, 1, 3]
    assert kept_blocks(5, 1) == [4]
    with pytest.raises(ValueError):
        kept_blocks(4, 5)


def test_fraction_that_is_not_whole_heads_is_refused():
    with pytest.raises(ValueError, match="whole number of heads"):
        student_config(tiny_config(width=64, heads=4), PAPER_MODELS[2])  # 0.375 * 4 heads


def _rows(lat: dict[str, tuple[float, float]], backend="torch", batch=8):
    return [{"model": m, "backend": backend, "batch": batch, "tower": t, "median_ms": v, "min_ms": v / 2}
            for m, (vis, txt) in lat.items() for t, v in (("vision", vis), ("text", txt))]


def test_paper_table_arithmetic():
    configs = paper_configs(stand_in())
    names = list(configs)
    lat = {names[0]: (90.0, 10.0), names[1]: (45.0, 5.0), names[2]: (30.0, 10.0), names[3]: (25.0, 5.0)}
    rows = paper_table(_rows(lat) + _rows({n: (1.0, 1.0) for n in names}, backend="other"), configs, "torch", 8,
                       reference_ms=200.0)
    g = {n: model_stats(c)["gflops"] for n, c in configs.items()}
    for row in rows:
        vis, txt = lat[row["model"]]
        assert row["latency_ms"] == pytest.approx(vis + txt)
        assert row["speedup"] == pytest.approx(100.0 / (vis + txt))
        assert row["flop_ratio"] == pytest.approx(g[names[0]] / g[row["model"]])
        assert row["efficiency"] == pytest.approx(row["speedup"] / row["flop_ratio"])
        assert row["speedup_vs_reference"] == pytest.approx(200.0 / (vis + txt))
        assert row["latency_min_ms"] == pytest.approx((vis + txt) / 2) and row["speedup_min"] == pytest.approx(row["speedup"])
        assert row["backend"] == "torch" and row["batch"] == 8
    assert [r["paper_latency_ms"] for r in rows] == [141.96, 79.00, 58.73, 49.48]
    assert [r["paper_speedup"] for r in rows] == [1.0, 1.80, 2.42, 2.87]
    assert rows[1]["flop_ratio"] > 1.5  # half width: about half the FLOPs
    md = paper_markdown({"paper_table": rows, "reference": {}}).splitlines()
    assert len(md) == 2 + 4 and md[2].startswith("| CLIP-ViT-L/14 | torch | 8 |") and md[2].endswith("| 2.00x |")
    with pytest.raises(ValueError, match="needs vision and text"):
        paper_table([r for r in _rows(lat) if r["tower"] == "vision"], configs, "torch", 8)


def test_default_batch():
    assert default_batch("cpu") == 8 and default_batch("cuda") == 64 and default_batch("cuda:1") == 64


def test_run_paper_on_tiny_stand_in_with_fake_timer():
    clock = {"t": 0.0}

    def timer():  # each read advances 0.5 ms: every timed call (two reads) lasts 0.5 ms
        clock["t"] += 0.0005
        return clock["t"]

    report = run_paper(["torch"], BenchSettings([2], warmup=0, iters=2, threads=1, device="cpu", timer=timer),
                       teacher=stand_in())
    rows = report["paper_table"]
    assert [r["model"] for r in rows] == [m.name for m in PAPER_MODELS]
    assert all(r["latency_ms"] == pytest.approx(1.0) and r["speedup"] == pytest.approx(1.0) for r in rows)
    assert rows[3]["flop_ratio"] > rows[2]["flop_ratio"] > rows[1]["flop_ratio"] > 1
    assert report["paper"]["batch"] == 2 and report["paper"]["backend"] == "torch"
    assert "instead of the paper's 64" in report["paper"]["note"]
    assert len(report["results"]) == 4 * 2
    with pytest.raises(ValueError, match="open_clip name"):
        run_paper(["torch"], BenchSettings([1]), teacher=stand_in(), reference="open_clip")
