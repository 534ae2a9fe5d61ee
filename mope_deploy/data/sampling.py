"""Training samples drawn from a retrieval dataset: restartable, seeded (image, caption) streams."""

from __future__ import annotations

import random
from typing import Any, Callable, Iterator

from .datasets import RetrievalDataset


def dataset_pairs(dataset: RetrievalDataset, seed: int) -> Callable[[int], Iterator[tuple[Any, str]]]:
    """``start -> (image, caption)`` over every caption, reshuffled each epoch by ``seed``; restartable anywhere."""
    n = len(dataset.captions)

    def pairs(start: int) -> Iterator[tuple[Any, str]]:
        i = start
        while True:
            epoch, pos = divmod(i, n)
            order = list(range(n))
            random.Random(seed * 100003 + epoch).shuffle(order)
            for c in order[pos:]:
                yield dataset.images[dataset.txt2img[c]], dataset.captions[c]
            i = (epoch + 1) * n

    return pairs
