"""registry.yaml: validation, lookup and the registry API."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import zoo
from zoo.registry import RegistryError, UnknownModelError, get_entry, parse_registry, registry_path

BIRDER_NAMES = [
    "rope_i_vit_s16_pn_aps_c1_pe-core",
    "rope_i_vit_b16_pn_aps_c1_pe-core",
    "rope_i_vit_l14_pn_aps_c1_pe-core",
    "rope_i_vit_reg1_t16_pn_npn_avg_c1_pe-spatial",
    "rope_i_vit_reg1_s16_pn_npn_avg_c1_pe-spatial",
    "rope_i_vit_reg1_b16_pn_npn_avg_c1_pe-spatial",
]


def raw():
    return yaml.safe_load(registry_path().read_text())


def test_fourteen_entries_with_birder_names():
    names = zoo.list_pretrained_models()
    assert len(names) == 14  # timm's 14 PE vision checkpoints: Meta's 12 and PE-Lang's two -Tiling releases
    assert set(BIRDER_NAMES) <= set(names)
    fams = [get_entry(n).family for n in names]
    assert (fams.count("core"), fams.count("spatial"), fams.count("lang")) == (5, 5, 4)


def test_entries_follow_meta_table():
    e = get_entry("rope_i_vit_l14_pn_aps_c1_pe-core")
    assert e.source.repo == "facebook/PE-Core-L14-336" and e.source.file == "PE-Core-L14-336.pt"
    assert e.signature == {"inputs": [{"data_shape": [0, 3, 336, 336]}], "outputs": [{"data_shape": [0, 1024]}]}
    assert e.rgb_stats == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert e.license == "apache-2.0" and e.weights.file == "rope_i_vit_l14_pn_aps_c1_pe-core.safetensors"
    assert e.text is not None and e.text.context_length == 32
    g = get_entry("rope_i_vit_g14_pn_ap_c1_pe-core")
    assert not g.config.cls_token and g.config.clip_dim == 1280 and g.text.context_length == 72
    lang = get_entry("rope_i_vit_reg1_l14_pn_npn_avg_ls_c1_pe-lang")
    assert lang.config.depth == 23 and lang.config.layer_scale and "perceptionlm" in lang.papers
    for name in zoo.list_pretrained_models():
        e = get_entry(name)
        assert e.source.repo == "facebook/" + e.source.file.removesuffix(".pt")
        assert (e.text is not None) == (e.family == "core") == (e.config.pool == "attn")


def test_list_pattern_and_config():
    assert zoo.list_pretrained_models("*pe-lang") == [
        "rope_i_vit_g14_pn_npn_avg_ls_c1_pe-lang",
        "rope_i_vit_reg1_l14_pn_npn_avg_ls_c1_pe-lang",
    ]
    assert zoo.list_pretrained_models("nothing*") == []
    cfg = zoo.get_model_config("rope_i_vit_reg1_b16_pn_npn_avg_c1_pe-spatial")
    assert (cfg.width, cfg.depth, cfg.patch_size, cfg.image_size, cfg.pool) == (768, 12, 16, 512, "avg")


def test_unknown_name_suggests_closest():
    with pytest.raises(UnknownModelError, match=r"unknown model 'rope_i_vit_l14_pe-core'.*rope_i_vit_l14_pn_aps_c1_pe-core"):
        zoo.create_model("rope_i_vit_l14_pe-core")


def test_create_model_full_g14_on_meta():
    net = zoo.create_model("rope_i_vit_g14_pn_ap_c1_pe-core", device="meta")
    assert len(net.blocks) == 50 and net.pos_embed.is_meta


def break_entry(mutate):
    data = raw()
    mutate(data["rope_i_vit_b16_pn_aps_c1_pe-core"])
    return yaml.safe_dump(data)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda e: e.pop("source"), "missing field 'source'"),
        (lambda e: e["config"].pop("width"), "missing field 'config.width'"),
        (lambda e: e["config"].update(depth="12"), "field 'config.depth' must be int"),
        (lambda e: e["config"].update(cls_token=1), "field 'config.cls_token' must be bool"),
        (lambda e: e["config"].update(widht=3), "unknown architecture config field"),
        (lambda e: e.update(famly="core"), "unknown field"),
        (lambda e: e.update(family="video"), "field 'family' must be one of"),
        (lambda e: e["weights"].update(sha256="abc"), "field 'weights.sha256' must be 64"),
        (lambda e: e["weights"].pop("hub_repo"), "missing field 'weights.hub_repo'"),
        (lambda e: e["rgb_stats"].update(mean=[0.5]), "field 'rgb_stats.mean' must be 3 numbers"),
        (lambda e: e["signature"]["inputs"][0].update(data_shape=[0, 3, 1, 1]), "field 'signature.inputs'"),
        (lambda e: e["text"].pop("heads"), "missing field 'text.heads'"),
        (lambda e: e["card"].update(papers=["vit", "nope"]), "unknown paper"),
    ],
)
def test_malformed_entry_names_entry_and_field(mutate, message):
    with pytest.raises(RegistryError, match=message) as info:
        parse_registry(break_entry(mutate))
    assert "rope_i_vit_b16_pn_aps_c1_pe-core" in str(info.value)


# ---- issue 14, item 12: values that would divide by zero, escape --out, or silently win ----

@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda e: e["config"].update(heads=0), "field 'config.heads' must be a positive integer"),
        (lambda e: e["config"].update(patch_size=0), "field 'config.patch_size' must be a positive integer"),
        (lambda e: e["config"].update(depth=0), "field 'config.depth' must be a positive integer"),
        (lambda e: e["config"].update(depth=-2), "field 'config.depth' must be a positive integer"),
        (lambda e: e["config"].update(clip_dim=0), "field 'config.clip_dim' must be a positive integer"),
        (lambda e: e["text"].update(context_length=0), "field 'text.context_length' must be a positive integer"),
        (lambda e: e["text"].update(heads=0), "field 'text.heads' must be a positive integer"),
        (lambda e: e["text"].update(heads=7), "field 'text.width' .* must split into 7 heads"),
        (lambda e: e["rgb_stats"].update(std=[0.5, 0.0, 0.5]), "field 'rgb_stats.std' must be 3 positive numbers"),
        (lambda e: e["rgb_stats"].update(std=[0.5, float("nan"), 0.5]), "field 'rgb_stats.std' must be 3 numbers"),
        (lambda e: e["weights"].update(file="../x.safetensors"), "field 'weights.file' must be a plain file name"),
        (lambda e: e["weights"].update(file="/tmp/x.safetensors"), "field 'weights.file' must be a plain file name"),
        (lambda e: e["weights"].update(file="sub/x.safetensors"), "field 'weights.file' must be a plain file name"),
        (lambda e: e["weights"].update(file=".x.safetensors"), "field 'weights.file' must be a plain file name"),
    ],
)
def test_values_that_would_break_later_are_refused(mutate, message):
    with pytest.raises(RegistryError, match=message) as info:
        parse_registry(break_entry(mutate))
    assert "rope_i_vit_b16_pn_aps_c1_pe-core" in str(info.value)


def test_duplicate_names_and_fields_are_refused():
    text = registry_path().read_text()
    start = text.index("rope_i_vit_b16_pn_aps_c1_pe-core:")
    end = text.index("\n\n", start)
    with pytest.raises(RegistryError, match="duplicate key 'rope_i_vit_b16_pn_aps_c1_pe-core'"):
        parse_registry(text + "\n" + text[start:end] + "\n")
    with pytest.raises(RegistryError, match="duplicate key 'family'"):
        parse_registry(text.replace("  family: core\n", "  family: core\n  family: spatial\n", 1))


def test_malformed_registry_is_one_line_in_the_converters(tmp_path):
    """The converters and python -m zoo read the registry shipped in the package: a copy of it with a broken one."""
    root = Path(__file__).resolve().parents[1]
    for folder in ("zoo", "converters"):
        shutil.copytree(root / folder, tmp_path / folder, symlinks=False, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "zoo" / "registry.yaml").write_text(break_entry(lambda e: e["config"].update(heads=0)))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "converters.pe_core", "--variant", "T16"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith("error: registry entry 'rope_i_vit_b16_pn_aps_c1_pe-core'") and run.stderr.count("\n") == 1, run.stderr
