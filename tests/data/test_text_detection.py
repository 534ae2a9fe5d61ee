"""A data file that is not text is named as such before any header or JSON logic (issue 22); a CSV with a few
stray non-UTF-8 bytes is still text (those rows are skipped and reported, as before)."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from mope_deploy.data.datasets import DatasetError, load_dataset, require_text


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("content, message", [
    (_png(), "is not a text file (CSV/TSV expected)"),
    (b"image,caption\n" + bytes(range(128, 256)) * 4, "is not a text file (CSV/TSV expected)"),
    (b"image,caption\n\x00a.png,a photo\n", "is not a text file (CSV/TSV expected)"),
    ("image,caption\n".encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
], ids=["png", "mostly-not-utf8", "nul-byte", "utf16"])
def test_binary_csv_is_refused_before_the_header(content, message, tmp_path):
    (tmp_path / "c.csv").write_bytes(content)
    with pytest.raises(DatasetError, match="c.csv") as e:
        load_dataset(tmp_path / "c.csv")
    assert message in str(e.value) and "--csv-img-key" not in str(e.value)


def test_binary_karpathy_json_is_named(tmp_path):
    (tmp_path / "d.json").write_bytes(_png())
    with pytest.raises(DatasetError, match=r"d.json is not a text file \(Karpathy-split JSON expected\)"):
        load_dataset(tmp_path / "d.json")


def test_text_with_a_latin1_caption_is_still_text(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "c.csv").write_bytes(b"image,caption\na.png,caf\xe9 au lait\na.png,a photo\n")
    require_text(tmp_path / "c.csv", "CSV/TSV")
    ds = load_dataset(tmp_path / "c.csv")
    assert ds.captions == ["a photo"] and ds.report.counts() == {"caption not UTF-8": 1}


def test_karpathy_split_that_is_not_a_string_is_skipped(tmp_path):
    """Found by the fuzzer: a list as ``split`` crashed the split filter (unhashable)."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    data = {"images": [{"filename": "a.png", "split": [], "sentences": [{"raw": "x"}]},
                       {"filename": "a.png", "split": "test", "sentences": [{"raw": "a photo"}]}]}
    (tmp_path / "d.json").write_text(json.dumps(data))
    assert load_dataset(tmp_path / "d.json").captions == ["a photo"]
