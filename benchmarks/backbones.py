"""Discriminator backbones: cost of one GAN step, backbone x image size, measured side by side.

    .venv/bin/python benchmarks/backbones.py [--sizes 32 64 128] [--archs dcgan resnet18 ...]
        [--batch 8] [--threads 1] [--seconds 3] [--json out.json]

For each discriminator (``model.d-arch``) and image size, a fresh subprocess builds the GAN
fedsynth trains (``model.g-arch = upsample-cnn``, ngf 32, nz 100: the same generator in every
row, so the rows differ only in D; no pretrained weights, which change no cost except that
``vit_b_16`` and ``levit_128s`` then see 224-px inputs) and runs fedsynth's own local step
(:class:`fedsynth.train.LocalTrainer`: one D update on real + fake, one G update through D;
BCE loss, Adam, channels-last, fp32) on phantom-histo images:

* parameters of D and of G;
* images/s = batch / the median time of one step, over the timed steps (after one warm-up
  step; at least ``--seconds`` and 3 steps). The median, because the machine this ran on is
  shared: a step that another process slowed down does not count more than once;
* peak memory: the subprocess's peak resident set (``resource.getrusage(RUSAGE_SELF).ru_maxrss``,
  which includes Python, torch and the data) and that peak minus the resident set measured
  right before the model was built (``/proc/self/status`` VmRSS): what the model, its
  optimizer state and the step's activations add.

``--pretrained`` builds D with ``model.d-pretrained = true`` through the real loading path,
from a temporary cache holding randomly initialised files of the right architectures (the
values do not change the cost; nothing is downloaded): ``vit_b_16`` and ``levit_128s`` then see
224-px inputs whatever the image size.

Every number printed is measured in this run; nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from fedsynth.registry import D_ARCHS  # standard library only: the measured children import torch

ARCHS = list(D_ARCHS.names())


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _fake_cache(arch: str, root: str) -> dict[str, str]:
    """A torch-hub / Hugging Face cache under ``root`` holding a random-weights file for
    ``arch`` (made by the parent, so it costs the measured child nothing); the environment
    that points the child at it."""
    import torch

    from fedsynth import weights
    from fedsynth.models.backbones import BACKBONES
    e, w = BACKBONES[arch], weights.WEIGHTS[arch]
    if e.library == "torchvision":
        import torchvision
        d = os.path.join(root, "torch", "hub", "checkpoints")
        os.makedirs(d)
        torch.save(torchvision.models.get_model(e.model).state_dict(), os.path.join(d, w.filename))
    else:
        import safetensors.torch
        import timm
        commit = "0" * 40
        d = os.path.join(root, "hf", "models--" + str(w.repo).replace("/", "--"))
        os.makedirs(os.path.join(d, "snapshots", commit))
        os.makedirs(os.path.join(d, "refs"))
        with open(os.path.join(d, "refs", "main"), "w") as f:
            f.write(commit)
        sd = timm.create_model(e.model).state_dict()
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()},
                                    os.path.join(d, "snapshots", commit, w.filename))
    return {"TORCH_HOME": os.path.join(root, "torch"), "HF_HUB_CACHE": os.path.join(root, "hf")}


def one(arch: str, size: int, batch: int, seconds: float, pretrained: bool = False) -> dict:
    """Runs in the child process: build, warm up, time; returns the row."""
    import resource

    import torch

    from fedsynth.config import load_config
    from fedsynth.data import make_phantom
    from fedsynth.models import build_model
    data = make_phantom("phantom-histo", 4 * batch, size, seed=0)
    extra = ["model.d-pretrained=true"] if pretrained else []
    base = _rss_mb()
    cfg = load_config(None, [f"model.d-arch={arch}", "model.g-arch=upsample-cnn", "model.ngf=32",
                             "model.ndf=16", f"train.batch-size={batch}", *extra])
    m = build_model(cfg, size, data.channels, 0)
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    g = torch.Generator().manual_seed(0)
    m.train(data, 1, batch, g)                                         # warm-up (allocations, kernels)
    times: list[float] = []
    t0 = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        m.train(data, 1, batch, g)
        times.append(time.perf_counter() - t)
    step = sorted(times)[len(times) // 2]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    input_size = getattr(getattr(getattr(m.gan.D, "trunk", None), "adapt", None), "size", None) or size
    return {"arch": arch, "pretrained": pretrained, "d_input": input_size, "size": size, "batch": batch, "d_params": count(m.gan.D), "g_params": count(m.gan.G),
            "steps": len(times), "step_times": times, "images_per_s": batch / step, "s_per_step": step,
            "peak_rss_mb": peak, "model_and_step_mb": peak - base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", nargs="+", default=ARCHS)
    ap.add_argument("--sizes", nargs="+", type=int, default=[32, 64, 128])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--pretrained", action="store_true", help="d-pretrained = true (random files in a temp cache)")
    ap.add_argument("--json", default="")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        import torch
        torch.set_num_threads(a.threads)
        print(json.dumps(one(a.child[0], int(a.child[1]), a.batch, a.seconds, a.pretrained)))
        return
    import torch
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{a.threads} thread(s), batch {a.batch}, fp32, G = upsample-cnn (ngf 32), one subprocess per row, "
          f"load average {os.getloadavg()[0]:.1f} (1 min)")
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)}
    rows = []
    print("| D | px (D input) | D params | G params | images/s | s/step | peak RSS MB | model + step MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for arch in a.archs:
        for size in a.sizes:
            cmd = [sys.executable, __file__, "--child", arch, str(size), "--batch", str(a.batch),
                   "--threads", str(a.threads), "--seconds", str(a.seconds)] + (["--pretrained"] if a.pretrained else [])
            root = tempfile.mkdtemp(prefix="fedsynth-bench-")
            try:
                cache = _fake_cache(arch, root) if a.pretrained else {}
                out = subprocess.run(cmd, env={**env, **cache}, capture_output=True, text=True)
            finally:
                shutil.rmtree(root)
            if out.returncode != 0:
                print(f"| {arch} | {size} | failed: {out.stderr.strip().splitlines()[-1][:80]} |||||||", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            px = f"{size} ({r['d_input']})" if r["d_input"] != size else str(size)
            print(f"| {arch}{' (pretrained)' if a.pretrained else ''} | {px} | {r['d_params'] / 1e6:.2f} M | {r['g_params'] / 1e6:.2f} M | "
                  f"{r['images_per_s']:.1f} | {r['s_per_step']:.3f} | {r['peak_rss_mb']:.0f} | "
                  f"{r['model_and_step_mb']:.0f} |", flush=True)
    print(f"# load average at the end: {os.getloadavg()[0]:.1f} (1 min)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
