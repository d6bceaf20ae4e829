"""Meta's published results of each checkpoint (``registry.yaml``, ``published``) and the check against them.

``DATASETS`` says what each figure in the registry measures; those with an ``eval`` method can be
measured again with ``python -m zoo eval METHOD ... --expect DATASET``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zoo.registry import get_entry

DEFAULT_TOLERANCE = 0.3  # points (percent)


@dataclass(frozen=True)
class Dataset:
    """What one published figure measures, and which ``zoo eval`` method and JSON key measure it again."""

    title: str
    metric: str
    method: str | None = None  # zeroshot, retrieval, ... or None when zoo eval cannot measure it
    key: str | None = None  # the key of the method's JSON (dotted for nested), a fraction 0-1
    why_not: str = ""  # when method is None: why


_VIDEO = "it needs video evaluation, which zoo eval does not have yet"
_DENSE = "it needs a trained dense-prediction head, which zoo eval does not train"
_MLLM = "it needs a multimodal LLM (PLM) trained on the frozen encoder"
DATASETS: dict[str, Dataset] = {
    "imagenet-1k": Dataset("ImageNet-1k val", "zero-shot top-1 %", "zeroshot", "top1"),
    "imagenet-v2": Dataset("ImageNet-V2", "zero-shot top-1 %", "zeroshot", "top1"),
    "imagenet-a": Dataset("ImageNet-A", "zero-shot top-1 %", "zeroshot", "top1"),
    "objectnet": Dataset("ObjectNet", "zero-shot top-1 %", why_not="ObjectNet maps its classes to several ImageNet "
                         "classes each, which zoo eval's ImageFolder zero-shot does not do"),
    "coco-t2i": Dataset("COCO captions, 5k test images", "text-to-image recall@1 %", "retrieval", "text_to_image.recall@1"),
    "kinetics-400": Dataset("Kinetics-400 val", "video zero-shot top-1 %", why_not=_VIDEO),
    "msr-vtt-t2v": Dataset("MSR-VTT", "text-to-video recall@1 %", why_not=_VIDEO),
    "ade20k-linear": Dataset("ADE20k", "linear-probe segmentation mIoU", why_not=_DENSE),
    "davis": Dataset("DAVIS", "zero-shot tracking J&F", why_not="it needs video label propagation"),
    "lvis-box": Dataset("LVIS, Mask R-CNN 1024 px", "box mAP", why_not=_DENSE),
    "lvis-mask": Dataset("LVIS, Mask R-CNN 1024 px", "mask mAP", why_not=_DENSE),
    "coco-deta-box": Dataset("COCO, DETA 1824 px", "box mAP", why_not=_DENSE),
    "docvqa-val": Dataset("DocVQA val", "PLM-8B score, frozen encoder", why_not=_MLLM),
    "infovqa-val": Dataset("InfographicVQA val", "PLM-8B score, frozen encoder", why_not=_MLLM),
    "textvqa": Dataset("TextVQA", "PLM-8B score, frozen encoder", why_not=_MLLM),
    "mvbench": Dataset("MVBench", "PLM-8B score, frozen encoder", why_not=_MLLM),
    "perceptiontest-val": Dataset("PerceptionTest val", "PLM-8B score, frozen encoder", why_not=_MLLM),
    "egoschema-val": Dataset("EgoSchema val", "PLM-8B score, frozen encoder", why_not=_MLLM),
}


class ExpectationError(ValueError):
    """``--expect`` names a figure that is not published for the model, or that this method cannot measure."""


def published_results(name: str) -> dict[str, Any]:
    """Meta's published results of a registry entry: ``{"source", "url", "results": {dataset: value}}``.

    Values are in points (percent, as Meta prints them); ``zoo.eval.DATASETS[dataset]`` says what each
    measures. An entry without published figures gives empty ``results``.
    """
    published = get_entry(name).published
    if published is None:
        return {"source": None, "url": None, "results": {}}
    return {"source": published["source"], "url": published["url"], "results": dict(published["results"])}


def expected(name: str, dataset: str, method: str) -> tuple[float, str]:
    """``(published value, source)`` for ``--expect dataset`` with ``method`` on model ``name``; else ExpectationError."""
    from zoo.weights import is_finetuned_path

    if is_finetuned_path(name):
        raise ExpectationError(f"--expect compares a registry checkpoint with Meta's figures; {name} is a fine-tuned file: drop --expect")
    published = published_results(name)
    if dataset not in published["results"]:
        have = ", ".join(published["results"]) or "none"
        raise ExpectationError(
            f"no published {dataset!r} figure for {get_entry(name).name} (published: {have}); drop --expect or choose one of those"
        )
    info = DATASETS.get(dataset)
    if info is None or info.method is None:
        why = info.why_not if info else "zoo eval does not know this dataset"
        raise ExpectationError(f"--expect {dataset}: zoo eval cannot measure this figure ({why})")
    if info.method != method:
        raise ExpectationError(f"--expect {dataset} is measured by `python -m zoo eval {info.method}`, not `{method}`")
    return published["results"][dataset], published["source"]


def measured(metrics: dict[str, Any], key: str) -> float:
    """The figure at a dotted ``key`` of a method's JSON, in points (percent)."""
    value: Any = metrics
    for part in key.split("."):
        value = value[part]
    return 100.0 * float(value)


def compare(name: str, dataset: str, method: str, metrics: dict[str, Any], tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """The measured figure against Meta's: ``{dataset, measured, published, difference, tolerance, source, ok}``."""
    value, source = expected(name, dataset, method)
    got = measured(metrics, DATASETS[dataset].key)
    return {"dataset": dataset, "measured": got, "published": value, "difference": got - value,
            "tolerance": tolerance, "source": source, "ok": abs(got - value) <= tolerance + 1e-9}


__all__ = ["DATASETS", "DEFAULT_TOLERANCE", "Dataset", "ExpectationError", "compare", "expected", "measured", "published_results"]
