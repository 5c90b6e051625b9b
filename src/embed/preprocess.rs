//! Bytes → checked, decoded, resized, normalised model input.
//!
//! Every image that reaches the model passes through here, whether it came from a folder,
//! an upload or (later) a bucket, so the limits that keep hostile files harmless live here too.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader, Limits};

/// ImageNet statistics the EfficientNet-Lite0 weights were trained with.
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

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
    #[error("not a supported image: {0} (supported: JPEG, PNG)")]
    UnsupportedFormat(String),
    #[error("image is {width}×{height} pixels, over the limit of {limit}")]
    TooLarge { width: u32, height: u32, limit: String },
    #[error("corrupt or truncated {format} image: {detail}")]
    Corrupt { format: &'static str, detail: String },
}

/// One image, ready for the model: its original size and a CHW float tensor of side `input_size`.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    pub width: u32,
    pub height: u32,
    pub format: ImageFormat,
    pub tensor: Vec<f32>,
}

/// Identifies the format from the bytes themselves; a file name or Content-Type header is never trusted.
pub fn sniff_format(bytes: &[u8]) -> Result<ImageFormat, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    match image::guess_format(bytes) {
        Ok(format @ (ImageFormat::Jpeg | ImageFormat::Png)) => Ok(format),
        Ok(other) => Err(ImageError::UnsupportedFormat(format!("{other:?}"))),
        Err(_) => Err(ImageError::UnsupportedFormat("unrecognised content".to_string())),
    }
}

/// MIME type for a sniffed format, for serving stored images back.
pub fn mime_type(format: ImageFormat) -> &'static str {
    format.to_mime_type()
}

pub fn prepare(bytes: &[u8], limits: DecodeLimits, input_size: u32) -> Result<PreparedImage, ImageError> {
    let format = sniff_format(bytes)?;
    let format_name = format_name(format);
    let corrupt = |e: image::ImageError| ImageError::Corrupt { format: format_name, detail: e.to_string() };

    // Header only: refuse oversized canvases before allocating anything for them.
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format).into_dimensions().map_err(corrupt)?;
    check_dimensions(width, height, limits)?;

    if format == ImageFormat::Jpeg {
        let decoded =
            decode_jpeg(bytes, limits).map_err(|detail| ImageError::Corrupt { format: format_name, detail })?;
        return Ok(PreparedImage { width, height, format, tensor: to_tensor(decoded.into(), input_size)? });
    }

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut decoder_limits = Limits::default();
    decoder_limits.max_image_width = Some(limits.max_dimension);
    decoder_limits.max_image_height = Some(limits.max_dimension);
    // RGBA16 is the widest buffer a PNG can decode to: 8 bytes a pixel, plus headroom for the decoder.
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(decoder_limits);
    let decoded = reader.decode().map_err(corrupt)?;

    Ok(PreparedImage { width, height, format, tensor: to_tensor(decoded, input_size)? })
}

/// A JPEG straight to RGB with zune-jpeg (what `image` uses inside). Its lenient mode decodes
/// what browsers and libjpeg decode (stray bytes between markers, damage mid-scan), but it also
/// "decodes" a truncated file, the missing part grey; so a file whose last scan is not followed
/// by an end-of-image marker is refused as truncated before decoding.
fn decode_jpeg(bytes: &[u8], limits: DecodeLimits) -> Result<image::RgbImage, String> {
    use zune_core::{bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions};
    if !ends_after_last_scan(bytes) {
        return Err("the file is truncated (no end-of-image marker after the last scan)".to_string());
    }
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_strict_mode(false)
        .set_max_width(limits.max_dimension as usize)
        .set_max_height(limits.max_dimension as usize);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let pixels = decoder.decode().map_err(|e| e.to_string())?;
    let (width, height) = decoder.dimensions().ok_or("the decoder reported no image size")?;
    let (width, height) =
        (u32::try_from(width).map_err(|e| e.to_string())?, u32::try_from(height).map_err(|e| e.to_string())?);
    image::RgbImage::from_raw(width, height, pixels)
        .ok_or_else(|| "decoded pixel buffer does not match the image size".to_string())
}

/// Whether an end-of-image marker (FF D9) follows the last start-of-scan (FF DA). Inside scan
/// data a 0xFF byte is always followed by 0x00 or a restart marker, so neither marker can
/// appear there by chance; an EXIF thumbnail's own markers come before the main image's scans.
/// Bytes after the end marker (some cameras append data) are allowed.
///
/// Checked from the end marker outwards, since it runs for every image: the last FF D9 sits at
/// or near the end of a whole file, and the first scan near its start, so neither search walks
/// the compressed data.
fn ends_after_last_scan(bytes: &[u8]) -> bool {
    const SCAN: [u8; 2] = [0xFF, 0xDA];
    let Some(end) = bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]) else { return false };
    !bytes[end..].windows(2).any(|w| w == SCAN) && bytes[..end].windows(2).any(|w| w == SCAN)
}

fn check_dimensions(width: u32, height: u32, limits: DecodeLimits) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt { format: "image", detail: format!("{width}×{height} has no pixels") });
    }
    if width > limits.max_dimension || height > limits.max_dimension {
        return Err(ImageError::TooLarge { width, height, limit: format!("{} px a side", limits.max_dimension) });
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ImageError::TooLarge { width, height, limit: format!("{} pixels", limits.max_pixels) });
    }
    Ok(())
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        _ => "image",
    }
}

/// RGB, squashed to `size`×`size` (the whole picture is kept: a crop would drop the object users
/// photographed off-centre), scaled to [0, 1] and normalised with ImageNet mean/std, laid out CHW.
fn to_tensor(image: DynamicImage, size: u32) -> Result<Vec<f32>, ImageError> {
    let rgb = resize_rgb(image.into_rgb8(), size)?;
    let plane = (size * size) as usize;
    let mut tensor = vec![0.0f32; 3 * plane];
    for (i, pixel) in rgb.chunks_exact(3).enumerate() {
        for channel in 0..3 {
            let value = f32::from(pixel[channel]) / 255.0;
            tensor[channel * plane + i] = (value - MEAN[channel]) / STD[channel];
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

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 128]));
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Png).expect("encoding a small PNG in memory");
        out.into_inner()
    }

    #[test]
    fn prepares_a_png_into_a_normalised_chw_tensor() {
        let prepared = prepare(&png(300, 200), DecodeLimits::default(), 224).expect("valid PNG");
        assert_eq!((prepared.width, prepared.height), (300, 200));
        assert_eq!(prepared.tensor.len(), 3 * 224 * 224);
        // Blue channel is constant 128 → (128/255 - 0.406) / 0.225.
        let expected_blue = (128.0 / 255.0 - 0.406) / 0.225;
        assert!((prepared.tensor[2 * 224 * 224 + 1000] - expected_blue).abs() < 1e-4);
    }

    #[test]
    fn refuses_an_empty_file() {
        assert_eq!(prepare(&[], DecodeLimits::default(), 224).unwrap_err(), ImageError::Empty);
    }

    #[test]
    fn refuses_text_pretending_to_be_an_image() {
        let err = prepare(b"hello, I am a text file named photo.jpg", DecodeLimits::default(), 224).unwrap_err();
        assert!(matches!(err, ImageError::UnsupportedFormat(_)), "{err:?}");
    }

    #[test]
    fn refuses_dimensions_over_the_limit_before_decoding() {
        let limits = DecodeLimits { max_dimension: 100, max_pixels: 1_000_000 };
        let err = prepare(&png(101, 10), limits, 224).unwrap_err();
        assert!(matches!(err, ImageError::TooLarge { width: 101, height: 10, .. }), "{err:?}");
        let limits = DecodeLimits { max_dimension: 1000, max_pixels: 5_000 };
        let err = prepare(&png(100, 100), limits, 224).unwrap_err();
        assert!(err.to_string().contains("5000 pixels"), "{err}");
    }

    #[test]
    fn reports_a_truncated_png_as_corrupt() {
        let bytes = png(64, 64);
        let err = prepare(&bytes[..bytes.len() / 2], DecodeLimits::default(), 224).unwrap_err();
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
        let prepared = prepare(&bytes, DecodeLimits::default(), 224).expect("prepares");
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
        let prepared = prepare(&out.into_inner(), DecodeLimits::default(), 224).expect("prepares");
        // A box window of non-integer width (1000/224 ≈ 4.5 px) covers 2 or 3 white stripes, so
        // averages land within about ±26 levels of mid grey; sampling gives 0 or 255.
        for level in red_levels(&prepared.tensor) {
            assert!((level - 127.5).abs() < 40.0, "a pixel at level {level}, not averaged");
        }
    }

    #[test]
    fn a_jpeg_with_data_after_its_end_marker_is_accepted() {
        let mut bytes = big_jpeg();
        bytes.extend_from_slice(b"camera maker's trailer");
        prepare(&bytes, DecodeLimits::default(), 224).expect("trailing data after the end marker is fine");
    }

    #[test]
    fn a_greyscale_jpeg_is_prepared_as_rgb() {
        let grey = image::GrayImage::from_fn(300, 300, |x, _| image::Luma([(x % 256) as u8]));
        let mut out = Cursor::new(Vec::new());
        grey.write_to(&mut out, ImageFormat::Jpeg).expect("encoding a JPEG in memory");
        let prepared = prepare(&out.into_inner(), DecodeLimits::default(), 224).expect("prepares");
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
            let err = prepare(&bytes[..cut], DecodeLimits::default(), 224).unwrap_err();
            assert!(matches!(err, ImageError::Corrupt { format: "JPEG", .. }), "{err:?}");
            assert!(err.to_string().contains("truncated"), "{err}");
        }
    }
}
