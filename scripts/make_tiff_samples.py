"""Writes TIFFs as other tools write them (tests/image-samples/) — committed; rerun only to
change them. imgsearch reads a TIFF's first directory itself before any decoder runs
(src/embed/structure.rs), so it is tested on the layouts real writers produce, not only on the
one the `image` crate writes: big-endian, BigTIFF (8-byte offsets), strips and tiles, LZW and
Deflate, 16 bits a sample. Each holds the same 64×48 picture, also written as a PNG, which
tests/image_formats.rs compares them with. Two of the layouts, at 8×6, seed the decode fuzz target.

tifffile comes with scikit-image (scripts/requirements.txt); Pillow writes through libtiff."""
import os
import numpy as np
import tifffile
from PIL import Image

here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, "..", "tests", "image-samples")
seeds = os.path.join(here, "..", "fuzz", "seeds", "decode")
os.makedirs(out, exist_ok=True)

y, x = np.mgrid[0:48, 0:64]
picture = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
Image.fromarray(picture).save(os.path.join(out, "picture.png"))


def tifffile_write(name, data=picture, **options):
    tifffile.imwrite(os.path.join(out, name), data, photometric="rgb", **options)


tifffile_write("tifffile-big-endian-strips.tif", byteorder=">", rowsperstrip=8)
tifffile_write("tifffile-bigtiff.tif", bigtiff=True, rowsperstrip=16)
tifffile_write("tifffile-bigtiff-big-endian-tiles-deflate.tif", bigtiff=True, byteorder=">", tile=(16, 16), compression="zlib")
tifffile_write("tifffile-16-bit.tif", data=picture.astype(np.uint16) * 257)
Image.fromarray(picture).save(os.path.join(out, "pillow-libtiff-lzw.tif"), compression="tiff_lzw")

# Seeds are small (AFL++ mutates every byte): 8×6 pixels, in the two layouts the image crate
# does not write.
small = picture[:6, :8]
tifffile.imwrite(os.path.join(seeds, "big-endian.tiff"), small, photometric="rgb", byteorder=">", rowsperstrip=2)
tifffile.imwrite(os.path.join(seeds, "bigtiff.tiff"), small, photometric="rgb", bigtiff=True, rowsperstrip=2)
