"""A small vision transformer built with plain `torch.nn`, against squeeze.

ViT on 1x28x28 images: patch embedding conv 4x4 stride 4 to 49 tokens of d = 32, a class
token, a position embedding, 2 pre-norm encoder blocks (LayerNorm, nn.MultiheadAttention with 4
heads, batch_first; LayerNorm, MLP 32-64-32 with GELU; residual adds), a final LayerNorm and a
linear head on the class token. Random init (fixed seed), class token and position embedding
drawn N(0, 0.5) so they matter. Writes into OUT:

- `vit.safetensors` (the state_dict, as is) and `vit.arch.toml` (squeeze's architecture);
- `vit.logits.safetensors`: N random inputs (`inputs`) and PyTorch's logits (`logits`).

    python3 benches/peers/torch_vit.py --out DIR [--n 64]
"""
import argparse, os
import torch
from torch import nn
from safetensors.torch import save_file

D, HEADS, DEPTH, MLP, CLASSES = 32, 4, 2, 64, 10


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(D)
        self.attn = nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.norm2 = nn.LayerNorm(D)
        self.mlp = nn.Sequential(nn.Linear(D, MLP), nn.GELU(), nn.Linear(MLP, D))

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(1, D, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, D) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, 50, D) * 0.5)
        self.blocks = nn.Sequential(*[Block() for _ in range(DEPTH)])
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, CLASSES)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        x = self.blocks(x)
        return self.head(self.norm(x)[:, 0])


def layer(op, **fields):
    s = f'[[layer]]\nop = "{op}"\n'
    for k, v in fields.items():
        if isinstance(v, str):
            v = f'"{v}"'
        elif isinstance(v, list):
            v = "[" + ", ".join(str(x) for x in v) + "]"
        s += f"{k} = {v}\n"
    return s + "\n"


def arch():
    s = "[input]\nshape = [1, 28, 28]\n\n"
    s += layer("conv2d", name="patch", weight="patch.weight", bias="patch.bias", stride=4)
    s += layer("flatten", start_dim=2)
    s += layer("transpose", dims=[1, 2])
    s += layer("concat", param="cls_token")
    s += layer("add", name="embed", param="pos_embed")
    x = "embed"
    for i in range(DEPTH):
        b = f"blocks.{i}"
        s += layer("layer_norm", name=f"{b}.norm1", weight=f"{b}.norm1.weight", bias=f"{b}.norm1.bias")
        # nn.MultiheadAttention: in_proj (a linear layer), attention, out_proj (a linear layer).
        s += layer("linear", name=f"{b}.attn.in_proj", weight=f"{b}.attn.in_proj_weight", bias=f"{b}.attn.in_proj_bias")
        s += layer("attention", name=f"{b}.attn", heads=HEADS)
        s += layer("linear", name=f"{b}.attn.out_proj", weight=f"{b}.attn.out_proj.weight", bias=f"{b}.attn.out_proj.bias")
        s += layer("add", name=f"{b}.res1", **{"from": x})
        s += layer("layer_norm", name=f"{b}.norm2", weight=f"{b}.norm2.weight", bias=f"{b}.norm2.bias")
        s += layer("linear", weight=f"{b}.mlp.0.weight", bias=f"{b}.mlp.0.bias")
        s += layer("gelu")
        s += layer("linear", weight=f"{b}.mlp.2.weight", bias=f"{b}.mlp.2.bias")
        s += layer("add", name=b, **{"from": f"{b}.res1"})
        x = b
    s += layer("layer_norm", name="norm", weight="norm.weight", bias="norm.bias")
    s += layer("select", dim=1, index=0)
    s += layer("linear", name="head", weight="head.weight", bias="head.bias")
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = ViT().eval()
    x = torch.rand(args.n, 1, 28, 28)
    with torch.no_grad():
        logits = model(x)
    os.makedirs(args.out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(args.out, "vit.safetensors"))
    with open(os.path.join(args.out, "vit.arch.toml"), "w") as f:
        f.write(arch())
    save_file({"inputs": x.contiguous(), "logits": logits.contiguous()},
              os.path.join(args.out, "vit.logits.safetensors"))
    print(f"vit: {sum(p.numel() for p in model.parameters())} parameters, {args.n} inputs")


if __name__ == "__main__":
    main()
