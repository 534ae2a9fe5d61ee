"""Library calls leave process-wide state alone: the root logger (level, handlers, filters), library logger
levels and torch's global thread count are the same before and after an int8 quantisation and encoders run."""

from __future__ import annotations

import logging

import torch

from mope_deploy.runtime import open_encoder

LOGGERS = ("onnxruntime", "onnx", "torch.onnx", "onnxscript")


def _state():
    root = logging.getLogger()
    return (root.level, list(root.handlers), list(root.filters), torch.get_num_threads(),
            {n: logging.getLogger(n).level for n in LOGGERS})


def test_encoders_and_int8_quantisation_change_no_process_state(tiny_bundle, tmp_path, captions, monkeypatch):
    _, model_dir, bundle = tiny_bundle
    root_levels = []  # not even for a moment: another thread of a server logs meanwhile
    real_set_level = logging.Logger.setLevel
    monkeypatch.setattr(logging.Logger, "setLevel", lambda self, lv: (
        root_levels.append(lv) if self is logging.getLogger() else None, real_set_level(self, lv))[1])
    before = _state()
    threads = max(1, torch.get_num_threads() - 1) if torch.get_num_threads() > 1 else 2
    enc = open_encoder(bundle, "onnxruntime-int8", threads=1, work_dir=tmp_path)  # quantises: ORT logs warnings
    enc.encode_texts(captions)
    t = open_encoder(model_dir, "torch", threads=threads, device="cpu")
    seen = []
    real = torch.set_num_threads

    def spy(n):
        seen.append(n)
        real(n)

    torch.set_num_threads = spy
    try:
        t.encode_texts(captions)
    finally:
        torch.set_num_threads = real
    assert threads in seen  # the encoder ran with its own thread count...
    assert _state() == before  # ...and put the process's back
    assert root_levels == []
