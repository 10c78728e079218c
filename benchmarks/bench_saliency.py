"""Grad-CAM: our hook-based ``wdr_pipe.wdr.model.saliency.grad_cam`` against the grad-cam package.

The report's saliency grid: --images images x --labels labels each, on
``tf_efficientnet_lite0`` at 224 px with ``--deep fixed`` (the WDR paper's
setting), Deep + Wide + Recurrent parts, on the CPU. Both compute the same
maps (checked here and in tests/wdr/model/test_saliency.py); the package needs a
one-tensor wrapper for the wide input and ``compute_input_gradient=True``
for a frozen backbone (without it, it fails with no gradient). Prints the
seconds per grid (best of --repeats) and the package's import time.

    pip install grad-cam && python benchmarks/bench_saliency.py
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import torch
    from torch import nn

    from timing import best
    from wdr_pipe.wdr.model.network import ModelConfig, build_model
    from wdr_pipe.wdr.model.saliency import grad_cam

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--labels", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    d, n_labels = 8612, 228
    model = build_model(ModelConfig(parts=("deep", "wide", "recurrent"), label_embeddings="random", deep="fixed"),
                        n_labels, wide_dim=d, wide_mean=np.zeros(d), wide_std=np.ones(d)).eval()
    x, wide = torch.randn(args.images, 3, 224, 224), torch.randn(args.images, d)
    targets = [list(range(i, i + args.labels)) for i in range(args.images)]
    def ours_fn():
        return grad_cam(model, x, wide, targets)

    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", "import pytorch_grad_cam"], capture_output=True)
    import_s = time.perf_counter() - t
    if out.returncode:
        print(f"ours: {best(ours_fn, args.repeats)[0]:.2f} s per grid; grad-cam is not installed")
        return
    base = subprocess.run([sys.executable, "-c", "import torch, cv2, numpy"], capture_output=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, cv2, numpy"], capture_output=True)
    base_s = time.perf_counter() - t
    assert base.returncode == 0
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class FixedWide(nn.Module):
        def __init__(self, wide):
            super().__init__()
            self.model, self.wide = model, wide

        def forward(self, inp):
            return self.model(inp, self.wide)

    rows = [b for b, ts in enumerate(targets) for _ in ts]

    def package():
        with GradCAM(model=FixedWide(wide[rows]), target_layers=[model.backbone.bn2]) as cam:
            cam.compute_input_gradient = True
            return cam(input_tensor=x[rows], targets=[ClassifierOutputTarget(c) for t in targets for c in t])

    ours_t, theirs_t = [], []
    for _ in range(args.repeats):  # interleaved: the machine's load hits both alike
        t, ours = best(ours_fn, 1)
        ours_t.append(t)
        t, theirs = best(package, 1)
        theirs_t.append(t)
    ours_s, theirs_s = min(ours_t), min(theirs_t)
    diff = float(np.abs(ours.reshape(theirs.shape) - theirs).max())
    print(f"{args.images} images x {args.labels} labels at 224 px, lite0 (deep fixed) + wide + recurrent, CPU, "
          f"best of {args.repeats} interleaved")
    print("| Grad-CAM | seconds per grid | max difference of the maps |\n|---|---:|---:|")
    print(f"| ours (hooks, one backward pass) | {ours_s:.2f} | |")
    print(f"| grad-cam {_version()} (wrapped, compute_input_gradient) | {theirs_s:.2f} | {diff:.1e} |")
    print(f"\nimport pytorch_grad_cam in a fresh process: {import_s:.2f} s "
          f"(import torch, cv2, numpy alone: {base_s:.2f} s)")


def _version() -> str:
    from importlib.metadata import version

    return version("grad-cam")


if __name__ == "__main__":
    main()
