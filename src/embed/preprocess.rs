//! Bytes → checked, decoded, resized, normalised model input.
//!
//! Every image that reaches the model passes through here, whether it came from a folder,
//! an upload or (later) a bucket, so the limits that keep hostile files harmless live here too.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use zune_core::bytestream::ZCursor;

use super::structure;

/// What a model's input looks like: a square RGB picture of `size` pixels a side, each channel
/// scaled to [0, 1] and then normalised as `(value - mean) / std`, laid out CHW. The statistics
/// are the ones the model was trained with; anything else shifts every embedding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelInput {
    pub size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Bounds applied before a single pixel is decoded.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest accepted width or height in pixels.
    pub max_dimension: u32,
    /// Largest accepted width × height; stops decompression bombs (tiny files, huge canvases).
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        // 64 megapixels covers every camera sold today; a 16k edge covers panoramas.
        Self { max_dimension: 16_384, max_pixels: 64_000_000 }
    }
}

/// Why an image could not be turned into model input. The message is shown to users and stored
/// in the catalog next to the failed image, so it says what is wrong with the file.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ImageError {
    #[error("the file is empty")]
    Empty,
    #[error("not a supported image: {0} (supported: {SUPPORTED_FORMATS})")]
    UnsupportedFormat(String),
    #[error("{part} is {width}×{height} pixels, over the limit of {limit}")]
    TooLarge { part: &'static str, width: u32, height: u32, limit: String },
    #[error("corrupt or truncated {format} image: {detail}")]
    Corrupt { format: &'static str, detail: String },
}

/// One image, ready for the model: its size as displayed (after its EXIF orientation) and a CHW
/// float tensor of the model's input.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    pub width: u32,
    pub height: u32,
    pub format: ImageFormat,
    pub tensor: Vec<f32>,
}

/// Formats decoded here: JPEG pixels by libjpeg-turbo (see `decode_jpeg` for why), everything
/// else by pure-Rust decoders.
pub const SUPPORTED_FORMATS: &str = "JPEG, PNG, WebP, GIF, BMP, TIFF";

/// How large a JPEG is decoded. JPEG stores 8×8 blocks of frequencies, so a decoder can produce
/// 1/2, 1/4 or 1/8 of the picture directly, skipping most of the inverse transform and colour
/// conversion and all of the full-size buffer; a 12-megapixel phone photo then costs less than
/// half (measured in docs/benchmarks.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JpegScale {
    /// The smallest of 1/8, 1/4, 1/2 and full size whose shorter side is still at least
    /// `REDUCED_MIN_SIDE_FACTOR` × the model's input side (what ingest, uploads and searches use).
    #[default]
    Reduced,
    /// Every pixel (for comparisons: the reduced decode must embed the same).
    Full,
}

/// Reduced decodes keep at least this many times the model's input on the shorter side, so
/// the final resize still averages several decoded pixels into each input pixel. At 1× (what
/// PIL's `draft` does) some photos embedded measurably differently from their full decode; see
/// docs/benchmarks.md for the cosines at 1× and 2×.
pub const REDUCED_MIN_SIDE_FACTOR: u32 = 2;

/// Identifies the format from the bytes themselves; a file name or Content-Type header is never trusted.
pub fn sniff_format(bytes: &[u8]) -> Result<ImageFormat, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if let Some(family) = heif_family(bytes) {
        return Err(ImageError::UnsupportedFormat(format!(
            "{family} (its decoders are C libraries, which imgsearch does not run on untrusted input; convert it to JPEG or WebP)"
        )));
    }
    // BigTIFF (TIFF with 8-byte offsets, what scanners and microscopes write past 4 GB): the
    // `tiff` decoder reads it, but `image` does not recognise its header.
    if bytes.starts_with(b"II+\0") || bytes.starts_with(b"MM\0+") {
        return Ok(ImageFormat::Tiff);
    }
    match image::guess_format(bytes) {
        Ok(
            format @ (ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp
            | ImageFormat::Tiff),
        ) => Ok(format),
        Ok(other) => Err(ImageError::UnsupportedFormat(format!("{other:?}"))),
        Err(_) => Err(ImageError::UnsupportedFormat("unrecognised content".to_string())),
    }
}

/// HEIC (what iPhones save) and AVIF share the ISO base media file layout: a `ftyp` box whose
/// brand names the family. Named, so the refusal says what the file is.
fn heif_family(bytes: &[u8]) -> Option<&'static str> {
    if bytes.get(4..8)? != b"ftyp" {
        return None;
    }
    match bytes.get(8..12)? {
        b"avif" | b"avis" => Some("AVIF"),
        b"heic" | b"heix" | b"heim" | b"heis" | b"hevc" | b"hevx" | b"mif1" | b"msf1" => Some("HEIC/HEIF"),
        _ => None,
    }
}

/// MIME type for a sniffed format, for serving stored images back.
pub fn mime_type(format: ImageFormat) -> &'static str {
    format.to_mime_type()
}

pub fn prepare(bytes: &[u8], limits: DecodeLimits, input: ModelInput) -> Result<PreparedImage, ImageError> {
    prepare_at(bytes, limits, input, JpegScale::Reduced)
}

/// `prepare`, choosing how large a JPEG is decoded.
///
/// A decoder that panics on a malformed file costs that file, not the request, the ingest run
/// or the process: zune-jpeg's upsampler asserts on some hostile CMYK JPEGs (found by the
/// `decode` fuzz target, fuzz/regressions/decode/; the same family of assertions is reported
/// upstream, etemesi254/zune-image#281 and #236, unfixed in 0.5.15), and any decoder may have
/// another such bug. The panic becomes a corrupt-image error.
pub fn prepare_at(
    bytes: &[u8],
    limits: DecodeLimits,
    input: ModelInput,
    scale: JpegScale,
) -> Result<PreparedImage, ImageError> {
    let format = sniff_format(bytes)?;
    std::panic::catch_unwind(|| prepare_format(bytes, format, limits, input, scale)).unwrap_or_else(|panic| {
        let said =
            panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
        Err(ImageError::Corrupt {
            format: format_name(format),
            detail: format!("the decoder failed on it ({})", said.unwrap_or_else(|| "no message".into())),
        })
    })
}

fn prepare_format(
    bytes: &[u8],
    format: ImageFormat,
    limits: DecodeLimits,
    input: ModelInput,
    scale: JpegScale,
) -> Result<PreparedImage, ImageError> {
    let format_name = format_name(format);
    let corrupt = |e: image::ImageError| ImageError::Corrupt { format: format_name, detail: e.to_string() };

    // The container first: what the file claims of itself must be possible before a decoder
    // reserves anything for it (see `structure` for what each decoder did without this).
    if format == ImageFormat::Tiff {
        structure::tiff_first_directory_within_file(bytes)
            .map_err(|detail| ImageError::Corrupt { format: format_name, detail })?;
    }
    // Header only: refuse oversized canvases before allocating anything for them.
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format).into_dimensions().map_err(corrupt)?;
    check_dimensions(width, height, limits)?;
    if format == ImageFormat::Gif {
        // A first frame larger than its canvas is decoded at its own size, then clipped.
        let frame = structure::gif_first_frame_size(bytes)
            .map_err(|detail| ImageError::Corrupt { format: format_name, detail })?;
        if let Some((width, height)) = frame {
            within_limits("its first frame", width, height, limits)?;
        }
    }

    let (decoded, orientation) = if format == ImageFormat::Jpeg {
        let min_side = match scale {
            JpegScale::Reduced => input.size.saturating_mul(REDUCED_MIN_SIDE_FACTOR),
            JpegScale::Full => u32::MAX,
        };
        decode_jpeg(bytes, limits, min_side).map_err(|detail| ImageError::Corrupt { format: format_name, detail })?
    } else {
        let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
        let mut decoder_limits = Limits::default();
        decoder_limits.max_image_width = Some(limits.max_dimension);
        decoder_limits.max_image_height = Some(limits.max_dimension);
        // RGBA16 is the widest buffer of the common formats: 8 bytes a pixel, plus headroom for
        // the decoder's own buffers. (A float TIFF at the pixel limit would need more and is
        // refused by this allowance rather than given a gigabyte.)
        decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
        reader.limits(decoder_limits);
        let mut decoder = reader.into_decoder().map_err(corrupt)?;
        // A damaged metadata block must not cost the picture: it is then shown as stored.
        let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
        // GIF: the first frame, whatever follows it.
        (DynamicImage::from_decoder(decoder).map_err(corrupt)?, orientation)
    };

    let (width, height) = displayed_size(width, height, orientation);
    Ok(PreparedImage { width, height, format, tensor: to_tensor(decoded, orientation, input)? })
}

/// Width and height as a viewer shows them: swapped by the orientations that turn a quarter.
fn displayed_size(width: u32, height: u32, orientation: Orientation) -> (u32, u32) {
    match orientation {
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH => {
            (height, width)
        }
        _ => (width, height),
    }
}

/// A JPEG to RGB at the smallest DCT scale whose shorter side stays at least `min_side`, and
/// the EXIF orientation the camera wrote (phones store pixels as the sensor saw them).
///
/// The pixels come from libjpeg-turbo, the one C decoder imgsearch runs on untrusted bytes:
/// no pure-Rust decoder decodes at a reduced scale at a useful speed (jpeg-decoder's entropy
/// decoding is slower than zune-jpeg's full decode; measured in docs/benchmarks.md), and on
/// phone photos decoding is most of the cost of ingest. It is what browsers, Android and
/// Pillow decode untrusted JPEGs with, fuzzed continuously by OSS-Fuzz; it is built from the
/// source the `turbojpeg` crate pins and linked statically. Its input here is bounded: the
/// canvas is checked against the limits before this runs, and a progressive file may have at
/// most `MAX_SCANS` scans (a file of thousands of tiny scans costs minutes of CPU otherwise).
///
/// JPEGs are decoded leniently, as browsers and Pillow decode them: damage a viewer shows
/// through (stray bytes between markers, a scan garbled mid-way) is not a reason to refuse a
/// photo. libjpeg decodes through such damage with a warning, but TurboJPEG reports a warning
/// as a failure and the `turbojpeg` crate does not say which it was (calling TurboJPEG directly
/// would need `unsafe`, which this crate forbids); so a file TurboJPEG refuses is decoded in
/// full by zune-jpeg, pure Rust and lenient, against the same limits, and refused only if that
/// fails too. Leniency means a truncated file "decodes" with the missing part grey; so a file
/// whose markers end before its end-of-image marker is refused as truncated first.
/// CMYK and YCCK JPEGs (print files), which TurboJPEG cannot turn into RGB, are decoded in full
/// by zune-jpeg too; zune-jpeg also reads the EXIF block.
fn decode_jpeg(bytes: &[u8], limits: DecodeLimits, min_side: u32) -> Result<(DynamicImage, Orientation), String> {
    // Counted here, not only by TurboJPEG's own limit, so that no decoder ever starts on such
    // a file.
    let scans = structure::jpeg_main_image_scans(bytes)?;
    if scans > MAX_SCANS as usize {
        return Err(format!("it has {scans} scans, more than the {MAX_SCANS} a JPEG may have here"));
    }
    let orientation = jpeg_orientation(bytes, limits);
    let image = match decode_jpeg_with_turbojpeg(bytes, limits, min_side) {
        Ok(image) => image,
        Err(TurboJpegFailure::Refused(why)) => return Err(why),
        Err(TurboJpegFailure::CannotDecode(turbojpeg)) => {
            decode_jpeg_in_full(bytes, limits).map_err(|zune| format!("TurboJPEG: {turbojpeg}; zune-jpeg: {zune}"))?
        }
    };
    Ok((image, orientation))
}

/// Why TurboJPEG gave no pixels.
enum TurboJpegFailure {
    /// The file must not be decoded at all (its frame header is over the limits).
    Refused(String),
    /// TurboJPEG could not, or would not say it could: zune-jpeg decides.
    CannotDecode(String),
}

/// The pixels at the smallest DCT scale whose shorter side stays at least `min_side`.
fn decode_jpeg_with_turbojpeg(
    bytes: &[u8],
    limits: DecodeLimits,
    min_side: u32,
) -> Result<DynamicImage, TurboJpegFailure> {
    use turbojpeg::{Colorspace, Decompressor};
    let cannot = |e: turbojpeg::Error| TurboJpegFailure::CannotDecode(e.to_string());
    let mut decompressor = Decompressor::new().map_err(cannot)?;
    let header = decompressor.read_header(bytes).map_err(cannot)?;
    // The limits were checked against the size `image` read from the headers; a file whose
    // headers say two things (two frame headers, say) must not get past them through the other.
    let (width, height) =
        (u32::try_from(header.width).unwrap_or(u32::MAX), u32::try_from(header.height).unwrap_or(u32::MAX));
    check_dimensions(width, height, limits)
        .map_err(|e| TurboJpegFailure::Refused(format!("its frame header says: {e}")))?;
    if matches!(header.colorspace, Colorspace::CMYK | Colorspace::YCCK) {
        return Err(TurboJpegFailure::CannotDecode("it does not turn CMYK or YCCK into RGB".to_string()));
    }
    decode_scaled(&mut decompressor, bytes, header, min_side).map_err(TurboJpegFailure::CannotDecode)
}

fn decode_scaled(
    decompressor: &mut turbojpeg::Decompressor,
    bytes: &[u8],
    header: turbojpeg::DecompressHeader,
    min_side: u32,
) -> Result<DynamicImage, String> {
    use turbojpeg::{PixelFormat, ScalingFactor};
    // Lossless JPEGs (rare) have no DCT to scale.
    let factor = [ScalingFactor::ONE_EIGHTH, ScalingFactor::ONE_QUARTER, ScalingFactor::ONE_HALF]
        .into_iter()
        .filter(|_| !header.is_lossless)
        .find(|&factor| {
            let scaled = header.scaled(factor);
            scaled.width.min(scaled.height) >= min_side as usize
        })
        .unwrap_or(ScalingFactor::ONE);
    let scaled = header.scaled(factor);
    decompressor.set_scaling_factor(factor).map_err(|e| e.to_string())?;
    decompressor.set_scan_limit(MAX_SCANS).map_err(|e| e.to_string())?;
    let mut image = turbojpeg::Image {
        pixels: vec![0u8; 3 * scaled.width * scaled.height],
        width: scaled.width,
        pitch: 3 * scaled.width,
        height: scaled.height,
        format: PixelFormat::RGB,
    };
    decompressor.decompress(bytes, image.as_deref_mut()).map_err(|e| e.to_string())?;
    let (width, height) = (
        u32::try_from(scaled.width).map_err(|e| e.to_string())?,
        u32::try_from(scaled.height).map_err(|e| e.to_string())?,
    );
    let image = image::RgbImage::from_raw(width, height, image.pixels)
        .ok_or_else(|| "decoded pixel buffer does not match the image size".to_string())?;
    Ok(image.into())
}

/// Scans a progressive JPEG may have. Encoders write about 10 (libjpeg's default progressive
/// script writes 10); libjpeg-turbo applies no limit unless asked (`TJPARAM_SCANLIMIT`, which
/// its documentation names as the guard against the many-scans exploit) and suggests no
/// number, so this one is ours: far above any encoder, far below an attack's thousands.
const MAX_SCANS: u32 = 500;

/// The orientation in a JPEG's EXIF block, read by zune-jpeg from the headers alone. A file
/// without one, or with a damaged one, is shown as stored.
fn jpeg_orientation(bytes: &[u8], limits: DecodeLimits) -> Orientation {
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), zune_options(limits));
    if decoder.decode_headers().is_err() {
        return Orientation::NoTransforms;
    }
    decoder.exif().and_then(|exif| Orientation::from_exif_chunk(exif)).unwrap_or(Orientation::NoTransforms)
}

fn zune_options(limits: DecodeLimits) -> zune_core::options::DecoderOptions {
    zune_core::options::DecoderOptions::default()
        .jpeg_set_out_colorspace(zune_core::colorspace::ColorSpace::RGB)
        .set_strict_mode(false)
        .set_max_width(limits.max_dimension as usize)
        .set_max_height(limits.max_dimension as usize)
}

/// Every pixel of a JPEG, by zune-jpeg (pure Rust), for the colour spaces TurboJPEG cannot
/// convert to RGB.
fn decode_jpeg_in_full(bytes: &[u8], limits: DecodeLimits) -> Result<DynamicImage, String> {
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), zune_options(limits));
    // Its own reading of the frame header is held to the limits too: this runs on files
    // TurboJPEG could not read, whose headers may say something else to each decoder.
    decoder.decode_headers().map_err(|e| e.to_string())?;
    let (width, height) = decoder.dimensions().ok_or("the decoder reported no image size")?;
    let (width, height) = (u32::try_from(width).unwrap_or(u32::MAX), u32::try_from(height).unwrap_or(u32::MAX));
    check_dimensions(width, height, limits).map_err(|e| format!("its frame header says: {e}"))?;
    let pixels = decoder.decode().map_err(|e| e.to_string())?;
    let (width, height) = decoder.dimensions().ok_or("the decoder reported no image size")?;
    let (width, height) =
        (u32::try_from(width).map_err(|e| e.to_string())?, u32::try_from(height).map_err(|e| e.to_string())?);
    let image = image::RgbImage::from_raw(width, height, pixels)
        .ok_or_else(|| "decoded pixel buffer does not match the image size".to_string())?;
    Ok(image.into())
}

fn check_dimensions(width: u32, height: u32, limits: DecodeLimits) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt { format: "image", detail: format!("{width}×{height} has no pixels") });
    }
    within_limits("image", width, height, limits)
}

fn within_limits(part: &'static str, width: u32, height: u32, limits: DecodeLimits) -> Result<(), ImageError> {
    if width > limits.max_dimension || height > limits.max_dimension {
        let limit = format!("{} px a side", limits.max_dimension);
        return Err(ImageError::TooLarge { part, width, height, limit });
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ImageError::TooLarge { part, width, height, limit: format!("{} pixels", limits.max_pixels) });
    }
    Ok(())
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Gif => "GIF",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        _ => "image",
    }
}

/// RGB, squashed to the model's square (the whole picture is kept: a crop would drop the object
/// users photographed off-centre), turned upright, scaled to [0, 1] and normalised with the
/// model's mean/std, laid out CHW.
///
/// The orientation is applied after resizing, to 224×224 pixels instead of 12 million: a
/// squash scales each axis on its own and a quarter turn swaps the axes, so turning the square
/// result equals squashing the turned picture.
fn to_tensor(image: DynamicImage, orientation: Orientation, input: ModelInput) -> Result<Vec<f32>, ImageError> {
    let size = input.size;
    let mut square = resize_rgb(image.into_rgb8(), size)?;
    if orientation != Orientation::NoTransforms {
        let mut turned = DynamicImage::ImageRgb8(
            image::RgbImage::from_raw(size, size, square)
                .ok_or_else(|| ImageError::Corrupt { format: "image", detail: "resized buffer size".into() })?,
        );
        turned.apply_orientation(orientation);
        square = turned.into_rgb8().into_raw();
    }
    let plane = (size * size) as usize;
    let mut tensor = vec![0.0f32; 3 * plane];
    for (i, pixel) in square.chunks_exact(3).enumerate() {
        for channel in 0..3 {
            let value = f32::from(pixel[channel]) / 255.0;
            tensor[channel * plane + i] = (value - input.mean[channel]) / input.std[channel];
        }
    }
    Ok(tensor)
}

/// `size`×`size` RGB bytes. Large photos are area-averaged (a box filter: every source pixel
/// counts once, no aliasing); small images are upscaled bilinearly. `fast_image_resize` uses
/// the CPU's SIMD units: about 0.5 ms for a 1024×768 photo here, against 4.4 ms for the `image`
/// crate's area-averaging `thumbnail` (measured in session 4), and decoding shares the cores
/// with inference, so every millisecond here is throughput lost.
fn resize_rgb(image: image::RgbImage, size: u32) -> Result<Vec<u8>, ImageError> {
    use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer, images};
    let resize_error = |e: &dyn std::fmt::Display| ImageError::Corrupt { format: "image", detail: e.to_string() };
    let (width, height) = image.dimensions();
    let source = images::ImageRef::new(width, height, image.as_raw(), PixelType::U8x3).map_err(|e| resize_error(&e))?;
    let mut target = images::Image::new(size, size, PixelType::U8x3);
    let filter = if width >= size && height >= size { FilterType::Box } else { FilterType::Bilinear };
    Resizer::new()
        .resize(&source, &mut target, &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter)))
        .map_err(|e| resize_error(&e))?;
    Ok(target.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUT: ModelInput = crate::embed::EFFICIENTNET_LITE0.input;
    const MEAN: [f32; 3] = INPUT.mean;
    const STD: [f32; 3] = INPUT.std;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 128]));
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Png).expect("encoding a small PNG in memory");
        out.into_inner()
    }

    #[test]
    fn prepares_a_png_into_a_normalised_chw_tensor() {
        let prepared = prepare(&png(300, 200), DecodeLimits::default(), INPUT).expect("valid PNG");
        assert_eq!((prepared.width, prepared.height), (300, 200));
        assert_eq!(prepared.tensor.len(), 3 * 224 * 224);
        // Blue channel is constant 128 → (128/255 - mean) / std.
        let expected_blue = (128.0 / 255.0 - MEAN[2]) / STD[2];
        assert!((prepared.tensor[2 * 224 * 224 + 1000] - expected_blue).abs() < 1e-4);
    }

    #[test]
    fn refuses_an_empty_file() {
        assert_eq!(prepare(&[], DecodeLimits::default(), INPUT).unwrap_err(), ImageError::Empty);
    }

    #[test]
    fn refuses_text_pretending_to_be_an_image() {
        let err = prepare(b"hello, I am a text file named photo.jpg", DecodeLimits::default(), INPUT).unwrap_err();
        assert!(matches!(err, ImageError::UnsupportedFormat(_)), "{err:?}");
    }

    #[test]
    fn refuses_dimensions_over_the_limit_before_decoding() {
        let limits = DecodeLimits { max_dimension: 100, max_pixels: 1_000_000 };
        let err = prepare(&png(101, 10), limits, INPUT).unwrap_err();
        assert!(matches!(err, ImageError::TooLarge { width: 101, height: 10, .. }), "{err:?}");
        let limits = DecodeLimits { max_dimension: 1000, max_pixels: 5_000 };
        let err = prepare(&png(100, 100), limits, INPUT).unwrap_err();
        assert!(err.to_string().contains("5000 pixels"), "{err}");
    }

    #[test]
    fn reports_a_truncated_png_as_corrupt() {
        let bytes = png(64, 64);
        let err = prepare(&bytes[..bytes.len() / 2], DecodeLimits::default(), INPUT).unwrap_err();
        assert!(matches!(err, ImageError::Corrupt { format: "PNG", .. }), "{err:?}");
    }

    /// A smooth photo-like 1024×768 JPEG.
    fn big_jpeg() -> Vec<u8> {
        let image =
            image::RgbImage::from_fn(1024, 768, |x, y| image::Rgb([(x / 4) as u8, (y / 3) as u8, ((x + y) / 8) as u8]));
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Jpeg).expect("encoding a JPEG in memory");
        out.into_inner()
    }

    /// The model input of a tensor, back in 0..=255 grey levels for channel 0 (red).
    fn red_levels(tensor: &[f32]) -> Vec<f32> {
        tensor[..224 * 224].iter().map(|v| (v * STD[0] + MEAN[0]) * 255.0).collect()
    }

    #[test]
    fn a_large_photo_is_area_averaged_like_the_reference_thumbnail() {
        let bytes = big_jpeg();
        let prepared = prepare(&bytes, DecodeLimits::default(), INPUT).expect("prepares");
        assert_eq!((prepared.width, prepared.height), (1024, 768), "the original size is reported");
        let decoded = image::load_from_memory(&bytes).expect("decodes");
        let reference = decoded.thumbnail_exact(224, 224).to_rgb8();
        let reference_red: Vec<f32> = reference.pixels().map(|p| f32::from(p.0[0])).collect();
        let mean_difference: f32 =
            red_levels(&prepared.tensor).iter().zip(&reference_red).map(|(a, b)| (a - b).abs()).sum::<f32>()
                / reference_red.len() as f32;
        assert!(mean_difference < 2.0, "mean difference {mean_difference} grey levels");
    }

    #[test]
    fn fine_detail_is_averaged_not_sampled() {
        // One-pixel black and white stripes: sampling would give stripes or a flat colour,
        // averaging gives mid grey everywhere.
        let stripes =
            image::RgbImage::from_fn(
                1000,
                800,
                |x, _| if x % 2 == 0 { image::Rgb([0; 3]) } else { image::Rgb([255; 3]) },
            );
        let mut out = Cursor::new(Vec::new());
        stripes.write_to(&mut out, ImageFormat::Png).expect("encoding a PNG in memory");
        let prepared = prepare(&out.into_inner(), DecodeLimits::default(), INPUT).expect("prepares");
        // A box window of non-integer width (1000/224 ≈ 4.5 px) covers 2 or 3 white stripes, so
        // averages land within about ±26 levels of mid grey; sampling gives 0 or 255.
        for level in red_levels(&prepared.tensor) {
            assert!((level - 127.5).abs() < 40.0, "a pixel at level {level}, not averaged");
        }
    }

    #[test]
    fn a_large_jpeg_is_decoded_at_the_smallest_scale_that_keeps_the_shorter_side() {
        let image = image::RgbImage::from_fn(4000, 3000, |x, y| image::Rgb([(x / 16) as u8, (y / 12) as u8, 90]));
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Jpeg).expect("encoding a JPEG in memory");
        let bytes = out.into_inner();
        let decoded_size = |min_side| {
            let (image, _) = decode_jpeg(&bytes, DecodeLimits::default(), min_side).expect("decodes");
            (image.width(), image.height())
        };
        assert_eq!(decoded_size(448), (1000, 750), "1/4: 1/8 would leave 375 < 448");
        assert_eq!(decoded_size(224), (500, 375), "1/8");
        assert_eq!(decoded_size(800), (2000, 1500), "1/2");
        assert_eq!(decoded_size(u32::MAX), (4000, 3000), "in full");
        // And what `prepare` uses for the built-in model: twice its 224-pixel input.
        assert_eq!(INPUT.size * REDUCED_MIN_SIDE_FACTOR, 448);
        // libjpeg-turbo's own reading of the size is held to the limits too.
        let small = DecodeLimits { max_dimension: 16_384, max_pixels: 1_000_000 };
        let refused = decode_jpeg(&bytes, small, 448).map(|_| ()).expect_err("12 megapixels over a 1-megapixel limit");
        assert!(refused.contains("4000×3000 pixels, over the limit of 1000000 pixels"), "{refused}");
    }

    #[test]
    fn a_cmyk_jpeg_which_turbojpeg_cannot_turn_into_rgb_is_decoded_in_full() {
        // Print files: CMYK pixels stored as a YCCK JPEG. Plain ink (no black): cyan 0, magenta
        // 255, yellow 255 is red on paper.
        let (width, height) = (600usize, 500usize);
        let cmyk: Vec<u8> = (0..width * height).flat_map(|_| [0u8, 255, 255, 0]).collect();
        let image = turbojpeg::Image {
            pixels: &cmyk[..],
            width,
            pitch: 4 * width,
            height,
            format: turbojpeg::PixelFormat::CMYK,
        };
        let bytes = turbojpeg::Compressor::new()
            .and_then(|mut compressor| compressor.compress_to_vec(image))
            .expect("a CMYK JPEG in memory");
        assert_eq!(turbojpeg::read_header(&bytes).expect("header").colorspace, turbojpeg::Colorspace::YCCK);
        let prepared = prepare(&bytes, DecodeLimits::default(), INPUT).expect("a CMYK JPEG prepares");
        assert_eq!((prepared.width, prepared.height), (600, 500));
        // Whatever the ink convention, the picture is one flat colour, not noise.
        let red = &prepared.tensor[..224 * 224];
        assert!(red.iter().all(|v| (v - red[0]).abs() < 0.05), "not flat");
    }

    #[test]
    fn a_jpeg_with_data_after_its_end_marker_is_accepted() {
        let mut bytes = big_jpeg();
        bytes.extend_from_slice(b"camera maker's trailer");
        prepare(&bytes, DecodeLimits::default(), INPUT).expect("trailing data after the end marker is fine");
    }

    #[test]
    fn a_greyscale_jpeg_is_prepared_as_rgb() {
        let grey = image::GrayImage::from_fn(300, 300, |x, _| image::Luma([(x % 256) as u8]));
        let mut out = Cursor::new(Vec::new());
        grey.write_to(&mut out, ImageFormat::Jpeg).expect("encoding a JPEG in memory");
        let prepared = prepare(&out.into_inner(), DecodeLimits::default(), INPUT).expect("prepares");
        let plane = 224 * 224;
        // Grey: the three channels hold the same level (up to normalisation).
        let level = |channel: usize, i: usize| prepared.tensor[channel * plane + i] * STD[channel] + MEAN[channel];
        for i in [0, 1000, plane - 1] {
            assert!((level(0, i) - level(2, i)).abs() < 0.02, "pixel {i}: {} vs {}", level(0, i), level(2, i));
        }
    }

    #[test]
    fn a_truncated_large_jpeg_is_reported_as_corrupt() {
        let bytes = big_jpeg();
        for cut in [bytes.len() / 3, bytes.len() - 2] {
            let err = prepare(&bytes[..cut], DecodeLimits::default(), INPUT).unwrap_err();
            assert!(matches!(err, ImageError::Corrupt { format: "JPEG", .. }), "{err:?}");
            assert!(err.to_string().contains("truncated"), "{err}");
        }
    }
}
