"""Run birder's own scripts and tools on zoo nets: ``python -m zoo.birder SCRIPT [ARGS...]``.

birder has no plugin discovery, so its command-line scripts only see networks registered in the process
that runs them. This module registers the zoo's networks (``import zoo.birder``), then runs birder's
script (``birder.scripts.<SCRIPT>``) or tool (``birder.tools``) in the same process with its own
arguments. Where a script would start from birder's pretrained weights (``train --pretrained``,
``train_detection --backbone-pretrained``, ``predict`` without ``--epoch``) and the network is a zoo
network, the zoo's weights are resolved and verified as ``zoo.load_pretrained_model`` does, written
once as a birder checkpoint where birder looks for it (``models/<network>[_<tag>].pt``), and
registered with its sha256 in birder's manifest, so birder's own download step finds the file and
downloads nothing.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import pkgutil
import runpy
import sys
import tempfile
import warnings
from pathlib import Path

import birder
import birder.scripts
import birder.tools
import torch
from birder.conf import settings
from birder.model_registry import registry

from zoo.birder import NETWORK_NAMES, ALIASES, load_pretrained_model

logger = logging.getLogger("zoo")

SCRIPTS = sorted(name for _, name, pkg in pkgutil.iter_modules(birder.scripts.__path__) if not pkg and not name.startswith("_"))
TOOLS = sorted(
    name.replace("_", "-") for _, name, pkg in pkgutil.iter_modules(birder.tools.__path__) if not pkg and not name.startswith("_")
)
USAGE = f"""usage: python -m zoo.birder SCRIPT [ARGS...]
       python -m zoo.birder tools TOOL [ARGS...]

Runs birder's own script or tool with the zoo's networks registered (every zoo checkpoint name, e.g.
rope_i_vit_t16_pn_aps_c1_pe-core, is a birder network). --pretrained (train), --backbone-pretrained
(train_detection) and predict without --epoch start from the zoo's verified weights.

birder scripts: {", ".join(SCRIPTS)}
birder tools:   {", ".join(TOOLS)}

examples:
  python -m zoo.birder train --network rope_i_vit_t16_pn_aps_c1_pe-core --pretrained --reset-head \\
      --data-path data/training --val-path data/validation --size 384 --epochs 10
  python -m zoo.birder predict --network rope_i_vit_t16_pn_aps_c1_pe-core --epoch 10 data/validation
  python -m zoo.birder tools model-info --network rope_i_vit_t16_pn_aps_c1_pe-core
"""


def zoo_network(name: str | None) -> str | None:
    """The zoo checkpoint a birder network name (or alias) stands for, or None for birder's own networks."""
    if name is None:
        return None
    if name in NETWORK_NAMES.values():
        return name
    return ALIASES.get(name)


def _option(args: list[str], *flags: str) -> str | None:
    """The value of the last of ``flags`` in ``args`` (``--flag value`` or ``--flag=value``)."""
    value = None
    for i, a in enumerate(args):
        for f in flags:
            if a == f and i + 1 < len(args):
                value = args[i + 1]
            elif a.startswith(f + "="):
                value = a.split("=", 1)[1]
    return value


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare_pretrained(network: str, tag: str | None = None) -> Path:
    """Write the zoo's verified weights of ``network`` as birder's pretrained checkpoint and register it.

    The file is ``models/<network>[_<tag>].pt`` (birder's ``MODELS_DIR``), written atomically; it is
    registered in birder's manifest under the same name with its sha256, so birder's own
    ``download_model_by_weights`` finds it and downloads nothing. Returns the path.
    """
    zoo_name = zoo_network(network)
    if zoo_name is None:
        raise ValueError(f"{network} is not a zoo network; zoo weights serve the zoo's names (python -m zoo list)")
    net, info = load_pretrained_model(zoo_name)
    weights_name = network if tag is None else f"{network}_{tag}"
    folder = Path(settings.MODELS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{weights_name}.pt"
    signature = copy.deepcopy(info.signature)
    signature["outputs"][0]["data_shape"] = [0, 0]  # a backbone without classes: birder builds it with num_classes 0
    checkpoint = {
        "state": net.state_dict(), "birder_version": birder.__version__, "task": net.task,
        "signature": signature, "class_to_idx": {}, "rgb_stats": info.rgb_stats,
    }
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    size = net.default_size if info.signature is None else tuple(info.signature["inputs"][0]["data_shape"][2:])
    metadata = {
        "description": f"pe-zoo weights of {zoo_name}, verified by sha256", "resolution": tuple(size),
        "formats": {"pt": {"file_size": round(path.stat().st_size / 2**20, 1), "sha256": _sha256(path)}},
        "net": {"network": network, **({"tag": tag} if tag is not None else {})},
    }
    with warnings.catch_warnings():  # re-registering the same name in one process is expected
        warnings.simplefilter("ignore", UserWarning)
        registry.register_weights(weights_name, metadata)
    logger.info("zoo weights of %s ready for birder at %s", zoo_name, path)
    return path


def _prepare(script: str, args: list[str]) -> None:
    """Put the zoo's weights where the script's pretrained option looks, for zoo networks."""
    if script == "train" and "--pretrained" in args and "--resume-epoch" not in args:
        network = _option(args, "-n", "--network")
        if zoo_network(network):
            prepare_pretrained(network, _option(args, "-t", "--tag"))
    elif script == "train_detection" and "--backbone-pretrained" in args:
        backbone = _option(args, "--backbone")
        if zoo_network(backbone):
            prepare_pretrained(backbone, _option(args, "--backbone-tag"))
    elif script == "predict" and _option(args, "-e", "--epoch") is None:
        network = _option(args, "-n", "--network")
        if zoo_network(network):
            prepare_pretrained(network, _option(args, "-t", "--tag"))


def run(argv: list[str]) -> int:
    """Run one birder script (``argv[0]``) or ``tools`` with its own arguments, the zoo's networks registered;
    returns its exit status. An unknown name raises ``ValueError`` (the CLI prints ``USAGE`` for help)."""
    name, args = argv[0], list(argv[1:])
    if name == "tools":
        module, prog = "birder.tools", "python -m zoo.birder tools"
    elif name.replace("-", "_") in SCRIPTS:
        name = name.replace("-", "_")
        module, prog = f"birder.scripts.{name}", f"python -m zoo.birder {name}"
        _prepare(name, args)
    else:
        raise ValueError(f"{name!r} is neither a birder script nor 'tools'; python -m zoo.birder --help lists them")
    saved = sys.argv
    sys.argv = [prog, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
    return 0


__all__ = ["SCRIPTS", "TOOLS", "USAGE", "prepare_pretrained", "run", "zoo_network"]
