"""fedsynth on whatever device is present, side by side with PyTorch's own DCGAN example.

    .venv/bin/python benchmarks/gpu.py [process] [throughput] [eval] [parallel] [compile] [--device cuda:0] [--quick] [--paper] [--warm-cache]

* process    -- whole processes, alternating, best of two: ``python benchmarks/dcgan_reference.py``
                (pytorch/examples dcgan/main.py --dataset fake --niter 1, reimplemented: 1,000 RGB
                64 px images, ngf 64, ndf 64, batch 64) vs ``python -m fedsynth run`` with the same
                networks, batch, image count and one epoch, evaluation off. Target >= 1.15x on CPU.
* throughput -- images/s of one local step in this process: 64 and 128 px, the default widths
                (ngf 32, ndf 16, batch 32) and the paper's (64, 64, batch 64), fp32 and bf16,
                fedsynth's step vs the example's step on the same device.
* eval       -- one evaluation of the global model at the defaults, seconds, on the device.
* parallel   -- a 4-client round with fed.parallel-clients = 1, 2, 4: wall time and speed-up.
* compile    -- fedsynth's local step with G and D eager vs ``torch.compile``d (inductor), side by
                side in this process: compile time (the first steps), steady-state images/s (medians
                of alternating single steps), the steps after which compiling breaks even, and the
                max abs difference of losses and weights after the same steps from the same weights
                and seed. Default widths (ngf 32,
                ndf 16, batch 32, 64 px); ``--paper`` adds 64/64, batch 64. Not in the default set
                (the compile itself takes minutes on a small CPU); prints the load average. Each
                run compiles with an empty inductor cache (a first run's cost) unless --warm-cache.

Every number is measured in this run; nothing is hard-coded. Timings vary on shared machines;
the ratios of pairs measured side by side are steadier.
"""

from __future__ import annotations

import atexit
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
QUICK = "--quick" in sys.argv


def _device() -> str:
    for i, a in enumerate(sys.argv):
        if a == "--device" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
    return "cuda" if torch.cuda.is_available() else "cpu"


DEVICE = _device()


def _sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------- process

def _timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t


def process() -> None:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryDirectory() as tmp:
        env["FEDSYNTH_CACHE"] = os.path.join(tmp, "cache")
        ref = [sys.executable, str(HERE / "dcgan_reference.py"), "--device", DEVICE, "--out", os.path.join(tmp, "ref")]
        sets = ["data.source=phantom-histo", "data.image-size=64", "data.num-images=1000", "partition.clients=1",
                "model.ngf=64", "model.ndf=64", "train.batch-size=64", "fed.rounds=1", "eval.enabled=false",
                f"run.device={DEVICE}"]
        ours = [sys.executable, "-m", "fedsynth", "run", *[x for s in sets for x in ("--set", s)]]
        _timed(ours + ["--out", os.path.join(tmp, "warm")], env)  # prepares (and caches) the data set once
        _timed(ref, env)  # and warms the OS file cache for both
        a, b = [], []
        for i in range(1 if QUICK else 2):  # alternate: the machine's noise hits both alike
            b.append(_timed(ref, env))
            a.append(_timed(ours + ["--out", os.path.join(tmp, f"run{i}")], env))
    print(f"whole process, 1 epoch of 1,000 RGB 64 px images, ngf 64 / ndf 64, batch 64, {DEVICE}: "
          f"pytorch/examples DCGAN (reimplemented) {min(b):.2f} s, fedsynth run {min(a):.2f} s -> "
          f"fedsynth {min(b) / min(a):.2f}x as fast (target >= 1.15x on CPU); all runs: ref "
          f"{', '.join(f'{x:.2f}' for x in b)}; fedsynth {', '.join(f'{x:.2f}' for x in a)}")


# ----------------------------------------------------------------------------------- throughput

def _fedsynth_step(size: int, ngf: int, ndf: int, batch: int, precision: str):
    from fedsynth.data import ImageSet
    from fedsynth.models import build_gan
    from fedsynth.train import LocalTrainer, build_loss
    import numpy as np
    rng = np.random.default_rng(0)
    data = ImageSet(rng.integers(0, 256, (batch * 8, 3, size, size), dtype=np.uint8),
                    np.zeros(batch * 8, np.int64), ("x",), "bench")
    tr = LocalTrainer(build_gan("dcgan", size, 3, 100, ngf, ndf, seed=0), build_loss("bce"), channels_last=True,
                      device=DEVICE, precision=precision)
    tr.load(tr.weights(), None)
    g = torch.Generator().manual_seed(0)
    return lambda steps: tr.train(data, steps, batch, g)


def _reference_step(size: int, ngf: int, ndf: int, batch: int, precision: str):
    sys.path.insert(0, str(HERE))
    from dcgan_reference import Reference
    ref = Reference(size, ngf, ndf, device=DEVICE, precision=precision)
    real = torch.rand(batch, 3, size, size) * 2 - 1  # the example's loader hands CPU batches over

    def run(steps):
        for _ in range(steps):
            ref.step(real)
    return run


def _rate(fn, steps: int, batch: int) -> float:
    fn(2)  # warm-up (kernel selection, allocator)
    _sync()
    t = time.perf_counter()
    fn(steps)
    _sync()
    return steps * batch / (time.perf_counter() - t)


def throughput() -> None:
    steps = 4 if QUICK else (10 if DEVICE == "cpu" else 50)
    print(f"local step throughput on {DEVICE}, images/s (best of 2, {steps} steps each):")
    print("| size | widths (ngf/ndf, batch) | precision | fedsynth | pytorch/examples step | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size in (64, 128):
        for ngf, ndf, batch in ((32, 16, 32), (64, 64, 64)):
            for prec in ("fp32", "bf16"):
                ours = _fedsynth_step(size, ngf, ndf, batch, prec)
                ref = _reference_step(size, ngf, ndf, batch, prec)
                a = max(_rate(ours, steps, batch) for _ in range(2))
                b = max(_rate(ref, steps, batch) for _ in range(2))
                print(f"| {size} | {ngf}/{ndf}, {batch} | {prec} | {a:.0f} | {b:.0f} | {a / b:.2f} |", flush=True)


# ----------------------------------------------------------------------------------------- eval

def _federation(overrides: list[str]):
    from fedsynth.config import build_config
    from fedsynth.data import load_dataset, partition_for
    from fedsynth.fed import build_in_process
    cfg = build_config(overrides=[f"run.device={DEVICE}"] + overrides)
    return cfg, build_in_process(cfg, partition_for(cfg, load_dataset(cfg)))


def eval_time() -> None:
    cfg, run = _federation(["fed.rounds=1", "fed.local-steps=1"])
    run.run()
    ts = []
    for _ in range(3):
        _sync()
        t = time.perf_counter()
        run.pool.evaluate_global(1)
        _sync()
        ts.append(time.perf_counter() - t)
    print(f"one evaluation of the global model at the defaults ({cfg.eval.num_samples} samples, per-site "
          f"{cfg.eval.per_site}) on {DEVICE}: {min(ts):.3f} s (best of 3)")


# ------------------------------------------------------------------------------------- parallel

def parallel() -> None:
    n = 400 if QUICK else 2000
    base = ["partition.clients=4", f"data.num-images={n}", "fed.rounds=1", "eval.enabled=false"]
    times = {}
    for k in (1, 2, 4):
        _, run = _federation(base + [f"fed.parallel-clients={k}"])
        t = time.perf_counter()
        run.run()
        times[k] = time.perf_counter() - t
    print(f"a 4-client round ({n} images, 64 px, evaluation off) on {DEVICE}: " +
          ", ".join(f"parallel-clients {k}: {t:.2f} s ({times[1] / t:.2f}x)" for k, t in times.items()))


# -------------------------------------------------------------------------------------- compile

def _trainer(size: int, ngf: int, ndf: int, batch: int):
    from fedsynth.data import ImageSet
    from fedsynth.models import build_gan
    from fedsynth.train import LocalTrainer, build_loss
    import numpy as np
    rng = np.random.default_rng(0)
    data = ImageSet(rng.integers(0, 256, (batch * 8, 3, size, size), dtype=np.uint8),
                    np.zeros(batch * 8, np.int64), ("x",), "bench")
    tr = LocalTrainer(build_gan("dcgan", size, 3, 100, ngf, ndf, seed=0), build_loss("bce"), channels_last=True,
                      device=DEVICE)
    tr.load(tr.weights(), None)
    return tr, data, torch.Generator().manual_seed(0)


def _inductor_works() -> str | None:
    """None if inductor compiles and runs a tiny function here, else why not."""
    try:
        f = torch.compile(lambda x: torch.sin(x) * 2 + 1)
        x = torch.randn(8, device=DEVICE)
        if not torch.allclose(f(x), torch.sin(x) * 2 + 1):
            return "inductor ran but gave a different result"
    except Exception as e:  # a missing C++ compiler, an unsupported device, ...
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
    return None


def _timed_steps(tr, data, g, steps: int, batch: int):
    _sync()
    t = time.perf_counter()
    res = tr.train(data, steps, batch, g)
    _sync()
    return time.perf_counter() - t, res


DEFAULT_RUN_STEPS = 20 * 2 * 31  # the defaults: rounds x clients x steps per epoch (1,000 images, batch 32)


def compile_bench() -> None:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"torch.compile (inductor) vs eager on {DEVICE}, {torch.get_num_threads()} threads; "
          f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)", flush=True)
    if "--warm-cache" not in sys.argv:  # what a first run costs: inductor's on-disk caches empty
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache = tempfile.mkdtemp(prefix="fedsynth-inductor-")
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
    print(f"inductor cache: {os.environ.get('TORCHINDUCTOR_CACHE_DIR', 'the default (warm if compiled before)')}")
    t = time.perf_counter()
    why = _inductor_works()
    print(f"inductor smoke test (a 1-op function): "
          f"{'works' if why is None else 'FAILS: ' + why}, {time.perf_counter() - t:.1f} s", flush=True)
    if why is not None:
        return
    first, repeat = 3, (2 if QUICK else 3)
    shapes = [(64, 32, 16, 32)] + ([(64, 64, 64, 64)] if "--paper" in sys.argv else [])
    print("| size | widths (ngf/ndf, batch) | first 3 steps eager / compiled, s | compile cost, s | "
          "steady images/s eager / compiled | ratio | break-even steps | max abs diff after 3 steps: "
          "d/g loss, weights |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for size, ngf, ndf, batch in shapes:
        steady = 3 if QUICK else (max(4, 512 // batch) if DEVICE == "cpu" else 50)  # steps per block
        warm = _trainer(size, ngf, ndf, batch)
        _timed_steps(*warm, 1, batch)  # the process's one-time costs (oneDNN set-up) fall on neither side
        del warm
        eager, comp = _trainer(size, ngf, ndf, batch), _trainer(size, ngf, ndf, batch)
        from torch._dynamo.utils import counters
        counters.clear()
        # compile the modules' forward calls in place (nn.Module.compile): state-dict keys unchanged
        comp[0].gan.G.compile()
        comp[0].gan.D.compile()
        t_e, r_e = _timed_steps(*eager, first, batch)
        t_c, r_c = _timed_steps(*comp, first, batch)
        we, wc = eager[0].weights(), comp[0].weights()
        assert we.keys() == wc.keys(), "compiling changed the state-dict keys"
        dw = max((we[k].float() - wc[k].float()).abs().max().item() for k in we)
        dd, dg = abs(r_e.d_loss - r_c.d_loss), abs(r_e.g_loss - r_c.g_loss)
        # steady state: single steps in adjacent pairs (the order alternating), so a load change on a
        # shared machine hits both sides of a pair alike; the medians of the per-step times and of
        # the pairs' ratios
        se, sc = [], []
        for i in range(repeat * steady):
            for side in ((eager, comp) if i % 2 == 0 else (comp, eager)):
                (se if side is eager else sc).append(_timed_steps(*side, 1, batch)[0])
        pe, pc = statistics.median(se), statistics.median(sc)
        ratio = statistics.median(e / c for e, c in zip(se, sc))
        graphs = counters["stats"]["unique_graphs"]
        cost = t_c - t_e - first * (pc - pe)  # first steps' extra time beyond the steady difference
        gain = pe - pc
        pays = gain > 0 and cost / gain < DEFAULT_RUN_STEPS
        even = (f"{cost / gain:.0f} ({'<' if pays else '>='} a default run's {DEFAULT_RUN_STEPS})" if gain > 0
                else "never (compiled is not faster)")
        print(f"| {size} | {ngf}/{ndf}, {batch} | {t_e:.2f} / {t_c:.2f} | {cost:.1f} | "
              f"{batch / pe:.0f} / {batch / pc:.0f} | {ratio:.2f} | {even} | {dd:.1e} / {dg:.1e}, {dw:.1e} |",
              flush=True)
        print(f"  ({graphs} graphs compiled over {first + repeat * steady} steps: G, and D with and without "
              f"weight gradients; steady: medians of {repeat * steady} alternating pairs of single steps; "
              f"ratio = median of the pairs' eager/compiled; per-pair ratios "
              f"{min(e / c for e, c in zip(se, sc)):.2f}..{max(e / c for e, c in zip(se, sc)):.2f})",
              flush=True)
    print(f"a default run: 20 rounds x 2 clients x 31 steps = {DEFAULT_RUN_STEPS} steps in one process")


def main() -> None:
    which = ARGS or ["process", "throughput", "eval", "parallel"]
    name = torch.cuda.get_device_name(torch.device(DEVICE)) if DEVICE.startswith("cuda") else platform.processor()
    print(f"device {DEVICE} ({name}); {os.cpu_count()} cores; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}")
    for w in which:
        {"process": process, "throughput": throughput, "eval": eval_time, "parallel": parallel,
         "compile": compile_bench}[w]()


if __name__ == "__main__":
    main()
