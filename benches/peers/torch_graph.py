"""squeeze's graph architectures against real PyTorch modules.

Builds three small networks with plain `torch.nn` (random init, fixed seed, BatchNorm in eval
mode with non-trivial running statistics):

- `resnet`: a stem, a BasicBlock with a projection shortcut (1x1 stride-2 conv + BN) and one
  with an identity shortcut (`from`), global average pool, linear;
- `se`: two squeeze-and-excite blocks, torchvision-style (avgpool to [C,1,1], 1x1 convs,
  hardsigmoid) and SENet-style (global average pool to [C], linears, sigmoid, the gate first
  in `mul`);
- `concat`: Inception-style branches (1x1; 3x3; maxpool + 1x1) joined by `concat`, a
  DenseNet-style concat of a block's input with its output, and a branch reading a conv's
  output before its BatchNorm (so that BN is not folded);
- `densenet`: pre-activation dense layers (BatchNorm on a concat), the model input in a concat,
  avg_pool2d(3, 1, 1) counting the padding, a vector added per channel, a concat of vectors;

and writes, for each, into OUT (default: a temporary directory):

- `<name>.safetensors` (the state_dict) and `<name>.arch.toml` (squeeze's architecture, by hand),
- `<name>.data.safetensors`: N random inputs (`inputs`, f32) and PyTorch's argmax (`labels`),
- `<name>.logits.safetensors`: PyTorch's logits (`logits`, [N, 10]) and the inputs (`inputs`),

then runs `squeeze eval` on each: its accuracy against PyTorch's argmax is the top-1 agreement.
Going back: the ResNet compressed to int8 by `squeeze apply --dense-out` (written as the
original module: each conv's own weights and its BatchNorm's tensors), the dense file loaded
strictly into the same ResNet, PyTorch's argmax on it against `squeeze eval` of the packed file
(`resnet.int8.logits.safetensors`: PyTorch's logits on the dense file).
Samples whose top two PyTorch logits are within 1e-3 are left out (a tie either way is
agreement). Prints a table; exits 1 when any model disagrees on any sample.

    pip install torch safetensors numpy
    python3 benches/peers/torch_graph.py [--squeeze target/release/squeeze] [--out DIR] [--n 256]
"""
import argparse, json, os, subprocess, sys, tempfile
import torch
from torch import nn
from safetensors.torch import save_file

CLASSES = 10
SHAPE = (3, 16, 16)


def bn(c, kind=nn.BatchNorm2d):
    """A BatchNorm (2-D unless `kind` says) in eval mode with running statistics and affine
    parameters far from 0/1."""
    b = kind(c)
    with torch.no_grad():
        b.weight.uniform_(0.5, 1.5)
        b.bias.uniform_(-0.5, 0.5)
        b.running_mean.uniform_(-0.5, 0.5)
        b.running_var.uniform_(0.5, 2.0)
    return b


def conv_toml(name, prefix, stride=1, padding=0, bias=False, input=None):
    s = f'[[layer]]\nop = "conv2d"\nname = "{name}"\nweight = "{prefix}.weight"\n'
    if bias:
        s += f'bias = "{prefix}.bias"\n'
    if stride != 1:
        s += f"stride = {stride}\n"
    if padding:
        s += f"padding = {padding}\n"
    if input:
        s += f'input = "{input}"\n'
    return s


def bn_toml(name, prefix):
    return (f'[[layer]]\nop = "batchnorm"\nname = "{name}"\nweight = "{prefix}.weight"\n'
            f'bias = "{prefix}.bias"\nrunning_mean = "{prefix}.running_mean"\n'
            f'running_var = "{prefix}.running_var"\n')


def op_toml(op, name=None, **kw):
    s = f'[[layer]]\nop = "{op}"\n'
    if name:
        s += f'name = "{name}"\n'
    for k, v in kw.items():
        s += f"{k} = {json.dumps(v)}\n"
    return s


def linear_toml(name, prefix):
    return (f'[[layer]]\nop = "linear"\nname = "{name}"\nweight = "{prefix}.weight"\n'
            f'bias = "{prefix}.bias"\n')


def input_toml():
    return f"[input]\nshape = {list(SHAPE)}\n\n"


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


def block_toml(p, block_input, downsample):
    s = conv_toml(f"{p}.conv1", f"{p}.conv1", stride=2 if downsample else 1, padding=1,
                  input=block_input)
    s += bn_toml(f"{p}.bn1", f"{p}.bn1") + op_toml("relu")
    s += conv_toml(f"{p}.conv2", f"{p}.conv2", padding=1) + bn_toml(f"{p}.bn2", f"{p}.bn2")
    if downsample:
        s += conv_toml(f"{p}.down", f"{p}.downsample.0", stride=2, input=block_input)
        s += bn_toml(f"{p}.down.bn", f"{p}.downsample.1")
        s += op_toml("add", f"{p}.add", inputs=[f"{p}.bn2", f"{p}.down.bn"])
    else:
        s += op_toml("add", f"{p}.add", **{"from": block_input})
    return s + op_toml("relu", f"{p}.relu")


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = bn(8)
        self.layer1 = BasicBlock(8, 16, 2)
        self.layer2 = BasicBlock(16, 16, 1)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    @staticmethod
    def toml():
        s = input_toml() + conv_toml("conv1", "conv1", padding=1) + bn_toml("bn1", "bn1")
        s += op_toml("relu", "stem")
        s += block_toml("layer1", "stem", True) + block_toml("layer2", "layer1.relu", False)
        return s + op_toml("global_avgpool") + linear_toml("fc", "fc")


class SE(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, 2, 1)
        self.bn1 = bn(12)
        # torchvision.ops.SqueezeExcitation with MobileNetV3's hardsigmoid
        self.se1_fc1 = nn.Conv2d(12, 4, 1)
        self.se1_fc2 = nn.Conv2d(4, 12, 1)
        self.conv2 = nn.Conv2d(12, 16, 3, 1, 1, bias=False)
        self.bn2 = bn(16)
        # SENet's: global pool to a vector, linears, sigmoid
        self.se2_fc1 = nn.Linear(16, 4)
        self.se2_fc2 = nn.Linear(4, 16)
        self.fc = nn.Linear(16 * 8 * 8, CLASSES)

    def forward(self, x):
        x = nn.functional.hardswish(self.bn1(self.conv1(x)))              # [12, 8, 8]
        g = nn.functional.adaptive_avg_pool2d(x, 1)                        # [12, 1, 1]
        g = nn.functional.hardsigmoid(self.se1_fc2(torch.relu(self.se1_fc1(g))))
        x = x * g
        x = torch.relu(self.bn2(self.conv2(x)))                            # [16, 8, 8]
        v = x.mean((2, 3))                                                 # [16]
        v = torch.sigmoid(self.se2_fc2(torch.relu(self.se2_fc1(v))))
        x = v[:, :, None, None] * x
        return self.fc(torch.flatten(x, 1))

    @staticmethod
    def toml():
        s = input_toml() + conv_toml("conv1", "conv1", stride=2, padding=1, bias=True)
        s += bn_toml("bn1", "bn1") + op_toml("hardswish", "act1")
        s += op_toml("avgpool2d", "se1.pool", kernel=8)
        s += conv_toml("se1.fc1", "se1_fc1", bias=True) + op_toml("relu")
        s += conv_toml("se1.fc2", "se1_fc2", bias=True) + op_toml("hardsigmoid", "se1.gate")
        s += op_toml("mul", "se1.scale", inputs=["act1", "se1.gate"])
        s += conv_toml("conv2", "conv2", padding=1) + bn_toml("bn2", "bn2")
        s += op_toml("relu", "act2") + op_toml("global_avgpool")
        s += linear_toml("se2.fc1", "se2_fc1") + op_toml("relu")
        s += linear_toml("se2.fc2", "se2_fc2") + op_toml("sigmoid", "se2.gate")
        s += op_toml("mul", "se2.scale", inputs=["se2.gate", "act2"])
        return s + op_toml("flatten") + linear_toml("fc", "fc")


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.stem_bn = bn(8)
        self.raw = nn.Conv2d(8, 2, 1)            # reads the stem conv's output, before its BN
        self.b1 = nn.Conv2d(8, 4, 1)
        self.b2_reduce = nn.Conv2d(8, 4, 1)
        self.b2 = nn.Conv2d(4, 6, 3, 1, 1, bias=False)
        self.b2_bn = bn(6)
        self.b3 = nn.Conv2d(8, 3, 1)
        self.dense = nn.Conv2d(15, 5, 3, 1, 1, bias=False)
        self.dense_bn = bn(5)
        self.fc = nn.Linear(20, CLASSES)

    def forward(self, x):
        s = self.stem(x)
        x = torch.relu(self.stem_bn(s))
        r = self.raw(s)
        b1 = torch.relu(self.b1(x))
        b2 = torch.relu(self.b2_bn(self.b2(torch.relu(self.b2_reduce(x)))))
        b3 = torch.relu(self.b3(nn.functional.max_pool2d(x, 3, 1, 1)))
        inc = torch.cat([b1, b2, b3, r], 1)                               # [15, 16, 16]
        d = torch.relu(self.dense_bn(self.dense(inc)))                     # [5, 16, 16]
        y = torch.cat([inc, d], 1)                                         # [20, 16, 16]
        y = nn.functional.avg_pool2d(y, 2)                                 # [20, 8, 8]
        return self.fc(y.mean((2, 3)))

    @staticmethod
    def toml():
        s = input_toml() + conv_toml("stem", "stem", padding=1, bias=True)
        s += bn_toml("stem_bn", "stem_bn") + op_toml("relu", "x0")
        s += conv_toml("raw", "raw", bias=True, input="stem")
        s += conv_toml("b1", "b1", bias=True, input="x0") + op_toml("relu", "b1.relu")
        s += conv_toml("b2_reduce", "b2_reduce", bias=True, input="x0") + op_toml("relu")
        s += conv_toml("b2", "b2", padding=1) + bn_toml("b2_bn", "b2_bn")
        s += op_toml("relu", "b2.relu")
        s += op_toml("maxpool2d", "b3.pool", input="x0", kernel=3, stride=1, padding=1)
        s += conv_toml("b3", "b3", bias=True) + op_toml("relu", "b3.relu")
        s += op_toml("concat", "inception", inputs=["b1.relu", "b2.relu", "b3.relu", "raw"])
        s += conv_toml("dense", "dense", padding=1) + bn_toml("dense_bn", "dense_bn")
        s += op_toml("relu", "dense.relu")
        s += op_toml("concat", "densecat", inputs=["inception", "dense.relu"])
        s += op_toml("avgpool2d", kernel=2) + op_toml("global_avgpool")
        return s + linear_toml("fc", "fc")


class DenseNet(nn.Module):
    """Pre-activation dense layers (BatchNorm on a concat, not after a conv), the model input
    in a concat, an Inception pool branch (avg_pool2d 3/1/1, padding counted), a per-channel
    `add` of a vector, a concat of vectors."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 6, 3, 1, 1, bias=False)
        self.d1_bn = bn(9)
        self.d1_conv = nn.Conv2d(9, 4, 3, 1, 1, bias=False)
        self.d2_bn = bn(13)
        self.d2_conv = nn.Conv2d(13, 4, 1, bias=False)
        self.t_bn = bn(17)
        self.t_conv = nn.Conv2d(17, 8, 1, bias=False)
        self.shift = nn.Linear(8, 8)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x):
        y = torch.cat([self.conv0(x), x], 1)                                        # [9]
        y = torch.cat([y, self.d1_conv(torch.relu(self.d1_bn(y)))], 1)              # [13]
        y = torch.cat([y, self.d2_conv(torch.relu(self.d2_bn(y)))], 1)              # [17]
        y = self.t_conv(torch.relu(self.t_bn(y)))
        y = nn.functional.avg_pool2d(y, 3, 1, 1)                                   # [8, 16, 16]
        v = y.mean((2, 3))
        y = y + self.shift(v)[:, :, None, None]
        return self.fc(torch.cat([y.mean((2, 3)), v], 1))

    @staticmethod
    def toml():
        s = input_toml() + conv_toml("conv0", "conv0", padding=1)
        s += op_toml("concat", "c0", inputs=["conv0", "input"])
        s += bn_toml("d1.bn", "d1_bn") + op_toml("relu")
        s += conv_toml("d1.conv", "d1_conv", padding=1)
        s += op_toml("concat", "c1", inputs=["c0", "d1.conv"])
        s += bn_toml("d2.bn", "d2_bn") + op_toml("relu")
        s += conv_toml("d2.conv", "d2_conv")
        s += op_toml("concat", "c2", inputs=["c1", "d2.conv"])
        s += bn_toml("t.bn", "t_bn") + op_toml("relu") + conv_toml("t.conv", "t_conv")
        s += op_toml("avgpool2d", "pool", kernel=3, stride=1, padding=1)
        s += op_toml("global_avgpool", "v") + linear_toml("shift", "shift")
        s += op_toml("add", "shifted", inputs=["pool", "shift"])
        s += op_toml("global_avgpool", "u")
        s += op_toml("concat", "feats", inputs=["u", "v"])
        return s + linear_toml("fc", "fc")


def round_trip(squeeze, out):
    """int8 ResNet: `squeeze apply --dense-out` loaded into the original PyTorch module (strict)
    and PyTorch's argmax on it against `squeeze eval` of the packed file."""
    from safetensors.torch import load_file
    base = os.path.join(out, "resnet")
    with open(base + ".int8.toml", "w") as f:
        f.write("[default]\nbits = 8\n")
    r = subprocess.run([squeeze, "apply", "--model", base + ".safetensors", "--recipe",
                        base + ".int8.toml", "--out", base + ".int8.safetensors",
                        "--dense-out", base + ".int8.dense.safetensors"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"resnet int8: squeeze apply failed: {r.stderr.strip()}", file=sys.stderr)
        return None, 0, 0
    m = ResNet().eval()
    m.load_state_dict(load_file(base + ".int8.dense.safetensors"), strict=True)
    x = load_file(base + ".logits.safetensors")["inputs"]
    with torch.no_grad():
        logits = m(x)
    save_file({"inputs": x.contiguous(), "logits": logits.contiguous()},
              base + ".int8.logits.safetensors")
    top2 = logits.topk(2, 1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3
    save_file({"inputs": x[clear].contiguous(), "labels": logits[clear].argmax(1)},
              base + ".int8.data.safetensors")
    r = subprocess.run([squeeze, "eval", "--model", base + ".int8.safetensors", "--data",
                        base + ".int8.data.safetensors", "--no-timing", "--format", "json"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"resnet int8: squeeze eval failed: {r.stderr.strip()}", file=sys.stderr)
        return None, int(clear.sum()), len(x) - int(clear.sum())
    return json.loads(r.stdout)["accuracy"], int(clear.sum()), len(x) - int(clear.sum())


MODELS = {"resnet": ResNet, "se": SE, "concat": Concat, "densenet": DenseNet}


def fmt(acc):
    return "-" if not acc or acc[0] is None else f"{100 * acc[0]:.2f} %"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--squeeze", default="target/release/squeeze")
    ap.add_argument("--out", help="directory for the files (default: a temporary one)")
    ap.add_argument("--n", type=int, default=256, help="random inputs per model")
    ap.add_argument("--no-eval", action="store_true", help="only write the files")
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="torch_graph_")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rows, bad = [], False
    for name, cls in MODELS.items():
        m = cls().eval()
        with torch.no_grad():
            m.fc.weight.mul_(8.0)   # logits of a few units rather than tenths: fewer near-ties
        base = os.path.join(out, name)
        save_file({k: v.contiguous() for k, v in m.state_dict().items()
                   if not k.endswith("num_batches_tracked")}, base + ".safetensors")
        with open(base + ".arch.toml", "w") as f:
            f.write(cls.toml())
        x = torch.randn(a.n, *SHAPE)
        with torch.no_grad():
            logits = m(x)
        top2 = logits.topk(2, 1).values
        clear = (top2[:, 0] - top2[:, 1]) > 1e-3
        xs, labels = x[clear].contiguous(), logits[clear].argmax(1)
        save_file({"inputs": xs, "labels": labels}, base + ".data.safetensors")
        save_file({"inputs": x.contiguous(), "logits": logits.contiguous()},
                  base + ".logits.safetensors")
        params = sum(v.numel() for v in m.parameters())
        row = [name, params, int(clear.sum()), a.n - int(clear.sum())]
        if not a.no_eval:
            r = subprocess.run([a.squeeze, "eval", "--model", base + ".safetensors", "--data",
                                base + ".data.safetensors", "--no-timing", "--format", "json"],
                               capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{name}: squeeze eval failed: {r.stderr.strip()}", file=sys.stderr)
                bad = True
                row.append(None)
            else:
                acc = json.loads(r.stdout)["accuracy"]
                bad |= acc < 1.0
                row.append(acc)
        rows.append(row)
    trip = None
    if not a.no_eval:
        trip = round_trip(a.squeeze, out)
        bad |= trip[0] is None or trip[0] < 1.0
    print(f"files in {out}")
    print(f"{'model':8} {'params':>7} {'samples':>8} {'ties':>5} {'top-1 agreement':>16}")
    for name, params, n, ties, *acc in rows:
        print(f"{name:8} {params:>7} {n:>8} {ties:>5} {fmt(acc):>16}")
    if trip:
        print(f"resnet int8, `apply --dense-out` loaded (strict) into the original torch "
              f"module: top-1 agreement {fmt(trip[:1])} on {trip[1]} samples ({trip[2]} ties)")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
