"""squeeze, ONNX Runtime and PyTorch on real convnets for 32x32 inputs, timed in the same run.

Builds with plain `torch.nn` (fixed seed, random init, BatchNorm in eval mode with non-trivial
running statistics):

- `mobilenetv2`: MobileNetV2 with CIFAR strides (stem 3x3 stride 1, the 24-channel stage at
  stride 1: 32 -> 32 -> 16 -> 8 -> 4), torchvision's inverted residuals (1x1 expand unless
  t = 1, 3x3 depthwise, 1x1 project, ReLU6, residual when stride 1 and widths match),
  1x1 conv to 1280, global average pool, linear; 2.2 M parameters;
- `resnet18`: ResNet-18 for CIFAR (3x3 stem stride 1, no max pool, BasicBlocks of 64-512
  channels, 1x1 stride-2 projection shortcuts), global average pool, linear; 11.2 M parameters;

writes for each, into OUT (default: a temporary directory), the state_dict
(`<name>.safetensors`), squeeze's architecture written from the module (`<name>.arch.toml`),
N random inputs labelled with PyTorch's argmax (`<name>.data.safetensors`; inputs whose top two
logits are within 1e-3 are left out) and the ONNX export (`<name>.onnx`); then times

- squeeze: `squeeze bench --repeat 5 --only` with int8 weights, int8 weights + activations
  (calibrated on the set's first samples) and l1 90 % unstructured besides dense f32
  (single-sample latency on one thread, the median of at least 200 runs; the set on all
  threads, chunks of samples);
  its dense top-1 against PyTorch's argmax is the agreement;
- ONNX Runtime (CPU provider, all graph optimizations): one sample on 1 thread, the set in
  batches of BATCH on 2 threads;
- PyTorch (eval, no_grad): the same, 1 thread and 2 threads.

Single-sample figures are medians over at least ROUNDS runs after warm-up; set figures are the
median of 5 passes after one untimed. Prints a table. Skips (exit 0) when torch is absent.

    pip install torch onnx onnxruntime safetensors numpy
    python3 benches/peers/torch_convnets.py [--squeeze target/release/squeeze] [--out DIR]
        [--n 256] [--batch 64] [--models mobilenetv2,resnet18] [--no-compressed]
"""
import argparse, json, os, subprocess, sys, tempfile, time, warnings

try:
    import torch
    from torch import nn
    from safetensors.torch import save_file
except ImportError as e:
    print(f"torch_convnets: skipped, {e.name} is not installed (pip install torch safetensors)")
    sys.exit(0)

import numpy as np

CLASSES = 10
SHAPE = (3, 32, 32)


def bn(c):
    """A BatchNorm2d in eval mode with running statistics and affine parameters far from 0/1."""
    b = nn.BatchNorm2d(c)
    with torch.no_grad():
        b.weight.uniform_(0.5, 1.5)
        b.bias.uniform_(-0.2, 0.2)
        b.running_mean.uniform_(-0.2, 0.2)
        b.running_var.uniform_(0.5, 2.0)
    return b


class Toml:
    """squeeze's architecture TOML, layer by layer; `last` names the latest layer."""

    def __init__(self):
        self.s = f"[input]\nshape = {list(SHAPE)}\n\n"
        self.last = None

    def layer(self, op, name, **kw):
        self.s += f'[[layer]]\nop = "{op}"\nname = "{name}"\n'
        for k, v in kw.items():
            if v is not None:
                self.s += f"{k} = {json.dumps(v)}\n"
        self.last = name
        return name

    def conv(self, name, prefix, conv, input=None):
        return self.layer("conv2d", name, weight=f"{prefix}.weight",
                          bias=f"{prefix}.bias" if conv.bias is not None else None,
                          stride=conv.stride[0] if conv.stride[0] != 1 else None,
                          padding=conv.padding[0] if conv.padding[0] else None,
                          groups=conv.groups if conv.groups != 1 else None, input=input)

    def bn(self, name, prefix):
        return self.layer("batchnorm", name, weight=f"{prefix}.weight", bias=f"{prefix}.bias",
                          running_mean=f"{prefix}.running_mean",
                          running_var=f"{prefix}.running_var")


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        layers = []
        if t != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), bn(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                   bn(hidden), nn.ReLU6(), nn.Conv2d(hidden, cout, 1, bias=False), bn(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.residual else y

    def toml(self, t, p):
        block_input = t.last
        mods = list(self.conv)
        for i, m in enumerate(mods):
            name = f"{p}.conv.{i}"
            if isinstance(m, nn.Conv2d):
                t.conv(name, name, m)
            elif isinstance(m, nn.BatchNorm2d):
                t.bn(name, name)
            else:
                t.layer("relu6", name)
        if self.residual:
            t.layer("add", f"{p}.add", **{"from": block_input})


class MobileNetV2(nn.Module):
    # (expansion t, channels c, blocks n, stride s); CIFAR: the second stage at stride 1.
    CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), bn(32), nn.ReLU6())
        blocks, cin = [], 32
        for t, c, n, s in self.CFG:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(cin, 1280, 1, bias=False), bn(1280), nn.ReLU6())
        self.fc = nn.Linear(1280, CLASSES)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    def toml(self):
        t = Toml()
        t.conv("stem.0", "stem.0", self.stem[0])
        t.bn("stem.1", "stem.1")
        t.layer("relu6", "stem.2")
        for i, b in enumerate(self.blocks):
            b.toml(t, f"blocks.{i}")
        t.conv("head.0", "head.0", self.head[0])
        t.bn("head.1", "head.1")
        t.layer("relu6", "head.2")
        t.layer("global_avgpool", "pool")
        t.layer("linear", "fc", weight="fc.weight", bias="fc.bias")
        return t.s


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = bn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = bn(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), bn(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        s = x if self.downsample is None else self.downsample(x)
        return torch.relu(y + s)

    def toml(self, t, p):
        block_input = t.last
        t.conv(f"{p}.conv1", f"{p}.conv1", self.conv1)
        t.bn(f"{p}.bn1", f"{p}.bn1")
        t.layer("relu", f"{p}.relu1")
        t.conv(f"{p}.conv2", f"{p}.conv2", self.conv2)
        t.bn(f"{p}.bn2", f"{p}.bn2")
        if self.downsample is not None:
            t.conv(f"{p}.down", f"{p}.downsample.0", self.downsample[0], input=block_input)
            t.bn(f"{p}.down.bn", f"{p}.downsample.1")
            t.layer("add", f"{p}.add", inputs=[f"{p}.bn2", f"{p}.down.bn"])
        else:
            t.layer("add", f"{p}.add", **{"from": block_input})
        t.layer("relu", f"{p}.relu")


class ResNet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = bn(64)
        blocks, cin = [], 64
        for c, s in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            blocks += [BasicBlock(cin, c, s), BasicBlock(c, c, 1)]
            cin = c
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, CLASSES)

    def forward(self, x):
        x = self.blocks(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    def toml(self):
        t = Toml()
        t.conv("conv1", "conv1", self.conv1)
        t.bn("bn1", "bn1")
        t.layer("relu", "stem")
        for i, b in enumerate(self.blocks):
            b.toml(t, f"blocks.{i}")
        t.layer("global_avgpool", "pool")
        t.layer("linear", "fc", weight="fc.weight", bias="fc.bias")
        return t.s


MODELS = {"mobilenetv2": MobileNetV2, "resnet18": ResNet18}
RECIPES = {"int8 weights": "[default]\nbits = 8\n",
           "int8 w+a": "[default]\nbits = 8\n\n[activations]\nbits = 8\n",
           "l1 90 %": "[default]\nprune = \"l1\"\nsparsity = 0.9\n"}


def single(f, rounds, min_s=1.0):
    """Median and min single-call time (ms) of `f`: at least `rounds` calls and `min_s` seconds."""
    for _ in range(5):
        f()
    lat, t0 = [], time.perf_counter()
    while len(lat) < rounds or time.perf_counter() - t0 < min_s:
        t = time.perf_counter()
        f()
        lat.append(time.perf_counter() - t)
    return 1e3 * float(np.median(lat)), 1e3 * min(lat)


def set_time(f, passes=5):
    """Median wall time (ms) of `passes` calls of `f`, after one untimed."""
    f()
    times = []
    for _ in range(passes):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def export_onnx(m, path):
    x = torch.randn(1, *SHAPE)
    kw = dict(input_names=["x"], output_names=["y"], opset_version=17,
              dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(m, (x,), path, dynamo=False, **kw)
    except Exception:  # the TorchScript exporter gone: the dynamo one
        kw.pop("dynamic_axes")
        torch.onnx.export(m, (x,), path, dynamo=True, external_data=False,
                          dynamic_shapes={"x": {0: torch.export.Dim("n")}}, **kw)


def ort_times(path, xs, batch, rounds):
    import onnxruntime as ort

    def sess(threads):
        o = ort.SessionOptions()
        o.intra_op_num_threads = threads
        o.inter_op_num_threads = 1
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])

    s1, s2 = sess(1), sess(2)
    one = xs[:1]
    lat = single(lambda: s1.run(None, {"x": one}), rounds)
    full = set_time(lambda: [s2.run(None, {"x": xs[i:i + batch]})
                             for i in range(0, len(xs), batch)])
    y = np.concatenate([s2.run(None, {"x": xs[i:i + batch]})[0]
                        for i in range(0, len(xs), batch)])
    return lat, full, y, ort.__version__


def torch_times(m, xs, batch, rounds):
    x = torch.from_numpy(xs)
    with torch.no_grad():
        torch.set_num_threads(1)
        one = x[:1]
        lat = single(lambda: m(one), rounds)
        torch.set_num_threads(2)
        full = set_time(lambda: [m(x[i:i + batch]) for i in range(0, len(x), batch)])
    torch.set_num_threads(1)
    return lat, full


def squeeze_bench(squeeze, base, compressed, out):
    cmd = [squeeze, "bench", "--model", base + ".safetensors", "--data",
           base + ".data.safetensors", "--repeat", "5", "--only", "--quiet", "--format", "json"]
    if compressed:
        for i, text in enumerate(RECIPES.values()):
            p = os.path.join(out, f"recipe{i}.toml")
            with open(p, "w") as f:
                f.write(text)
            cmd += ["--recipe", p]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"squeeze bench failed: {r.stderr.strip()}", file=sys.stderr)
        return None
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--squeeze", default="target/release/squeeze")
    ap.add_argument("--out", help="directory for the files (default: a temporary one)")
    ap.add_argument("--n", type=int, default=256, help="random inputs per model")
    ap.add_argument("--batch", type=int, default=64, help="peers' batch size for the set")
    ap.add_argument("--rounds", type=int, default=50, help="least single-sample runs")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--no-compressed", action="store_true",
                    help="squeeze's dense f32 only (no int8 / l1 90 %% rows)")
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="torch_convnets_")
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    lines, bad = [], False
    for name in a.models.split(","):
        torch.manual_seed(0)
        m = MODELS[name]().eval()
        with torch.no_grad():
            m.fc.weight.mul_(4.0)   # logits of a few units rather than tenths: fewer near-ties
        base = os.path.join(out, name)
        save_file({k: v.contiguous() for k, v in m.state_dict().items()
                   if not k.endswith("num_batches_tracked")}, base + ".safetensors")
        with open(base + ".arch.toml", "w") as f:
            f.write(m.toml())
        x = torch.randn(a.n, *SHAPE)
        with torch.no_grad():
            logits = m(x)
        top2 = logits.topk(2, 1).values
        clear = (top2[:, 0] - top2[:, 1]) > 1e-3
        xs = x[clear].contiguous()
        save_file({"inputs": xs, "labels": logits[clear].argmax(1)}, base + ".data.safetensors")
        export_onnx(m, base + ".onnx")
        xs_np = xs.numpy()
        params = sum(v.numel() for v in m.parameters())
        print(f"{name}: {params / 1e6:.1f} M parameters, {len(xs)} samples "
              f"({a.n - len(xs)} near-ties left out), files in {out}", file=sys.stderr)

        rows = squeeze_bench(a.squeeze, base, not a.no_compressed, out)
        o_lat, o_full, o_y, o_ver = ort_times(base + ".onnx", xs_np, a.batch, a.rounds)
        t_lat, t_full = torch_times(m, xs_np, a.batch, a.rounds)
        o_agree = float((o_y.argmax(1) == logits[clear].argmax(1).numpy()).mean())
        n = len(xs)
        lines.append((name, f"ONNX Runtime {o_ver} f32", o_lat, 1e3 * n / o_full, o_agree))
        lines.append((name, f"PyTorch {torch.__version__.split('+')[0]} f32", t_lat,
                      1e3 * n / t_full, 1.0))
        if rows is None:
            bad = True
            continue
        names = ["dense f32"] + list(RECIPES)
        for i, r in enumerate(rows):
            agree = r["accuracy"] if i == 0 else None
            lines.append((name, f"squeeze {names[i]}", (r["latency_us"] / 1e3, None),
                          1e3 * r["samples"] / r["full_set_ms"], agree))
            if agree is not None and agree < 0.99:
                bad = True
    print(f"{'model':12} {'engine':28} {'1 sample, 1 thread':>22} {'set/s, 2 threads':>17} "
          f"{'top-1 vs PyTorch':>17}")
    for name, eng, (med, lo), rate, agree in lines:
        one = f"{med:.2f} ms" + (f" (min {lo:.2f})" if lo is not None else "")
        ag = "-" if agree is None else f"{100 * agree:.2f} %"
        print(f"{name:12} {eng:28} {one:>22} {rate:>17.0f} {ag:>17}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
