"""Training speed: an epoch of PyTorch against an epoch of `squeeze train`, in the same rounds.

The workload of `squeeze train`'s defaults, built from the same architecture files: the 60,000
MNIST training images scaled as the architecture's `[input]` says, shuffled every epoch, batch
128, AdamW (lr 1e-3, weight decay 0.01, PyTorch's default betas and eps), cross-entropy loss,
PyTorch's default initialisation. PyTorch runs on the CPU with each thread count of `--threads`
(1 and 2 by default: on a busy machine its OpenMP threads, which spin while they wait for each
other, can make 2 threads many times slower than 1, so both are timed and the faster is the
figure to beat); its fastest loop is timed (the whole set held as one tensor, batches gathered
by index, no DataLoader), and the per-epoch figure is the training steps only, without the test
evaluation, as `squeeze train` reports it. On a busy machine wall times mostly measure the
neighbours, so each figure comes with CPU seconds too: PyTorch's per epoch (the process's CPU
time over the epoch's steps), squeeze's for its whole process divided by the epochs (loading
and the test evaluations included, so an upper bound).

Each round trains PyTorch for `--epochs` epochs at each thread count and then, when `--squeeze`
names the binary, runs `squeeze train` for as many epochs (on all cores unless
RAYON_NUM_THREADS says otherwise), so a busy neighbour slows both in the same minutes. The
summary gives each model's median epoch time and range over the rounds, and squeeze's median
over PyTorch's fastest median.

    pip install torch numpy
    cargo build --release
    python3 benches/peers/torch_train.py --squeeze target/release/squeeze --rounds 3
"""
import argparse, gzip, os, re, resource, statistics, subprocess, sys, tempfile, time, tomllib
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

ARCHS = {"lenet-300-100": "assets/arch/lenet-300-100.toml", "lenet5": "assets/arch/lenet5.toml"}
TRAIN = "assets/data/mnist/train-images-idx3-ubyte.gz"
TEST = "assets/data/mnist/t10k-images-idx3-ubyte.gz"


def idx(images_path, arch):
    labels_path = images_path.replace("images-idx3", "labels-idx1")
    with gzip.open(images_path, "rb") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape([-1] + arch["input"]["shape"])
    with gzip.open(labels_path, "rb") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    s = arch["input"]
    xs = (raw.astype(np.float32) * np.float32(s["scale"]) - np.float32(s["mean"][0])) \
        / np.float32(s["std"][0])
    return torch.from_numpy(xs.astype(np.float32)), torch.from_numpy(labels.astype(np.int64))


def build(arch):
    """The architecture's layers as an nn.Sequential with PyTorch's default initialisation."""
    mods, shape = [], list(arch["input"]["shape"])
    for l in arch["layer"]:
        op = l["op"]
        if op == "flatten":
            mods.append(nn.Flatten())
            shape = [int(np.prod(shape))]
        elif op == "relu":
            mods.append(nn.ReLU())
        elif op == "maxpool2d":
            k = l["kernel"]
            mods.append(nn.MaxPool2d(k))
            shape = [shape[0], shape[1] // k, shape[2] // k]
        elif op == "linear":
            mods.append(nn.Linear(shape[0], l["out_features"]))
            shape = [l["out_features"]]
        elif op == "conv2d":
            k = l["kernel"]
            mods.append(nn.Conv2d(shape[0], l["out_channels"], k))
            shape = [l["out_channels"], shape[1] - k + 1, shape[2] - k + 1]
        else:
            raise SystemExit(f"unsupported op {op}")
    return nn.Sequential(*mods)


def torch_epochs(arch, train, test, epochs, batch, seed):
    """Trains a fresh model; returns each epoch's training seconds (wall and CPU) and the final
    test top-1."""
    torch.manual_seed(seed)
    model = build(arch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    xs, ys = train
    times, cpus = [], []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(ys))
        t, c = time.perf_counter(), time.process_time()
        loss_sum = 0.0
        for i in range(0, len(ys), batch):
            idx_ = order[i:i + batch]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xs[idx_]), ys[idx_])
            loss.backward()
            opt.step()
            loss_sum += loss.item()
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(test[0][i:i + 1000]).argmax(1) for i in range(0, len(test[1]), 1000)])
    return times, cpus, (pred == test[1]).float().mean().item()


EPOCH_LINE = re.compile(r"epoch (\d+)/\d+ .*test ([\d.]+) %\s+([\d.]+) s \((\d+) samples/s\)")


def squeeze_epochs(binary, arch_path, epochs, batch, seed):
    """Runs `squeeze train`; returns each epoch's training seconds, the process's CPU seconds
    per epoch (whole process) and the final test top-1."""
    with tempfile.TemporaryDirectory() as d:
        cmd = [binary, "train", "--arch", arch_path, "--data", TRAIN, "--test", TEST,
               "--epochs", str(epochs), "--batch", str(batch), "--seed", str(seed),
               "--out", os.path.join(d, "m.safetensors")]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        run = subprocess.run(cmd, capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / epochs
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{run.stderr}")
    times, acc = [], 0.0
    for m in EPOCH_LINE.finditer(run.stderr):
        # samples/s carries more digits than the rounded seconds.
        times.append(60000 / int(m.group(4)) if int(m.group(4)) else float(m.group(3)))
        acc = float(m.group(2)) / 100
    if len(times) != epochs:
        raise SystemExit(f"could not read the epoch times of:\n{run.stderr}")
    return times, [cpu] * epochs, acc


def summary(times):
    return f"median {statistics.median(times):.2f} s (range {min(times):.2f}–{max(times):.2f})"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=1, help="epochs per round and framework")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="PyTorch intra-op thread counts, each timed")
    p.add_argument("--squeeze", help="the squeeze binary, timed in the same rounds")
    args = p.parse_args()
    torch.set_num_interop_threads(1)
    env_threads = os.environ.get("RAYON_NUM_THREADS")
    print(f"torch {torch.__version__}, threads {args.threads}; squeeze: "
          f"{args.squeeze or 'not run'} (RAYON_NUM_THREADS={env_threads or 'all cores'}, "
          f"{os.cpu_count()} cores)", flush=True)
    results, cpu = {}, {}
    for name in args.models:
        with open(ARCHS[name], "rb") as f:
            arch = tomllib.load(f)
        train, test = idx(TRAIN, arch), idx(TEST, arch)
        for r in range(args.rounds):
            for threads in args.threads:
                torch.set_num_threads(threads)
                t, c, acc = torch_epochs(arch, train, test, args.epochs, args.batch, seed=r)
                who = f"torch {threads}t"
                results.setdefault((name, who), []).extend(t)
                cpu.setdefault((name, who), []).extend(c)
                print(f"round {r + 1} {name} {who}: epochs {', '.join(f'{x:.2f}' for x in t)} s "
                      f"(CPU {', '.join(f'{x:.2f}' for x in c)} s), test {acc:.2%}", flush=True)
            if args.squeeze:
                t, c, acc = squeeze_epochs(args.squeeze, ARCHS[name], args.epochs, args.batch, r)
                results.setdefault((name, "squeeze"), []).extend(t)
                cpu.setdefault((name, "squeeze"), []).extend(c)
                print(f"round {r + 1} {name} squeeze: epochs {', '.join(f'{x:.2f}' for x in t)} s "
                      f"(CPU {c[0]:.2f} s an epoch, whole process), test {acc:.2%}", flush=True)
    print()
    for (name, who), times in results.items():
        print(f"{name:14} {who:9} epoch {summary(times)}, CPU {summary(cpu[(name, who)])} "
              f"over {len(times)} epochs")
    for name in args.models:
        ours = results.get((name, "squeeze"))
        torch_best = min(statistics.median(t) for (n, w), t in results.items()
                         if n == name and w != "squeeze")
        if ours:
            print(f"{name:14} squeeze / fastest torch: {statistics.median(ours) / torch_best:.2f}")


if __name__ == "__main__":
    main()
