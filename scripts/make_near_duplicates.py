"""Build the near-duplicate benchmark from real photographs that registry packages ship.

Nothing is downloaded from anywhere else: the photographs come from Debian's wallpaper
packages (plasma-workspace-wallpapers, lomiri-wallpapers-16.04, lomiri-wallpapers-20.04,
mate-backgrounds) and scikit-image's bundled data; the distractors (drawings and renders, which
share the index with the photos but are never queried) from the same packages and
gnome-backgrounds. Each photo is kept at full size, as shipped. Near-identical series members
(a wallpaper's other resolutions or its dark variant, a stereo pair's second view, a light/dark
pair) are left out, so every original is distinct.

Output (git-ignored):

    OUT/originals/<name>.<ext>          the photos, as shipped (index + ground truth)
    OUT/distractors/<name>.<ext>        the non-photos, as shipped (index only)
    OUT/queries/<kind>/<name>.<ext>     one variant of each photo per kind; <name> names its original
    OUT/MANIFEST.tsv                    name, role, package, path in the package

Kinds, the ways people re-find a picture they already have:
    crop        10-20 % cut from each side (amounts drawn per photo, seeded by its name), JPEG q90
    mirror      flipped left-right, JPEG q90
    half        downscaled to half the width and height, JPEG q90
    quarter     downscaled to a quarter, JPEG q90
    jpeg-q20    re-encoded at JPEG quality 20
    screenshot  shown at most 1280x760 in a 1440x900 "window" with a title bar and grey margins, PNG
    exif        the pixels stored transformed with the EXIF Orientation tag (2-8, in turn) that
                displays them upright: what a phone writes; must match its original only if the
                tag is applied
"""

import argparse
import hashlib
import pathlib
import random
import shutil
import sys

from PIL import Image, ImageDraw, ImageOps
import skimage

PLASMA = pathlib.Path("/usr/share/wallpapers")
BACKGROUNDS = pathlib.Path("/usr/share/backgrounds")

# Photographs among the packages' wallpapers, by looking (a contact sheet of every file).
PLASMA_PHOTOS = [
    "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf",
    "Grey", "Kite", "OneStandsOut", "Path", "summer_1am",
]
LOMIRI_PHOTOS = [  # lomiri-wallpapers-16.04, and Kleiber and Infinite-Sea from -20.04
    "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Picture_0B_by_freespace.jpg",
    "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg",
    "analogpattern_by_Peter_Nerlich.jpg", "free_by_Peter_Nerlich.jpg",
    "friends_by_Aitzol_Berasategi.jpg", "greentock_by_Peter_Nerlich.jpg",
    "life_by_Aitzol_Berasategi.jpg", "picosdeeuropa_by_Aitzol_Berasategi.jpg",
    "seeding_by_Clements_Engelhardt.jpg", "sunset_by_Aitzol_Berasategi.jpg",
    "Kleiber_by_Lukas_Baubkus.jpg", "Infinite-Sea_by_Aury88.jpg",
]
MATE_PHOTOS = [
    "Aqua.jpg", "Blinds.jpg", "Dune.jpg", "FreshFlower.jpg", "Garden.jpg", "GreenMeadow.jpg",
    "LadyBird.jpg", "RainDrops.jpg", "Storm.jpg", "TwoWings.jpg", "Wood.jpg", "YellowFlower.jpg",
]
# motorcycle_right is left out: it is the other half of motorcycle_left's stereo pair.
SKIMAGE_PHOTOS = [
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
    "grass.png", "gravel.png", "hubble_deep_field.jpg", "motorcycle_left.png", "rocket.jpg",
]

# Drawings and renders: in the index, never queried. One of each light/dark or colour series.
PLASMA_DISTRACTORS = [
    "Altai", "Autumn", "Canopee", "Cascade", "Cluster", "Elarun", "Flow", "FlyingKonqui",
    "Honeywave", "IceCold", "Kay", "Kokkini", "MilkyWay", "Opal", "PastelHills", "Patak",
    "SafeLanding", "Shell", "Volna",
]
LOMIRI_DISTRACTORS = ["Fossa_by_Jasper_Roks.jpg", "Painting-Colors_by__herobrine7gamer.jpg"]
GNOME_DISTRACTORS = [  # the light member of each pair
    "adwaita-l.webp", "grid-l.webp", "licorice-l.webp", "pixels-l.webp", "symbolic-l.webp",
    "truchet-l.webp", "vnc-l.webp", "wood-l.webp",
]
MATE_DISTRACTORS = ["abstract/Elephants_5640x3172.jpg", "abstract/Flow.png", "abstract/Gulp.png",
                    "desktop/Float-into-MATE.png", "desktop/Ubuntu-Mate-Cold-no-logo.png"]

KINDS = ["crop", "mirror", "half", "quarter", "jpeg-q20", "screenshot", "exif"]

# EXIF orientation value -> the transform that makes stored pixels out of upright ones (the
# inverse of what a viewer applies).
STORE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,   # displayed after a 90° clockwise turn: stored turned counter-clockwise
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def largest_plasma_image(name: str) -> pathlib.Path:
    """A Plasma wallpaper ships several resolutions of one picture: the largest one."""
    images = list((PLASMA / name / "contents" / "images").iterdir())
    return max(images, key=lambda p: p.stat().st_size)


def sources() -> list[tuple[str, str, str, pathlib.Path]]:
    """(name, role, package, path) of every original and distractor."""
    found = []
    for name in PLASMA_PHOTOS:
        found.append((name, "photo", "plasma-workspace-wallpapers", largest_plasma_image(name)))
    for file in LOMIRI_PHOTOS:
        package = "lomiri-wallpapers-20.04" if file.startswith(("Kleiber", "Infinite")) else "lomiri-wallpapers-16.04"
        found.append((pathlib.Path(file).stem, "photo", package, BACKGROUNDS / file))
    for file in MATE_PHOTOS:
        found.append(("mate-" + pathlib.Path(file).stem, "photo", "mate-backgrounds", BACKGROUNDS / "mate" / "nature" / file))
    skimage_data = pathlib.Path(skimage.__file__).parent / "data"
    for file in SKIMAGE_PHOTOS:
        found.append(("skimage-" + pathlib.Path(file).stem, "photo", f"scikit-image {skimage.__version__}", skimage_data / file))
    for name in PLASMA_DISTRACTORS:
        found.append((name, "distractor", "plasma-workspace-wallpapers", largest_plasma_image(name)))
    for file in LOMIRI_DISTRACTORS:
        found.append((pathlib.Path(file).stem, "distractor", "lomiri-wallpapers-20.04", BACKGROUNDS / file))
    for file in GNOME_DISTRACTORS:
        found.append(("gnome-" + pathlib.Path(file).stem, "distractor", "gnome-backgrounds", BACKGROUNDS / "gnome" / file))
    for file in MATE_DISTRACTORS:
        found.append(("mate-" + pathlib.Path(file).stem, "distractor", "mate-backgrounds", BACKGROUNDS / "mate" / file))
    return found


def seeded(name: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big"))


def screenshot(image: Image.Image) -> Image.Image:
    """The photo as an image viewer shows it: scaled into a window with a title bar and margins."""
    canvas = Image.new("RGB", (1440, 900), (236, 236, 236))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, 1440, 40), fill=(48, 48, 52))
    for i, colour in enumerate([(255, 95, 86), (255, 189, 46), (39, 201, 63)]):
        draw.ellipse((14 + 24 * i, 13, 28 + 24 * i, 27), fill=colour)
    draw.rectangle((0, 860, 1440, 900), fill=(220, 220, 224))
    shown = image.copy()
    shown.thumbnail((1280, 760), Image.LANCZOS)
    canvas.paste(shown, ((1440 - shown.width) // 2, 40 + (820 - shown.height) // 2))
    return canvas


def write_variants(name: str, image: Image.Image, index: int, queries: pathlib.Path) -> None:
    rng = seeded(name)
    width, height = image.size
    save_jpeg = lambda kind, picture, **kw: picture.save(queries / kind / f"{name}.jpg", quality=kw.pop("quality", 90), **kw)

    left, right, top, bottom = (rng.uniform(0.10, 0.20) for _ in range(4))
    box = (round(width * left), round(height * top), round(width * (1 - right)), round(height * (1 - bottom)))
    save_jpeg("crop", image.crop(box))
    save_jpeg("mirror", image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    save_jpeg("half", image.resize((max(1, width // 2), max(1, height // 2)), Image.LANCZOS))
    save_jpeg("quarter", image.resize((max(1, width // 4), max(1, height // 4)), Image.LANCZOS))
    save_jpeg("jpeg-q20", image, quality=20)
    screenshot(image).save(queries / "screenshot" / f"{name}.png")

    orientation = 2 + index % 7
    exif = Image.Exif()
    exif[0x0112] = orientation
    save_jpeg("exif", image.transpose(STORE_FOR_ORIENTATION[orientation]), exif=exif.tobytes())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    args = parser.parse_args()

    found = sources()
    missing = [str(path) for _, _, _, path in found if not path.is_file()]
    if missing:
        print("error: missing (install the Debian packages scripts/setup.sh names):\n  " + "\n  ".join(missing), file=sys.stderr)
        return 1

    if args.out.exists():
        shutil.rmtree(args.out)
    for folder in ["originals", "distractors"] + [f"queries/{kind}" for kind in KINDS]:
        (args.out / folder).mkdir(parents=True)

    manifest = ["name\trole\tpackage\tpath"]
    photos = 0
    for name, role, package, path in found:
        folder = "originals" if role == "photo" else "distractors"
        shutil.copyfile(path, args.out / folder / f"{name}{path.suffix.lower()}")
        manifest.append(f"{name}\t{role}\t{package}\t{path}")
        if role == "photo":
            with Image.open(path) as shipped:
                upright = ImageOps.exif_transpose(shipped).convert("RGB")
                write_variants(name, upright, photos, args.out / "queries")
            photos += 1
    (args.out / "MANIFEST.tsv").write_text("\n".join(manifest) + "\n")
    print(f"near-duplicate benchmark: {photos} photos x {len(KINDS)} kinds of query, "
          f"{len(found) - photos} distractors, in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
