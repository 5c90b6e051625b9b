"""Writes the fuzz targets' seed corpus (fuzz/seeds/<target>/) — committed; rerun only to
change it. Seeds are small, valid or nearly valid inputs: AFL++ mutates them, and
tests/fuzz_corpus.rs replays them in `make test`."""
import io, json, os, sys
from PIL import Image

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuzz", "seeds")


def write(target, name, data):
    folder = os.path.join(root, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def image(fmt, mode="RGB", size=(8, 6), **kwargs):
    picture = Image.new(mode, size)
    for x in range(size[0]):
        for y in range(size[1]):
            picture.putpixel((x, y), (x * 30, y * 40, 128)[: len(mode)] if mode != "L" else x * 30)
    out = io.BytesIO()
    picture.save(out, fmt, **kwargs)
    return out.getvalue()


# decode: every accepted format, small; a progressive and a CMYK JPEG; a PNG claiming a huge
# canvas; a truncated JPEG.
write("decode", "rgb.jpg", image("JPEG", quality=80))
write("decode", "progressive.jpg", image("JPEG", progressive=True, quality=60))
write("decode", "cmyk.jpg", image("JPEG", mode="CMYK"))
write("decode", "gray.png", image("PNG", mode="L"))
write("decode", "rgba.png", image("PNG", mode="RGBA"))
write("decode", "palette.gif", image("GIF", mode="P"))
write("decode", "lossless.webp", image("WEBP", lossless=True))
write("decode", "small.bmp", image("BMP"))
write("decode", "small.tiff", image("TIFF"))
write("decode", "truncated.jpg", image("JPEG", size=(16, 16))[:120])
huge = bytearray(image("PNG", size=(1, 1)))
huge[16:24] = (100000).to_bytes(4, "big") + (100000).to_bytes(4, "big")  # IHDR width/height, CRC now wrong
write("decode", "claims-huge.png", bytes(huge))

# multipart: first line the boundary, then the body.
def form(boundary, parts):
    body = b""
    for headers, content in parts:
        body += b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + content + b"\r\n"
    return boundary + b"\n" + body + b"--" + boundary + b"--\r\n"

jpeg = image("JPEG", size=(4, 4))
write("multipart", "image.txt", form(b"XyZ", [(b'Content-Disposition: form-data; name="image"; filename="a.jpg"\r\nContent-Type: image/jpeg', jpeg)]))
write("multipart", "fields.txt", form(b"b0undary", [
    (b'Content-Disposition: form-data; name="top_k"', b"3"),
    (b'Content-Disposition: form-data; name="prefix"', b"/photos/\xc3\xa9t\xc3\xa9/"),
    (b'Content-Disposition: form-data; name="image"; filename="x y \xe2\x9c\x93.png"\r\nContent-Type: image/png', image("PNG", size=(2, 2))),
]))
write("multipart", "other-file.txt", form(b"--", [(b'Content-Disposition: form-data; name="other"; filename="b.bin"', b"\x00\x01")]))
write("multipart", "unterminated.txt", b"abc\n--abc\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\npartial")

# url_guard: one URL per seed, in the spellings an attacker tries.
for i, line in enumerate([
    "https://images.example.com/a/b.jpg?x=1#frag",
    "http://127.0.0.1:8080/x.jpg",
    "http://2130706433/",
    "http://0x7f.0.0.1/",
    "http://0177.1/",
    "http://[::1]/",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://[2002:a00:1::]/",
    "http://[64:ff9b::a00:1]/",
    "http://[fd00:ec2::254]/",
    "http://user:secret@example.com/",
    "ftp://example.com/a.jpg",
    "http://8.8.8.8/a.jpg\n# comment\nhttp://EXAMPLE.com:80/b.jpg",
    "http://[::a00:1]/",
]):
    write("url_guard", f"{i:02}.txt", line)

# prefix_filter: the prefix, then optionally NUL and a path under it.
for i, case in enumerate([
    "s3://bucket/photos/\x00deep/x.jpg",
    "/photos/\"quoted\"/\x00a.jpg",
    "C:\\photos\\\x00b.jpg",
    "/50% off_sale/\x00c.jpg",
    "/line\nbreak/\x00d.jpg",
    "/\u00e9t\u00e9/\U0010ffff\x00\U0010ffff",
    "\ud7ff".encode("utf-8", "surrogatepass").decode("utf-8", "replace") + "\x00x",
]):
    write("prefix_filter", f"{i:02}.txt", case.encode("utf-8", "surrogatepass"))

# collection_spec: ImageCollections as the API server would store them.
def collection(name, spec, generation=1):
    return json.dumps({
        "apiVersion": "imgsearch.io/v1alpha1", "kind": "ImageCollection",
        "metadata": {"name": name, "namespace": "shop", "uid": "0a0b0c0d-1111-2222-3333-444455556666",
                     "generation": generation},
        "spec": spec,
    }, indent=1)

write("collection_spec", "pvc.json", collection("products", {
    "milvus": {"uri": "http://milvus.milvus.svc:19530"}, "source": {"pvc": {"claimName": "photos", "path": "shop"}},
    "ingest": {"parallelism": 3, "batchSize": 16, "schedule": "0 3 * * *"}, "deletionPolicy": "Retain"}))
write("collection_spec", "s3.json", collection("catalogue-2024", {
    "milvus": {"uri": "http://milvus:19530"}, "collectionName": "catalogue_2024",
    "source": {"s3": {"bucket": "photos", "prefix": "shop/", "endpoint": "http://minio:9000", "secretRef": {"name": "s3"}}},
    "search": {"replicas": 2}}, generation=12))
write("collection_spec", "urls.json", collection("web", {
    "milvus": {"milvusRef": {"name": "milvus"}}, "source": {"urls": {"configMapRef": {"name": "list", "key": "urls.txt"}, "allowPrivateNetworks": ["10.0.0.0/8"]}}}))
write("collection_spec", "long-name.json", collection("a" * 44, {
    "milvus": {"uri": "http://m:19530"}, "source": {"pvc": {"claimName": "p"}}}, generation=9999999999))
