"""ONNX Runtime session settings as one plain, validated, serialisable object.

The defaults are the ones measured best for the CPU encoders (``benchmarks/cpu_levers.py --settings``, see
docs/RESULTS.md); every field maps to one ``onnxruntime.SessionOptions`` knob or session config entry, and
:meth:`SessionSettings.to_dict` is what a bench report records.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

OPT_LEVELS = ("disabled", "basic", "extended", "all")


@dataclass(frozen=True)
class SessionSettings:
    """``graph_optimization``: ORT graph optimisation level (``all`` adds layout transforms such as NCHWc);
    ``intra_op_threads``: threads per operator (None: ORT's default, one per physical core);
    ``allow_spinning``: worker threads busy-wait between ops (lower latency, burns CPU while idle);
    ``cpu_mem_arena``: ORT's caching allocator for activations; ``inter_op_threads``: threads across
    independent ops (1: our encoders are one chain of ops)."""

    graph_optimization: str = "all"
    intra_op_threads: int | None = None
    inter_op_threads: int = 1
    # off: measured 1.4x (vision) / 1.6x (text) faster for the int8 MoPE-CLIP base graphs on the shared 2-core
    # machine (benchmarks/results/2026-11-29_cpu_ort_settings_base.json): spinning workers burn the timeslices
    # other processes need; turn it on for a dedicated, idle host
    allow_spinning: bool = False
    cpu_mem_arena: bool = True

    def __post_init__(self) -> None:
        if self.graph_optimization not in OPT_LEVELS:
            raise ValueError(f"graph_optimization {self.graph_optimization!r} is not one of {', '.join(OPT_LEVELS)}")
        for name in ("intra_op_threads", "inter_op_threads"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{name} must be a positive integer (or unset), got {v!r}")
        for name in ("allow_spinning", "cpu_mem_arena"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def session_options(self):
        """An ``onnxruntime.SessionOptions`` with these settings (quiet logging, sequential execution)."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[self.graph_optimization]
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if self.intra_op_threads:
            so.intra_op_num_threads = self.intra_op_threads
        so.inter_op_num_threads = self.inter_op_threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "1" if self.allow_spinning else "0")
        so.enable_cpu_mem_arena = self.cpu_mem_arena
        so.log_severity_level = 3  # quantised graphs warn about every unfused node otherwise
        return so

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "SessionSettings":
        return dataclasses.replace(self, **changes)

    @classmethod
    def parse(cls, text: str | None, threads: int | None = None) -> "SessionSettings":
        """``"graph_optimization=extended,allow_spinning=0"`` -> settings (unknown keys and bad values: a clear
        error listing the allowed ones); ``threads`` sets ``intra_op_threads`` unless the text does."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {}
        for item in (text or "").split(","):
            if not item.strip():
                continue
            key, sep, value = item.partition("=")
            key, value = key.strip().replace("-", "_"), value.strip()
            if not sep or key not in fields:
                raise ValueError(f"bad ONNX Runtime setting {item.strip()!r}: use KEY=VALUE with KEY one of "
                                 f"{', '.join(fields)}")
            if key in ("allow_spinning", "cpu_mem_arena"):
                if value.lower() not in ("1", "0", "true", "false", "on", "off"):
                    raise ValueError(f"{key} must be 1/0, true/false or on/off, got {value!r}")
                kw[key] = value.lower() in ("1", "true", "on")
            elif key in ("intra_op_threads", "inter_op_threads"):
                try:
                    kw[key] = int(value)
                except ValueError:
                    raise ValueError(f"{key} must be a positive integer, got {value!r}") from None
            else:
                kw[key] = value
        if threads and "intra_op_threads" not in kw:
            kw["intra_op_threads"] = int(threads)
        return cls(**kw)


__all__ = ["SessionSettings", "OPT_LEVELS"]
