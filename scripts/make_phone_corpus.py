"""Phone-size JPEGs for the ingest benchmark, made from the real photographs of the
near-duplicate benchmark (Debian's wallpaper packages; see make_near_duplicates.py).

What a phone stores: 4032x3024 pixels (12 MP), baseline JPEG at quality 92 with 4:2:0 chroma,
and for pictures taken upright, the sensor's landscape pixels plus an EXIF Orientation tag that
turns them (6: rotate 90 degrees clockwise to display). Each output is a distinct picture: a
random 4:3 crop of 55-100 % of a photo's width, mirrored or not, colour-scaled, resized to
4032x3024 (so each image has the detail of its source, upscaled where the source is smaller),
with a sensor's grain added; every eighth is tagged portrait. Seeded, so the same inputs make the same corpus.

    make_phone_corpus.py --photos data/near-duplicates/originals --out DIR --count 200
"""

import argparse
import io
import pathlib
import random

from PIL import Image, ImageChops, ImageOps

WIDTH, HEIGHT = 4032, 3024


def exif_orientation(value):
    """An EXIF block holding only the Orientation tag (0x0112), as PIL's `exif=` wants it."""
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", required=True, type=pathlib.Path)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()

    sources = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not sources:
        raise SystemExit(f"no photos in {args.photos}: run scripts/setup.sh --eval-data first")
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(17)
    for i in range(args.count):
        source = sources[i % len(sources)]
        with Image.open(source) as image:
            picture = ImageOps.exif_transpose(image).convert("RGB")
        width, height = picture.size
        crop_width = int(width * rng.uniform(0.55, 1.0))
        crop_height = min(height, crop_width * 3 // 4)
        crop_width = crop_height * 4 // 3
        left = rng.randint(0, width - crop_width)
        top = rng.randint(0, height - crop_height)
        picture = picture.crop((left, top, left + crop_width, top + crop_height))
        if rng.random() < 0.5:
            picture = ImageOps.mirror(picture)
        scale = [rng.uniform(0.85, 1.15) for _ in range(3)]
        picture = Image.merge("RGB", [band.point(lambda v, s=s: min(255, int(v * s))) for band, s in zip(picture.split(), scale)])
        picture = picture.resize((WIDTH, HEIGHT), Image.LANCZOS)
        # A sensor's grain: without it an upscaled picture is smoother than any photo and
        # compresses to a third of a phone's 3-4 MB, which would flatter every decoder.
        grain = Image.effect_noise((WIDTH, HEIGHT), 6).convert("RGB")
        picture = ImageChops.add(picture, grain, scale=1.0, offset=-128)
        options = {"quality": 92, "subsampling": "4:2:0"}
        if i % 8 == 7:
            # Upright shot: the pixels stay as the sensor saw them; the tag turns them.
            options["exif"] = exif_orientation(6)
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", **options)
        (args.out / f"phone-{i:04d}.jpg").write_bytes(buffer.getvalue())


if __name__ == "__main__":
    main()
