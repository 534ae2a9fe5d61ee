"""eval stage: retrieval (TR@k / IR@k / Recall Mean) and zero-shot classification."""

from .retrieval import (embed, encode_inputs, evaluate, naive_retrieval_metrics, retrieval_metrics,
                        retrieval_ranks)
from .zeroshot import TEMPLATES, class_embeddings, evaluate_zeroshot, naive_zeroshot_metrics, zeroshot_metrics

__all__ = ["embed", "encode_inputs", "evaluate", "naive_retrieval_metrics", "retrieval_metrics", "retrieval_ranks",
           "TEMPLATES", "class_embeddings", "evaluate_zeroshot", "naive_zeroshot_metrics", "zeroshot_metrics"]
