//! What reaches the model from each format people upload: EXIF orientation applied (all eight
//! values, in every format that carries it), WebP, GIF, BMP and TIFF decoded like PNG, and each
//! format's hostile shapes refused with the right error before they cost memory.
//!
//! These call `preprocess::prepare`, the one function every image passes through on its way to
//! the model (ingest, upload, search), so they hold for all three.

mod common;

/// Counts the bytes each thread holds, to measure what refusing a hostile file costs (the
/// fuzz binary's allocator, shared).
#[path = "../fuzz/src/allocation.rs"]
mod allocation;

use common::formats::*;
use image::ImageFormat;
use imgsearch::embed::preprocess::{self, DecodeLimits, ImageError, JpegScale, PreparedImage};

const INPUT: imgsearch::embed::ModelInput = imgsearch::embed::EFFICIENTNET_LITE0.input;

fn prepare(bytes: &[u8]) -> Result<PreparedImage, ImageError> {
    preprocess::prepare(bytes, DecodeLimits::default(), INPUT)
}

fn mean_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}

#[test]
fn every_exif_orientation_is_applied_before_embedding() {
    let upright = upright();
    for format in [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP] {
        let reference = prepare(&encode_rgb(&upright, format, None)).expect("the upright picture prepares");
        // JPEG re-encodes the turned pixels differently; the others are lossless.
        let tolerance = if format == ImageFormat::Jpeg { 0.03 } else { 0.01 };
        for orientation in 1..=8u8 {
            let stored = stored_for(orientation, &upright);
            let tagged = encode_rgb(&stored, format, Some(exif_orientation(u16::from(orientation))));
            let prepared = prepare(&tagged).unwrap_or_else(|e| panic!("{format:?} orientation {orientation}: {e}"));
            assert_eq!(
                (prepared.width, prepared.height),
                (240, 160),
                "{format:?} orientation {orientation}: the displayed size is reported"
            );
            let difference = mean_difference(&prepared.tensor, &reference.tensor);
            assert!(
                difference < tolerance,
                "{format:?} orientation {orientation}: {difference} from the upright picture"
            );
            // The check can fail: without the tag the same pixels are far from upright.
            if orientation != 1 {
                let untagged = prepare(&encode_rgb(&stored, format, None)).expect("prepares");
                let ignored = mean_difference(&untagged.tensor, &reference.tensor);
                assert!(ignored > 0.1, "{format:?} orientation {orientation} is indistinguishable ({ignored})");
            }
        }
    }
}

#[test]
fn a_damaged_exif_block_is_ignored_not_fatal() {
    let upright = upright();
    let reference = prepare(&encode_rgb(&upright, ImageFormat::Jpeg, None)).expect("prepares");
    let mut far_offset = exif_orientation(6);
    far_offset[4..8].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes()); // IFD offset far past the end
    for exif in [far_offset, exif_orientation(0), exif_orientation(9), b"II*\0".to_vec(), vec![0xFF; 300]] {
        let bytes = encode_rgb(&upright, ImageFormat::Jpeg, Some(exif.clone()));
        let prepared = prepare(&bytes).unwrap_or_else(|e| panic!("EXIF {exif:02x?}: {e}"));
        assert_eq!((prepared.width, prepared.height), (240, 160));
        assert!(mean_difference(&prepared.tensor, &reference.tensor) < 0.01, "EXIF {exif:02x?} turned the picture");
    }
}

#[test]
fn every_supported_format_prepares_like_png() {
    let upright = upright();
    let reference = prepare(&encode_rgb(&upright, ImageFormat::Png, None)).expect("PNG");
    for (format, tolerance) in [
        (ImageFormat::WebP, 0.001),
        (ImageFormat::Bmp, 0.001),
        (ImageFormat::Tiff, 0.001),
        // GIF has a 256-colour palette: the gradient is quantised.
        (ImageFormat::Gif, 0.1),
        (ImageFormat::Jpeg, 0.03),
    ] {
        let bytes = encode_rgb(&upright, format, None);
        assert_eq!(preprocess::sniff_format(&bytes), Ok(format), "recognised from its bytes");
        let prepared = prepare(&bytes).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!((prepared.width, prepared.height, prepared.format), (240, 160, format));
        let difference = mean_difference(&prepared.tensor, &reference.tensor);
        assert!(difference < tolerance, "{format:?}: {difference} from the PNG");
    }
}

#[test]
fn truncated_files_of_every_format_are_corrupt() {
    let upright = upright();
    for (format, name) in [
        (ImageFormat::Png, "PNG"),
        (ImageFormat::WebP, "WebP"),
        (ImageFormat::Gif, "GIF"),
        (ImageFormat::Bmp, "BMP"),
        (ImageFormat::Tiff, "TIFF"),
    ] {
        let bytes = encode_rgb(&upright, format, None);
        // Cut inside the pixel data (a PNG missing only its end chunk still holds every pixel).
        for cut in [bytes.len() / 2, bytes.len() * 9 / 10] {
            let error = prepare(&bytes[..cut])
                .err()
                .unwrap_or_else(|| panic!("{name} cut to {cut} of {} bytes was accepted", bytes.len()));
            assert!(
                matches!(&error, ImageError::Corrupt { format: f, .. } if *f == name),
                "{name} cut at {cut}: {error:?}"
            );
        }
    }
}

/// Headers claiming canvases far beyond the pixel limit, with no pixels behind them: each must
/// be refused from the header, before a pixel buffer exists.
#[test]
fn bomb_dimensions_are_refused_from_the_header_in_every_format() {
    for (name, bytes) in [
        ("BMP 60000²", bmp_claiming(60_000, 60_000)),
        ("BMP 60000² top-down", bmp_claiming(60_000, -60_000)),
        ("GIF 65000²", gif_claiming(65_000)),
        ("WebP 16000²", webp_claiming_16000()),
        ("TIFF 100000²", tiff_claiming(100_000)),
    ] {
        let error = prepare(&bytes).err().unwrap_or_else(|| panic!("{name} was accepted"));
        assert!(matches!(error, ImageError::TooLarge { .. }), "{name}: {error:?}");
    }
}

/// The TIFF claims 200 million strips, whose offset and byte-count tables alone would take
/// 1.6 GB each: it must be refused as corrupt, and the refusal must not have allocated them
/// (measured by this binary's counting allocator on the calling thread).
#[test]
fn a_tiff_claiming_a_huge_strip_count_is_refused_as_corrupt_without_allocating_its_tables() {
    let bytes = tiff_with_absurd_strip_count();
    let (result, peak) = allocation::peak_during(|| prepare(&bytes));
    let error = result.expect_err("refused");
    assert!(matches!(error, ImageError::Corrupt { format: "TIFF", .. }), "{error:?}");
    assert!(peak < 16 << 20, "refusing it allocated {peak} bytes at its peak (its strip tables are 1.6 GB)");
}

/// Small files whose headers claim far more than the file holds, found by fuzzing
/// (fuzz/regressions/decode/): a TIFF directory entry claiming 5.2 million values in a 284-byte
/// file, for which the `tiff` crate reserved 168 MB before reading them, and a GIF whose first
/// frame is 65,288 pixels wide on an 8×6 canvas, decoded into a 75 MB buffer of the frame's
/// size. Each must be refused, for what it claims, at the production limits, before a decoder
/// reserves anything for it.
#[test]
fn small_tiffs_and_gifs_claiming_more_than_they_hold_are_refused_before_a_decoder_reserves_memory() {
    for (name, expected) in [
        (
            "tiff-tag-claiming-5-million-values-in-284-bytes.tiff",
            "its tag 257 claims 5266048 values of 4 bytes at byte 256, past the end of the 284-byte file",
        ),
        (
            "gif-frame-65288-wide-on-an-8x6-canvas.gif",
            "its first frame is 65288×231 pixels, over the limit of 16384 px a side",
        ),
        // The tiff crate skips an undefined type's entry 8 bytes short in a BigTIFF, and reads
        // the entries after it from the wrong place: this one held 268 MB.
        (
            "bigtiff-entry-of-an-undefined-type-misread-as-268-MB.tiff",
            "its BigTIFF directory has an entry (tag 10565) of a type TIFF does not define (257)",
        ),
    ] {
        let bytes = std::fs::read(common::fuzz_regression("decode", name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (result, peak) = allocation::peak_during(|| prepare(&bytes));
        let error = result.err().unwrap_or_else(|| panic!("{name} was accepted"));
        assert!(error.to_string().contains(expected), "{name}: {error}");
        assert!(peak < 1 << 20, "{name}: refusing it allocated {peak} bytes at its peak");
    }
}

/// Browsers show a GIF whose first frame is larger than its canvas (old encoders wrote such
/// files): within the limits it is decoded, clipped to the canvas, not refused.
#[test]
fn a_gif_frame_larger_than_its_canvas_is_clipped_within_the_limits() {
    let mut bytes = encode_rgb(&upright(), ImageFormat::Gif, None);
    // The logical screen descriptor's width and height (little-endian, after "GIF89a").
    bytes[6..10].copy_from_slice(&[120, 0, 80, 0]);
    let prepared = prepare(&bytes).unwrap_or_else(|e| panic!("refused: {e}"));
    assert_eq!((prepared.width, prepared.height), (120, 80));
}

/// TIFFs as other writers lay them out (made by scripts/make_tiff_samples.py with tifffile and
/// Pillow's libtiff): big-endian, BigTIFF, strips and tiles, LZW and Deflate, 16 bits a sample.
/// imgsearch reads each one's first directory itself before decoding; every one must pass that
/// and decode to the picture its PNG holds.
#[test]
fn tiffs_written_by_other_tools_prepare_like_their_png() {
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/image-samples");
    let read = |name: &str| std::fs::read(samples.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let reference = prepare(&read("picture.png")).expect("the PNG prepares");
    for name in [
        "tifffile-big-endian-strips.tif",
        "tifffile-bigtiff.tif",
        "tifffile-bigtiff-big-endian-tiles-deflate.tif",
        "tifffile-16-bit.tif",
        "pillow-libtiff-lzw.tif",
    ] {
        let prepared = prepare(&read(name)).unwrap_or_else(|e| panic!("{name} was refused: {e}"));
        assert_eq!((prepared.width, prepared.height, prepared.format), (64, 48, ImageFormat::Tiff), "{name}");
        let difference = mean_difference(&prepared.tensor, &reference.tensor);
        assert!(difference < 0.001, "{name}: {difference} from the PNG");
    }
}

/// The counting allocator is what the test above measures with: a refusal that allocated the
/// tables would show up here, as decoding a real image's pixels does.
#[test]
fn the_counting_allocator_sees_a_decode_allocate_its_pixels() {
    let bytes =
        encode_rgb(&image::RgbImage::from_pixel(2_000, 2_000, image::Rgb([90, 120, 30])), ImageFormat::Png, None);
    let (result, peak) = allocation::peak_during(|| prepare(&bytes));
    result.expect("a 2000×2000 PNG prepares");
    assert!(peak >= 3 * 2_000 * 2_000, "decoding 2000×2000 RGB pixels allocated only {peak} bytes at its peak");
}

/// Phones' motion photos append a video after the JPEG's end marker; its bytes hold FF DA and
/// FF D9 pairs by chance. The picture is the JPEG before the end marker: decoded as the same
/// picture, neither refused as truncated nor counted as scans. A JPEG cut inside its scan is
/// refused as truncated.
#[test]
fn a_motion_photo_is_its_jpeg_and_a_cut_jpeg_is_truncated() {
    let original = encode_rgb(&upright(), ImageFormat::Jpeg, None);
    let mut motion = original.clone();
    motion.extend_from_slice(b"\x00\x00\x00\x18ftypmp42");
    for _ in 0..600 {
        motion.extend_from_slice(&[0x12, 0xFF, 0xDA, 0x00, 0x08, 0xFF, 0xD9, 0x34]);
    }
    motion.extend_from_slice(&[0xFF, 0xDA]); // a "scan" after the last "end", by chance
    let reference = prepare(&original).expect("the JPEG prepares");
    let prepared = prepare(&motion).unwrap_or_else(|e| panic!("the motion photo was refused: {e}"));
    assert!(mean_difference(&reference.tensor, &prepared.tensor) < 1e-6, "not the same picture");

    let scan = original.windows(2).position(|pair| pair == [0xFF, 0xDA]).expect("a scan");
    let cut = &original[..scan + (original.len() - scan) / 2];
    match prepare(cut) {
        Err(ImageError::Corrupt { format: "JPEG", detail }) => assert!(detail.contains("truncated"), "{detail}"),
        other => panic!("a JPEG cut inside its scan: {other:?}"),
    }
}

/// A JPEG may have at most 500 scans: each scan of a progressive file is a pass over every
/// coefficient, so a file of thousands of tiny scans costs minutes of CPU. The file here is a
/// real progressive JPEG whose last scan is repeated; at 501 scans it is refused naming the
/// limit before any decoder starts, at 500 the count lets it through to the decoders (which
/// may still refuse it: a repeated scan is an odd progression, so TurboJPEG hands it to
/// zune-jpeg, whose own limit is 100 scans).
#[test]
fn a_progressive_jpeg_of_more_than_500_scans_is_refused() {
    let bytes = std::fs::read(common::fuzz_seed("decode", "progressive.jpg")).expect("the progressive seed");
    let at_limit = jpeg_with_scans(&bytes, 500);
    let over = jpeg_with_scans(&bytes, 501);
    match prepare(&over) {
        Err(ImageError::Corrupt { format: "JPEG", detail }) => {
            assert!(detail.contains("it has 501 scans, more than the 500"), "{detail}");
        }
        other => panic!("501 scans: expected a corrupt JPEG naming the scan limit, got {other:?}"),
    }
    if let Err(error) = prepare(&at_limit) {
        assert!(!error.to_string().contains("more than the 500"), "500 scans were counted as too many: {error}");
    }
}

/// `bytes`, a progressive JPEG, with its last scan (and the tables just before it) repeated
/// until it has `scans` scans.
fn jpeg_with_scans(bytes: &[u8], scans: usize) -> Vec<u8> {
    let mut scan_starts = Vec::new(); // where each scan's run of marker segments begins
    let mut at = 2; // after SOI
    let mut run_start = at;
    while at + 4 <= bytes.len() {
        assert_eq!(bytes[at], 0xFF, "a marker at {at}");
        let marker = bytes[at + 1];
        if marker == 0xD9 {
            break;
        }
        let length = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        at += 2 + length;
        if marker == 0xDA {
            scan_starts.push(run_start);
            // Entropy-coded data runs to the next marker that is neither a stuffed 0xFF00
            // nor a restart marker.
            while !(bytes[at] == 0xFF && bytes[at + 1] != 0x00 && !(0xD0..=0xD7).contains(&bytes[at + 1])) {
                at += 1;
            }
            run_start = at;
        }
    }
    let end = at;
    assert_eq!(&bytes[end..end + 2], &[0xFF, 0xD9], "the seed ends with EOI");
    let last = *scan_starts.last().expect("the seed has scans");
    assert!(scan_starts.len() > 1 && scans >= scan_starts.len(), "{} scans in the seed", scan_starts.len());
    let mut out = bytes[..end].to_vec();
    for _ in scan_starts.len()..scans {
        out.extend_from_slice(&bytes[last..end]);
    }
    out.extend_from_slice(&bytes[end..]);
    out
}

#[test]
fn an_animated_gif_is_embedded_from_its_first_frame_only() {
    let prepared = prepare(&animated_gif(5_000)).expect("prepares");
    assert_eq!((prepared.width, prepared.height), (16, 16));
    let plane = 224 * 224;
    let level = |channel: usize| {
        (prepared.tensor[channel * plane + plane / 2] * INPUT.std[channel] + INPUT.mean[channel]) * 255.0
    };
    assert!(level(0) > 200.0 && level(2) < 20.0, "not the red first frame: red {} blue {}", level(0), level(2));
}

#[test]
fn heic_and_avif_are_refused_by_name() {
    for (brand, family) in [(b"heic", "HEIC"), (b"mif1", "HEIC"), (b"avif", "AVIF")] {
        let error = prepare(&iso_bmff_with_brand(brand)).expect_err("refused");
        assert!(matches!(error, ImageError::UnsupportedFormat(_)), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(family) && message.contains("convert it to JPEG"), "{message}");
    }
}

/// A large JPEG is decoded at a reduced DCT scale; its EXIF orientation must still be applied,
/// and the result must match the upright picture decoded in full.
#[test]
fn a_large_jpeg_decoded_at_reduced_scale_is_still_turned_upright() {
    let upright = image::imageops::resize(&upright(), 2400, 1600, image::imageops::FilterType::Nearest);
    let reference = preprocess::prepare_at(
        &encode_rgb(&upright, ImageFormat::Jpeg, None),
        DecodeLimits::default(),
        INPUT,
        JpegScale::Full,
    )
    .expect("the upright picture prepares");
    for orientation in [3u8, 6, 8] {
        let stored = stored_for(orientation, &upright);
        let tagged = encode_rgb(&stored, ImageFormat::Jpeg, Some(exif_orientation(u16::from(orientation))));
        let prepared = prepare(&tagged).unwrap_or_else(|e| panic!("orientation {orientation}: {e}"));
        assert_eq!((prepared.width, prepared.height), (2400, 1600), "orientation {orientation}: displayed size");
        let difference = mean_difference(&prepared.tensor, &reference.tensor);
        assert!(difference < 0.03, "orientation {orientation}: {difference} from the upright picture");
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// What decoding at a reduced scale costs in fidelity, checked on real photographs: the
/// near-duplicate benchmark's originals (Debian's wallpaper photographs, 1920×1080 to
/// 6000×4000, baseline and progressive) must embed as their full decode does.
#[test]
fn jpegs_decoded_at_reduced_scale_embed_like_their_full_decode_on_real_photos() {
    let originals = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/near-duplicates/originals");
    let mut photos: Vec<_> = std::fs::read_dir(&originals)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh --eval-data)", originals.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpg")))
        .collect();
    photos.sort();
    assert!(photos.len() >= 30, "only {} JPEG photos in {}", photos.len(), originals.display());
    let model = common::model();
    let mut cosines = Vec::new();
    for photo in &photos {
        let bytes = std::fs::read(photo).expect("read a photo");
        let at = |scale| {
            preprocess::prepare_at(&bytes, DecodeLimits::default(), INPUT, scale)
                .unwrap_or_else(|e| panic!("{}: {e}", photo.display()))
        };
        let (reduced, full) = (at(JpegScale::Reduced), at(JpegScale::Full));
        assert_eq!((reduced.width, reduced.height), (full.width, full.height), "{}", photo.display());
        let vectors = model.embed_batch(&[reduced, full]).expect("embeds");
        let name = photo.file_name().unwrap_or_default().to_string_lossy().to_string();
        cosines.push((cosine(&vectors[0], &vectors[1]), name));
    }
    cosines.sort_by(|a, b| a.0.total_cmp(&b.0));
    eprintln!("lowest cosines, reduced vs full decode: {:?}", &cosines[..5]);
    assert!(cosines[0].0 >= 0.99, "reduced decodes embed differently: {:?}", &cosines[..5]);
}

/// A CMYK JPEG found by `make fuzz` on which zune-jpeg 0.5.15's upsampler panics (an assertion
/// on its scratch buffer; the family is reported upstream and unfixed): refused as corrupt,
/// saying the decoder failed, instead of taking down the request or the ingest run.
#[test]
fn a_jpeg_that_makes_a_decoder_panic_is_refused_as_corrupt() {
    let bytes = std::fs::read(common::fuzz_regression("decode", "zune-upsampler-panic.jpg")).unwrap();
    let input = preprocess::ModelInput { size: 224, mean: [0.5; 3], std: [0.25; 3] };
    match preprocess::prepare(&bytes, DecodeLimits::default(), input) {
        Err(ImageError::Corrupt { format: "JPEG", detail }) => {
            assert!(detail.contains("the decoder failed"), "{detail}");
        }
        other => panic!("expected a corrupt JPEG, got {other:?}"),
    }
}

/// Damage libjpeg decodes through with a warning, as browsers and Pillow show such files:
/// stray bytes between markers (some cameras and editors write them) and a scan whose data is
/// garbled mid-way. Both are kept; the garbled one embeds close to, but not as, the original.
#[test]
fn jpegs_with_damage_a_browser_shows_are_decoded_not_refused() {
    let original = encode_rgb(&upright(), ImageFormat::Jpeg, None);
    let scan = original.windows(2).position(|pair| pair == [0xFF, 0xDA]).expect("a scan");
    let mut stray = original[..scan].to_vec();
    stray.extend_from_slice(&[0x01, 0x02, 0x03]);
    stray.extend_from_slice(&original[scan..]);
    let mut garbled = original.clone();
    let middle = scan + (original.len() - scan) / 2;
    garbled[middle..middle + 40].fill(0x55);

    let reference = prepare(&original).expect("the original prepares");
    let kept = prepare(&stray).unwrap_or_else(|e| panic!("stray bytes before a marker: {e}"));
    let difference = mean_difference(&reference.tensor, &kept.tensor);
    assert!(difference < 0.02, "stray bytes changed the picture: mean difference {difference}");
    let kept = prepare(&garbled).unwrap_or_else(|e| panic!("a garbled scan: {e}"));
    assert_eq!((kept.width, kept.height), (reference.width, reference.height));
}
