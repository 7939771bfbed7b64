//! PNG encoding of an 8-bit RGB buffer: signature, IHDR, one IDAT (zlib stream from
//! [`super::deflate`]), IEND, each chunk with its CRC-32. Rows use filter type 0 (none); the
//! compressor's matches at distance 3 and at one row's length take flat colour and repeated rows
//! down to a few bits.

use super::deflate::zlib_compress;

pub const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

const CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
}

/// Continues a CRC-32 (the reflected 0xEDB88320 polynomial, as PNG and zlib use) over `bytes`;
/// start from 0.
pub fn crc32_update(crc: u32, bytes: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in bytes {
        c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// CRC-32 of `bytes` (PNG chunks, zip, gzip).
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32_update(0, bytes)
}

/// Adler-32 of `bytes` (the zlib trailer).
pub fn adler32(bytes: &[u8]) -> u32 {
    const MOD: u32 = 65521;
    let (mut a, mut b) = (1u32, 0u32);
    // 5552 is the most bytes that cannot overflow u32 before the modulo.
    for chunk in bytes.chunks(5552) {
        for &x in chunk {
            a += x as u32;
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    b << 16 | a
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32_update(crc32(kind), data);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Encodes `rgb` (`width * height * 3` bytes, rows top to bottom) as a PNG file.
///
/// # Panics
/// If the buffer's length does not match the size, or a side is zero.
pub fn encode_png(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
    assert!(width > 0 && height > 0, "PNG sides must be positive");
    let stride = width as usize * 3;
    assert_eq!(rgb.len(), stride * height as usize, "RGB buffer size");
    let mut raw = Vec::with_capacity((stride + 1) * height as usize);
    for row in rgb.chunks_exact(stride) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // bit depth 8, colour type 2 (RGB), deflate, filter method 0, no interlace
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let idat = zlib_compress(&raw);
    let mut out = Vec::with_capacity(idat.len() + 64);
    out.extend_from_slice(&SIGNATURE);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A decoded test image.
#[cfg(test)]
pub struct Decoded {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
    /// Chunk types in file order.
    pub chunks: Vec<String>,
    /// The concatenated IDAT data (a zlib stream).
    pub idat: Vec<u8>,
}

#[cfg(test)]
impl Decoded {
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }
}

/// Test-only decoder for what [`encode_png`] writes: checks the signature, every chunk's CRC,
/// IHDR's fields, the zlib stream (with its Adler-32) and the row filters.
#[cfg(test)]
pub fn decode_png(png: &[u8]) -> Result<Decoded, String> {
    use super::deflate::zlib_decompress;
    if png.get(..8) != Some(&SIGNATURE[..]) {
        return Err("bad signature".into());
    }
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    let (mut pos, mut chunks, mut idat, mut size) = (8, Vec::new(), Vec::new(), None);
    while pos < png.len() {
        let head = png.get(pos..pos + 8).ok_or("truncated chunk header")?;
        let len = be(&head[..4]) as usize;
        let body = png.get(pos + 4..pos + 8 + len).ok_or("truncated chunk")?;
        let crc = be(png
            .get(pos + 8 + len..pos + 12 + len)
            .ok_or("missing crc")?);
        if crc32(body) != crc {
            return Err(format!("bad CRC in chunk {}", pos));
        }
        let kind = String::from_utf8_lossy(&body[..4]).into_owned();
        let data = &body[4..];
        match kind.as_str() {
            "IHDR" => {
                if data.len() != 13 || data[8..] != [8, 2, 0, 0, 0] {
                    return Err(format!("unexpected IHDR {data:?}"));
                }
                size = Some((be(&data[..4]), be(&data[4..8])));
            }
            "IDAT" => idat.extend_from_slice(data),
            _ => {}
        }
        chunks.push(kind);
        pos += 12 + len;
    }
    if chunks.first().map(String::as_str) != Some("IHDR")
        || chunks.last().map(String::as_str) != Some("IEND")
    {
        return Err(format!("chunk order {chunks:?}"));
    }
    let (width, height) = size.ok_or("no IHDR")?;
    let raw = zlib_decompress(&idat)?;
    let stride = width as usize * 3;
    if raw.len() != (stride + 1) * height as usize {
        return Err(format!("decoded {} bytes", raw.len()));
    }
    let mut rgb = Vec::with_capacity(stride * height as usize);
    for row in raw.chunks_exact(stride + 1) {
        if row[0] != 0 {
            return Err(format!("filter {} not expected", row[0]));
        }
        rgb.extend_from_slice(&row[1..]);
    }
    Ok(Decoded {
        width,
        height,
        rgb,
        chunks,
        idat,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_the_reference_values() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32_update(crc32(b"12345"), b"6789"), 0xCBF4_3926);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
        assert_eq!(adler32(b""), 1);
        // Long input exercises the deferred modulo.
        let long = vec![0xffu8; 100_000];
        let (mut a, mut b) = (1u64, 0u64);
        for &x in &long {
            a = (a + x as u64) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!(adler32(&long), (b << 16 | a) as u32);
        // The IEND chunk's well-known CRC.
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
    }

    #[test]
    fn png_structure_round_trips() {
        let (w, h) = (7u32, 5u32);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
        let png = encode_png(w, h, &rgb);
        assert_eq!(&png[..8], &SIGNATURE);
        // IHDR is the first chunk, 13 bytes, with the sizes big-endian.
        assert_eq!(&png[8..16], b"\0\0\0\x0dIHDR");
        assert_eq!(&png[16..24], &[0, 0, 0, 7, 0, 0, 0, 5]);
        assert_eq!(&png[24..29], &[8, 2, 0, 0, 0]);
        assert_eq!(&png[png.len() - 12..], b"\0\0\0\0IEND\xae\x42\x60\x82");
        let d = decode_png(&png).unwrap();
        assert_eq!((d.width, d.height), (w, h));
        assert_eq!(d.chunks, ["IHDR", "IDAT", "IEND"]);
        assert_eq!(d.rgb, rgb);
        assert_eq!(d.pixel(1, 0), [rgb[3], rgb[4], rgb[5]]);
        let mut bad = png.clone();
        bad[40] ^= 1;
        assert!(decode_png(&bad).is_err());
    }
}
