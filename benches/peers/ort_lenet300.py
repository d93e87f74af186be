"""ONNX Runtime on the bundled LeNet-300-100, for comparing with `squeeze bench` in the same run.

The graph is built from the same safetensors weights (Gemm + Relu, inputs scaled as the
model's metadata says); it is timed in f32 and after ONNX Runtime's dynamic int8 quantization:
the 10,000 test images in batches of 1,000 on 2 threads, and one sample on 1 thread (through
Python's bindings, which add a few microseconds per call).

    pip install onnxruntime onnx safetensors numpy
    python3 benches/peers/ort_lenet300.py [MODEL IMAGES LABELS [REPEATS]]
"""
import gzip, json, sys, tempfile, time
import numpy as np
import onnx
from onnx import helper, TensorProto, numpy_helper
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
from safetensors import safe_open
from safetensors.numpy import load_file

args = sys.argv[1:] or [
    "assets/models/lenet-300-100.safetensors",
    "assets/data/mnist/t10k-images-idx3-ubyte.gz",
    "assets/data/mnist/t10k-labels-idx1-ubyte.gz",
]
w = load_file(args[0])
nodes, inits = [], []
x = "x"
for i, name in enumerate(["fc1", "fc2", "fc3"]):
    inits += [numpy_helper.from_array(w[f"{name}.weight"], f"{name}.w"),
              numpy_helper.from_array(w[f"{name}.bias"], f"{name}.b")]
    out = f"{name}.y"
    nodes.append(helper.make_node("Gemm", [x, f"{name}.w", f"{name}.b"], [out], transB=1))
    x = out
    if name != "fc3":
        nodes.append(helper.make_node("Relu", [x], [f"{name}.r"]))
        x = f"{name}.r"
g = helper.make_graph(nodes, "lenet300", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 784])],
                      [helper.make_tensor_value_info(x, TensorProto.FLOAT, [None, 10])], inits)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
blobs = {"f32": m.SerializeToString()}
# The bindings' own cost per call: a graph that only copies its input.
ident = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 784])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 784])])
blobs["identity (call floor)"] = helper.make_model(
    ident, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
with tempfile.TemporaryDirectory() as d:
    # ONNX Runtime's dynamic quantization: int8 weights, activations quantized per batch.
    onnx.save(m, f"{d}/f32.onnx")
    quantize_dynamic(f"{d}/f32.onnx", f"{d}/int8.onnx", weight_type=QuantType.QInt8)
    blobs["int8 dynamic"] = open(f"{d}/int8.onnx", "rb").read()

with gzip.open(args[1], "rb") as f:
    raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
with gzip.open(args[2], "rb") as f:
    labels = np.frombuffer(f.read(), np.uint8, offset=8)
with safe_open(args[0], "np") as f:
    spec = json.loads(f.metadata()["squeeze.arch"])["input"]
xs = ((raw.astype(np.float32) * np.float32(spec["scale"]) - np.float32(spec["mean"][0]))
      / np.float32(spec["std"][0])).astype(np.float32)

def sess(blob, threads):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    return ort.InferenceSession(blob, o, providers=["CPUExecutionProvider"])

for kind, blob in blobs.items():
    s2 = sess(blob, 2)
    for _ in range(3):
        s2.run(None, {"x": xs[:1000]})
    times = []
    for _ in range(int(args[3]) if len(args) > 3 else 10):
        t = time.perf_counter()
        outs = [s2.run(None, {"x": xs[i:i + 1000]})[0] for i in range(0, 10000, 1000)]
        times.append(time.perf_counter() - t)
    acc = (np.concatenate(outs)[:, :10].argmax(1) == labels).mean()
    s1 = sess(blob, 1)
    one = xs[:1]
    for _ in range(200):
        s1.run(None, {"x": one})
    lat = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 2.0:
        t = time.perf_counter()
        s1.run(None, {"x": one})
        lat.append(time.perf_counter() - t)
    print(f"onnxruntime {ort.__version__} {kind}: top-1 {acc:.2%}, 10k set median {np.median(times)*1e3:.1f} ms "
          f"(min {min(times)*1e3:.1f}), single sample median {np.median(lat)*1e6:.1f} us (min {min(lat)*1e6:.1f})")
