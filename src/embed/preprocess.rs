//! Bytes → checked, decoded, resized, normalised model input.
//!
//! Every image that reaches the model passes through here, whether it came from a folder,
//! an upload or (later) a bucket, so the limits that keep hostile files harmless live here too.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader, Limits, imageops::FilterType};

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

    if format == ImageFormat::Jpeg
        && let Some(decoded) = decode_jpeg_reduced(bytes, width, height, input_size, limits)
    {
        let decoded = decoded.map_err(|detail| ImageError::Corrupt { format: format_name, detail })?;
        return Ok(PreparedImage { width, height, format, tensor: to_tensor(&decoded, input_size) });
    }

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut decoder_limits = Limits::default();
    decoder_limits.max_image_width = Some(limits.max_dimension);
    decoder_limits.max_image_height = Some(limits.max_dimension);
    // RGBA16 is the widest buffer a PNG can decode to: 8 bytes a pixel, plus headroom for the decoder.
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(decoder_limits);
    let decoded = reader.decode().map_err(corrupt)?;

    Ok(PreparedImage { width, height, format, tensor: to_tensor(&decoded, input_size) })
}

/// A JPEG at least twice the model input on both sides is decoded at 1/2, 1/4 or 1/8 scale
/// straight from its DCT coefficients, the smallest that still covers the input: most of the
/// inverse-DCT and colour work is skipped, and decoding is what competes with inference for the
/// cores. The model sees the same 224×224 area-averaged image either way. `None`: not worth it
/// (small image) or a pixel format this path does not handle; the full decoder takes over.
fn decode_jpeg_reduced(
    bytes: &[u8],
    width: u32,
    height: u32,
    input_size: u32,
    limits: DecodeLimits,
) -> Option<Result<DynamicImage, String>> {
    if width < 2 * input_size || height < 2 * input_size {
        return None;
    }
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    decoder.set_max_decoding_buffer_size(usize::try_from(limits.max_pixels.saturating_mul(4)).unwrap_or(usize::MAX));
    if let Err(error) = decoder.read_info() {
        return Some(Err(error.to_string()));
    }
    let side = u16::try_from(input_size).unwrap_or(u16::MAX);
    let (scaled_width, scaled_height) = match decoder.scale(side, side) {
        Ok(size) => (u32::from(size.0), u32::from(size.1)),
        Err(error) => return Some(Err(error.to_string())),
    };
    let pixel_format = decoder.info()?.pixel_format;
    let pixels = match decoder.decode() {
        Ok(pixels) => pixels,
        Err(error) => return Some(Err(error.to_string())),
    };
    let image = match pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => {
            image::RgbImage::from_raw(scaled_width, scaled_height, pixels).map(DynamicImage::ImageRgb8)
        }
        jpeg_decoder::PixelFormat::L8 => {
            image::GrayImage::from_raw(scaled_width, scaled_height, pixels).map(DynamicImage::ImageLuma8)
        }
        // CMYK and 16-bit greyscale JPEGs are rare: the full decoder handles them.
        jpeg_decoder::PixelFormat::CMYK32 | jpeg_decoder::PixelFormat::L16 => return None,
    };
    Some(image.ok_or_else(|| "decoded pixel buffer does not match the image size".to_string()))
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
fn to_tensor(image: &DynamicImage, size: u32) -> Vec<f32> {
    let resized = if image.width() >= size && image.height() >= size {
        // Area-averaging integer downscale: much faster than a filtered resize for large photos.
        image.thumbnail_exact(size, size)
    } else {
        image.resize_exact(size, size, FilterType::Triangle)
    };
    let rgb = resized.to_rgb8();
    let plane = (size * size) as usize;
    let mut tensor = vec![0.0f32; 3 * plane];
    for (i, pixel) in rgb.pixels().enumerate() {
        for channel in 0..3 {
            let value = f32::from(pixel.0[channel]) / 255.0;
            tensor[channel * plane + i] = (value - MEAN[channel]) / STD[channel];
        }
    }
    tensor
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

    /// A smooth photo-like 1024×768 JPEG (large enough for reduced decoding).
    fn big_jpeg() -> Vec<u8> {
        let image =
            image::RgbImage::from_fn(1024, 768, |x, y| image::Rgb([(x / 4) as u8, (y / 3) as u8, ((x + y) / 8) as u8]));
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Jpeg).expect("encoding a JPEG in memory");
        out.into_inner()
    }

    #[test]
    fn a_large_jpeg_decoded_at_reduced_scale_gives_the_model_the_same_input() {
        let bytes = big_jpeg();
        let reduced = prepare(&bytes, DecodeLimits::default(), 224).expect("prepares");
        assert_eq!((reduced.width, reduced.height), (1024, 768), "the original size is reported");
        let full = to_tensor(&image::load_from_memory(&bytes).expect("decodes"), 224);
        let mean_difference: f32 =
            reduced.tensor.iter().zip(&full).map(|(a, b)| (a - b).abs()).sum::<f32>() / full.len() as f32;
        // Normalised units (1/255 ≈ 0.017 per level): within a couple of grey levels on average.
        assert!(mean_difference < 0.05, "mean difference {mean_difference}");
    }

    #[test]
    fn a_truncated_large_jpeg_is_reported_as_corrupt() {
        let bytes = big_jpeg();
        let err = prepare(&bytes[..bytes.len() / 3], DecodeLimits::default(), 224).unwrap_err();
        assert!(matches!(err, ImageError::Corrupt { format: "JPEG", .. }), "{err:?}");
    }
}
