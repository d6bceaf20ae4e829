"""Hostile checkpoints, interrupted and racing conversions, odd folders (issue 14): no silent wrong result,
one-line errors, nothing half-written, no false refusal of the zoo's own files."""

import dataclasses
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.weights_env import CORE, SMALL_TEXT, hub  # noqa: F401 (fixture)
from zoo import weights
from zoo.loader import load_entry
from zoo.paths import weights_dir
from zoo.registry import find_entry
from zoo.testing.hub_cache import add_file
from zoo.testing.synthetic import meta_clip_state_dict, meta_vision_state_dict
from zoo.weights import ConversionError, WeightsIntegrityError, WeightsNotFoundError, convert_checkpoint
from zoo.weights.convert_text import convert_text_checkpoint
from zoo.weights.writer import TensorSpec, exit_on_sigterm, write_safetensors

ROOT = Path(__file__).resolve().parents[1]
SPATIAL = find_entry("spatial", "T16")
# PE-Core T16 cut to one block with a small text tower: every code path of a CLIP file, in a second
SMALL = dataclasses.replace(CORE, config=dataclasses.replace(CORE.config, depth=1), text=SMALL_TEXT)
FC = "transformer.resblocks.0.mlp.c_fc.weight"


def clip_state(seed=0, dtype=torch.float32):
    return meta_clip_state_dict(SMALL.config, SMALL.text, seed=seed, dtype=dtype)


def save(state, path, **kwargs):
    torch.save(state, path, **kwargs)
    return Path(path)


def files_in(folder):
    return sorted(p.name for p in Path(folder).iterdir()) if Path(folder).exists() else []


def converter(family, args):
    return importlib.import_module(f"converters.pe_{family}").main(args)


def one_line(capsys):
    """The error line of a failed command (the converters may first say what they convert)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and all(line.startswith("converting ") for line in lines[:-1]), lines
    return lines[-1]


def dtypes_of(path):
    with safe_open(path, framework="pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}


@pytest.fixture
def unwritable(tmp_path):
    """A folder this process cannot write into, even as root (/sys), or a read-only folder for other users."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
    elif Path("/sys").is_dir() and not os.access("/sys", os.W_OK | os.X_OK) or _cannot_create("/sys"):
        yield Path("/sys")
    else:
        pytest.skip("no unwritable folder available to root here")


def _cannot_create(folder):
    try:
        os.close(os.open(Path(folder) / ".pe-zoo-probe", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        return True
    os.unlink(Path(folder) / ".pe-zoo-probe")
    return False


# ---- item 4: non-finite weights are a corrupt checkpoint ----

@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_vision_weight_is_refused_naming_it(value, tmp_path):
    state = clip_state()
    state[f"visual.{FC}"][3, 4] = value
    out = tmp_path / "new" / "out"
    with pytest.raises(ConversionError, match=rf"source tensor {FC} \(zoo blocks.0.mlp.fc1.weight\) holds 1 non-finite"):
        convert_checkpoint(SMALL, save(state, tmp_path / "meta.pt"), out)
    assert not (tmp_path / "new").exists()  # nothing written, not even the folder


def test_non_finite_text_weight_is_refused_naming_it(tmp_path):
    state = clip_state()
    state["transformer.resblocks.0.attn.in_proj_weight"][0, :3] = float("-inf")
    with pytest.raises(ConversionError, match=r"transformer.resblocks.0.attn.in_proj_weight .* holds 3 non-finite"):
        convert_text_checkpoint(SMALL, save(state, tmp_path / "meta.pt"), tmp_path / "out")
    assert files_in(tmp_path / "out") == []


def test_overflow_in_the_requested_dtype_is_refused(tmp_path):
    state = clip_state()
    state[f"visual.{FC}"][0, 0] = 1e6  # finite in float32, Inf in float16
    src = save(state, tmp_path / "meta.pt")
    with pytest.raises(ConversionError, match=rf"{FC} .* up to 1e\+06, beyond the range of torch.float16"):
        convert_checkpoint(SMALL, src, tmp_path / "out", dtype=torch.float16)
    assert files_in(tmp_path / "out") == []
    assert convert_checkpoint(SMALL, src, tmp_path / "out", dtype=torch.bfloat16).path.is_file()


def test_cli_non_finite_is_one_line(tmp_path, capsys):
    state = meta_vision_state_dict(SPATIAL.config)
    state["ln_pre.weight"][0] = float("nan")
    args = ["--variant", "T16", "--checkpoint", str(save(state, tmp_path / "meta.pt")), "--out", str(tmp_path / "out")]
    assert converter("spatial", args) == 1
    assert "source tensor ln_pre.weight (zoo norm_pre.weight) holds 1 non-finite value(s)" in one_line(capsys)
    assert files_in(tmp_path / "out") == []


# ---- items 8, 9: tensors that cannot be weights are refused before anything is written ----

@pytest.mark.parametrize("kind, make, message", [
    ("complex", lambda t: t.to(torch.complex64), "complex \\(torch.complex64\\)"),
    ("sparse", lambda t: t.to_sparse(), "sparse \\(torch.sparse_coo\\)"),
    ("int", lambda t: t.round().to(torch.int64), "not floating-point weights \\(torch.int64\\)"),
    ("bool", lambda t: t > 0, "not floating-point weights \\(torch.bool\\)"),
])
@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
def test_non_float_source_tensors_are_refused_at_plan_time(kind, make, message, tmp_path):
    state = clip_state()
    state[f"visual.{FC}"] = make(state[f"visual.{FC}"])
    state["transformer.resblocks.0.mlp.c_fc.weight"] = make(state["transformer.resblocks.0.mlp.c_fc.weight"])
    src = save(state, tmp_path / "meta.pt")
    out = tmp_path / "new" / "out"
    with pytest.raises(ConversionError, match=rf"1 {message}: {FC}\. .*nothing was written"):
        convert_checkpoint(SMALL, src, out)
    with pytest.raises(ConversionError, match=rf"1 {message}: transformer.resblocks.0.mlp.c_fc.weight"):
        convert_text_checkpoint(SMALL, src, out)
    assert not (tmp_path / "new").exists()


def test_cli_int_tensor_is_one_line_and_leaves_no_folder(tmp_path, capsys):
    state = meta_vision_state_dict(SPATIAL.config)
    state["conv1.weight"] = state["conv1.weight"].to(torch.int32)
    out = tmp_path / "fresh"
    assert converter("spatial", ["--variant", "T16", "--checkpoint", str(save(state, tmp_path / "m.pt")), "--out", str(out)]) == 1
    assert "not floating-point weights (torch.int32): conv1.weight" in one_line(capsys)
    assert not out.exists()


# ---- item 10: one dtype per file ----

def test_mixed_float_dtypes_become_the_dominant_one(tmp_path):
    state = clip_state()
    state[f"visual.{FC}"] = state[f"visual.{FC}"].double()
    state["visual.ln_pre.weight"] = state["visual.ln_pre.weight"].half()
    src = save(state, tmp_path / "meta.pt")
    folder = tmp_path / "w"
    path = convert_checkpoint(SMALL, src, folder).path
    assert dtypes_of(path) == {"F32"}
    assert weights.read_metadata(path)["dtype"] == "float32"
    net, _ = load_entry(SMALL, weights_dir=folder, inference=True)
    assert torch.isfinite(net.embedding(torch.randn(1, 3, 64, 64))).all()  # was: RuntimeError mixed dtype
    assert torch.equal(load_file(path)["blocks.0.mlp.fc1.weight"], state[f"visual.{FC}"].float())
    assert dtypes_of(convert_checkpoint(SMALL, src, tmp_path / "bf", dtype=torch.bfloat16).path) == {"BF16"}
    text = convert_text_checkpoint(SMALL, src, folder).path
    assert dtypes_of(text) == {"F32"}
    half = {k: (v.half() if k != f"visual.{FC}" else v) for k, v in clip_state().items()}  # float16, one float32 tensor
    assert dtypes_of(convert_checkpoint(SMALL, save(half, tmp_path / "h.pt"), tmp_path / "h").path) == {"F16"}


def test_a_mixed_dtype_zoo_file_is_refused_with_the_rebuild_command(hub, tmp_path):
    src = save(clip_state(), tmp_path / "meta.pt")
    path = convert_checkpoint(SMALL, src, weights_dir()).path
    tensors, meta = load_file(path), weights.read_metadata(path)
    tensors["blocks.0.mlp.fc1.weight"] = tensors["blocks.0.mlp.fc1.weight"].double()
    weights.sidecar_path(path).unlink(missing_ok=True)
    save_file(tensors, path, metadata=meta)
    with pytest.raises(WeightsIntegrityError, match=r"dtype\(s\) \['F32', 'F64'\].*--force"):
        load_entry(SMALL)
    assert not weights.sidecar_path(path).exists()  # a refused file is never recorded


# ---- item 5, 21: a folder that cannot be written ----

def test_cli_unwritable_out_names_the_folder(unwritable, tmp_path, capsys):
    state = meta_vision_state_dict(SPATIAL.config)
    src = str(save(state, tmp_path / "meta.pt"))
    assert converter("spatial", ["--variant", "T16", "--checkpoint", src, "--out", str(unwritable)]) == 1
    err = one_line(capsys)
    assert f"into the folder {unwritable}:" in err and "choose another folder with --out DIR" in err and ".partial" not in err
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert converter("spatial", ["--variant", "T16", "--checkpoint", src, "--out", str(blocker / "sub")]) == 1
    assert f"into the folder {blocker}: it is a file, not a folder" in one_line(capsys)


def test_read_only_zoo_home_says_how_to_choose_another(hub, unwritable, tmp_path, monkeypatch):
    add_file(hub, SMALL.source.repo, SMALL.source.file, save(clip_state(), tmp_path / "meta.pt"))
    monkeypatch.setenv("ZOO_HOME", str(unwritable / "zoo-home"))
    with pytest.raises(ConversionError) as err:
        load_entry(SMALL)
    message = str(err.value)
    assert f"the folder {unwritable}" in message and "ZOO_HOME=DIR" in message and "weights_dir=DIR" in message


# ---- items 14, 15: a file is recorded the moment it is in place, and only once it passed every check ----

def test_forced_reconversion_is_recorded_at_once(hub, tmp_path):
    src = save(clip_state(), tmp_path / "meta.pt")
    folder = weights_dir()
    convert_checkpoint(SMALL, src, folder)
    load_entry(SMALL)  # loaded and verified
    # the first half of `--force --dtype bfloat16` on a Core model: the vision file is replaced; an interruption
    # now (before the text file) must not leave it beside the old record
    path = convert_checkpoint(SMALL, src, folder, dtype=torch.bfloat16, force=True).path
    assert json.loads(weights.sidecar_path(path).read_text())["sha256"] == weights.file_sha256(path)
    net, _ = load_entry(SMALL)
    assert next(net.parameters()).dtype == torch.bfloat16


def test_a_refused_file_is_not_recorded(hub, tmp_path):
    good = convert_checkpoint(SMALL, save(clip_state(), tmp_path / "meta.pt"), tmp_path / "good").path
    path = weights_dir() / SMALL.weights.file
    path.parent.mkdir(parents=True)
    path.write_bytes(good.read_bytes()[:1000])  # a truncated download
    with pytest.raises(WeightsIntegrityError, match="not a readable safetensors file"):
        load_entry(SMALL)
    assert not weights.sidecar_path(path).exists()
    shutil.copyfile(good, path)  # the right file, copied over it
    load_entry(SMALL)
    assert json.loads(weights.sidecar_path(path).read_text())["sha256"] == weights.file_sha256(good)


# ---- item 16: interrupted conversions leave nothing behind ----

def _partials(folder):
    return [p for p in files_in(folder) if p.endswith(".partial")]


def test_sigterm_during_a_write_removes_the_partial_file(tmp_path):
    path = tmp_path / "w.safetensors"

    def produce():  # SIGTERM arrives while the file is being written
        assert _partials(tmp_path)
        os.kill(os.getpid(), signal.SIGTERM)
        return torch.ones(4)

    with pytest.raises(SystemExit) as exit_, exit_on_sigterm():
        write_safetensors(path, [TensorSpec("a", (4,), torch.float32, produce)], {})
    assert exit_.value.code == 128 + signal.SIGTERM and files_in(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is only there during the block


@pytest.mark.slow  # a real converter process; the fast default is the test above (the same handler and cleanup)
def test_sigterm_removes_the_partial_file(tmp_path):
    entry = find_entry("spatial", "S16")  # large enough to catch it writing
    src = save(meta_vision_state_dict(entry.config), tmp_path / "meta.pt")
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "converters.pe_spatial", "--variant", "S16", "--checkpoint", str(src), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 120
    while not _partials(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert _partials(out), "the conversion finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert files_in(out) == []


def test_stale_partials_are_removed_and_live_ones_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    name = SPATIAL.weights.file
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".{name}.{dead.pid}.0bad.partial"  # left by a SIGKILLed conversion
    stale.write_bytes(b"x" * 1000)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        live = out / f".{name}.{sleeper.pid}.1ive.partial"  # another process still writing
        live.write_bytes(b"y")
        locked = out / f".{name}.{dead.pid}.10ck.partial"  # its process id reused, but someone holds its lock
        locked.write_bytes(b"z")
        import fcntl
        with open(locked, "rb") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            other = out / f".other.safetensors.{dead.pid}.0bad.partial"  # another output's: not ours to judge
            other.write_bytes(b"o")
            src = save(meta_vision_state_dict(SPATIAL.config), tmp_path / "meta.pt")
            convert_checkpoint(SPATIAL, src, out)
            assert sorted(_partials(out)) == sorted([live.name, locked.name, other.name])
    finally:
        sleeper.kill()
        sleeper.wait()


# ---- item 17: no overwrite without force, atomically ----

def test_writer_never_replaces_a_file_that_appears_meanwhile(tmp_path):
    path = tmp_path / "w.safetensors"

    def produce():  # another writer finishes first, while this one is still writing
        save_file({"a": torch.zeros(2)}, path)
        return torch.ones(4)

    with pytest.raises(FileExistsError, match="already exists"):
        write_safetensors(path, [TensorSpec("b", (4,), torch.float32, produce)], {}, overwrite=False)
    assert list(load_file(path)) == ["a"] and _partials(tmp_path) == []


@pytest.mark.slow  # two processes; the fast default is the writer test above (the same commit)
def test_two_concurrent_conversions_exactly_one_wins(tmp_path):
    src = save(meta_vision_state_dict(SPATIAL.config), tmp_path / "meta.pt")
    out, go = tmp_path / "out", tmp_path / "go"
    code = (
        "import os, sys, time\n"
        "from converters.pe_spatial import main\n"
        "open(sys.argv[1], 'w').close()\n"
        "while not os.path.exists(sys.argv[2]): time.sleep(0.001)\n"
        f"sys.exit(main(['--variant', 'T16', '--checkpoint', {str(src)!r}, '--out', {str(out)!r}]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"ready{i}"), str(go)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # both start converting at once: both pass the early "already exists?" check
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 1], results
    (_, won, _), (_, _, lost) = sorted(results)
    assert won.count("sha256 ") == 1
    assert lost.strip().splitlines()[-1].startswith("error: ") and "already exists (another process wrote it meanwhile)" in lost
    assert files_in(out) == [SPATIAL.weights.file, SPATIAL.weights.file + ".sha256.json"]


# ---- items 19, 20: source files the Hub cache holds, legacy files ----

def test_truncated_file_in_the_hub_cache_says_how_to_fetch_it_again(hub, tmp_path):
    src = save(clip_state(), tmp_path / "meta.pt")
    src.write_bytes(src.read_bytes()[:5000])
    link = add_file(hub, SMALL.source.repo, SMALL.source.file, src)
    with pytest.raises(ConversionError) as err:
        load_entry(SMALL)
    message = str(err.value)
    blob = os.path.realpath(link)
    assert f"delete {blob}" in message and "force_download=True" in message and SMALL.source.repo in message
    assert "download it again" not in message.replace("downloaded again", "")


def test_legacy_pt_format_is_converted(tmp_path):
    state = clip_state()
    legacy = save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    modern = save(state, tmp_path / "modern.pt")
    a = load_file(convert_checkpoint(SMALL, legacy, tmp_path / "a").path)
    b = load_file(convert_checkpoint(SMALL, modern, tmp_path / "b").path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_legacy_pt_still_runs_no_code(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = save({"visual.conv1.weight": torch.zeros(1), "x": Boom()}, tmp_path / "evil.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(ConversionError, match="pickled objects other than tensors"):
        convert_checkpoint(SMALL, path, tmp_path / "out")
    assert not (tmp_path / "pwned").exists()


# ---- items 22, 23: what is wrong with a weights path, in one readable line ----

def test_wrong_tensors_are_summarised(hub, tmp_path):
    path = convert_checkpoint(SMALL, save(clip_state(), tmp_path / "meta.pt"), weights_dir()).path
    meta = weights.read_metadata(path)
    meta["config"] = json.dumps(CORE.config.to_dict())  # metadata of the full T16, tensors of a one-block net
    tensors = load_file(path)
    tensors["norm_pre.weight"] = torch.ones(7)
    weights.sidecar_path(path).unlink(missing_ok=True)
    save_file(tensors, path, metadata=meta)
    with pytest.raises(WeightsIntegrityError) as err:
        load_entry(CORE)
    message = str(err.value)
    assert len(message) < 800, message
    assert "132 missing tensor(s): blocks.1.attn.proj.bias, blocks.1.attn.proj.weight, blocks.1.attn.qkv.bias and 129 more" in message
    assert "1 tensor(s) of the wrong shape: norm_pre.weight [7] (expected [192])" in message
    assert "python -m converters.pe_core --variant T16 --force" in message


@pytest.mark.parametrize("kind", ["folder", "dangling link"])
def test_weights_path_that_is_not_a_file(kind, hub, tmp_path, capsys):
    path = weights_dir() / SMALL.weights.file
    path.parent.mkdir(parents=True)
    if kind == "folder":
        path.mkdir()
        expected = "is a folder, not a file"
    else:
        path.symlink_to(tmp_path / "gone.safetensors")
        expected = f"is a symbolic link to {tmp_path / 'gone.safetensors'}, which does not exist"
    with pytest.raises(WeightsNotFoundError, match=f"{path} {expected}"):
        load_entry(SMALL)
    src = str(save(clip_state(), tmp_path / "meta.pt"))
    assert converter("core", ["--variant", "T16", "--checkpoint", src, "--vision-only"]) == 1
    assert ("is a folder, not a weights file" if kind == "folder" else "which does not exist") in one_line(capsys)


# ---- item 24: records are files like any other ----

@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_sidecar_mode_follows_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        path = convert_checkpoint(SPATIAL, save(meta_vision_state_dict(SPATIAL.config), tmp_path / "m.pt"), tmp_path / "o").path
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    assert path.stat().st_mode & 0o777 == want
    assert weights.sidecar_path(path).stat().st_mode & 0o777 == want


def test_info_says_what_stands_in_place_of_the_weights(hub, capsys):
    from zoo.__main__ import main

    path = weights_dir() / CORE.weights.file
    path.mkdir(parents=True)
    assert main(["info", CORE.name]) == 0
    assert f"{path}: is a folder, not a file" in capsys.readouterr().out


def test_bad_converted_file_in_the_hub_cache_says_how_to_fetch_it_again(hub, tmp_path):
    good = convert_checkpoint(SMALL, save(clip_state(), tmp_path / "meta.pt"), tmp_path / "good").path
    (tmp_path / "cut").write_bytes(good.read_bytes()[:2000])
    link = add_file(hub, "someone/pe-small", SMALL.weights.file, tmp_path / "cut")
    published = dataclasses.replace(SMALL, weights=dataclasses.replace(SMALL.weights, hub_repo="someone/pe-small"))
    with pytest.raises(WeightsIntegrityError) as err:
        load_entry(published)
    assert f"delete {os.path.realpath(link)}" in str(err.value) and "force_download=True" in str(err.value)
