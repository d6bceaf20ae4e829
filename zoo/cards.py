"""Hugging Face Hub model cards, rendered from the registry (never edited by hand).

``render_card(name)`` gives the full Markdown of one card; ``python -m converters.cards``
writes them to ``model_cards/`` and the tests execute the Python snippets they contain.
"""

from __future__ import annotations

from huggingface_hub import ModelCardData

from zoo.weights.convert_text import text_weights_file
from zoo.models import create_model
from zoo.registry import Entry, find_entry, get_entry
from zoo.weights import converter_command

IMAGE_PLACEHOLDER = "path/to/image.jpeg"  # the tests swap in a real image file
PRINTS = "# prints: "  # marks the expected output of the print() just above it

FAMILY_TITLE = {"core": "PE-Core", "spatial": "PE-Spatial", "lang": "PE-Lang"}
SIZE_TITLE = {"T": "Tiny", "S": "Small", "B": "Base", "L": "Large", "G": "Gigantic"}

PAPERS: dict[str, tuple[str, str, str]] = {
    # key: (title, arXiv id, BibTeX)
    "vit": (
        "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
        "2010.11929",
        """@misc{dosovitskiy2021vit,
  title         = {An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale},
  author        = {Dosovitskiy, Alexey and Beyer, Lucas and Kolesnikov, Alexander and Weissenborn, Dirk and Zhai, Xiaohua and Unterthiner, Thomas and Dehghani, Mostafa and Minderer, Matthias and Heigold, Georg and Gelly, Sylvain and Uszkoreit, Jakob and Houlsby, Neil},
  year          = {2021},
  eprint        = {2010.11929},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV}
}""",
    ),
    "rope-vit": (
        "Rotary Position Embedding for Vision Transformer",
        "2403.13298",
        """@misc{heo2024ropevit,
  title         = {Rotary Position Embedding for Vision Transformer},
  author        = {Heo, Byeongho and Park, Song and Han, Dongyoon and Yun, Sangdoo},
  year          = {2024},
  eprint        = {2403.13298},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV}
}""",
    ),
    "perception-encoder": (
        "Perception Encoder: The best visual embeddings are not at the output of the network",
        "2504.13181",
        """@misc{bolya2025perceptionencoder,
  title         = {Perception Encoder: The best visual embeddings are not at the output of the network},
  author        = {Bolya, Daniel and Huang, Po-Yao and Sun, Peize and Cho, Jang Hyun and Madotto, Andrea and Wei, Chen and Ma, Tengyu and Zhi, Jiale and Rajasegaran, Jathushan and Rasheed, Hanoona and Wang, Junke and Monteiro, Marco and Xu, Hu and Dong, Shiyu and Ravi, Nikhila and Li, Daniel and Doll{\\'a}r, Piotr and Feichtenhofer, Christoph},
  year          = {2025},
  eprint        = {2504.13181},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV}
}""",
    ),
    "perceptionlm": (
        "PerceptionLM: Open-Access Data and Models for Detailed Visual Understanding",
        "2504.13180",
        """@misc{cho2025perceptionlm,
  title         = {PerceptionLM: Open-Access Data and Models for Detailed Visual Understanding},
  author        = {Cho, Jang Hyun and Madotto, Andrea and Mavroudi, Effrosyni and Afouras, Triantafyllos and Nagarajan, Tushar and Maaz, Muhammad and Song, Yale and Ma, Tengyu and Hu, Shuming and Rasheed, Hanoona and Sun, Peize and Huang, Po-Yao and Bolya, Daniel and Jain, Suyog and Martin, Miguel and Wang, Huiyu and Ravi, Nikhila and Jain, Shashank and Stark, Temmy and Moon, Shane and Damavandi, Babak and Lee, Vivian and Westbury, Andrew and Khan, Salman and Kr{\\"a}henb{\\"u}hl, Philipp and Doll{\\'a}r, Piotr and Torresani, Lorenzo and Grauman, Kristen and Feichtenhofer, Christoph},
  year          = {2025},
  eprint        = {2504.13180},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV}
}""",
    ),
}


def card_metadata(entry: Entry) -> ModelCardData:
    """The card's YAML front matter, in the fields the Hub understands."""
    return ModelCardData(
        library_name="pe-zoo",
        license=entry.license,
        base_model=entry.source.repo,
        pipeline_tag="image-feature-extraction",
        tags=["image-feature-extraction", "pytorch", "perception-encoder", entry.name.rsplit("_", 1)[1], "vision-transformer"],
    )


def stated_shapes(entry: Entry) -> dict[str, tuple[int, ...]]:
    """The output shapes a card states for one image at the native size (from the config, by arithmetic)."""
    c = entry.config
    shapes = {"embedding": (1, c.width), "neck": (1, c.width, c.grid, c.grid)}
    if c.clip_dim:
        shapes["clip_embedding"] = (1, c.clip_dim)
    return shapes


def _millions(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _summary(entry: Entry) -> str:
    c, fam = entry.config, FAMILY_TITLE[entry.family]
    size = f"ViT-{entry.variant[0]}/{c.patch_size}"
    head = (
        f"The {size} image encoder of Meta's {fam} ([{entry.source.repo}](https://huggingface.co/{entry.source.repo})), "
        "converted to pe-zoo's safetensors layout. The architecture and the weight values are kept exactly; "
        "tensors are renamed"
        + (" (and the pooling head's fused q/k/v projection is split into q and kv, the CLIP projection stored "
           "transposed as a linear layer)." if entry.family == "core" else ".")
    )
    if entry.family == "core":
        return head + (
            " This is the vision half of a CLIP model. "
            f"The CLIP projection ({c.width} -> {c.clip_dim}) is kept as an optional part: `net.clip_embedding(x)` "
            "gives the image embedding in CLIP space, while `embedding` (and `infer_image`) is the attention-pooled "
            "feature before that projection, a general-purpose image descriptor. The text tower of Meta's CLIP file "
            f"is converted into a separate file, `{text_weights_file(entry)}`, which `zoo.load_pretrained_clip` "
            "pairs with this encoder for zero-shot classification."
        )
    use = "detection, segmentation or depth" if entry.family == "spatial" else "a multimodal language model"
    tail = (
        " It has no pooling head, so its patch tokens are the point: `net.detection_features(x)` gives them as a "
        f"feature map, the input for {use}. `embedding` is simply the mean of the patch tokens, "
        "offered for convenience rather than trained as a global descriptor."
    )
    if entry.family == "spatial":
        return head + " PE-Spatial is tuned so that its dense features are spatially precise." + tail
    size = entry.variant.split("-")[0]
    core_depth = find_entry("core", size).config.depth
    tiling = (
        " This is the -Tiling release: the same architecture, tuned for the tiled high-resolution inputs PerceptionLM feeds it."
        if entry.variant.endswith("-Tiling") else ""
    )
    return head + (
        " PE-Lang is aligned to a language model, as the vision encoder of multimodal LLMs (PerceptionLM). "
        "Following the PE paper's finding that the best features sit inside the network, Meta's checkpoint has "
        f"{c.depth} blocks where PE-Core {size} has {core_depth}."
    ) + tiling + tail


def _details(entry: Entry) -> str:
    c = entry.config
    params = create_model(entry.name, device="meta").backbone_parameters()
    mean, std = entry.rgb_stats["mean"], entry.rgb_stats["std"]
    kind = "image embedding and dense-feature backbone" if entry.family == "core" else "dense-feature backbone"
    lines = [
        f"- **Model type:** {kind} (image feature extraction)",
        f"- **Family:** {FAMILY_TITLE[entry.family]} ({SIZE_TITLE[entry.variant[0]]}), Perception Encoder",
        f"- **Backbone parameters:** {_millions(params)} ({params:,})"
        + (", without the CLIP projection" if c.clip_dim else ""),
        f"- **Input size:** {c.image_size} x {c.image_size} px (native); any size whose sides are multiples of "
        f"{c.patch_size} works, with the position embedding resized bilinearly as Meta does",
        f"- **Embedding width:** {c.width}",
    ]
    if c.clip_dim:
        lines.append(f"- **CLIP embedding width:** {c.clip_dim} (`net.clip_embedding`)")
    lines += [
        f"- **Patch size:** {c.patch_size} (a {c.grid} x {c.grid} feature map at the native size)",
        f"- **Blocks / heads / MLP width:** {c.depth} / {c.heads} / {c.mlp_dim}; 2D RoPE"
        + ("; class token" if c.cls_token else "; no class token")
        + ("; layer scale" if c.layer_scale else ""),
        "- **Pooling:** " + (f"{c.pool_heads}-head attention pooling over all tokens" if c.pool == "attn" else "none (mean of patch tokens)"),
        f"- **Preprocessing:** resize the whole image to {c.image_size} x {c.image_size} (bilinear), RGB scaled to "
        f"[0, 1], normalized with mean {mean} and std {std}",
        f"- **Original checkpoint:** [{entry.source.repo}](https://huggingface.co/{entry.source.repo}), file `{entry.source.file}`",
        f"- **License:** {entry.license}",
    ]
    return "\n".join(lines)


def _snippets(entry: Entry) -> list[tuple[str, str]]:
    shapes = stated_shapes(entry)
    load = (
        f'(net, model_info) = zoo.load_pretrained_model("{entry.name}", inference=True)\n'
        "transform = model_info.transform()  # its preprocessing, at the size it was trained on\n"
    )
    what = "attention-pooled embedding" if entry.config.pool == "attn" else "mean of the patch tokens"
    out = [
        (
            f"Image embeddings ({what}):",
            "import zoo\nfrom zoo.inference import infer_image\n\n" + load
            + f'\nimage = "{IMAGE_PLACEHOLDER}"  # or a PIL image\n'
            "(out, embedding) = infer_image(net, image, transform, return_embedding=True)\n"
            "print(embedding.shape)  # a NumPy array\n"
            f"{PRINTS}{shapes['embedding']}\n",
        ),
        (
            "The detection feature map (final tokens, class token dropped, as [batch, channels, height, width]):",
            "import torch\nfrom PIL import Image\nimport zoo\n\n" + load
            + f'\nx = transform(Image.open("{IMAGE_PLACEHOLDER}")).unsqueeze(0)\n'
            "with torch.inference_mode():\n"
            "    features = net.detection_features(x)\n"
            "print([(k, tuple(v.shape)) for k, v in features.items()])\n"
            f"{PRINTS}[('neck', {shapes['neck']})]\n",
        ),
    ]
    if "clip_embedding" in shapes:
        out.append((
            "The embedding in CLIP space (through the kept projection):",
            "import torch\nfrom PIL import Image\nimport zoo\n\n" + load
            + f'\nx = transform(Image.open("{IMAGE_PLACEHOLDER}")).unsqueeze(0)\n'
            "with torch.inference_mode():\n"
            "    clip = net.clip_embedding(x)\n"
            "print(tuple(clip.shape))\n"
            f"{PRINTS}{shapes['clip_embedding']}\n",
        ))
    return out


def _rebuild(entry: Entry) -> str:
    w = entry.weights
    lines = [
        "The weights are converted from Meta's original file by pe-zoo's converter, which downloads "
        f"`{entry.source.file}` from `{entry.source.repo}`, keeps the vision tower"
        + ", checks every tensor against the architecture, and writes "
        f"`{w.file}`"
        + (f" and the text tower's `{text_weights_file(entry)}` (`--vision-only` skips it)" if entry.family == "core" else "")
        + ":",
        "",
        "```bash",
        converter_command(entry),
        "```",
        "",
        "It writes to the zoo's weights folder (`$ZOO_HOME/weights`, else `~/.cache/pe-zoo/weights`), where "
        "`zoo.load_pretrained_model` looks; `--checkpoint PATH` converts a local copy of Meta's file and `--out DIR` "
        "writes elsewhere. `zoo.load_pretrained_model` also converts on first use when no converted file is found.",
    ]
    if w.sha256:
        lines += ["", f"sha256 of the converted file: `{w.sha256}`"]
    if w.hub_repo:
        lines += ["", f"Converted weights are published at [{w.hub_repo}](https://huggingface.co/{w.hub_repo})."]
    return "\n".join(lines)


def _published(entry: Entry) -> str:
    """Meta's published results as a table, with their source and the command that checks each one."""
    from zoo.eval.published import DATASETS

    p = entry.published
    if not p:
        return "Meta has published no results for this checkpoint."
    rows = ["| dataset | metric | Meta's figure | check with `python -m zoo eval` |", "|---|---|---|---|"]
    for key, value in p["results"].items():
        d = DATASETS[key]
        check = f"`{d.method} ... --expect {key}`" if d.method else "not measurable by `zoo eval`"
        rows.append(f"| {d.title} | {d.metric} | {value:.1f} | {check} |")
    return "\n".join([f"From {p['source']} ([source]({p['url']})). These are Meta's figures for its original "
                      "checkpoint, not measured by pe-zoo.", "", *rows])


def render_card(entry: Entry | str) -> str:
    """The full Markdown of one registry entry's Hub card (an ``Entry`` or a registry name)."""
    entry = get_entry(entry) if isinstance(entry, str) else entry
    parts = [
        f"---\n{card_metadata(entry).to_yaml()}\n---",
        f"# {entry.name}",
        _summary(entry),
        "## Model details",
        _details(entry),
        "## Published results",
        _published(entry),
        "## Papers",
        "\n".join(f"- {t} ([arXiv:{a}](https://arxiv.org/abs/{a}))" for t, a, _ in (PAPERS[p] for p in entry.papers)),
        "## Usage",
        "Install pe-zoo (see its README), then:",
        *(f"{title}\n\n```python\n{code}```" for title, code in _snippets(entry)),
        "## Rebuilding the weights",
        _rebuild(entry),
        "## Citation",
        "```bibtex\n" + "\n\n".join(PAPERS[p][2] for p in entry.papers) + "\n```",
    ]
    return "\n\n".join(parts) + "\n"


__all__ = [
    "FAMILY_TITLE", "IMAGE_PLACEHOLDER", "PAPERS", "PRINTS", "SIZE_TITLE", "card_metadata", "render_card",
    "stated_shapes",
]
