"""Benchmark of the metric alone (``pytest tests/eval --benchmark-enable``); disabled, it runs once as a test.

End-to-end time on flickr8k-500 is exercised by tests/eval/test_retrieval.py::test_flickr8k_500_counts."""

from __future__ import annotations

import torch

from mope_deploy.eval.retrieval import retrieval_metrics


def _unit(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_bench_metrics_500_images_2500_captions(benchmark):
    g = torch.Generator().manual_seed(0)
    img, txt, t2i = _unit(500, 512, g), _unit(2500, 512, g), torch.arange(2500) // 5
    result = benchmark(retrieval_metrics, img, txt, t2i)
    assert result == retrieval_metrics(img, txt, t2i, chunk_size=97)

