"""ExportConfig: every setting checked before any work, recorded as plain values."""

from __future__ import annotations

import json

import pytest

from mope_deploy.exporting import ExportConfig, ExportConfigError


@pytest.mark.parametrize("changes, message", [
    ({"formats": ("onnx", "coreml")}, "unknown export format 'coreml'"),
    ({"formats": ()}, "no export format"),
    ({"precision": "fp8"}, "unknown precision"),
    ({"batch_sizes": (8, 4)}, "MIN <= OPT <= MAX"),
    ({"opset": 13}, "opset >= 17"),
    ({"exporter": "tf2onnx"}, "unknown exporter"),
    ({"max_recall_drop": -1}, ">= 0 points"),
    ({"eval_limit": 0}, "at least 1 image"),
])
def test_export_config_is_checked_before_any_work(changes, message):
    with pytest.raises(ExportConfigError, match=message):
        ExportConfig().replace(**changes).check()


def test_export_config_records_plain_values():
    c = ExportConfig(formats=["onnx", "onnx", "triton"], batch_sizes=[1, 4, 8], timing_cache=None)
    assert c.formats == ("onnx", "triton") and c.batch_range == (1, 4, 8)
    assert json.loads(json.dumps(c.to_dict()))["formats"] == ["onnx", "triton"]
    assert ExportConfig(precision="int8").needs_eval_data()
    assert ExportConfig(precision="int8", skip_recall_gate=True).needs_eval_data() is None
