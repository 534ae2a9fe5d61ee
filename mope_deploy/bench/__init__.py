"""Benchmarks: the latency harness (:mod:`.harness`), ``mope bench`` (:mod:`.run`; one request:
:mod:`.request`), the paper's Table 7 (:mod:`.paper`) and plots (:mod:`.plot`)."""

from .harness import bench_inputs, environment, summarize, time_fn
from .paper import PAPER_MODELS, paper_configs, paper_table, run_paper, student_config
from .request import BenchRequest, run_request
from .run import BenchSettings, bench_encoder, parse_batch_sizes, run_bench, write_json

__all__ = ["bench_inputs", "environment", "summarize", "time_fn", "PAPER_MODELS", "paper_configs", "paper_table",
           "run_paper", "student_config", "bench_encoder", "parse_batch_sizes", "run_bench", "write_json", "BenchRequest", "run_request", "BenchSettings"]
