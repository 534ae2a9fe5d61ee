"""Image-text datasets for retrieval (CSV/TSV, Karpathy JSON, WebDataset shards, synthetic) and image folders
for zero-shot classification.

Every loader returns the same plain objects: images as a lazy sequence of PIL images, captions grouped per
image (``txt2img``), and a :class:`DataReport` of what was skipped and why. Bad items (missing or corrupt
images, empty captions, truncated tar members) are skipped and counted, never raised; a dataset left empty
is an error that says why.

``load_dataset(spec)`` takes:
  ``synthetic`` / ``synthetic:SPLIT``   the embedded synthetic scenes (mope_deploy.data.synthetic)
  ``captions.csv`` / ``.tsv`` / a folder holding ``captions.csv``   open_clip's CSV format
  ``dataset_coco.json``                 Karpathy-split JSON (COCO, Flickr30K, Flickr8k)
  ``shards/{000..009}.tar`` / ``x.tar`` / a folder of ``*.tar``     WebDataset shards (img2dataset layout)
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from PIL import Image, UnidentifiedImageError

from ..errors import MopeError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Column names tried in order when the caller does not name them (open_clip's defaults first).
IMAGE_KEYS = ("filepath", "image", "image_path", "filename", "file", "path", "img", "url")
CAPTION_KEYS = ("title", "caption", "text", "sentence", "raw", "captions")


class DatasetError(MopeError, ValueError):
    """A dataset that cannot be read at all, or that is empty after skipping bad items."""


# ---------------------------------------------------------------------------------------------------------
# Skipped-item report


@dataclass
class DataReport:
    """What a loader (or an evaluation decoding images) skipped: one ``{"reason", "item"}`` per skipped item."""

    skipped: list[dict[str, str]] = field(default_factory=list)

    def add(self, reason: str, item: str) -> None:
        self.skipped.append({"reason": reason, "item": str(item)})

    def __len__(self) -> int:
        return len(self.skipped)

    def counts(self) -> dict[str, int]:
        return dict(Counter(s["reason"] for s in self.skipped))

    def summary(self, first: int = 3) -> str:
        """One line per reason: count and the first few items, e.g. for a log or an error message."""
        if not self.skipped:
            return "nothing skipped"
        lines = []
        for reason, n in self.counts().items():
            items = [s["item"] for s in self.skipped if s["reason"] == reason][:first]
            more = f", ... ({n - len(items)} more)" if n > len(items) else ""
            lines.append(f"skipped {n} x {reason}: " + "; ".join(items) + more)
        return "\n".join(lines)

    def to_dict(self, first: int = 20) -> dict[str, Any]:
        return {"n_skipped": len(self), "counts": self.counts(), "first": self.skipped[:first]}


# ---------------------------------------------------------------------------------------------------------
# Lazy image sequences (picklable, so DataLoader workers can use them)


class BadImageError(OSError):
    """An image that cannot be read or decoded."""


def _open_rgb(fp: Any, name: str) -> Image.Image:
    try:
        with Image.open(fp) as im:
            im.load()                       # full decode: a truncated file fails here, not later in a transform
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise BadImageError(f"{name}: {type(e).__name__}: {e}") from None


class ImageFiles(Sequence):
    """Images on disk, decoded on access."""

    def __init__(self, paths: Sequence[str | Path]):
        self.paths = [str(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return _open_rgb(self.paths[i], self.paths[i])


class TarImages(Sequence):
    """Images stored inside tar files, read by offset on access (the tar is never extracted)."""

    def __init__(self, members: Sequence[tuple[str, int, int, str]]):
        self.members = list(members)        # (tar path, data offset, size, member name)

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        path, offset, size, name = self.members[i]
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise BadImageError(f"{path}:{name}: member truncated ({len(data)} of {size} bytes)")
        return _open_rgb(io.BytesIO(data), f"{path}:{name}")


# ---------------------------------------------------------------------------------------------------------
# Datasets


@dataclass
class RetrievalDataset:
    """Images with captions grouped per image: ``txt2img[c]`` is the index in ``images`` of caption ``c``.

    ``images`` is any sequence of PIL images (a list, or a lazy :class:`ImageFiles` / :class:`TarImages`);
    ``image_names`` (optional) names each image in reports.
    """

    name: str
    images: Sequence[Any]
    captions: list[str]
    txt2img: list[int]
    report: DataReport = field(default_factory=DataReport)
    image_names: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.txt2img):
            raise DatasetError(f"dataset {self.name!r}: {len(self.captions)} captions but {len(self.txt2img)} "
                               "txt2img entries; give one image index per caption")
        n = len(self.images)
        if n == 0 or not self.captions:
            raise DatasetError(f"dataset {self.name!r} is empty ({n} images, {len(self.captions)} captions). "
                               f"{self.report.summary()}")
        bad = [i for i in self.txt2img if not 0 <= int(i) < n]
        if bad:
            raise DatasetError(f"dataset {self.name!r}: txt2img refers to images {bad[:5]} but there are only {n}")
        if self.image_names is not None and len(self.image_names) != n:
            raise DatasetError(f"dataset {self.name!r}: {len(self.image_names)} image names for {n} images")

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    def img2txt(self) -> list[list[int]]:
        """Caption indices of each image."""
        out: list[list[int]] = [[] for _ in range(len(self.images))]
        for c, i in enumerate(self.txt2img):
            out[i].append(c)
        return out

    def head(self, k: int) -> "RetrievalDataset":
        """The first ``k`` images with all their captions (the dataset itself when it has no more than ``k``)."""
        if k < 1:
            raise DatasetError(f"dataset {self.name!r}: keep at least one image, got {k}")
        if self.n_images <= k:
            return self
        caps = [c for c, i in enumerate(self.txt2img) if i < k]
        return RetrievalDataset(name=f"{self.name}[:{k}]", images=self.images[:k],
                                captions=[self.captions[c] for c in caps], txt2img=[self.txt2img[c] for c in caps],
                                report=self.report, image_names=self.image_names[:k] if self.image_names else None)

    def describe(self) -> str:
        s = f"{self.name}: {self.n_images} images, {self.n_captions} captions"
        return s + (f" ({len(self.report)} items skipped)" if len(self.report) else "")


def _group(name: str, pairs: Iterable[tuple[str, str]], report: DataReport, check_image
           ) -> tuple[list[str], list[str], list[int]]:
    """Build a dataset from ``(image key, caption)`` pairs: captions grouped per key in first-seen order.

    ``check_image(key) -> (loadable, reason)`` is asked once per key; keys that fail are reported with every
    caption they had, so the report counts images, not rows.
    """
    index: dict[str, int] = {}
    verdict: dict[str, bool] = {}
    keys: list[str] = []
    captions: list[str] = []
    txt2img: list[int] = []
    for key, caption in pairs:
        if caption is not None and not isinstance(caption, str):
            report.add("caption not text", f"{key}: {type(caption).__name__}")
            continue
        caption = (caption or "").strip()
        if not caption:
            report.add("empty caption", key)
            continue
        if key not in verdict:
            ok, reason = check_image(key)
            verdict[key] = ok
            if not ok:
                report.add(reason, key)
        if not verdict[key]:
            continue
        if key not in index:
            index[key] = len(keys)
            keys.append(key)
        captions.append(caption)
        txt2img.append(index[key])
    return keys, captions, txt2img


def _header_check(path: Path) -> tuple[bool, str]:
    """Cheap load-time check (exists, recognised image header); full decoding happens at evaluation."""
    if not path.is_file():
        return False, "missing image"
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception:  # noqa: BLE001  (any failure here means the file is not a usable image)
        return False, "unreadable image"
    return True, ""


def _resolver(roots: list[Path]):
    """Resolve a relative image path against each root in order; report the first candidate if none exists."""
    def resolve(rel: str) -> Path:
        p = Path(rel)
        if p.is_absolute():
            return p
        for r in roots:
            if (r / p).is_file():
                return r / p
        return roots[0] / p
    return resolve


def _default_roots(file: Path, image_root: str | Path | None) -> list[Path]:
    if image_root is not None:
        root = Path(image_root)
        if not root.is_dir():
            raise DatasetError(f"--image-root {root} is not a directory")
        return [root]
    return [file.parent, file.parent / "images"]


def _finish(name: str, keys: list[str], captions: list[str], txt2img: list[int], report: DataReport,
            images: Sequence[Any], hint: str) -> RetrievalDataset:
    if not keys:
        raise DatasetError(f"dataset {name!r} is empty after skipping bad items ({hint}). {report.summary()}")
    return RetrievalDataset(name=name, images=images, captions=captions, txt2img=txt2img, report=report,
                            image_names=keys)


TEXT_SNIFF_BYTES = 1024            # how much of a data file is looked at to tell text from binary


def require_text(path: Path, expected: str) -> None:
    """Refuse a file that is not text (a NUL byte, a UTF-16 byte-order mark, or mostly bytes that are not UTF-8 in
    its first KB) before any header or JSON logic runs: the header of an image or an archive is not a CSV header.
    A few stray non-UTF-8 bytes (a Latin-1 caption) are text: such rows are skipped and reported later."""
    try:
        with open(path, "rb") as f:
            head = f.read(TEXT_SNIFF_BYTES)
    except OSError as e:
        raise DatasetError(f"cannot read {path} ({e.strerror or e})") from None
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DatasetError(f"{path} is UTF-16 text; save it as UTF-8 ({expected} expected)")
    text = head.decode("utf-8", errors="surrogateescape")
    bad = sum(1 for c in text if "\udc80" <= c <= "\udcff" or (c < " " and c not in "\t\n\r\f\v"))
    if b"\x00" in head or bad > max(8, len(head) // 10):
        raise DatasetError(f"{path} is not a text file ({expected} expected): its first bytes are binary data "
                           f"(an image, an archive or a model file?)")


def load_csv(path: str | Path, split: str | None = None, image_root: str | Path | None = None,
             img_key: str | None = None, caption_key: str | None = None,
             separator: str | None = None) -> RetrievalDataset:
    """open_clip's CSV/TSV format: a header row with an image-path column and a caption column.

    Columns default to the first header names found in :data:`IMAGE_KEYS` / :data:`CAPTION_KEYS`; the
    separator to a tab for ``.tsv`` and a comma otherwise. When the file has a ``split`` column only rows
    of ``split`` are kept; otherwise every row is used. Paths resolve against ``image_root`` (default: the
    file's folder, then its ``images/`` subfolder).
    """
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in ("captions.csv", "captions.tsv", "captions.txt") if (path / n).is_file()]
        if not found:
            raise DatasetError(f"{path} is a folder without captions.csv or captions.tsv")
        path = found[0]
    if not path.is_file():
        raise DatasetError(f"{path} not found")
    require_text(path, "CSV/TSV")
    sep = separator or ("\t" if path.suffix.lower() == ".tsv" else ",")
    roots = _default_roots(path, image_root)
    resolve = _resolver(roots)
    report = DataReport()
    # utf-8-sig drops a spreadsheet's byte-order mark; surrogateescape keeps bytes that are not UTF-8 visible so
    # that the row can be skipped and reported (never turned into replacement characters)
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f, _field_limit(CSV_READ_LIMIT):
        reader = csv.DictReader(f, delimiter=sep)
        try:
            header = reader.fieldnames or []
        except csv.Error as e:
            raise DatasetError(f"{path}: the header row cannot be read as CSV ({e})") from None
        ik = img_key or next((k for k in IMAGE_KEYS if k in header), None)
        ck = caption_key or next((k for k in CAPTION_KEYS if k in header), None)
        for what, key, flag in (("image", ik, "--csv-img-key"), ("caption", ck, "--csv-caption-key")):
            if key is None or key not in header:
                raise DatasetError(f"{path}: no {what} column{f' {key!r}' if key else ''} in header {header} "
                                   f"(separator {sep!r}); name it with {flag}")
        use_split = split is not None and "split" in header
        rows = ((r.get(ik) or "", r.get(ck) or "") for r in _csv_rows(reader, path, report)
                if not use_split or r.get("split") == split)
        paths: dict[str, Path] = {}

        def check(key: str) -> tuple[bool, str]:
            if not key.strip():
                return False, "missing image"
            paths[key] = resolve(key)
            return _header_check(paths[key])

        keys, captions, txt2img = _group(path.name, ((k.strip(), c) for k, c in rows), report, check)
    name = f"{path.parent.name}/{path.name}" + (f":{split}" if use_split else "")
    return _finish(name, keys, captions, txt2img, report, ImageFiles([paths[k] for k in keys]),
                   f"{path}, image root {' then '.join(map(str, roots))}")


CSV_FIELD_LIMIT = 131072            # csv's own default: a longer field is not a caption (or a path)
CSV_READ_LIMIT = 1 << 24            # read such fields whole (to skip exactly that row), up to this size


@contextlib.contextmanager
def _field_limit(n: int):
    old = csv.field_size_limit(n)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _csv_rows(reader: csv.DictReader, path: Path, report: DataReport):
    """Rows of ``reader``; a row with a field over :data:`CSV_FIELD_LIMIT` characters, an unparsable row or
    one with bytes that are not UTF-8 is skipped and counted in ``report`` (with its line number)."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            report.add("unreadable csv row", f"{path.name} line {reader.line_num}: {e}")
            continue
        values = [v for v in row.values() if isinstance(v, str)]
        if any(len(v) > CSV_FIELD_LIMIT for v in values):
            report.add("field over the csv field limit", f"{path.name} line {reader.line_num} "
                       f"(a field of more than {CSV_FIELD_LIMIT} characters)")
            continue
        if any(_not_utf8(v) for v in values):
            report.add("caption not UTF-8", f"{path.name} line {reader.line_num}")
            continue
        yield row


def _not_utf8(text: str) -> bool:
    """True for text decoded with ``surrogateescape`` from bytes that are not valid UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def decode_caption(data: bytes) -> str | None:
    """Caption bytes as text, the same rule for every format: UTF-8 (a byte-order mark is dropped), or None
    when the bytes are not UTF-8 (the caller skips the item and reports it; never replacement characters)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def load_karpathy(path: str | Path, split: str = "test", image_root: str | Path | None = None) -> RetrievalDataset:
    """Karpathy-split JSON: ``images[]`` with ``filename``, ``split``, ``sentences[].raw`` and optional
    ``filepath`` (COCO's ``val2014``). ``train`` also takes ``restval`` images, the usual convention."""
    path = Path(path)
    if path.is_file():
        require_text(path, "Karpathy-split JSON")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise DatasetError(f"{path} not found") from None
    except IsADirectoryError:
        raise DatasetError(f"{path} is a folder, not a Karpathy-split JSON file") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not UTF-8 text (byte {e.start}); JSON files are UTF-8") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON ({e})") from None
    except RecursionError:
        raise DatasetError(f"{path} is not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path}: expected Karpathy-split JSON with a top-level 'images' list")
    splits = {split, "restval"} if split == "train" else {split}
    entries = [im for im in data["images"] if isinstance(im, dict) and isinstance(im.get("split"), str)
               and im["split"] in splits]
    if not entries:
        have = sorted(Counter(str(im.get("split")) for im in data["images"] if isinstance(im, dict)).items())
        raise DatasetError(f"{path}: no images in split {split!r}; the file has {dict(have) or 'none'}")
    roots = _default_roots(path, image_root)
    resolve = _resolver(roots)
    report = DataReport()
    paths: dict[str, Path] = {}

    def pairs():
        for im in entries:
            if not im.get("filename") or not isinstance(im["filename"], str) \
                    or not isinstance(im.get("filepath") or "", str):
                report.add("missing image", f"entry without a filename string (filename {im.get('filename')!r})")
                continue
            rel = os.path.join(im.get("filepath") or "", im["filename"])
            sentences = im.get("sentences") or []
            if not isinstance(sentences, list):
                report.add("no caption", f"{rel}: sentences is not a list")
                continue
            if not sentences:
                report.add("no caption", rel)
            for s in sentences:
                yield rel, (s.get("raw") if isinstance(s, dict) else s) or ""

    def check(key: str) -> tuple[bool, str]:
        paths[key] = resolve(key)
        return _header_check(paths[key])

    keys, captions, txt2img = _group(path.name, pairs(), report, check)
    return _finish(f"{path.name}:{split}", keys, captions, txt2img, report, ImageFiles([paths[k] for k in keys]),
                   f"{path}, split {split!r}, image root {' then '.join(map(str, roots))}")


def expand_shards(pattern: str | Path) -> list[Path]:
    """``shards/{000..009}.tar`` (brace pattern, as webdataset writes it), one ``.tar``, or a folder of ``.tar``."""
    from braceexpand import braceexpand

    p = Path(pattern)
    if p.is_dir():
        shards = sorted(p.glob("*.tar"))
        if not shards:
            raise DatasetError(f"{p} is a folder without .tar shards")
        return shards
    shards = [Path(s) for s in braceexpand(str(pattern))]
    missing = [s for s in shards if not s.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} of {len(shards)} shard(s) not found (first: {missing[0]}); "
                           "check the pattern, e.g. shards/{00000..00009}.tar")
    return shards


def _scan_tar(shard: Path, report: DataReport):
    """Yield ``(key, {ext: (offset, size, name)}, {ext: bytes for txt})`` per sample, in tar order.

    A sample is the run of members sharing a key (path up to the first dot of the basename), the
    webdataset convention. A truncated shard yields what was complete and reports the rest.
    """
    size = shard.stat().st_size
    cur_key, cur = None, {}
    try:
        with tarfile.open(shard, mode="r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                d, base = os.path.split(m.name)
                if "." not in base or base.startswith("."):
                    continue
                key = os.path.join(d, base.split(".", 1)[0])
                ext = base.split(".", 1)[1].lower()
                if key != cur_key:
                    if cur_key is not None:
                        yield cur_key, cur
                    cur_key, cur = key, {}
                if m.offset_data + m.size > size:
                    report.add("truncated tar member", f"{shard.name}:{m.name}")
                    continue
                if ext in ("txt", "text", "caption"):
                    f = tf.extractfile(m)
                    cur[ext] = f.read() if f is not None else b""
                else:
                    cur[ext] = (m.offset_data, m.size, m.name)
    except (tarfile.ReadError, EOFError, OSError) as e:
        report.add("truncated tar member", f"{shard.name}: archive ends early after {cur_key or 'start'} ({e})")
    if cur_key is not None:
        yield cur_key, cur


def load_webdataset(pattern: str | Path) -> RetrievalDataset:
    """WebDataset shards as img2dataset writes them: per sample ``KEY.jpg`` (or png/webp/...) and ``KEY.txt``.

    Read with :mod:`tarfile` so images stay in the shards (read by offset when needed). Each non-empty line
    of a ``.txt`` is a caption; samples whose image bytes are identical are one image with all their
    captions (COCO-style shards repeat the image once per caption).
    """
    shards = expand_shards(pattern)
    report = DataReport()
    index: dict[str, int] = {}
    members: list[tuple[str, int, int, str]] = []
    names: list[str] = []
    captions: list[str] = []
    txt2img: list[int] = []
    img_exts = tuple(e.lstrip(".") for e in IMAGE_EXTS)
    for shard in shards:
        with open(shard, "rb") as raw:
            for key, parts in _scan_tar(shard, report):
                label = f"{shard.name}:{key}"
                ext = next((e for e in img_exts if e in parts), None)
                text = next((parts[e] for e in ("txt", "text", "caption") if e in parts), None)
                if ext is None:
                    report.add("missing image", label)
                    continue
                if text is None:
                    report.add("no caption", label)
                    continue
                decoded = decode_caption(text)
                if decoded is None:
                    report.add("caption not UTF-8", label)
                    continue
                lines = [ln.strip() for ln in decoded.splitlines() if ln.strip()]
                if not lines:
                    report.add("empty caption", label)
                    continue
                offset, size, mname = parts[ext]
                raw.seek(offset)
                data = raw.read(size)
                digest = hashlib.sha1(data).hexdigest()
                if digest not in index:
                    try:
                        with Image.open(io.BytesIO(data)) as im:
                            im.verify()
                    except Exception:  # noqa: BLE001
                        report.add("unreadable image", label)
                        continue
                    index[digest] = len(members)
                    members.append((str(shard), offset, size, mname))
                    names.append(label)
                for ln in lines:
                    captions.append(ln)
                    txt2img.append(index[digest])
    name = Path(str(pattern)).name
    return _finish(name, names, captions, txt2img, report, TarImages(members),
                   f"{len(shards)} shard(s) from {pattern}")


def _is_webdataset(spec: str) -> bool:
    p = Path(spec)
    return ("{" in spec and ".tar" in spec) or spec.endswith(".tar") or (p.is_dir() and any(p.glob("*.tar")))


def load_synthetic(split: str = "test", n_images: int | None = None) -> RetrievalDataset:
    """A fixed split of the embedded synthetic scenes (:mod:`mope_deploy.data.synthetic`) as a dataset."""
    from . import synthetic

    if split not in synthetic.SPLITS:
        raise DatasetError(f"unknown synthetic split {split!r}; use one of {', '.join(synthetic.SPLITS)}")
    images, captions, txt2img = synthetic.split_items(split, n_images=n_images)
    return RetrievalDataset(name=f"synthetic:{split}", images=images, captions=captions, txt2img=txt2img)


def load_dataset(spec: str | Path, split: str = "test", image_root: str | Path | None = None,
                 **csv_options: Any) -> RetrievalDataset:
    """Open a retrieval dataset named by ``spec`` (see the module docstring for the forms).

    ``csv_options`` (``img_key``, ``caption_key``, ``separator``) pass to :func:`load_csv`.
    """
    spec = str(spec)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return load_synthetic(spec.split(":", 1)[1] if ":" in spec else split)
    if _is_webdataset(spec):
        return load_webdataset(spec)
    p = Path(spec)
    suffix = p.suffix.lower()
    if suffix == ".json":
        return load_karpathy(p, split=split, image_root=image_root)
    if suffix in (".csv", ".tsv") or (p.is_dir() and any((p / n).is_file() for n in
                                                        ("captions.csv", "captions.tsv", "captions.txt"))):
        return load_csv(p, split=split, image_root=image_root, **csv_options)
    if not p.exists():
        raise DatasetError(f"dataset {spec!r} not found: --data takes 'synthetic[:SPLIT]', a CSV/TSV file (or a "
                           "folder with captions.csv), a Karpathy JSON, or WebDataset shards (shards/{000..009}.tar)")
    raise DatasetError(f"cannot tell the format of {spec!r}: use a .csv/.tsv, a Karpathy .json, .tar shards, or "
                       "a folder holding captions.csv or *.tar")


# ---------------------------------------------------------------------------------------------------------
# Image folders (zero-shot classification)


@dataclass
class ClassificationDataset:
    """Labelled images: ``labels[i]`` indexes ``classnames``."""

    name: str
    images: Sequence[Any]
    labels: list[int]
    classnames: list[str]
    report: DataReport = field(default_factory=DataReport)
    image_names: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise DatasetError(f"dataset {self.name!r}: {len(self.images)} images but {len(self.labels)} labels")
        if not self.images:
            raise DatasetError(f"dataset {self.name!r} is empty. {self.report.summary()}")
        if len(self.classnames) < 2:
            raise DatasetError(f"dataset {self.name!r} has {len(self.classnames)} class(es); zero-shot "
                               "classification needs at least 2 (one sub-folder per class)")
        bad = [y for y in self.labels if not 0 <= y < len(self.classnames)]
        if bad:
            raise DatasetError(f"dataset {self.name!r}: labels {bad[:5]} outside [0, {len(self.classnames)})")


def load_image_folder(root: str | Path) -> ClassificationDataset:
    """One sub-folder per class (``root/golden_retriever/*.jpg``); the class name is the folder name with
    ``_`` and ``-`` read as spaces. Non-image files are ignored; unreadable images are skipped and reported."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a directory; zero-shot data is a folder with one sub-folder per class")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root} has no class sub-folders; put each class's images in root/CLASS_NAME/")
    report = DataReport()
    paths, labels, names = [], [], []
    for y, d in enumerate(classes):
        files = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        if not files:
            report.add("empty class folder", d.name)
        for f in files:
            ok, reason = _header_check(f)
            if not ok:
                report.add(reason, str(f.relative_to(root)))
                continue
            paths.append(f)
            labels.append(y)
            names.append(str(f.relative_to(root)))
    classnames = [d.name.replace("_", " ").replace("-", " ").strip() for d in classes]
    if not paths:
        raise DatasetError(f"{root}: no readable images in {len(classes)} class folder(s) "
                           f"(extensions {', '.join(IMAGE_EXTS)}). {report.summary()}")
    return ClassificationDataset(name=root.name, images=ImageFiles(paths), labels=labels, classnames=classnames,
                                 report=report, image_names=names)
