"""Videos: Meta's frame sampling against an independent decoder (torchcodec; a plain PyAV loop where it is absent), pooled rows against the net's own
frame embeddings, segments, search by a planted frame, resume, unreadable media; the GPU-decode path on the CPU."""

import dataclasses
import json
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

av = pytest.importorskip("av")


def _torchcodec():
    """torchcodec's decoders module, or None where it is absent or cannot load FFmpeg's shared libraries."""
    try:
        from torchcodec import decoders

        return decoders
    except Exception:  # noqa: BLE001 -- ImportError, or RuntimeError/OSError from its FFmpeg loader
        return None


torchcodec_decoders = _torchcodec()

import zoo  # noqa: E402
from tests.weights_env import CORE, SMALL_TEXT, add_meta_source  # noqa: E402
from zoo.__main__ import main  # noqa: E402
from zoo.testing.hub_cache import use_cache  # noqa: E402
from zoo.transforms import classification_transform  # noqa: E402
from zoo.video import VideoError, plan, probe, sample  # noqa: E402

SIZE = 64


def blocks(rng, h: int, w: int, cell: int = 8) -> np.ndarray:
    """A frame of flat coloured blocks: survives lossy coding well enough to tell frames apart."""
    return rng.integers(0, 256, (-(-h // cell), -(-w // cell), 3), dtype=np.uint8).repeat(cell, 0).repeat(cell, 1)[:h, :w]


def write_video(path: Path, frames: list[np.ndarray], codec: str = "libx264", fps: int = 30, pts: list[int] | None = None,
                rotation: int = 0, time_base: Fraction | None = None) -> None:
    """Encode RGB ``frames`` with PyAV; ``pts`` (in ``time_base`` units) for a variable frame rate."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height = w, h
        s.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if time_base:
            s.time_base = time_base
        if rotation:
            s.set_display_rotation(rotation)
        for k, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[k], time_base
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture(scope="module")
def env(module_tmp):
    """T16 Core weights (offline Hub cache, own $ZOO_HOME) for the whole module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZOO_HOME", str(module_tmp / "zoo-home"))
        cache = module_tmp / "hub-cache"
        cache.mkdir()
        with use_cache(cache, offline=True):
            add_meta_source(cache, CORE, module_tmp)  # converted (vision and text) on first use
            yield module_tmp


@pytest.fixture(scope="module")
def videos(env):
    """Good videos of several codecs, containers, rates and sizes (one rotated, one VFR), an image, and unreadable files."""
    rng = np.random.default_rng(0)
    folder = env / "media"
    folder.mkdir()
    write_video(folder / "a.mp4", [blocks(rng, 48, 64) for _ in range(45)], fps=30)
    write_video(folder / "b.avi", [blocks(rng, 32, 40) for _ in range(20)], codec="mpeg4", fps=25)
    write_video(folder / "c.mkv", [blocks(rng, 40, 48) for _ in range(16)], codec="libvpx-vp9", fps=12)
    write_video(folder / "d.mov", [blocks(rng, 36, 52) for _ in range(10)], codec="mjpeg", fps=10)
    write_video(folder / "rot.mp4", [blocks(rng, 32, 64) for _ in range(12)], fps=24, rotation=90)
    vfr = [0, 40, 50, 200, 210, 220, 600, 900, 905, 1300]  # milliseconds: gaps of 5 to 400 ms
    write_video(folder / "vfr.mkv", [blocks(rng, 32, 32) for _ in vfr], fps=1000, pts=vfr, time_base=Fraction(1, 1000))
    Image.fromarray(blocks(rng, 40, 50)).save(folder / "still.png")
    bad = env / "bad"
    bad.mkdir()
    (bad / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(rng.integers(0, 256, 3000, dtype=np.uint8)))
    data = (folder / "a.mp4").read_bytes()
    (bad / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (bad / "empty.mp4").write_bytes(b"")
    with av.open(str(bad / "audio.mp4"), "w") as c:  # audio only
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for _ in range(4):
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return folder


GOOD = ("a.mp4", "b.avi", "c.mkv", "d.mov", "rot.mp4", "vfr.mkv")
BAD = ("audio.mp4", "corrupt.mp4", "empty.mp4", "truncated.mp4")


def reference_frames(path: Path, indices: list[int], loop: bool = False) -> np.ndarray:
    """The frames at ``indices``, [N, H, W, 3]: torchcodec's (exact seek mode: presentation order, rotation
    applied), or (``loop``, or no torchcodec) every frame PyAV decodes, in order, turned by the display rotation."""
    if torchcodec_decoders is not None and not loop:
        decoder = torchcodec_decoders.VideoDecoder(str(path), seek_mode="exact")
        return decoder.get_frames_at(indices).data.permute(0, 2, 3, 1).numpy()
    with av.open(str(path)) as c:
        frames = [np.rot90(f.to_ndarray(format="rgb24"), k=int(f.rotation) // 90) for f in c.decode(video=0)]
    return np.stack([frames[i] for i in indices])


def reference_timing(path: Path) -> tuple[int, np.ndarray]:
    """The frame count and the frames' timestamps in seconds (presentation order), from the reference decoder."""
    if torchcodec_decoders is not None:
        decoder = torchcodec_decoders.VideoDecoder(str(path), seek_mode="exact")
        n = decoder.metadata.num_frames
        return n, decoder.get_frames_at(list(range(n))).pts_seconds.numpy().astype(np.float64)
    with av.open(str(path)) as c:
        return 0, np.array([float(f.time) for f in c.decode(video=0)])


def meta_indices(total: int, n: int) -> list[int]:
    """apps/pe/clip_benchmark/datasets/video_classification_dataset.py, written out again."""
    return [total // 2] if n == 1 else [int(i * (total - 1) / (n - 1)) for i in range(n)]


@pytest.mark.parametrize("backend", ["pyav", "torchcodec"])
@pytest.mark.parametrize("name", GOOD)
def test_sampled_frames_equal_an_independent_decode(videos, name, backend):
    if backend == "torchcodec" and torchcodec_decoders is None:
        pytest.skip("torchcodec is not installed")
    path = videos / name
    total, times = reference_timing(path)
    total = total or len(times)
    for n in (1, 5):
        (segment,) = sample(path, n, backend=backend)
        assert segment.indices == meta_indices(total, n)
        reference = reference_frames(path, segment.indices, loop=backend == "torchcodec")  # never a decoder against itself
        np.testing.assert_array_equal(np.stack(segment.frames), reference)
        np.testing.assert_allclose(segment.timestamps, times[segment.indices] - times[0], atol=1e-6)
    if name == "rot.mp4":  # stored 64 wide, 32 high, displayed turned by 90 degrees
        assert segment.frames[0].shape == (64, 32, 3)


def test_unreadable_media_raise_video_error_naming_the_file(videos):
    bad = videos.parent / "bad"
    for name in BAD:
        with pytest.raises(VideoError, match=name):
            sample(bad / name)
    with pytest.raises(VideoError, match="no video stream"):
        probe(bad / "audio.mp4")
    assert issubclass(VideoError, zoo.inference.ImageError)


def test_without_pyav_a_video_is_one_clear_error(videos, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now fails, as where the extra is not installed
    with pytest.raises(VideoError, match=r"a\.mp4.*pip install \"pe-zoo\[video\]\""):
        probe(videos / "a.mp4")


def embed(*args) -> int:
    return main(["embed", CORE.name, *map(str, args), "--size", str(SIZE), "--workers", "0", "-q"])


@pytest.fixture(scope="module")
def net(env):
    return zoo.load_pretrained_model(CORE.name, inference=True, new_size=SIZE)


def pooled_reference(net, path: Path, indices: list[int]) -> np.ndarray:
    """Meta's CLIP.encode_video(normalize=False) on torchcodec's frames through the model's own transform."""
    model, info = net
    transform = classification_transform(info.size, info.rgb_stats)
    x = torch.stack([transform(Image.fromarray(f)) for f in reference_frames(path, indices)])
    with torch.no_grad():
        return model.clip_embedding(x).mean(dim=0).numpy()


def test_video_rows_are_the_pooled_clip_embeddings_and_errors_go_on(videos, env, net):
    out = env / "rows"
    bad = videos.parent / "bad"
    assert embed(videos, *(bad / n for n in BAD), "--out", out, "--what", "clip", "--store-dtype", "float32", "--frames", 4) == 0
    paths, rows = zoo.read_embeddings(out)
    records = zoo.read_row_info(out)
    assert [r["path"] for r in records] == paths
    assert sorted(Path(p).name for p in paths) == sorted([*GOOD, "still.png"])
    errors = (out / "errors.txt").read_text().splitlines()
    assert sorted(Path(line.split("\t")[0]).name for line in errors) == sorted(BAD)
    model, info = net
    for record, row in zip(records, np.asarray(rows)):
        if record["path"].endswith(".png"):
            assert "start" not in record
            x = classification_transform(info.size, info.rgb_stats)(Image.open(record["path"])).unsqueeze(0)
            with torch.no_grad():
                np.testing.assert_allclose(row, model.clip_embedding(x)[0].numpy(), atol=1e-5, rtol=0)
            continue
        total = len(reference_timing(Path(record["path"]))[1])
        assert record["frames"] == meta_indices(total, 4) and record["start"] == 0
        np.testing.assert_allclose(row, pooled_reference(net, Path(record["path"]), record["frames"]), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def segmented(videos, env):
    """a.mp4 (1.5 s at 30 fps) and vfr.mkv (last frame at 1.3 s) in 0.4 s windows of 2 frames, one file a shard."""
    out = env / "segments"
    args = [videos / "a.mp4", videos / "vfr.mkv", videos / "still.png", "--segment-seconds", "0.4", "--frames", 2, "--what", "clip",
            "--shard-size", 1]
    assert embed(*args, "--out", out) == 0
    return out, args


def test_segments_tile_the_duration_in_order(videos, segmented):
    out = segmented[0]
    records = zoo.read_row_info(out)
    assert len(records) == len(zoo.read_embeddings(out)[0])
    for name in ("a.mp4", "vfr.mkv"):
        mine = [r for r in records if r["path"].endswith(name)]
        assert mine[0]["start"] == 0
        for r, nxt in zip(mine, mine[1:]):
            assert r["end"] == nxt["start"] and r["start"] < r["end"]
            assert max(r["frames"]) < min(nxt["frames"])
        if name == "a.mp4":
            assert mine[-1]["end"] == pytest.approx(45 / 30)
            assert [r["start"] for r in mine] == pytest.approx([0, 0.4, 0.8, 1.2])
            for r in mine:  # each window samples, by Meta's rule, the frames that start inside it (30 fps)
                inside = [k for k in range(45) if r["start"] <= k / 30 < r["end"] - 1e-9]
                assert r["frames"] == [inside[i] for i in meta_indices(len(inside), 2)]
        else:  # frames at 0, .04, .05, .2, .21, .22 | .6 | .9, .905 | 1.3 s: the window [0.4, 0.8) holds only 0.6
            assert [(r["start"], r["frames"]) for r in mine] == [(0, [0, 5]), (0.4, [6, 6]), (0.8, [7, 8]), (1.2, [9, 9])]
            assert mine[-1]["end"] == probe(videos / name).duration and 1.3 < mine[-1]["end"] < 1.7  # the last frame's end


def test_a_window_without_frames_is_covered_by_the_one_before(videos):
    info = probe(videos / "vfr.mkv")  # frames at 0, .04, .05, .2, .21, .22, .6, .9, .905, 1.3 s
    got = [(s.start, s.end, s.indices) for s in plan(info, 1, 0.3)]
    assert got == [(0, 0.6, [3]), (0.6, 0.9, [6]), (0.9, 1.2, [8]), (1.2, info.duration, [9])]


def test_search_json_gives_start_and_end(videos, segmented, capsys):
    capsys.readouterr()
    assert main(["search", str(segmented[0]), "--image", str(videos / "still.png"), "--json", "-k", "20"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    records = zoo.read_row_info(segmented[0])
    assert len(hits) == len(records) and hits[0]["path"].endswith("still.png") and "start" not in hits[0]
    for h in hits:
        record = records[h["row"]]
        assert ("start" in h) == ("start" in record)
        if "start" in h:
            assert (h["start"], h["end"]) == (record["start"], record["end"])


def test_resume_after_interruption_gives_identical_rows(segmented, env, capsys):
    full, args = segmented
    cut = env / "cut"
    shutil.copytree(full, cut)
    (cut / "shard-00001.json").unlink()  # the VFR video's shard never committed
    (cut / "shard-00000.npy").write_bytes(b"partial")
    (cut / "manifest.json").unlink()
    assert embed(*args, "--out", cut) == 0
    for name in (p.name for p in full.iterdir()):
        assert (cut / name).read_bytes() == (full / name).read_bytes(), name
    args[args.index("--frames") + 1] = 3
    assert embed(*args, "--out", cut) == 1
    assert "video" in capsys.readouterr().err


def test_search_finds_the_planted_moment(env, net):
    rng = np.random.default_rng(1)
    folder = env / "planted"
    folder.mkdir()
    planted = blocks(rng, 64, 64, cell=16)
    frames = [blocks(rng, 64, 64, cell=16) for _ in range(40)]
    frames[22:28] = [planted] * 6  # 2.2 s to 2.8 s at 10 fps
    write_video(folder / "long.mp4", frames, fps=10)
    Image.fromarray(planted).save(folder / "query.png")
    out = env / "planted-rows"
    assert embed(folder / "long.mp4", "--out", out, "--segment-seconds", "1", "--frames", 4, "--store-dtype", "float32") == 0
    hits = zoo.search(out, image=folder / "query.png", k=4)
    assert [(h.start, h.end) for h in hits][0] == (2.0, 3.0)
    assert hits[0].to_dict()["start"] == 2.0 and hits[0].score > hits[1].score + 0.05


def clip_reference(model, path: Path, indices: list[int], labels: list[str]) -> torch.Tensor:
    """Meta's zero-shot video path (encode_video, normalise, scaled logits) on torchcodec's frames."""
    transform = classification_transform(CORE.size, CORE.rgb_stats)
    x = torch.stack([transform(Image.fromarray(f)) for f in reference_frames(path, indices)])
    with torch.no_grad():
        video = torch.nn.functional.normalize(model.encode_image(x).mean(0), dim=-1)
        text = model.encode_text(zoo.get_tokenizer(CORE.name)(labels), normalize=True)
        return (model.logit_scale.exp() * video @ text.T).softmax(-1)


def test_zero_shot_classify_video(videos):
    from zoo.clip import PECLIP
    from zoo.video import zero_shot_classify_video

    # random weights, two blocks, a small text tower (unused: a random classifier)
    model = PECLIP(dataclasses.replace(CORE.config, depth=2), SMALL_TEXT).eval()
    classifier = torch.nn.functional.normalize(torch.randn(CORE.config.clip_dim, 3), dim=0)
    transform = classification_transform(SIZE, CORE.rgb_stats)
    (segment,) = sample(videos / "a.mp4", 3, convert=lambda a: transform(Image.fromarray(a)))
    probs = zero_shot_classify_video(model, torch.stack(segment.frames), classifier)
    with torch.no_grad():
        x = torch.stack([transform(Image.fromarray(f)) for f in reference_frames(videos / "a.mp4", meta_indices(45, 3))])
        video = torch.nn.functional.normalize(model.encode_image(x).mean(0), dim=-1)
        ref = (model.logit_scale.exp() * video @ classifier).softmax(-1)
    torch.testing.assert_close(probs, ref, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_classify_a_video_cli(videos, env, capsys):
    """`python -m zoo classify` on a video (full-size synthetic T16 text tower)."""
    from zoo.testing.synthetic import meta_clip_state_dict
    from zoo.weights import convert_checkpoint, convert_text_checkpoint
    from zoo.paths import weights_dir

    state = meta_clip_state_dict(CORE.config, CORE.text, seed=5, dtype=torch.bfloat16)
    home = env / "zoo-home-full"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZOO_HOME", str(home))
        torch.save(state, env / "clip.pt")
        convert_checkpoint(CORE, env / "clip.pt", weights_dir())
        convert_text_checkpoint(CORE, env / "clip.pt", weights_dir())
        labels = ["a cat", "a dog", "a car"]
        assert main(["classify", CORE.name, str(videos / "a.mp4"), "--labels", ",".join(labels), "--frames", "3"]) == 0
        printed = capsys.readouterr().out.splitlines()
        model = zoo.load_pretrained_clip(CORE.name, inference=True, dtype=torch.float32)
        probs = clip_reference(model, videos / "a.mp4", meta_indices(45, 3), labels)
    assert printed[0].endswith("a.mp4")
    shown = {" ".join(line.split()[1:3]): float(line.split()[-1].rstrip("%")) for line in printed[1:]}
    for label, p in zip(labels, probs.tolist()):
        assert shown[label] == pytest.approx(100 * p, abs=0.006)


def paths_sorted(folder: Path) -> list[Path]:
    return sorted(folder.glob("p[0-3].jpg"))


def test_gpu_decode_path_on_the_cpu_matches_pil(env, videos, net):
    """The device path (torchvision decode_jpeg + antialiased bilinear resize) run on the CPU, against PIL."""
    from zoo.gpu_decode import decode_jpegs, normalize, read_jpeg, resize_pixels

    rng = np.random.default_rng(2)
    folder = env / "jpegs"
    folder.mkdir()
    for i, (h, w) in enumerate([(120, 90), (300, 200), (64, 64), (50, 130)]):
        smooth = np.asarray(Image.fromarray(blocks(rng, h // 4 + 1, w // 4 + 1, 4)).resize((w, h), Image.BILINEAR))
        Image.fromarray(smooth).save(folder / f"p{i}.jpg", quality=90)
    (folder / "p9.jpg").write_bytes(b"\xff\xd8\xff\xe0 no JPEG after all")
    info = net[1]
    transform = classification_transform(info.size, info.rgb_stats)
    paths = paths_sorted(folder)
    decoded = decode_jpegs([torch.frombuffer(bytearray(read_jpeg(p)[0]), dtype=torch.uint8) for p in paths], "cpu")
    std = torch.tensor(info.rgb_stats["std"]).view(3, 1, 1)
    for p, image in zip(paths, decoded):
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), np.asarray(Image.open(p).convert("RGB")))
        mine, pil = normalize(resize_pixels([image], info.size), info.rgb_stats)[0], transform(Image.open(p))
        levels = ((mine - pil) * std * 255).abs()  # in 8-bit levels
        assert levels.max() <= 2.01 and levels.mean() < 0.3
    assert read_jpeg(videos / "still.png") is None
    out = env / "jpeg-dev"
    assert embed(folder, "--out", out, "--store-dtype", "float32", "--gpu-decode") == 0
    paths, rows = zoo.read_embeddings(out)
    assert [Path(p).name for p in paths] == [p.name for p in paths_sorted(folder)]
    assert Path((out / "errors.txt").read_text().split("\t")[0]).name == "p9.jpg"
    model = net[0]
    with torch.no_grad():
        ref = model.embedding(torch.stack([transform(Image.open(p)) for p in paths])).numpy()
    cos = (np.asarray(rows) * ref).sum(1) / np.linalg.norm(rows, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.999


@pytest.mark.skipif(torchcodec_decoders is None, reason="torchcodec (device video decoding) is not installed")
def test_device_video_decode_on_the_cpu(videos, env, net):
    """Videos through torchcodec in the main process (the CUDA path's code, on the CPU): same frames, rows close."""
    out = env / "video-dev"
    bad = videos.parent / "bad" / "corrupt.mp4"
    assert embed(videos / "a.mp4", videos / "rot.mp4", bad, "--out", out, "--what", "clip", "--store-dtype", "float32",
                 "--frames", 3, "--segment-seconds", "1", "--gpu-decode") == 0
    records, rows = zoo.read_row_info(out), np.asarray(zoo.read_embeddings(out)[1])
    assert [(Path(r["path"]).name, r["start"]) for r in records] == [("a.mp4", 0), ("a.mp4", 1.0), ("rot.mp4", 0)]
    assert "corrupt.mp4" in (out / "errors.txt").read_text()
    for record, row in zip(records, rows):
        ref = pooled_reference(net, Path(record["path"]), record["frames"])
        assert row @ ref / np.linalg.norm(row) / np.linalg.norm(ref) > 0.999
    # the path taken: workers hand over planned indices, the main process decodes them with torchcodec
    from zoo.collection.media import MediaFiles, _collate
    from zoo.gpu_decode import decode_batch, normalize, pixel_transform

    info = net[1]
    transform = classification_transform(info.size, info.rgb_stats)
    item = MediaFiles([str(videos / "rot.mp4")], transform, 3, None, planned_video=True)[0]
    assert item[1] == meta_indices(12, 3)
    items, x = decode_batch(_collate([item]), [str(videos / "rot.mp4")], info.size, torch.device("cpu"), pixel_transform(info.size))
    assert [n for _, n, _, _ in items] == [3]
    x = normalize(x, info.rgb_stats)
    ref = torch.stack([transform(Image.fromarray(f)) for f in reference_frames(videos / "rot.mp4", item[1])])
    std = torch.tensor(info.rgb_stats["std"]).view(1, 3, 1, 1)
    assert x.shape == ref.shape and ((x - ref) * std * 255).abs().max() <= 2.01


def exif_jpeg(path: Path, pixels: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision 0.29 deprecates its decoders (the reference here)
def test_device_decode_applies_exif_orientation(env):
    """nvJPEG ignores EXIF: the zoo reads the tag in the worker and turns the decoded image upright. All eight
    orientations against torchvision's own CPU decoder with ``apply_exif_orientation`` (libjpeg + its EXIF code)."""
    from torchvision.io import decode_jpeg

    from zoo.gpu_decode import decode_jpegs, read_jpeg

    folder = env / "exif"
    folder.mkdir()
    pixels = blocks(np.random.default_rng(5), 48, 80, 8)  # 48 x 80, not square: a wrong turn changes the shape
    data, turns = [], []
    for o in range(1, 9):
        exif_jpeg(folder / f"o{o}.jpg", pixels, o)
        raw, orientation = read_jpeg(folder / f"o{o}.jpg")
        assert orientation == o
        data.append(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
        turns.append(orientation)
    mine = decode_jpegs(data, "cpu", turns)
    for o, d, image in zip(range(1, 9), data, mine):
        ref = decode_jpeg(d, apply_exif_orientation=True)
        assert image.shape == ref.shape, o
        assert torch.equal(image, ref), o
        upright = np.asarray(zoo.images.upright(Image.open(folder / f"o{o}.jpg")).convert("RGB"))
        assert upright.shape[:2] == tuple(image.shape[1:]), o


def test_device_pixels_normalised_equal_the_cpu_transform_to_the_bit(env):
    """On CUDA the workers send 8-bit pixels and the device scales and normalises them: the same float operations as
    ``classification_transform``'s ToTensor and Normalize, so equal to the bit (RGB, grey, 16-bit, RGBA, EXIF-turned)."""
    from zoo.gpu_decode import normalize, pixel_transform
    from zoo.inference import open_image

    rng = np.random.default_rng(9)
    folder = env / "pixels"
    folder.mkdir()
    Image.fromarray(blocks(rng, 30, 20, 5)).save(folder / "rgb.png")
    Image.fromarray(blocks(rng, 30, 20, 5)[..., 0]).save(folder / "grey.png")
    Image.fromarray((rng.random((90, 70)) * 65535).astype(np.uint16)).save(folder / "deep.png")
    Image.fromarray(np.dstack([blocks(rng, 84, 63, 7), np.full((84, 63), 128, np.uint8)])).save(folder / "alpha.png")
    exif_jpeg(folder / "turned.jpg", blocks(rng, 48, 80, 8), 6)
    stats = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
    for size in ((224, 224), (64, 96)):
        transform, pixels = classification_transform(size, stats), pixel_transform(size)
        for p in sorted(folder.iterdir()):
            image = open_image(p)
            x = pixels(image)
            assert x.dtype == torch.uint8 and x.shape == (3, *size)
            assert torch.equal(normalize(x, stats), transform(image)), p.name
