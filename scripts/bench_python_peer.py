"""The usual Python way to fill Milvus with image embeddings, as the benchmark's peer.

PIL decodes and resizes each JPEG, numpy normalises, onnxruntime runs the same ONNX model in
batches of 32 with 2 threads, pymilvus inserts into the same Milvus Lite server. Without
`--tuned` there is no tuning (full-size decoding, one process): what a bootcamp-style script
does. With `--tuned` it is what someone who profiled it writes: PIL's `draft` mode decodes each
JPEG at the smallest DCT scale (1/2, 1/4, 1/8) that stays at least the model's input size, in a
pool of 2 decoding processes that feeds the model while it runs. Prints one JSON line.
"""

import argparse
import json
import os
import multiprocessing
import time

import numpy as np
import onnxruntime
from PIL import Image
from pymilvus import DataType, MilvusClient

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def tensor(path, size=224, draft=False):
    with Image.open(path) as image:
        if draft:
            # libjpeg-turbo's scaled decoding: the largest reduction that keeps both sides
            # at least `size` (a no-op for other formats).
            image.draft("RGB", (size, size))
        rgb = image.convert("RGB").resize((size, size), Image.BILINEAR)
    array = np.asarray(rgb, dtype=np.float32) / 255.0
    return ((array - MEAN) / STD).transpose(2, 0, 1)


def drafted_tensor(path):
    return tensor(path, draft=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", required=True)
    parser.add_argument("--uri", required=True)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tuned", action="store_true", help="draft decoding in a pool of 2 processes")
    args = parser.parse_args()

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    session = onnxruntime.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    client = MilvusClient(uri=args.uri)
    # Timed like imgsearch's own summary: from creating the collection to the last insert
    # (loading the model and connecting are not counted, for either).
    started = time.perf_counter()
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=1280)
    schema.add_field("uri", DataType.VARCHAR, max_length=2048)
    index = client.prepare_index_params()
    index.add_index(field_name="vector", index_type="HNSW", metric_type="COSINE", params={"M": 16, "efConstruction": 200})
    client.create_collection(args.collection, schema=schema, index_params=index)

    paths = sorted(os.path.join(args.images, n) for n in os.listdir(args.images) if n.endswith(".jpg"))
    batches = [paths[start : start + args.batch] for start in range(0, len(paths), args.batch)]
    if args.tuned:
        # imap keeps the pool decoding the next images while the model runs on this batch.
        pool = multiprocessing.Pool(2)
        tensors = pool.imap(drafted_tensor, paths, chunksize=4)
    else:
        pool = None
        tensors = map(tensor, paths)
    next_id = 0
    for batch in batches:
        inputs = np.stack([next(tensors) for _ in batch])
        (vectors,) = session.run(None, {input_name: inputs})
        rows = [{"id": next_id + i, "vector": v.tolist(), "uri": p} for i, (v, p) in enumerate(zip(vectors, batch))]
        client.insert(args.collection, rows)
        next_id += len(batch)
    seconds = time.perf_counter() - started
    if pool is not None:
        pool.close()
        pool.join()
    client.drop_collection(args.collection)
    # Peak RSS is measured from outside by the benchmark (VmHWM), the same way for both.
    print(json.dumps({"images": len(paths), "seconds": seconds, "images_per_second": len(paths) / seconds}))


if __name__ == "__main__":
    main()
