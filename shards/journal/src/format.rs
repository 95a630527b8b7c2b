//! The on-disk format (see `FORMAT.md`): segment names, the 64-byte segment header and the
//! record framing. Pure functions over byte slices so that recovery, the writer and the fuzz
//! target share one definition.

/// Version of the on-disk format written into every segment header; bump it (and `FORMAT.md`)
/// on any incompatible change.
pub const FORMAT_VERSION: u16 = 1;
/// First bytes of every segment file.
pub const MAGIC: [u8; 8] = *b"RMQJSEG\0";
/// Bytes reserved for the segment header; records start here.
pub const HEADER_BYTES: usize = 64;
/// Bytes before a record's payload: len u32, crc u32, seq u64, kind u8.
pub const RECORD_HEADER_BYTES: usize = 17;
/// Records start on 8-byte boundaries so that the len/crc/seq words are aligned.
pub const RECORD_ALIGN: usize = 8;
/// Bytes of a record's fixed words checked for the end-of-data marker (len, crc, seq).
pub const END_MARKER_BYTES: usize = 16;
/// Largest seq accepted, far beyond any real journal; keeps `seq + 1` arithmetic total when
/// recovery meets forged or random values.
pub const MAX_SEQ: u64 = 1 << 62;

const OFF_VERSION: usize = 8;
const OFF_INDEX: usize = 16;
const OFF_FIRST_SEQ: usize = 24;
const OFF_SIZE: usize = 32;
const OFF_HEADER_CRC: usize = 40;

/// Name of the segment file with this index.
pub fn segment_file_name(index: u64) -> String {
    format!("seg-{index:020}.rmj")
}

/// Parses a segment file name; anything else in the directory is not ours and is ignored.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".rmj")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Bytes a record with `payload_len` payload bytes occupies, padding included.
pub fn record_bytes(payload_len: usize) -> usize {
    (RECORD_HEADER_BYTES + payload_len).next_multiple_of(RECORD_ALIGN)
}

/// Largest payload a segment of `segment_bytes` can hold (a record never spans segments).
pub fn max_payload_bytes(segment_bytes: u64) -> usize {
    let room = segment_bytes.saturating_sub(HEADER_BYTES as u64);
    // Round the room down to the alignment: a record of exactly the room must still fit.
    let room = room - room % RECORD_ALIGN as u64;
    let max = room.saturating_sub(RECORD_HEADER_BYTES as u64);
    max.min(u64::from(u32::MAX))
        .try_into()
        .unwrap_or(usize::MAX)
}

/// Writes a segment header into `buf[..HEADER_BYTES]`.
pub fn write_header(buf: &mut [u8], index: u64, first_seq: u64, segment_bytes: u64) {
    let h = &mut buf[..HEADER_BYTES];
    h.fill(0);
    h[..8].copy_from_slice(&MAGIC);
    h[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[OFF_INDEX..OFF_INDEX + 8].copy_from_slice(&index.to_le_bytes());
    h[OFF_FIRST_SEQ..OFF_FIRST_SEQ + 8].copy_from_slice(&first_seq.to_le_bytes());
    h[OFF_SIZE..OFF_SIZE + 8].copy_from_slice(&segment_bytes.to_le_bytes());
    let crc = crc32c::crc32c(&h[..OFF_HEADER_CRC]);
    h[OFF_HEADER_CRC..OFF_HEADER_CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

/// A header whose checksum verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub index: u64,
    /// Seq of the segment's first record; 0 while the segment is a prepared spare (the seq is
    /// only known when the segment becomes active).
    pub first_seq: u64,
    pub segment_bytes: u64,
}

/// Decodes and verifies a segment header.
pub fn read_header(buf: &[u8]) -> Result<Header, String> {
    if buf.len() < HEADER_BYTES {
        return Err(format!(
            "file is {} bytes, shorter than the {HEADER_BYTES}-byte segment header",
            buf.len()
        ));
    }
    if buf[..8] != MAGIC {
        return Err("bad magic".into());
    }
    let stored = u32_at(buf, OFF_HEADER_CRC);
    if crc32c::crc32c(&buf[..OFF_HEADER_CRC]) != stored {
        return Err("header checksum mismatch".into());
    }
    let version = u16::from_le_bytes([buf[OFF_VERSION], buf[OFF_VERSION + 1]]);
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}, this build reads {FORMAT_VERSION}"
        ));
    }
    Ok(Header {
        index: u64_at(buf, OFF_INDEX),
        first_seq: u64_at(buf, OFF_FIRST_SEQ),
        segment_bytes: u64_at(buf, OFF_SIZE),
    })
}

/// Checksum of a record: over the seq bytes, the kind byte and the payload, which are
/// contiguous in the record (`buf[off + 8 .. off + 17 + len]`).
pub fn record_crc(seq_kind_payload: &[u8]) -> u32 {
    crc32c::crc32c(seq_kind_payload)
}

pub fn u32_at(buf: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&buf[off..off + 4]);
    u32::from_le_bytes(w)
}

pub fn u64_at(buf: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&buf[off..off + 8]);
    u64::from_le_bytes(w)
}

/// A record that passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub seq: u64,
    pub kind: u8,
    pub payload_off: usize,
    pub payload_len: usize,
    /// Offset just past the record's padding: where the next record starts.
    pub next: usize,
}

/// What sits at a record offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Slot {
    /// len, crc and seq are all zero: nothing was ever written here (segments are preallocated
    /// with zeros). Seq 0 is never used, which keeps an empty-payload record distinct.
    End,
    Record(Parsed),
    Invalid(String),
}

/// Reads the slot at `off` of a segment image. `buf` holds the bytes present in the file (at
/// most `segment_bytes`); a file shorter than the segment reads as if zero-extended, which is
/// what recovery turns it into.
pub fn read_slot(buf: &[u8], off: usize, segment_bytes: usize) -> Slot {
    debug_assert_eq!(off & (RECORD_ALIGN - 1), 0, "slots are aligned");
    if off + END_MARKER_BYTES > segment_bytes {
        return Slot::End;
    }
    if off + END_MARKER_BYTES > buf.len() {
        // Truncated file: the missing bytes are zeros.
        return if buf.get(off..).unwrap_or(&[]).iter().all(|&b| b == 0) {
            Slot::End
        } else {
            Slot::Invalid("record header cut by the end of the file".into())
        };
    }
    let len = u32_at(buf, off) as usize;
    let crc = u32_at(buf, off + 4);
    let seq = u64_at(buf, off + 8);
    if len == 0 && crc == 0 && seq == 0 {
        return Slot::End;
    }
    let end = off + RECORD_HEADER_BYTES + len;
    if end > segment_bytes {
        return Slot::Invalid(format!("length {len} overruns the segment"));
    }
    if end > buf.len() {
        return Slot::Invalid(format!(
            "length {len} runs past the end of the truncated file"
        ));
    }
    // Appends stop below MAX_SEQ, so no record at or above it was ever written.
    if seq == 0 || seq >= MAX_SEQ {
        return Slot::Invalid(format!("seq {seq} out of range"));
    }
    if record_crc(&buf[off + 8..end]) != crc {
        return Slot::Invalid("record checksum mismatch".into());
    }
    Slot::Record(Parsed {
        seq,
        kind: buf[off + 16],
        payload_off: off + RECORD_HEADER_BYTES,
        payload_len: len,
        next: (end).next_multiple_of(RECORD_ALIGN),
    })
}

/// Whether a valid record with `lo < seq <= hi` starts at `off`. The seq window is checked
/// before the checksum so that scanning garbage at every aligned offset stays cheap.
pub fn valid_record_in_window(
    buf: &[u8],
    off: usize,
    segment_bytes: usize,
    lo: u64,
    hi: u64,
) -> Option<u64> {
    if off + END_MARKER_BYTES > buf.len() {
        return None;
    }
    let seq = u64_at(buf, off + 8);
    if seq <= lo || seq > hi {
        return None;
    }
    match read_slot(buf, off, segment_bytes) {
        Slot::Record(p) => Some(p.seq),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_reject_others() {
        assert_eq!(segment_file_name(7), "seg-00000000000000000007.rmj");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        for bad in [
            "seg-7.rmj",
            "seg-0000000000000000000a.rmj",
            "seg-00000000000000000007.rmj.damaged",
            "seg-99999999999999999999.rmj",
            "notes.txt",
        ] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn header_round_trip_and_checksum() {
        let mut b = [0u8; HEADER_BYTES];
        write_header(&mut b, 3, 42, 4096);
        let h = read_header(&b).unwrap();
        assert_eq!((h.index, h.first_seq, h.segment_bytes), (3, 42, 4096));
        b[20] ^= 1;
        assert!(read_header(&b).is_err());
        assert!(read_header(&b[..10]).is_err());
    }

    #[test]
    fn max_payload_fills_a_segment_exactly() {
        let seg = 4096u64;
        let max = max_payload_bytes(seg);
        assert!(HEADER_BYTES + record_bytes(max) <= seg as usize);
        assert!(HEADER_BYTES + record_bytes(max + 1) > seg as usize);
    }
}
