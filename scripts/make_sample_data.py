"""Extract the demo and evaluation image set from registry packages.

Nothing is downloaded from anywhere else: the photos come from the scikit-image
wheel's data folder, the labelled product photos from Debian's
dataset-fashion-mnist package. Output (git-ignored):

    OUT/photos/<name>.jpg               ~16 real photographs
    OUT/fashion/<class>/<nnnn>.jpg      PER_CLASS test images of each of the 10 classes
"""

import argparse
import gzip
import pathlib
import sys

import numpy as np
from PIL import Image
import skimage

FASHION_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
]
# Photographs among scikit-image's bundled data (drawings, masks and text pages left out).
PHOTOS = [
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png",
    "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg",
    "ihc.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png",
    "retina.jpg", "rocket.jpg",
]


def read_idx(path: pathlib.Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def write_photos(out: pathlib.Path) -> int:
    src = pathlib.Path(skimage.__file__).parent / "data"
    dst = out / "photos"
    dst.mkdir(parents=True, exist_ok=True)
    written = 0
    for name in PHOTOS:
        image = Image.open(src / name)
        image = image.convert("RGB")
        image.save(dst / (pathlib.Path(name).stem + ".jpg"), quality=92)
        written += 1
    return written


def write_fashion(out: pathlib.Path, per_class: int) -> int:
    images = read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
    written = 0
    for label, name in enumerate(FASHION_CLASSES):
        dst = out / "fashion" / name
        dst.mkdir(parents=True, exist_ok=True)
        # The first PER_CLASS test images of each class: deterministic, so figures are reproducible.
        indices = np.flatnonzero(labels == label)[:per_class]
        for index in indices:
            Image.fromarray(images[index], mode="L").save(dst / f"{index:05d}.jpg", quality=95)
            written += 1
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--per-class", type=int, default=50)
    args = parser.parse_args()
    if not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").exists():
        print(f"error: {FASHION_DIR} is missing; install the Debian package dataset-fashion-mnist", file=sys.stderr)
        return 1
    photos = write_photos(args.out)
    fashion = write_fashion(args.out, args.per_class)
    print(f"sample data: {photos} photos and {fashion} Fashion-MNIST images in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
