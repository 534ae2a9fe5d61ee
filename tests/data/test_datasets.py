"""Dataset loaders: CSV/TSV, Karpathy JSON, WebDataset shards, image folders, and bad-data handling."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from mope_deploy.data.datasets import (BadImageError, DatasetError, RetrievalDataset, load_csv, load_dataset,
                                       load_image_folder, load_karpathy, load_webdataset)

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]


def img(i: int, size=(24, 16)) -> Image.Image:
    im = Image.new("RGB", size, COLORS[i % len(COLORS)])
    im.putpixel((i % size[0], 0), (i * 7 % 256, 3, 5))      # distinct bytes even when colours repeat
    return im


def img_bytes(i: int, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img(i).save(buf, format=fmt)
    return buf.getvalue()


def write_images(folder: Path, n: int, fmt: str = "JPEG") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"im{i}.{'jpg' if fmt == 'JPEG' else 'png'}"
        (folder / name).write_bytes(img_bytes(i, fmt))
        names.append(name)
    return names


# ---------------------------------------------------------------------------------------------------------
# CSV / TSV


def test_csv_groups_captions_per_image_and_finds_images_subfolder(tmp_path):
    names = write_images(tmp_path / "images", 3)
    rows = ["image,caption"] + [f"{names[i]},caption {i}-{j}" for i in (0, 1, 2) for j in range(2)]
    rows.insert(2, f"{names[2]},late caption for image 2")           # captions of one image need not be adjacent
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(tmp_path / "captions.csv")
    assert ds.n_images == 3 and ds.n_captions == 7
    assert ds.image_names == [names[0], names[2], names[1]]         # first-seen order
    assert [ds.image_names[i] for i in ds.txt2img] == [names[int(c.split()[1][0])] if c[0] == "c" else names[2]
                                                       for c in ds.captions]
    assert ds.img2txt()[1] == [1, 5, 6]
    im = ds.images[1]
    assert isinstance(im, Image.Image) and im.mode == "RGB" and im.size == (24, 16)
    assert im.getpixel((18, 12)) == pytest.approx(COLORS[2], abs=24)
    assert len(ds.report) == 0
    # a folder holding captions.csv is the same dataset
    assert load_dataset(tmp_path).captions == ds.captions


def test_tsv_open_clip_keys_and_explicit_columns(tmp_path):
    names = write_images(tmp_path / "pics", 2, fmt="PNG")
    (tmp_path / "train.tsv").write_text("title\tfilepath\nred thing\tim0.png\ngreen thing\tim1.png\n")
    ds = load_dataset(tmp_path / "train.tsv", image_root=tmp_path / "pics")
    assert ds.captions == ["red thing", "green thing"] and ds.txt2img == [0, 1]
    assert ds.images[0].getpixel((3, 3)) == COLORS[0]

    (tmp_path / "odd.csv").write_text("pic;words\nim1.png;a green thing\n")
    ds = load_csv(tmp_path / "odd.csv", image_root=tmp_path / "pics", img_key="pic", caption_key="words",
                  separator=";")
    assert ds.captions == ["a green thing"] and ds.image_names == [names[1]]
    with pytest.raises(DatasetError, match="--csv-img-key"):
        load_csv(tmp_path / "odd.csv", image_root=tmp_path / "pics")


def test_csv_split_column_filters_rows(tmp_path):
    write_images(tmp_path, 3)
    (tmp_path / "c.csv").write_text("filepath,title,split\nim0.jpg,a,train\nim1.jpg,b,test\nim2.jpg,c,test\n")
    assert load_dataset(tmp_path / "c.csv", split="test").captions == ["b", "c"]
    assert load_dataset(tmp_path / "c.csv", split="train").captions == ["a"]


def test_csv_bad_items_are_skipped_counted_and_named(tmp_path):
    names = write_images(tmp_path, 3)
    (tmp_path / "garbage.jpg").write_bytes(b"this is not an image at all" * 10)
    rows = ["image,caption", f"{names[0]},ok zero", "nothere.jpg,missing one", "garbage.jpg,corrupt one",
            "garbage.jpg,corrupt two", f"{names[1]},   ", f"{names[1]},ok one", f"{names[2]},ok two", ",no path"]
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(tmp_path / "captions.csv")
    assert ds.captions == ["ok zero", "ok one", "ok two"] and ds.txt2img == [0, 1, 2]
    counts = ds.report.counts()
    assert counts == {"missing image": 2, "unreadable image": 1, "empty caption": 1}
    summary = ds.report.summary()
    assert "nothere.jpg" in summary and "garbage.jpg" in summary and "empty caption" in summary


def test_empty_dataset_says_why(tmp_path):
    (tmp_path / "captions.csv").write_text("image,caption\nmissing0.jpg,a\nmissing1.jpg,b\n")
    with pytest.raises(DatasetError, match=r"empty.*missing image.*missing0\.jpg"):
        load_dataset(tmp_path / "captions.csv")
    (tmp_path / "header.csv").write_text("image,caption\n")
    with pytest.raises(DatasetError, match="empty"):
        load_dataset(tmp_path / "header.csv")


def test_truncated_jpeg_fails_only_on_decode(tmp_path):
    # The header check accepts it; decoding raises BadImageError, which evaluation records (tests/eval).
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 64).convert("RGB").save(buf, format="JPEG")   # noise: most bytes are scan data
    data = buf.getvalue()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    (tmp_path / "captions.csv").write_text("image,caption\ncut.jpg,half an image\n")
    ds = load_dataset(tmp_path / "captions.csv")
    with pytest.raises(BadImageError, match="cut.jpg"):
        ds.images[0]


# ---------------------------------------------------------------------------------------------------------
# Karpathy JSON


def karpathy(tmp_path: Path) -> Path:
    write_images(tmp_path / "images" / "val2014", 4)
    entries = [
        {"filepath": "val2014", "filename": "im0.jpg", "split": "test",
         "sentences": [{"raw": "zero a"}, {"raw": "zero b"}]},
        {"filepath": "val2014", "filename": "im1.jpg", "split": "train", "sentences": [{"raw": "one"}]},
        {"filepath": "val2014", "filename": "im2.jpg", "split": "restval", "sentences": [{"raw": "two"}]},
        {"filepath": "val2014", "filename": "im3.jpg", "split": "test", "sentences": [{"raw": "three"}, {"raw": ""}]},
        {"filepath": "val2014", "filename": "gone.jpg", "split": "test", "sentences": [{"raw": "gone"}]},
        {"filepath": "val2014", "filename": "im1.jpg", "split": "val", "sentences": []},
    ]
    p = tmp_path / "dataset_coco.json"
    p.write_text(json.dumps({"dataset": "coco", "images": entries}))
    return p


def test_karpathy_json_splits_and_images_fallback(tmp_path):
    p = karpathy(tmp_path)
    ds = load_dataset(p, split="test")
    assert ds.captions == ["zero a", "zero b", "three"] and ds.txt2img == [0, 0, 1]
    assert ds.report.counts() == {"empty caption": 1, "missing image": 1}
    assert "gone.jpg" in ds.report.summary()
    assert ds.images[1].getpixel((18, 12)) == pytest.approx(COLORS[3], abs=24)
    train = load_karpathy(p, split="train")
    assert train.captions == ["one", "two"]                          # restval counts as train
    with pytest.raises(DatasetError, match="no caption"):
        load_karpathy(p, split="val")                                # only image has no sentences
    with pytest.raises(DatasetError, match=r"no images in split 'dev'.*test"):
        load_karpathy(p, split="dev")


def test_karpathy_json_explicit_image_root_and_bad_json(tmp_path):
    p = karpathy(tmp_path)
    ds = load_karpathy(p, split="train", image_root=tmp_path / "images")
    assert ds.n_images == 2
    with pytest.raises(DatasetError, match="not a directory"):
        load_karpathy(p, image_root=tmp_path / "nope")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_dataset(tmp_path / "broken.json")


# ---------------------------------------------------------------------------------------------------------
# WebDataset shards


def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tf:
        for key, parts in samples:
            for ext, data in parts.items():
                add(tf, f"{key}.{ext}", data)


def test_webdataset_brace_pattern_grouping_and_bad_members(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    write_shard(d / "000.tar", [
        ("00000/000000000", {"jpg": img_bytes(0), "txt": b"red box", "json": b"{}"}),
        ("00000/000000001", {"png": img_bytes(1, "PNG"), "txt": b"green box\nanother green caption\n"}),
        ("00000/000000002", {"jpg": img_bytes(0), "txt": b"same red image, second caption"}),  # same bytes as 0
        ("00000/000000003", {"jpg": img_bytes(2), "txt": b"  \n"}),
        ("00000/000000004", {"txt": b"caption without an image"}),
    ])
    write_shard(d / "001.tar", [
        ("00001/000000005", {"jpg": b"not a jpeg", "txt": b"corrupt"}),
        ("00001/000000006", {"jpg": img_bytes(3), "txt": b"yellow box"}),
        ("00001/000000007", {"jpg": img_bytes(4)}),
    ])
    ds = load_dataset(str(d / "{000..001}.tar"))
    assert ds.captions == ["red box", "green box", "another green caption", "same red image, second caption",
                           "yellow box"]
    assert ds.txt2img == [0, 1, 1, 0, 2]
    assert ds.n_images == 3
    assert ds.images[1].getpixel((5, 5)) == COLORS[1]
    assert ds.images[2].getpixel((18, 12)) == pytest.approx(COLORS[3], abs=24)
    assert ds.report.counts() == {"empty caption": 1, "missing image": 1, "unreadable image": 1, "no caption": 1}
    assert "000000005" in ds.report.summary()
    # a folder of shards and a single shard work too
    assert load_dataset(d).captions == ds.captions
    assert load_webdataset(d / "001.tar").captions == ["yellow box"]


def test_webdataset_truncated_shard_keeps_complete_samples(tmp_path):
    big = Image.effect_noise((96, 96), 64).convert("RGB")           # incompressible, so the cut lands inside it
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    write_shard(tmp_path / "s.tar", [
        ("a", {"jpg": img_bytes(0), "txt": b"first"}),
        ("b", {"jpg": img_bytes(1), "txt": b"second"}),
        ("c", {"png": buf.getvalue(), "txt": b"third, cut off"}),
    ])
    raw = (tmp_path / "s.tar").read_bytes()
    cut = raw.index(buf.getvalue()[:64]) + 100
    (tmp_path / "s.tar").write_bytes(raw[:cut])
    ds = load_dataset(tmp_path / "s.tar")
    assert ds.captions == ["first", "second"]
    assert ds.report.counts().get("truncated tar member", 0) >= 1
    assert "c.png" in ds.report.summary()


def test_webdataset_missing_shards_and_empty(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(str(tmp_path / "{000..002}.tar"))
    write_shard(tmp_path / "e.tar", [("a", {"txt": b"no image"})])
    with pytest.raises(DatasetError, match=r"empty.*missing image"):
        load_dataset(tmp_path / "e.tar")


# ---------------------------------------------------------------------------------------------------------
# Direct construction, dispatch, image folders


def test_dataset_from_pil_list_and_validation():
    ds = RetrievalDataset("mem", [img(0), img(1)], ["a", "b", "c"], [0, 1, 1])
    assert ds.n_images == 2 and ds.img2txt() == [[0], [1, 2]] and len(ds.report) == 0
    with pytest.raises(DatasetError, match="txt2img"):
        RetrievalDataset("mem", [img(0)], ["a", "b"], [0])
    with pytest.raises(DatasetError, match="only 1"):
        RetrievalDataset("mem", [img(0)], ["a"], [3])
    with pytest.raises(DatasetError, match="empty"):
        RetrievalDataset("mem", [], [], [])


def test_load_dataset_dispatch(tmp_path, monkeypatch):
    import mope_deploy.data.datasets as datasets_mod

    calls = []
    monkeypatch.setattr(datasets_mod, "load_synthetic", lambda split: calls.append(split) or
                        RetrievalDataset(f"synthetic:{split}", [img(0)], ["x"], [0]))
    assert load_dataset("synthetic:val").name == "synthetic:val"
    assert load_dataset("synthetic", split="test").name == "synthetic:test"
    assert calls == ["val", "test"]
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "nothing.csv")
    with pytest.raises(DatasetError, match="not found: --data takes"):
        load_dataset(tmp_path / "nothing")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(DatasetError, match="cannot tell the format"):
        load_dataset(tmp_path / "x.parquet")


def test_image_folder_classes_and_bad_files(tmp_path):
    write_images(tmp_path / "golden_retriever", 2)
    write_images(tmp_path / "tabby-cat", 3, fmt="PNG")
    (tmp_path / "tabby-cat" / "broken.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "tabby-cat" / "notes.txt").write_text("ignored")
    (tmp_path / "empty").mkdir()
    ds = load_image_folder(tmp_path)
    assert ds.classnames == ["empty", "golden retriever", "tabby cat"]
    assert ds.labels == [1, 1, 2, 2, 2]
    assert ds.report.counts() == {"empty class folder": 1, "unreadable image": 1}
    assert ds.images[2].getpixel((18, 12)) == COLORS[0]
    (tmp_path / "one").mkdir()
    write_images(tmp_path / "one" / "only", 1)
    with pytest.raises(DatasetError, match="at least 2"):
        load_image_folder(tmp_path / "one")
    with pytest.raises(DatasetError, match="no class sub-folders"):
        load_image_folder(tmp_path / "one" / "only")
