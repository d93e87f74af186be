"""PyTorch on the bundled models, for comparing with `squeeze bench` in the same run.

The issue's PyTorch workloads, on the same weights and input scaling as squeeze:
- LeNet-300-100 and LeNet-5 in f32: the 10,000 test images in batches of 1,000 on 2 threads,
  and one sample on 1 thread;
- LeNet-300-100 after `torch.ao.quantization.quantize_dynamic` (int8 weights, activations
  quantized per batch), and LeNet-5 after static post-training quantization (FX graph mode,
  x86 backend, calibrated on 512 test images);
- LeNet-300-100's fc1 (300 x 784) pruned by magnitude to 90 % and 95 %, as a CSR tensor
  against the dense one, at batch 1 and 256 (1 thread), the speed-up torch's sparse kernels give.

    pip install torch safetensors numpy
    python3 benches/peers/torch_peers.py [REPEATS]
"""
import gzip, json, sys, time
import numpy as np
import torch
from torch import nn
from safetensors import safe_open
from safetensors.numpy import load_file

REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
torch.backends.quantized.engine = "x86"


def load(path):
    w = load_file(path)
    with safe_open(path, "np") as f:
        arch = json.loads(f.metadata()["squeeze.arch"])
    return w, arch


def images(arch):
    with gzip.open("assets/data/mnist/t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open("assets/data/mnist/t10k-labels-idx1-ubyte.gz", "rb") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    s = arch["input"]
    xs = ((raw.astype(np.float32) * np.float32(s["scale"]) - np.float32(s["mean"][0]))
          / np.float32(s["std"][0])).astype(np.float32)
    return torch.from_numpy(xs), torch.from_numpy(labels.astype(np.int64))


def build(w, arch):
    """The architecture's layer list as an nn.Sequential with the bundled weights."""
    mods = []
    for l in arch["layer"]:
        op = l["op"]
        if op == "flatten":
            mods.append(nn.Flatten())
        elif op == "relu":
            mods.append(nn.ReLU())
        elif op == "maxpool2d":
            mods.append(nn.MaxPool2d(l["kernel"]))
        elif op in ("linear", "conv2d"):
            wt = torch.from_numpy(w[l["weight"]].copy())
            if op == "linear":
                m = nn.Linear(wt.shape[1], wt.shape[0])
            else:
                m = nn.Conv2d(wt.shape[1], wt.shape[0], l["kernel"], l["stride"], l["padding"])
            m.weight.data.copy_(wt)
            m.bias.data.copy_(torch.from_numpy(w[l["bias"]].copy()))
            mods.append(m)
        else:
            raise SystemExit(f"unsupported op {op}")
    return nn.Sequential(*mods).eval()


def time_full(model, xs, labels):
    torch.set_num_threads(2)
    with torch.inference_mode():
        for _ in range(3):
            model(xs[:1000])
        times = []
        for _ in range(REPEATS):
            t = time.perf_counter()
            outs = [model(xs[i:i + 1000]) for i in range(0, 10000, 1000)]
            times.append(time.perf_counter() - t)
    acc = (torch.cat(outs).argmax(1) == labels).float().mean().item()
    return acc, times


def time_one(fn, seconds=2.0):
    torch.set_num_threads(1)
    with torch.inference_mode():
        for _ in range(200):
            fn()
        lat = []
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            t = time.perf_counter()
            fn()
            lat.append(time.perf_counter() - t)
    return lat


def report(name, model, xs, labels, flat):
    acc, times = time_full(model, xs, labels)
    one = xs[:1].reshape(1, -1) if flat else xs[:1]
    lat = time_one(lambda: model(one))
    print(f"torch {torch.__version__} {name}: top-1 {acc:.2%}, 10k set median "
          f"{np.median(times)*1e3:.1f} ms (min {min(times)*1e3:.1f}), single sample median "
          f"{np.median(lat)*1e6:.1f} us (min {min(lat)*1e6:.1f})", flush=True)


w, arch = load("assets/models/lenet-300-100.safetensors")
xs, labels = images(arch)
flat = xs.reshape(-1, 784)
m300 = build(w, arch)
report("LeNet-300-100 f32", m300, flat, labels, True)
q300 = torch.ao.quantization.quantize_dynamic(m300, {nn.Linear}, dtype=torch.qint8)
report("LeNet-300-100 int8 quantize_dynamic", q300, flat, labels, True)
ident = nn.Identity()
report("identity (call floor)", ident, flat, labels, True)

w5, arch5 = load("assets/models/lenet5.safetensors")
m5 = build(w5, arch5)
report("LeNet-5 f32", m5, xs, labels, False)
from torch.ao.quantization import get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
prepared = prepare_fx(m5, get_default_qconfig_mapping("x86"), example_inputs=(xs[:1],))
with torch.inference_mode():
    for i in range(0, 512, 128):
        prepared(xs[i:i + 128])
q5 = convert_fx(prepared)
report("LeNet-5 int8 static PTQ (fx, x86)", q5, xs, labels, False)

# torch's sparse kernels against dense, fc1 at 90 % / 95 % magnitude sparsity, one thread.
fc1 = torch.from_numpy(w["fc1.weight"].copy())
for sparsity in (0.90, 0.95):
    k = round(sparsity * fc1.numel())
    thresh = fc1.abs().flatten().kthvalue(k).values
    pruned = torch.where(fc1.abs() > thresh, fc1, torch.zeros_like(fc1))
    csr = pruned.to_sparse_csr()
    for batch in (1, 256):
        xb = flat[:batch].T.contiguous()
        dense_t = np.median(time_one(lambda: pruned @ xb, 1.0))
        sparse_t = np.median(time_one(lambda: csr @ xb, 1.0))
        print(f"torch fc1 {sparsity:.0%} sparse, batch {batch}: dense {dense_t*1e6:.1f} us, "
              f"CSR {sparse_t*1e6:.1f} us, speed-up {dense_t/sparse_t:.2f}x", flush=True)
