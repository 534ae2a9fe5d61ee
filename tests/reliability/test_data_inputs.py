"""Bad datasets through `mope eval`: unusable data is one clear error naming the file; bad rows and items
(a caption over the CSV field limit, bytes that are not UTF-8 in a CSV or a WebDataset caption, corrupt or
decompression-bomb images, hostile tar members) are skipped, counted and reported, the same way in every format."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib

import pytest

from mope_deploy.data.datasets import load_dataset
from reliability_helpers import cli


def _png(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(im) -> bytes:
    """A valid PNG whose header claims 30000 x 30000 pixels (Pillow refuses it as a decompression bomb)."""
    data = bytearray(_png(im))
    ihdr = data[12:29]                                  # b"IHDR" + 13 bytes of fields
    fields = struct.pack(">II", 30000, 30000) + bytes(ihdr[12:])
    chunk = b"IHDR" + fields
    data[12:29] = chunk
    data[29:33] = struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    return bytes(data)


def _shard(path, samples):
    """samples: (key, {ext: bytes}) in order; also takes ("..", ...) style hostile names."""
    with tarfile.open(path, "w") as tf:
        for key, parts in samples:
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def csv_data(tmp_path, noise_images, caption_csv):
    def make(extra_rows=(), header="image,caption", name="data"):
        return caption_csv(noise_images(3), [[f"photo {i}", f"picture {i}"] for i in range(3)], header=header,
                           extra_rows=extra_rows, name=name)
    return make


def _eval(model, data, *needles, watch, code=2, extra=()):
    return cli(["eval", model, "--data", data, "-q", *extra], *needles, watch=watch, code=code)


# ------------------------------------------------------------------------------------- unusable: errors

def test_csv_without_caption_column(good_model, csv_data, tmp_path):
    data = csv_data(header="image,label")
    _eval(good_model, data, "captions.csv", "no caption column", "--csv-caption-key", watch=tmp_path)


def test_tsv_with_commas_names_the_separator(good_model, tmp_path, noise_images):
    (tmp_path / "d").mkdir()
    noise_images(1)[0].save(tmp_path / "d" / "a.png")
    (tmp_path / "d" / "c.tsv").write_text("image,caption\na.png,a photo\n")
    _eval(good_model, tmp_path / "d" / "c.tsv", "c.tsv", "separator '\\t'", watch=tmp_path)


def test_csv_whose_images_are_all_missing(good_model, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "captions.csv").write_text("image,caption\nnope.png,a photo\ngone.png,another\n")
    _eval(good_model, tmp_path / "d" / "captions.csv", "captions.csv", "empty after skipping",
          "missing image", watch=tmp_path)


@pytest.mark.parametrize("content, message", [
    (b'{"images": [{"filename": "\xff.jpg"}]}', "not UTF-8 text"),
    (b'{"images": [', "not valid JSON"),
    (b'["a", "b"]', "expected Karpathy-split JSON"),
    (json.dumps({"images": [{"filename": "a.jpg", "split": "train", "sentences": [{"raw": "x"}]}]}).encode(),
     "no images in split 'test'"),
], ids=["not-utf8", "truncated", "not-an-object", "no-such-split"])
def test_bad_karpathy_json(content, message, good_model, tmp_path):
    (tmp_path / "dataset_coco.json").write_bytes(content)
    _eval(good_model, tmp_path / "dataset_coco.json", "dataset_coco.json", message, watch=tmp_path)


def test_missing_shards_and_paths(good_model, tmp_path):
    _eval(good_model, str(tmp_path / "shards" / "{000..002}.tar"), "3 of 3 shard(s) not found", "000.tar",
          watch=tmp_path)
    _eval(good_model, tmp_path / "nothing.csv", "nothing.csv", "not found", watch=tmp_path)
    _eval(good_model, "synthetic:valid", "valid", watch=tmp_path)


def test_image_root_that_is_not_a_folder(good_model, csv_data, tmp_path):
    data = csv_data()
    _eval(good_model, data, "--image-root", "nope", "is not a directory", watch=tmp_path,
          extra=["--image-root", str(tmp_path / "nope")])


def test_zero_shot_folder_with_one_class(good_model, tmp_path, noise_images):
    (tmp_path / "zs" / "cat").mkdir(parents=True)
    noise_images(1)[0].save(tmp_path / "zs" / "cat" / "1.png")
    _eval(good_model, tmp_path / "zs", "zs", "1 class(es)", watch=tmp_path, extra=["--task", "zeroshot"])


# ------------------------------------------------------------------------- bad items: skipped and reported

def test_caption_over_the_csv_field_limit_is_skipped_and_counted(good_model, csv_data, tmp_path):
    data = csv_data(extra_rows=["0.png," + "x" * 200_000, "1.png,\"a quoted\nmulti-line " + "y" * 200_000 + "\""])
    ds = load_dataset(data)
    assert ds.n_captions == 6 and ds.report.counts() == {"field over the csv field limit": 2}
    assert "captions.csv line 8" in ds.report.skipped[0]["item"]
    _eval(good_model, data, "skipped 2 x field over the csv field limit", "captions.csv line 8",
          "6 captions", watch=tmp_path, code=0)


def test_non_utf8_caption_is_skipped_in_csv_and_webdataset_alike(good_model, tmp_path, noise_images):
    ims = noise_images(2)
    (tmp_path / "c" / "images").mkdir(parents=True)
    for i, im in enumerate(ims):
        im.save(tmp_path / "c" / "images" / f"{i}.png")
    (tmp_path / "c" / "captions.csv").write_bytes(b"\xef\xbb\xbfimage,caption\n0.png,a photo\n"
                                                  b"1.png,caf\xe9 latin-1\n1.png,second photo\n")
    shard = _shard(tmp_path / "w.tar", [("0", {"png": _png(ims[0]), "txt": b"a photo"}),
                                        ("1", {"png": _png(ims[1]), "txt": b"caf\xe9 latin-1\n"}),
                                        ("2", {"png": _png(ims[1]), "txt": b"second photo"})])
    for spec in (tmp_path / "c" / "captions.csv", shard):
        ds = load_dataset(spec)
        assert ds.captions == ["a photo", "second photo"], spec    # never "caf\ufffd latin-1"
        assert ds.report.counts() == {"caption not UTF-8": 1}
        _eval(good_model, spec, "skipped 1 x caption not UTF-8", watch=tmp_path, code=0)


def test_hostile_shard_members_and_bad_images_are_skipped(good_model, tmp_path, noise_images):
    ims = noise_images(3)
    png = _png(ims[0])
    samples = [("../../escape", {"png": png, "txt": b"escaping name"}),     # read by offset, never extracted
               ("bomb", {"png": _bomb_png(ims[1]), "txt": b"bomb"}),
               ("broken", {"png": png[:40], "txt": b"broken"}),
               ("ok", {"png": _png(ims[2]), "txt": b"fine photo"})]
    _shard(tmp_path / "s.tar", samples)
    with tarfile.open(tmp_path / "s.tar", "a") as tf:                   # a symlink posing as an image
        link = tarfile.TarInfo("passwd.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
        info = tarfile.TarInfo("passwd.txt")
        info.size = 6
        tf.addfile(info, io.BytesIO(b"secret"))
    ds = load_dataset(tmp_path / "s.tar")
    assert ds.captions == ["escaping name", "fine photo"]
    assert ds.report.counts() == {"unreadable image": 2, "missing image": 1}
    _eval(good_model, tmp_path / "s.tar", "skipped 2 x unreadable image", "s.tar:bomb", "s.tar:passwd",
          watch=tmp_path, code=0)
    assert not (tmp_path.parent / "escape.png").exists()


def test_csv_with_corrupt_and_bomb_images(good_model, tmp_path, noise_images):
    ims = noise_images(2)
    (tmp_path / "d").mkdir()
    ims[0].save(tmp_path / "d" / "ok.png")
    (tmp_path / "d" / "bomb.png").write_bytes(_bomb_png(ims[1]))
    (tmp_path / "d" / "half.png").write_bytes(_png(ims[1])[:50])
    (tmp_path / "d" / "captions.csv").write_text("filepath,title\nok.png,fine\nbomb.png,bomb\nhalf.png,half\n"
                                                 ",no path\nok.png,\n")
    ds = load_dataset(tmp_path / "d")
    assert ds.captions == ["fine"]
    assert ds.report.counts() == {"unreadable image": 2, "missing image": 1, "empty caption": 1}
    _eval(good_model, tmp_path / "d", "skipped 2 x unreadable image", "bomb.png", watch=tmp_path, code=0)
