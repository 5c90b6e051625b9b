//! Pictures in every supported format, with and without an EXIF orientation, and the hostile
//! shapes of each format (bomb headers, truncations, endless animations, absurd TIFF tables),
//! built in memory so the tests need no fixture files.

use image::{ImageEncoder, ImageFormat};

/// An upright picture with no symmetry: a diagonal gradient, a red block top-left and a blue
/// bar along the bottom, wider than tall.
pub fn upright() -> image::RgbImage {
    image::RgbImage::from_fn(240, 160, |x, y| {
        if x < 60 && y < 50 {
            image::Rgb([230, 20, 20])
        } else if y > 140 {
            image::Rgb([20, 20, 230])
        } else {
            image::Rgb([(x + y) as u8, (x / 2) as u8, 255 - (y as u8)])
        }
    })
}

/// What a camera stores for a picture it wants shown upright with EXIF orientation `value`:
/// the inverse of the transform a viewer applies (EXIF 2.3, tag 0x0112), written out by hand.
pub fn stored_for(orientation: u8, upright: &image::RgbImage) -> image::RgbImage {
    use image::imageops::{flip_horizontal, flip_vertical, rotate90, rotate180, rotate270};
    match orientation {
        1 => upright.clone(),
        2 => flip_horizontal(upright),             // viewer mirrors left-right
        3 => rotate180(upright),                   // viewer turns 180°
        4 => flip_vertical(upright),               // viewer mirrors top-bottom
        5 => rotate270(&flip_horizontal(upright)), // viewer turns 90° clockwise, then mirrors
        6 => rotate270(upright),                   // viewer turns 90° clockwise
        7 => rotate90(&flip_horizontal(upright)),  // viewer turns 90° counter-clockwise, then mirrors
        8 => rotate90(upright),                    // viewer turns 90° counter-clockwise
        _ => panic!("EXIF orientations are 1 to 8, not {orientation}"),
    }
}

/// A minimal little-endian TIFF-structured EXIF block holding only the Orientation tag.
pub fn exif_orientation(value: u16) -> Vec<u8> {
    let mut exif = b"II*\0".to_vec();
    exif.extend_from_slice(&8u32.to_le_bytes()); // first IFD right after the header
    exif.extend_from_slice(&1u16.to_le_bytes()); // one entry
    exif.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    exif.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    exif.extend_from_slice(&1u32.to_le_bytes()); // one value
    exif.extend_from_slice(&value.to_le_bytes());
    exif.extend_from_slice(&[0, 0]);
    exif.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    exif
}

/// `image` encoded as `format`, with `exif` written where the format has a place for it
/// (JPEG APP1, PNG eXIf, WebP EXIF chunk).
pub fn encode_rgb(image: &image::RgbImage, format: ImageFormat, exif: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let (w, h, raw) = (image.width(), image.height(), image.as_raw());
    let color = image::ExtendedColorType::Rgb8;
    let written = match format {
        ImageFormat::Png => {
            let mut encoder = image::codecs::png::PngEncoder::new(&mut out);
            if let Some(exif) = exif {
                encoder.set_exif_metadata(exif).expect("PNG takes EXIF");
            }
            encoder.write_image(raw, w, h, color)
        }
        ImageFormat::Jpeg => {
            let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
            if let Some(exif) = exif {
                encoder.set_exif_metadata(exif).expect("JPEG takes EXIF");
            }
            encoder.write_image(raw, w, h, color)
        }
        ImageFormat::WebP => {
            let mut encoder = image::codecs::webp::WebPEncoder::new_lossless(&mut out);
            if let Some(exif) = exif {
                encoder.set_exif_metadata(exif).expect("WebP takes EXIF");
            }
            encoder.write_image(raw, w, h, color)
        }
        other => {
            assert!(exif.is_none(), "no EXIF writer for {other:?} here");
            image::DynamicImage::ImageRgb8(image.clone()).write_to(&mut std::io::Cursor::new(&mut out), other)
        }
    };
    written.expect("encoding in memory");
    out
}

/// A BMP header announcing `width`×`height` 24-bit pixels, and no pixels.
pub fn bmp_claiming(width: i32, height: i32) -> Vec<u8> {
    let mut bmp = b"BM".to_vec();
    bmp.extend_from_slice(&[0; 8]);
    bmp.extend_from_slice(&54u32.to_le_bytes());
    bmp.extend_from_slice(&40u32.to_le_bytes()); // BITMAPINFOHEADER
    bmp.extend_from_slice(&width.to_le_bytes());
    bmp.extend_from_slice(&height.to_le_bytes());
    bmp.extend_from_slice(&1u16.to_le_bytes());
    bmp.extend_from_slice(&24u16.to_le_bytes());
    bmp.extend_from_slice(&[0; 24]);
    bmp
}

/// A GIF whose screen and first frame claim `side`² pixels, with one byte of image data.
pub fn gif_claiming(side: u16) -> Vec<u8> {
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&side.to_le_bytes());
    gif.extend_from_slice(&side.to_le_bytes());
    gif.extend_from_slice(&[0, 0, 0, 0x2C, 0, 0, 0, 0]);
    gif.extend_from_slice(&side.to_le_bytes());
    gif.extend_from_slice(&side.to_le_bytes());
    gif.extend_from_slice(&[0, 2, 2, 0x4C, 0x01, 0, 0x3B]);
    gif
}

/// A real lossless WebP (VP8L) whose header is rewritten to claim 16000² (its 14-bit fields say
/// at most 16384); the pixel data behind it is for 16×16.
pub fn webp_claiming_16000() -> Vec<u8> {
    let mut webp = encode_rgb(&image::RgbImage::new(16, 16), ImageFormat::WebP, None);
    // RIFF header (12) + "VP8L" + chunk size (8) + the 0x2F signature byte: then width-1 (14
    // bits), height-1 (14 bits), alpha and version (4 bits, kept).
    assert_eq!((&webp[12..16], webp[20]), (&b"VP8L"[..], 0x2F), "a VP8L stream");
    let kept = u32::from_le_bytes([webp[21], webp[22], webp[23], webp[24]]) & 0xF000_0000;
    webp[21..25].copy_from_slice(&(kept | 15_999 | (15_999 << 14)).to_le_bytes());
    webp
}

/// A little-endian TIFF whose one IFD holds `(tag, type, count, value)` entries, values inline.
pub fn tiff_with(entries: &[(u16, u16, u32, u32)]) -> Vec<u8> {
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&8u32.to_le_bytes());
    tiff.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for &(tag, kind, count, value) in entries {
        tiff.extend_from_slice(&tag.to_le_bytes());
        tiff.extend_from_slice(&kind.to_le_bytes());
        tiff.extend_from_slice(&count.to_le_bytes());
        tiff.extend_from_slice(&value.to_le_bytes());
    }
    tiff.extend_from_slice(&0u32.to_le_bytes());
    tiff.extend_from_slice(&[0; 64]);
    tiff
}

/// An 8-bit greyscale TIFF header claiming `side`² pixels in one strip of 64 bytes.
pub fn tiff_claiming(side: u32) -> Vec<u8> {
    tiff_with(&[
        (256, 4, 1, side),
        (257, 4, 1, side),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8),    // StripOffsets
        (278, 4, 1, side), // RowsPerStrip
        (279, 4, 1, 64),   // StripByteCounts
    ])
}

/// A 64×64 TIFF that claims 200 million strips, their offsets and sizes far past its end.
pub fn tiff_with_absurd_strip_count() -> Vec<u8> {
    tiff_with(&[
        (256, 4, 1, 64),
        (257, 4, 1, 64),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 200_000_000, 8),     // StripOffsets
        (278, 4, 1, 1),               // RowsPerStrip
        (279, 4, 200_000_000, 4_096), // StripByteCounts
    ])
}

/// A GIF of `frames` 16×16 frames, the first red and every other one blue.
pub fn animated_gif(frames: usize) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut out);
        for i in 0..frames {
            let colour = if i == 0 { image::Rgba([220, 0, 0, 255]) } else { image::Rgba([0, 0, 220, 255]) };
            let frame = image::Frame::new(image::RgbaImage::from_pixel(16, 16, colour));
            encoder.encode_frame(frame).expect("encoding a frame in memory");
        }
    }
    out
}

/// The start of an ISO-BMFF image file (HEIC, AVIF) with the given brand.
pub fn iso_bmff_with_brand(brand: &[u8; 4]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 0, 24];
    bytes.extend_from_slice(b"ftyp");
    bytes.extend_from_slice(brand);
    bytes.extend_from_slice(&[0; 12]);
    bytes
}
