"""`squeeze import` on ONNX files exported by PyTorch, against PyTorch and ONNX Runtime.

Builds networks with plain `torch.nn` (random init, fixed seed, BatchNorm in eval mode with
non-trivial running statistics): the four graphs of `torch_graph.py` (a ResNet with a
projection shortcut, squeeze-and-excite blocks, Inception concats, a DenseNet), a MobileNetV2
and a ResNet-18 for 32x32 inputs, a Conv1d keyword-spotting net, and the small vision
transformer of `torch_vit.py` (`nn.MultiheadAttention`, which the exporters write as
transposes, reshapes, two products and a softmax; its biases and norm parameters drawn at
random here, so a misplaced one shows). Each is exported with
both of PyTorch's ONNX exporters (`torch.onnx.export(dynamo=False)`, which folds BatchNorm into the convs and names
weights `onnx::Conv_N`; and `dynamo=True`, which keeps the state_dict's names and stores the
weights in an external `.onnx.data` file), then imported with `squeeze import` and evaluated
with `squeeze eval` on N random inputs labelled with PyTorch's argmax: its accuracy is the
top-1 agreement. Writes, for each model and exporter, into OUT (default: a temporary directory):

- `<name>.<exporter>.onnx` and `<name>.<exporter>.safetensors` (what `squeeze import` wrote),
- `<name>.data.safetensors`: the inputs (`inputs`) and PyTorch's argmax (`labels`),
- `<name>.logits.safetensors`: the inputs and PyTorch's logits (`logits`).

With onnxruntime installed it also reports ONNX Runtime's largest logit difference from
PyTorch on the same file. Samples whose top two logits are within 1e-3 are left out. Exits 1
when an import fails or a model disagrees on any sample.

    pip install torch onnx onnxscript safetensors numpy [onnxruntime]
    python3 benches/peers/onnx_import.py [--squeeze target/release/squeeze] [--out DIR] [--n 256]
"""
import argparse, json, os, subprocess, sys, tempfile, warnings
import torch
from torch import nn
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_graph  # noqa: E402  (the four graph models)
import torch_convnets  # noqa: E402  (MobileNetV2 and ResNet-18 for 32x32 inputs)
import torch_vit  # noqa: E402  (a small ViT)

def bn1d(c):
    return torch_graph.bn(c, nn.BatchNorm1d)


class ViT(torch_vit.ViT):
    shape = (1, 28, 28)

    def __init__(self):
        super().__init__()
        with torch.no_grad():
            for name, p in self.named_parameters():
                if "bias" in name or "norm" in name:
                    p.add_(torch.randn_like(p) * 0.2)


class KWS(nn.Module):
    """A keyword-spotting convnet on 40 MFCC coefficients x 32 frames: Conv1d + BatchNorm1d +
    ReLU, a depthwise stride-2 Conv1d, a pointwise one, flatten, 12 classes."""
    shape = (40, 32)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(40, 64, 3, 1, 1, bias=False), bn1d(64), nn.ReLU(),
            nn.Conv1d(64, 64, 3, 2, 1, groups=64, bias=False), bn1d(64), nn.ReLU(),
            nn.Conv1d(64, 32, 1, bias=False), bn1d(32), nn.ReLU())
        self.fc = nn.Linear(32 * 16, 12)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


MODELS = dict(torch_graph.MODELS)
MODELS.update({"mobilenetv2": torch_convnets.MobileNetV2, "resnet18": torch_convnets.ResNet18,
               "kws": KWS, "vit": ViT})
SHAPES = {"mobilenetv2": torch_convnets.SHAPE, "resnet18": torch_convnets.SHAPE, "kws": KWS.shape,
          "vit": ViT.shape}


def export(m, x, path, dynamo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = {"dynamo": True, "verbose": False} if dynamo else {"dynamo": False}
        torch.onnx.export(m, (x[:1],), path, input_names=["x"], output_names=["logits"],
                          dynamic_axes=None if dynamo else {"x": {0: "n"}}, **kw)


def ort_diff(path, x, logits):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    got = torch.cat([torch.from_numpy(s.run(None, {name: x[i:i + 1].numpy()})[0])
                     for i in range(len(x))])
    return float((got - logits).abs().max())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--squeeze", default="target/release/squeeze")
    ap.add_argument("--out", help="directory for the files (default: a temporary one)")
    ap.add_argument("--n", type=int, default=256, help="random inputs per model")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="onnx_import_")
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    rows, bad = [], False
    for name in a.models.split(","):
        torch.manual_seed(0)
        m = MODELS[name]().eval()
        with torch.no_grad():
            # Logits of a few units rather than tenths: fewer near-ties.
            (m.head if name == "vit" else m.fc).weight.mul_(8.0)
        shape = SHAPES.get(name, torch_graph.SHAPE)
        base = os.path.join(out, name)
        x = torch.randn(a.n, *shape)
        with torch.no_grad():
            logits = m(x)
        top2 = logits.topk(2, 1).values
        clear = (top2[:, 0] - top2[:, 1]) > 1e-3
        save_file({"inputs": x[clear].contiguous(), "labels": logits[clear].argmax(1)},
                  base + ".data.safetensors")
        save_file({"inputs": x.contiguous(), "logits": logits.contiguous()},
                  base + ".logits.safetensors")
        params = sum(v.numel() for v in m.parameters())
        for exporter in ["legacy", "dynamo"]:
            onnx_path = f"{base}.{exporter}.onnx"
            model = f"{base}.{exporter}.safetensors"
            export(m, x, onnx_path, exporter == "dynamo")
            r = subprocess.run([a.squeeze, "import", onnx_path, "--out", model],
                               capture_output=True, text=True)
            row = [name, exporter, params, int(clear.sum())]
            if r.returncode != 0:
                print(f"{name} ({exporter}): squeeze import failed: {r.stderr.strip()}",
                      file=sys.stderr)
                rows.append(row + [None, None])
                bad = True
                continue
            r = subprocess.run([a.squeeze, "eval", "--model", model, "--data",
                                base + ".data.safetensors", "--no-timing", "--format", "json"],
                               capture_output=True, text=True)
            acc = json.loads(r.stdout)["accuracy"] if r.returncode == 0 else None
            if acc is None:
                print(f"{name} ({exporter}): squeeze eval failed: {r.stderr.strip()}",
                      file=sys.stderr)
            bad |= acc is None or acc < 1.0
            rows.append(row + [acc, ort_diff(onnx_path, x, logits)])
    print(f"files in {out}")
    print(f"{'model':12} {'exporter':8} {'params':>9} {'samples':>8} {'top-1 agreement':>16} "
          f"{'ORT max |Δ| vs torch':>21}")
    for name, exporter, params, n, acc, ort in rows:
        agree = "failed" if acc is None else f"{100 * acc:.2f} %"
        ort = "-" if ort is None else f"{ort:.1e}"
        print(f"{name:12} {exporter:8} {params:>9} {n:>8} {agree:>16} {ort:>21}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
