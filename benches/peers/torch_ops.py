"""PyTorch's outputs for the operations of small real models, as a fixture for tests/ops.rs.

Each case is a `torch.nn` module (random init, fixed seed) run on a fixed random batch; the file
holds, per case, its parameters (`<case>.<state_dict name>`), the batch (`<case>.x`) and
PyTorch's output (`<case>.y`), all f32. Kept small (a few KB) so the test runs without torch.

    python3 benches/peers/torch_ops.py [--out tests/fixtures/torch_ops.safetensors]
"""
import argparse
import torch
from torch import nn
from safetensors.torch import save_file

BATCH = 3


def cases():
    """(name, module, one sample's input shape) for each case."""
    g = torch.Generator().manual_seed(7)

    def ln(d):
        m = nn.LayerNorm(d)
        with torch.no_grad():
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.uniform_(-0.5, 0.5, generator=g)
        return m

    yield "conv1d_a", nn.Conv1d(3, 4, 3, stride=2, padding=1), (3, 11)
    yield "conv1d_b", nn.Conv1d(4, 6, 3, padding=2, dilation=2, groups=2, bias=False), (4, 9)
    yield "ln_vec", ln(6), (6,)
    yield "ln_tok", ln(6), (5, 6)
    yield "ln_plain", nn.LayerNorm(6, elementwise_affine=False, eps=1e-3), (5, 6)
    yield "tok_linear", nn.Linear(6, 4), (5, 6)
    yield "tokens_sel", Tokens(g, "select"), (2, 4, 4)
    yield "tokens_mean", Tokens(g, "mean"), (2, 4, 4)
    yield "mha", SelfAttention(8, 2), (5, 8)
    for name, scale, align, shape in [
        ("up_bl_a", 2, False, (2, 4, 5)),
        ("up_bl_b", 3, True, (2, 4, 5)),
        ("up_bl_c", 3, False, (2, 3, 2)),
        ("up_bl_d", 2, True, (2, 3, 2)),
    ]:
        up = nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=align)
        yield name, nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), up), shape
    yield "text", TinyText(10, 6, 4), (7,)


class TinyText(nn.Module):
    """A tiny text classifier: nn.Embedding, a linear layer per token, the mean over tokens. Its
    input is token ids, held as floats (as squeeze's data sets hold them)."""

    def __init__(self, num, dim, classes):
        super().__init__()
        self.num = num
        self.emb = nn.Embedding(num, dim)
        self.fc = nn.Linear(dim, classes)

    def forward(self, x):
        return self.fc(self.emb(x.long())).mean(dim=1)


class Tokens(nn.Module):
    """A ViT's patch tokens on a small image: conv 2x2 stride 2 (4 channels), flatten(2) (or a
    reshape) and transpose(1, 2) to [4 tokens, 4], a class token first, a position embedding
    added, then token 0 (`select`) or a per-feature scale and the mean over tokens (`mean`)."""

    def __init__(self, g, head):
        super().__init__()
        self.head = head
        self.patch = nn.Conv2d(2, 4, 2, stride=2)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 4, generator=g))
        self.pos_embed = nn.Parameter(torch.randn(1, 5, 4, generator=g))
        self.gamma = nn.Parameter(torch.rand(4, generator=g) + 0.5)

    def forward(self, x):
        x = self.patch(x)
        if self.head == "select":
            x = x.flatten(2)
        else:
            x = x.reshape(x.shape[0], 4, 4)
        x = x.transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        if self.head == "select":
            return x[:, 0]
        return (x * self.gamma).mean(dim=1)


class SelfAttention(nn.Module):
    """nn.MultiheadAttention(batch_first=True) on (x, x, x)."""

    def __init__(self, d, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/torch_ops.safetensors")
    args = ap.parse_args()
    torch.manual_seed(0)
    out = {}
    for name, module, shape in cases():
        module.eval()
        if isinstance(module, TinyText):
            x = torch.randint(0, module.num, (BATCH, *shape)).float()
        else:
            x = torch.randn(BATCH, *shape) * 2
        with torch.no_grad():
            y = module(x)
        for k, v in module.state_dict().items():
            out[f"{name}.{k}"] = v.detach().float().contiguous()
        out[f"{name}.x"] = x.contiguous()
        out[f"{name}.y"] = y.contiguous()
    save_file(out, args.out)
    n = sum(v.numel() for v in out.values())
    print(f"{args.out}: {len(out)} tensors, {n} values")


if __name__ == "__main__":
    main()
