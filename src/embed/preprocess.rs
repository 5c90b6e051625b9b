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
}
