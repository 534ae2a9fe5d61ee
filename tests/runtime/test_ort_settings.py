"""ONNX Runtime session settings: parsing, validation and what reaches SessionOptions."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from mope_deploy.runtime.ort_settings import SessionSettings


def test_parse_and_session_options():
    s = SessionSettings.parse("graph_optimization=extended, allow-spinning=0,cpu_mem_arena=off", threads=2)
    assert s == SessionSettings(graph_optimization="extended", intra_op_threads=2, allow_spinning=False,
                                cpu_mem_arena=False)
    so = s.session_options()
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    assert so.intra_op_num_threads == 2 and so.inter_op_num_threads == 1
    assert so.enable_cpu_mem_arena is False
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert s.to_dict() == {"graph_optimization": "extended", "intra_op_threads": 2, "inter_op_threads": 1,
                           "allow_spinning": False, "cpu_mem_arena": False}
    # explicit intra_op_threads wins over the --threads default; the defaults are ORT's fastest measured here
    assert SessionSettings.parse("intra_op_threads=1", threads=4).intra_op_threads == 1
    d = SessionSettings().session_options()
    assert d.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert d.get_session_config_entry("session.intra_op.allow_spinning") == "0" and d.enable_cpu_mem_arena
    assert SessionSettings.parse("allow_spinning=on").session_options().get_session_config_entry(
        "session.intra_op.allow_spinning") == "1"


@pytest.mark.parametrize("text,match", [
    ("graph_optimization=max", "graph_optimization"),
    ("threads=2", "KEY=VALUE"),
    ("allow_spinning", "KEY=VALUE"),
    ("allow_spinning=maybe", "allow_spinning"),
    ("intra_op_threads=two", "positive integer"),
    ("intra_op_threads=0", "positive integer"),
])
def test_bad_settings_are_named(text, match):
    with pytest.raises(ValueError, match=match):
        SessionSettings.parse(text)
