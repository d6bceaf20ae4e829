"""One training step (forward + backward + AdamW step), timed and measured for peak memory, each case in a fresh process.

Cases: PE-Core B16 classification at 224 px, batch 32 (a 10-class head, cross-entropy), and the zoo's Faster R-CNN
(B16 backbone, pyramid and torchvision heads) on one 640x640 image with three boxes; each in float32 and bfloat16
(autocast, float32 weights: the usual mixed precision), with and without gradient checkpointing. Random weights
(``pretrained=False``): the cost of a step does not depend on the values.

Each case runs in its own process: ``--steps`` steps, the first one a warm-up (it also allocates AdamW's state)
that is not timed; peak memory is the process's peak RSS (``ru_maxrss``) after the last step, and "step memory" is
that peak minus the RSS before the first step (model, data and libraries already resident).

    python benchmarks/train.py [--cases classify detect] [--dtype float32 bfloat16] [--steps 3] [--batch 32]
    python benchmarks/train.py --interleave 5 --batch 8   # time only: off/on alternating in one process
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results import summary, write_result  # noqa: E402

B16 = "rope_i_vit_b16_pn_aps_c1_pe-core"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(case: str, dtype: str, checkpointing: bool, steps: int, batch: int) -> dict:
    """Run ``steps`` training steps of one case in this process and return its figures."""
    with open("/proc/self/oom_score_adj", "w") as f:  # on a shared machine short of memory, this process goes first
        f.write("1000")
    torch.manual_seed(0)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    if case == "classify":
        import zoo

        model = zoo.create_model(B16, num_classes=10)
        net = model
        x = torch.randn(batch, 3, 224, 224)
        y = torch.randint(0, 10, (batch,))

        def loss_fn() -> torch.Tensor:
            with autocast:
                return torch.nn.functional.cross_entropy(model(x).float(), y)
    else:
        from zoo.detection import faster_rcnn

        model = faster_rcnn(B16, num_classes=3, pretrained=False, min_size=640, max_size=640)
        net = model.backbone.net
        images = [torch.rand(3, 640, 640)]
        targets = [{"boxes": torch.tensor([[40.0, 60.0, 200.0, 220.0], [300.0, 280.0, 560.0, 600.0], [100.0, 400.0, 180.0, 470.0]]),
                    "labels": torch.tensor([1, 2, 1])}]

        def loss_fn() -> torch.Tensor:
            with autocast:
                return sum(model(images, targets).values())
    net.set_grad_checkpointing(checkpointing)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    rss_before = _rss_mib()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # as zoo finetune does: no gradients held through the next forward
        times.append(time.perf_counter() - t)
    peak = _peak_rss_mib()
    return {"case": case, "dtype": dtype, "checkpointing": checkpointing, "warmup_s": times[0], "step_s": times[1:],
            "rss_before_mib": rss_before, "peak_rss_mib": peak, "step_mib": peak - rss_before, "loss": loss.item(),
            "threads": torch.get_num_threads()}


def interleaved(dtype: str, rounds: int, batch: int) -> None:
    """Time alone, in one process: B16 classification steps alternating checkpointing off and on (A/B under the same load)."""
    import zoo

    torch.manual_seed(0)
    model = zoo.create_model(B16, num_classes=10).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 10, (batch,))
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(rounds + 1):
        for ckpt in ((False, True) if i % 2 else (True, False)):
            model.set_grad_checkpointing(ckpt)
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:  # round 0 warms up both
                times[ckpt].append(time.perf_counter() - t)
    ratios = [on / off for on, off in zip(times[True], times[False])]
    print(f"B16 224px batch {batch} {dtype}, {rounds} interleaved rounds: s/step off {statistics.median(times[False]):.2f} "
          f"(min {min(times[False]):.2f}, max {max(times[False]):.2f}), on {statistics.median(times[True]):.2f} "
          f"(min {min(times[True]):.2f}, max {max(times[True]):.2f}); on/off per round min {min(ratios):.2f} "
          f"median {statistics.median(ratios):.2f} max {max(ratios):.2f}", flush=True)


def run_case(case: str, dtype: str, checkpointing: bool, steps: int, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--child", case, dtype, str(int(checkpointing)), "--steps", str(steps), "--batch", str(batch)]
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"case {case} {dtype} checkpointing={checkpointing} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", choices=["classify", "detect"], default=["classify", "detect"])
    p.add_argument("--dtype", nargs="+", choices=["float32", "bfloat16"], default=["float32", "bfloat16"])
    p.add_argument("--steps", type=int, default=3, help="steps per process, the first not timed (default 3)")
    p.add_argument("--batch", type=int, default=32, help="classification batch size (default 32)")
    p.add_argument("--notes", default="", help="a note stored with the result (e.g. the machine's load)")
    p.add_argument("--interleave", type=int, metavar="ROUNDS",
                   help="instead: time checkpointing off/on alternately in one process (memory not measured)")
    p.add_argument("--child", nargs=3, metavar=("CASE", "DTYPE", "CKPT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.interleave:
        for dtype in args.dtype:
            interleaved(dtype, args.interleave, args.batch)
        return
    if args.child:
        case, dtype, ckpt = args.child
        print(json.dumps(child(case, dtype, bool(int(ckpt)), args.steps, args.batch)))
        return
    if args.steps < 2:
        p.error("--steps must be at least 2 (the first step is a warm-up)")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    header = "| case | dtype | checkpointing | s/step min / median / max | peak RSS MiB | step memory MiB |"
    print(header + "\n|" + "---|" * 6)
    rows = []
    for case in args.cases:
        for dtype in args.dtype:
            pair = {}
            for ckpt in (False, True):
                r = run_case(case, dtype, ckpt, args.steps, args.batch)
                pair[ckpt] = r
                s = r["step_s"]
                label = f"B16 224px batch {args.batch}" if case == "classify" else "Faster R-CNN B16 640x640"
                print(f"| {label} | {dtype} | {'on' if ckpt else 'off'} | {min(s):.2f} / {statistics.median(s):.2f} / {max(s):.2f} "
                      f"| {r['peak_rss_mib']:.0f} | {r['step_mib']:.0f} |", flush=True)
                rows.append({"case": label, "dtype": dtype, "checkpointing": "on" if ckpt else "off", "s/step": summary(s),
                             "peak RSS MiB": round(r["peak_rss_mib"]), "step memory MiB": round(r["step_mib"])})
            off, on = pair[False], pair[True]
            print(f"|  | {dtype} | on / off | time x{statistics.median(on['step_s']) / statistics.median(off['step_s']):.2f} "
                  f"| peak x{on['peak_rss_mib'] / off['peak_rss_mib']:.2f} | step x{on['step_mib'] / off['step_mib']:.2f} |", flush=True)
    print(f"wrote {write_result('train', rows, notes=args.notes)}")


if __name__ == "__main__":
    main()
