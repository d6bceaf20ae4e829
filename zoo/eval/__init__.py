"""Evaluation: measure a checkpoint, or a fine-tuned file, and compare it with Meta's published results.

One module per method, each on the shared embedding code (``embed``: models, decoding as ``zoo embed``
does, the embedding step of ``zoo finetune --linear-probe``) and the readers of ``data``:

- ``zeroshot``: zero-shot classification of an image folder (CLIP prompt ensembles)
- ``retrieval``: image-text recall@k over image-caption pairs
- ``knn``: DINO's weighted k-NN on embeddings (image folders or ``zoo embed`` folders)
- ``linear``: a logistic-regression probe on frozen embeddings
- ``published``: Meta's figures from the registry, and the ``--expect`` check
- ``report``: the JSON file and the chart

Only ``published`` is imported here; the methods load torch models and (``linear``) scikit-learn when used.
"""

from zoo.eval.published import DATASETS, DEFAULT_TOLERANCE, ExpectationError, compare, published_results

__all__ = ["DATASETS", "DEFAULT_TOLERANCE", "ExpectationError", "compare", "published_results"]
