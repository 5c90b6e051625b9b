//! What a file's own structure says, read before any decoder runs: the checks that keep a
//! small hostile file from making a decoder reserve memory or time out of proportion to it.
//!
//! Each reads the format's container (JPEG markers, TIFF directory entries, GIF blocks) as its
//! specification lays it out, without decoding a pixel, and allocates nothing beyond a few
//! bytes. Why each exists is a decoder's behaviour measured here (docs/reliability.md):
//! - JPEG: thousands of tiny progressive scans cost minutes of CPU;
//! - TIFF: the `tiff` crate reserves room for a directory entry's values from the count the
//!   entry claims, before reading them and under its own default limit (256 MiB), not
//!   `prepare`'s; a 284-byte file claimed 5.2 million values and got 168 MB;
//! - GIF: the `image` crate decodes a first frame larger than the canvas into a buffer of the
//!   frame's size; a 60-byte GIF with an 8×6 canvas and a 65,288×231 frame got 75 MB.

/// The scans of a JPEG's main image, counted by walking its markers from the start to its
/// end-of-image marker, or why the walk could not get there (a truncated file).
///
/// Marker segments carry their length, so whatever they hold (an EXIF thumbnail with its own
/// markers, an ICC profile, maker notes) is stepped over; a scan's data runs to the next marker
/// (inside it a 0xFF is always followed by 0x00 or a restart marker); nothing after the end
/// marker is read, so a motion photo's video, appended there, neither counts nor hides the end.
/// Stray bytes where a marker should start are skipped, as libjpeg skips them.
pub fn jpeg_main_image_scans(bytes: &[u8]) -> Result<usize, String> {
    const TRUNCATED: &str = "the file is truncated (it ends before its end-of-image marker)";
    let truncated = || TRUNCATED.to_string();
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Err("it does not start with a JPEG start-of-image marker".to_string());
    }
    let (mut at, mut scans) = (2, 0);
    loop {
        // The next marker: stray bytes skipped, then fill bytes (a run of 0xFF).
        at += bytes.get(at..).and_then(|rest| rest.iter().position(|&b| b == 0xFF)).ok_or_else(truncated)?;
        while bytes.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let marker = *bytes.get(at + 1).ok_or_else(truncated)?;
        at += 2;
        match marker {
            0xD9 => return Ok(scans),
            // Markers without a length (TEM, restarts) and a stray stuffed byte.
            0x00 | 0x01 | 0xD0..=0xD7 => {}
            _ => {
                let length = bytes.get(at..at + 2).ok_or_else(truncated)?;
                let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
                if length < 2 {
                    return Err(format!("a marker segment (0xFF{marker:02X}) claims a length of {length}"));
                }
                at += length;
                if marker == 0xDA {
                    scans += 1;
                    loop {
                        at += bytes
                            .get(at..)
                            .and_then(|rest| rest.iter().position(|&b| b == 0xFF))
                            .ok_or_else(truncated)?;
                        match *bytes.get(at + 1).ok_or_else(truncated)? {
                            0x00 | 0xD0..=0xD7 => at += 2,
                            _ => break,
                        }
                    }
                }
            }
        }
    }
}

/// A TIFF's first directory (the one decoded), each entry checked against the file's length:
/// an entry whose values would lie past the end of the file is refused before a decoder
/// reserves room for them. TIFF 6.0 stores an entry's values at its offset in the file (or in
/// the entry itself when they fit in four bytes), so a file cannot hold values beyond its end;
/// BigTIFF's wider header and entries are read the same way. Entries of types the
/// specification does not define are left to the decoder, which skips them, in a classic TIFF;
/// in a BigTIFF they are refused, because the `tiff` crate (0.11) skips such an entry as if it
/// were a classic one, 8 bytes short, and reads every entry after it from the wrong place: the
/// fuzzer's BigTIFFs held 86 to 268 MB through entries this walk never saw.
pub fn tiff_first_directory_within_file(bytes: &[u8]) -> Result<(), String> {
    let little_endian = match bytes.get(..2) {
        Some(b"II") => true,
        Some(b"MM") => false,
        _ => return Err("it does not start with a TIFF byte-order mark".to_string()),
    };
    let number = |at: usize, width: usize| -> Option<u64> {
        let field = bytes.get(at..at.checked_add(width)?)?;
        let mut value = [0u8; 8];
        if little_endian {
            value[..width].copy_from_slice(field);
            Some(u64::from_le_bytes(value))
        } else {
            value[8 - width..].copy_from_slice(field);
            Some(u64::from_be_bytes(value))
        }
    };
    // Classic TIFF: 4-byte offsets and counts, 12-byte entries with 4 bytes for the values;
    // BigTIFF: 8-byte offsets and counts, 20-byte entries with 8 bytes for the values.
    let (offset_width, entry_count_width, entry_width, directory) = match number(2, 2) {
        Some(42) => (4, 2, 12, number(4, 4)),
        Some(43) => (8, 8, 20, number(8, 8)),
        _ => return Err("its header names no TIFF version (42, or 43 for BigTIFF)".to_string()),
    };
    let past_the_end = |what: String| format!("{what}, past the end of the {}-byte file", bytes.len());
    let directory = directory.and_then(|at| usize::try_from(at).ok()).unwrap_or(usize::MAX);
    let entries = number(directory, entry_count_width)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| past_the_end(format!("its first directory is at byte {directory}")))?;
    let first_entry = directory + entry_count_width;
    let entries_end = entries.checked_mul(entry_width).and_then(|size| size.checked_add(first_entry));
    if entries_end.is_none_or(|end| end > bytes.len()) {
        return Err(past_the_end(format!("its first directory claims {entries} entries at byte {directory}")));
    }
    for entry in (0..entries).map(|i| first_entry + i * entry_width) {
        let (Some(tag), Some(kind), Some(count)) =
            (number(entry, 2), number(entry + 2, 2), number(entry + 4, offset_width))
        else {
            continue; // unreachable: the entries were checked to lie within the file
        };
        let Some(value_size) = tiff_value_size(kind) else {
            if offset_width == 8 {
                return Err(format!(
                    "its BigTIFF directory has an entry (tag {tag}) of a type TIFF does not define ({kind}), which the decoder would misread"
                ));
            }
            continue;
        };
        let values_size = count.saturating_mul(value_size);
        if values_size <= offset_width as u64 {
            continue;
        }
        let at = number(entry + 4 + offset_width, offset_width).unwrap_or(u64::MAX);
        if at.checked_add(values_size).is_none_or(|end| end > bytes.len() as u64) {
            return Err(past_the_end(format!(
                "its tag {tag} claims {count} values of {value_size} bytes at byte {at}"
            )));
        }
    }
    Ok(())
}

/// Bytes a value of a TIFF field type takes (TIFF 6.0 section 2, and BigTIFF's 8-byte types).
fn tiff_value_size(kind: u64) -> Option<u64> {
    match kind {
        1 | 2 | 6 | 7 => Some(1),   // BYTE, ASCII, SBYTE, UNDEFINED
        3 | 8 => Some(2),           // SHORT, SSHORT
        4 | 9 | 11 | 13 => Some(4), // LONG, SLONG, FLOAT, IFD
        5 | 10 | 12 => Some(8),     // RATIONAL, SRATIONAL, DOUBLE
        16..=18 => Some(8),         // LONG8, SLONG8, IFD8
        _ => None,
    }
}

/// The width and height of a GIF's first frame (the one decoded), as its image descriptor
/// gives them; `None` for a GIF without frames. Read by the `gif` crate, the decoder `image`
/// runs, so both read the same descriptor; no pixel is decoded.
pub fn gif_first_frame_size(bytes: &[u8]) -> Result<Option<(u32, u32)>, String> {
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::Indexed);
    let mut decoder = options.read_info(std::io::Cursor::new(bytes)).map_err(|e| e.to_string())?;
    let frame = decoder.next_frame_info().map_err(|e| e.to_string())?;
    Ok(frame.map(|frame| (u32::from(frame.width), u32::from(frame.height))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic little-endian TIFF: the header, then one directory of the given entries
    /// (tag, type, count, value or offset) at byte 8, then `tail` bytes.
    fn classic(entries: &[(u16, u16, u32, u32)], tail: usize) -> Vec<u8> {
        let mut bytes = b"II*\0".to_vec();
        bytes.extend_from_slice(&8u32.to_le_bytes());
        bytes.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        for &(tag, kind, count, value) in entries {
            for field in [&tag.to_le_bytes()[..], &kind.to_le_bytes(), &count.to_le_bytes(), &value.to_le_bytes()] {
                bytes.extend_from_slice(field);
            }
        }
        bytes.extend_from_slice(&0u32.to_le_bytes()); // no next directory
        bytes.resize(bytes.len() + tail, 0);
        bytes
    }

    #[test]
    fn values_may_end_exactly_at_the_end_of_the_file_and_not_one_byte_later() {
        // Header 8 + count 2 + one entry 12 + next offset 4 = 26; 16 bytes of values follow.
        let fits = classic(&[(273, 4, 4, 26)], 16);
        assert_eq!(fits.len(), 42);
        assert_eq!(tiff_first_directory_within_file(&fits), Ok(()));
        let over = classic(&[(273, 4, 4, 27)], 16);
        assert_eq!(
            tiff_first_directory_within_file(&over),
            Err("its tag 273 claims 4 values of 4 bytes at byte 27, past the end of the 42-byte file".to_string())
        );
    }

    #[test]
    fn values_held_in_the_entry_itself_point_nowhere() {
        // One LONG, two SHORTs, four BYTEs: each fits the entry's four bytes, whatever they say.
        let inline = classic(&[(256, 4, 1, u32::MAX), (258, 3, 2, u32::MAX), (700, 1, 4, u32::MAX)], 0);
        assert_eq!(tiff_first_directory_within_file(&inline), Ok(()));
    }

    #[test]
    fn entries_of_undefined_types_are_left_to_the_decoder_in_a_classic_tiff_only() {
        assert_eq!(tiff_first_directory_within_file(&classic(&[(999, 77, u32::MAX, u32::MAX)], 0)), Ok(()));
        // BigTIFF: header, one 20-byte entry of type 0, next offset.
        let mut big = b"II\x2b\0\x08\0\0\0".to_vec();
        big.extend_from_slice(&16u64.to_le_bytes());
        big.extend_from_slice(&1u64.to_le_bytes());
        big.extend_from_slice(&999u16.to_le_bytes());
        big.extend_from_slice(&0u16.to_le_bytes());
        big.extend_from_slice(&5u64.to_le_bytes());
        big.extend_from_slice(&0u64.to_le_bytes());
        big.extend_from_slice(&0u64.to_le_bytes());
        let error = tiff_first_directory_within_file(&big).unwrap_err();
        assert!(error.contains("(tag 999) of a type TIFF does not define (0)"), "{error}");
    }

    #[test]
    fn a_directory_past_the_end_or_too_short_for_its_entries_is_refused() {
        let mut far = classic(&[], 0);
        far[4..8].copy_from_slice(&1000u32.to_le_bytes());
        let error = tiff_first_directory_within_file(&far).unwrap_err();
        assert!(error.starts_with("its first directory is at byte 1000, past the end"), "{error}");
        let mut many = classic(&[(256, 4, 1, 64)], 0);
        many[8..10].copy_from_slice(&5000u16.to_le_bytes());
        let error = tiff_first_directory_within_file(&many).unwrap_err();
        assert!(error.starts_with("its first directory claims 5000 entries at byte 8"), "{error}");
    }

    #[test]
    fn bigtiff_counts_and_offsets_are_read_as_eight_bytes_in_either_byte_order() {
        // Big-endian BigTIFF: header (16 bytes), directory at 16 with one 20-byte entry
        // (StripOffsets, LONG8, 2 values at byte 52), next offset (8 bytes), then the values.
        let mut bytes = b"MM\0\x2b\0\x08\0\0".to_vec();
        bytes.extend_from_slice(&16u64.to_be_bytes());
        bytes.extend_from_slice(&1u64.to_be_bytes());
        bytes.extend_from_slice(&273u16.to_be_bytes());
        bytes.extend_from_slice(&16u16.to_be_bytes());
        bytes.extend_from_slice(&2u64.to_be_bytes());
        bytes.extend_from_slice(&52u64.to_be_bytes());
        bytes.extend_from_slice(&0u64.to_be_bytes());
        bytes.extend_from_slice(&[0; 16]);
        assert_eq!(bytes.len(), 68);
        assert_eq!(tiff_first_directory_within_file(&bytes), Ok(()));
        bytes.truncate(67);
        assert_eq!(
            tiff_first_directory_within_file(&bytes),
            Err("its tag 273 claims 2 values of 8 bytes at byte 52, past the end of the 67-byte file".to_string())
        );
    }

    #[test]
    fn gif_first_frame_size_is_its_image_descriptors() {
        // GIF89a, an 8×6 canvas without a colour table, then a 300×2 frame at (0, 0) with a
        // local 2-colour table, an LZW minimum code size and a first data block far too short
        // for 600 pixels: the size is read without decoding them.
        let mut bytes = b"GIF89a\x08\x00\x06\x00\x00\x00\x00".to_vec();
        bytes.extend_from_slice(b"\x2c\x00\x00\x00\x00\x2c\x01\x02\x00\x80\x00\x00\x00\xff\xff\xff");
        bytes.extend_from_slice(b"\x02\x02\x44\x01\x00\x3b");
        assert_eq!(gif_first_frame_size(&bytes), Ok(Some((300, 2))));
        // A GIF without frames has no frame size (the gif crate calls it an early end).
        let frameless = gif_first_frame_size(b"GIF89a\x08\x00\x06\x00\x00\x00\x00\x3b");
        assert!(!matches!(frameless, Ok(Some(_))), "{frameless:?}");
    }
}
