"""squeeze's magnitude pruning against `torch.nn.utils.prune` on convnets with BatchNorm.

For MobileNetV2 and ResNet-18 of `torch_convnets.py` (random init, BatchNorm in eval mode with
non-trivial statistics), PyTorch prunes every Conv2d and Linear with `prune.l1_unstructured`
(amount AMOUNT) and squeeze runs `squeeze apply --prune l1 --sparsity AMOUNT --dense-out` on the
same state_dict, once with the default ranking (the layers' own weights, PyTorch's semantics)
and once with `--rank folded` (the weights with each BatchNorm folded in). For each it reports

- mask agreement: the share of weights pruned or kept alike, and the layers whose masks are
  identical (squeeze's mask read from its dense file: exactly zero where pruned);
- whether the dense file loads strictly into the original module (`load_state_dict(strict=True)`);
- PyTorch on that file against PyTorch's own pruned module: max |Δ logits| and top-1 agreement
  on N random inputs;
- `squeeze eval` of the packed file on the same inputs labelled with the pruned module's argmax
  (inputs whose top two logits are within 1e-3 left out).

Exits 1 when the default ranking does not reproduce PyTorch's masks on every layer. Skips
(exit 0) when torch is absent.

    python3 benches/peers/torch_bn_prune.py [--squeeze target/release/squeeze] [--out DIR]
        [--amount 0.5] [--n 256] [--models mobilenetv2,resnet18]
"""
import argparse, copy, json, os, subprocess, sys, tempfile

try:
    import torch
    from torch import nn
    from torch.nn.utils import prune
    from safetensors.torch import save_file, load_file
except ImportError as e:
    print(f"torch_bn_prune: skipped, {e.name} is not installed (pip install torch safetensors)")
    sys.exit(0)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_convnets import MODELS, SHAPE  # noqa: E402


def torch_pruned(m, amount):
    """A copy of `m` with every Conv2d and Linear pruned by l1_unstructured; its masks by name."""
    p = copy.deepcopy(m)
    masks = {}
    for name, mod in p.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            prune.l1_unstructured(mod, "weight", amount=amount)
            masks[name + ".weight"] = mod.weight_mask.bool()
            prune.remove(mod, "weight")
    return p.eval(), masks


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


def compare(a, m, base, tag, flags, want_masks, x, want_logits):
    """squeeze apply with `flags`; the row of figures against PyTorch's pruned module."""
    packed, dense = f"{base}.{tag}.safetensors", f"{base}.{tag}.dense.safetensors"
    run([a.squeeze, "apply", "--model", base + ".safetensors", "--prune", "l1",
         "--sparsity", str(a.amount), *flags, "--out", packed, "--dense-out", dense])
    tensors = load_file(dense)
    same = total = layers_same = 0
    for name, want in want_masks.items():
        got = tensors[name] != 0
        eq = int((got == want).sum())
        same, total = same + eq, total + want.numel()
        layers_same += eq == want.numel()
    back = copy.deepcopy(m)
    try:
        back.load_state_dict(tensors, strict=True)
        strict = "yes"
    except RuntimeError as e:
        strict = f"no ({str(e).splitlines()[0][:60]})"
    with torch.no_grad():
        logits = back(x)
    diff = float((logits - want_logits).abs().max())
    top1 = float((logits.argmax(1) == want_logits.argmax(1)).float().mean())
    top2 = want_logits.topk(2, 1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3
    data = f"{base}.{tag}.data.safetensors"
    save_file({"inputs": x[clear].contiguous(), "labels": want_logits[clear].argmax(1)}, data)
    acc = json.loads(run([a.squeeze, "eval", "--model", packed, "--data", data, "--no-timing",
                          "--format", "json"]))["accuracy"]
    return {"masks": 100.0 * same / total, "layers": f"{layers_same}/{len(want_masks)}",
            "strict": strict, "diff": diff, "top1": 100.0 * top1, "eval": 100.0 * acc,
            "samples": int(clear.sum())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--squeeze", default="target/release/squeeze")
    ap.add_argument("--out", help="directory for the files (default: a temporary one)")
    ap.add_argument("--amount", type=float, default=0.5)
    ap.add_argument("--n", type=int, default=256, help="random inputs per model")
    ap.add_argument("--models", default=",".join(MODELS))
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="torch_bn_prune_")
    os.makedirs(out, exist_ok=True)
    rows, bad = [], False
    for name in a.models.split(","):
        torch.manual_seed(0)
        m = MODELS[name]().eval()
        base = os.path.join(out, name)
        save_file({k: v.contiguous() for k, v in m.state_dict().items()
                   if not k.endswith("num_batches_tracked")}, base + ".safetensors")
        with open(base + ".arch.toml", "w") as f:
            f.write(m.toml())
        pruned, masks = torch_pruned(m, a.amount)
        x = torch.randn(a.n, *SHAPE)
        with torch.no_grad():
            want = pruned(x)
        for tag, flags in (("weights", []), ("folded", ["--rank", "folded"])):
            r = compare(a, m, base, tag, flags, masks, x, want)
            rows.append((name, tag, r))
            bad |= tag == "weights" and r["layers"] != f"{len(masks)}/{len(masks)}"
    print(f"l1_unstructured {a.amount:.0%} on every Conv2d and Linear; files in {out}")
    print(f"{'model':12} {'rank':8} {'mask agreement':>15} {'same layers':>12} "
          f"{'strict load':>12} {'max |Δ logits|':>15} {'top-1 (torch)':>14} {'squeeze eval':>13}")
    for name, tag, r in rows:
        print(f"{name:12} {tag:8} {r['masks']:>14.2f}% {r['layers']:>12} {r['strict']:>12} "
              f"{r['diff']:>15.2e} {r['top1']:>13.2f}% {r['eval']:>12.2f}%")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
