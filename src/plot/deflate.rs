//! A small zlib (RFC 1950) / deflate (RFC 1951) compressor: greedy LZ77 with hash chains over a
//! 32 KiB window, coded in one fixed-Huffman block; falls back to stored blocks when that would
//! be smaller (incompressible data). Charts are mostly flat colour, so this compresses them well.
//! Tests carry a tiny inflater (stored and fixed blocks) to check the stream.

use super::png::adler32;

const WINDOW: usize = 32 * 1024;
const HASH_BITS: u32 = 15;
const MAX_CHAIN: usize = 48;
const MIN_MATCH: usize = 3;
const MAX_MATCH: usize = 258;

const LEN_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

/// Writes bits least significant first, as deflate packs them.
struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    fn bits(&mut self, value: u32, count: u32) {
        self.acc |= (value as u64) << self.n;
        self.n += count;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code: sent most significant bit first.
    fn code(&mut self, code: u32, len: u32) {
        self.bits(code.reverse_bits() >> (32 - len), len);
    }

    fn flush(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// The fixed literal/length code of RFC 1951 section 3.2.6.
fn fixed_litlen(w: &mut BitWriter, sym: u32) {
    match sym {
        0..=143 => w.code(0x30 + sym, 8),
        144..=255 => w.code(0x190 + sym - 144, 9),
        256..=279 => w.code(sym - 256, 7),
        _ => w.code(0xc0 + sym - 280, 8),
    }
}

fn emit_match(w: &mut BitWriter, len: usize, dist: usize) {
    let li = LEN_BASE.partition_point(|&b| b as usize <= len) - 1;
    fixed_litlen(w, 257 + li as u32);
    w.bits((len - LEN_BASE[li] as usize) as u32, LEN_EXTRA[li] as u32);
    let di = DIST_BASE.partition_point(|&b| b as usize <= dist) - 1;
    w.code(di as u32, 5);
    w.bits(
        (dist - DIST_BASE[di] as usize) as u32,
        DIST_EXTRA[di] as u32,
    );
}

fn hash(d: &[u8]) -> usize {
    let v = (d[0] as u32) << 16 | (d[1] as u32) << 8 | d[2] as u32;
    (v.wrapping_mul(0x9E37_79B1) >> (32 - HASH_BITS)) as usize
}

/// One final fixed-Huffman block holding all of `data`.
fn deflate_fixed(data: &[u8]) -> Vec<u8> {
    let mut w = BitWriter {
        out: Vec::with_capacity(data.len() / 8 + 16),
        acc: 0,
        n: 0,
    };
    w.bits(1, 1); // BFINAL
    w.bits(1, 2); // BTYPE = 01, fixed Huffman
    let mut head = vec![usize::MAX; 1 << HASH_BITS];
    let mut prev = vec![usize::MAX; WINDOW];
    let insert = |head: &mut [usize], prev: &mut [usize], i: usize| {
        if i + MIN_MATCH <= data.len() {
            let h = hash(&data[i..]);
            prev[i % WINDOW] = head[h];
            head[h] = i;
        }
    };
    let mut i = 0;
    while i < data.len() {
        let (mut best_len, mut best_dist) = (0, 0);
        if i + MIN_MATCH <= data.len() {
            let max = MAX_MATCH.min(data.len() - i);
            let mut cand = head[hash(&data[i..])];
            let mut chain = 0;
            while cand != usize::MAX && i - cand <= WINDOW && chain < MAX_CHAIN {
                let len = data[cand..]
                    .iter()
                    .zip(&data[i..i + max])
                    .take_while(|(a, b)| a == b)
                    .count();
                if len > best_len {
                    (best_len, best_dist) = (len, i - cand);
                    if len == max {
                        break;
                    }
                }
                let next = prev[cand % WINDOW];
                if next == usize::MAX || next >= cand {
                    break;
                }
                cand = next;
                chain += 1;
            }
        }
        if best_len >= MIN_MATCH {
            emit_match(&mut w, best_len, best_dist);
            for k in i..i + best_len {
                insert(&mut head, &mut prev, k);
            }
            i += best_len;
        } else {
            fixed_litlen(&mut w, data[i] as u32);
            insert(&mut head, &mut prev, i);
            i += 1;
        }
    }
    fixed_litlen(&mut w, 256);
    w.flush()
}

/// Stored (uncompressed) blocks of at most 65535 bytes.
fn deflate_stored(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 65535 * 5 + 5);
    let mut chunks = data.chunks(65535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        out.push(chunks.peek().is_none() as u8); // BFINAL, BTYPE = 00
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// A zlib stream of `data`: header, deflate blocks, Adler-32.
pub fn zlib_compress(data: &[u8]) -> Vec<u8> {
    let fixed = deflate_fixed(data);
    let body = if fixed.len() <= data.len() + 5 {
        fixed
    } else {
        deflate_stored(data)
    };
    zlib_wrap(&body, data)
}

fn zlib_wrap(body: &[u8], data: &[u8]) -> Vec<u8> {
    // CMF 0x78: deflate, 32 KiB window; FLG 0x01 makes CMF*256+FLG a multiple of 31.
    let mut out = Vec::with_capacity(body.len() + 6);
    out.extend_from_slice(&[0x78, 0x01]);
    out.extend_from_slice(body);
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

/// Test-only inflater for what this module writes (stored and fixed blocks); checks the zlib
/// header and the Adler-32.
#[cfg(test)]
pub fn zlib_decompress(z: &[u8]) -> Result<Vec<u8>, String> {
    struct Bits<'a> {
        d: &'a [u8],
        pos: usize,
    }
    impl Bits<'_> {
        fn bit(&mut self) -> Result<u32, String> {
            let byte = self.d.get(self.pos / 8).ok_or("truncated stream")?;
            let b = (byte >> (self.pos % 8)) & 1;
            self.pos += 1;
            Ok(b as u32)
        }
        fn bits(&mut self, n: u32) -> Result<u32, String> {
            (0..n).try_fold(0, |v, k| Ok(v | self.bit()? << k))
        }
        fn code(&mut self, n: u32) -> Result<u32, String> {
            (0..n).try_fold(0, |v, _| Ok(v << 1 | self.bit()?))
        }
    }
    if z.len() < 6 || z[0] & 0x0f != 8 || !(z[0] as u32 * 256 + z[1] as u32).is_multiple_of(31) {
        return Err("bad zlib header".into());
    }
    let mut r = Bits { d: z, pos: 16 };
    let mut out = Vec::new();
    loop {
        let last = r.bit()?;
        match r.bits(2)? {
            0 => {
                r.pos = r.pos.div_ceil(8) * 8;
                let len = r.bits(16)? as usize;
                if r.bits(16)? as usize != !len & 0xffff {
                    return Err("stored length check".into());
                }
                let start = r.pos / 8;
                out.extend_from_slice(z.get(start..start + len).ok_or("truncated stored")?);
                r.pos += len * 8;
            }
            1 => loop {
                let mut c = r.code(7)?;
                let sym = if c <= 23 {
                    256 + c
                } else {
                    c = c << 1 | r.bit()?;
                    match c {
                        48..=191 => c - 48,
                        192..=199 => 280 + c - 192,
                        _ => 144 + (c << 1 | r.bit()?) - 400,
                    }
                };
                match sym {
                    0..=255 => out.push(sym as u8),
                    256 => break,
                    257..=285 => {
                        let li = (sym - 257) as usize;
                        let len = LEN_BASE[li] as usize + r.bits(LEN_EXTRA[li] as u32)? as usize;
                        let di = r.code(5)? as usize;
                        let base = *DIST_BASE.get(di).ok_or("bad distance code")? as usize;
                        let dist = base + r.bits(DIST_EXTRA[di] as u32)? as usize;
                        if dist > out.len() {
                            return Err("distance too far back".into());
                        }
                        for _ in 0..len {
                            out.push(out[out.len() - dist]);
                        }
                    }
                    _ => return Err(format!("bad literal/length symbol {sym}")),
                }
            },
            t => return Err(format!("block type {t} not supported")),
        }
        if last == 1 {
            break;
        }
    }
    let at = r.pos.div_ceil(8);
    let tail: [u8; 4] = z
        .get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .ok_or("missing adler")?;
    if u32::from_be_bytes(tail) != adler32(&out) {
        return Err("adler-32 mismatch".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Vec<u8>> {
        let mut lcg = 12345u32;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                lcg = lcg.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (lcg >> 24) as u8
            })
            .collect();
        let text = b"win rate of response tuning vs instruction tuning; ".repeat(500);
        let flat = vec![0xffu8; 300_000];
        let mut rows = Vec::new();
        for y in 0..300u32 {
            rows.push(0);
            rows.extend((0..400u32).flat_map(|x| [(x / 7) as u8, (y / 3) as u8, 200]));
        }
        vec![
            vec![],
            b"a".to_vec(),
            b"abcabcabcabcX".to_vec(),
            noise,
            text,
            flat,
            rows,
        ]
    }

    #[test]
    fn round_trips_fixed_and_stored() {
        for data in samples() {
            let z = zlib_compress(&data);
            assert_eq!(zlib_decompress(&z).unwrap(), data, "len {}", data.len());
            let stored = zlib_wrap(&deflate_stored(&data), &data);
            assert_eq!(zlib_decompress(&stored).unwrap(), data);
            let fixed = zlib_wrap(&deflate_fixed(&data), &data);
            assert_eq!(zlib_decompress(&fixed).unwrap(), data);
        }
        let flat = vec![0xffu8; 300_000];
        assert!(
            zlib_compress(&flat).len() < 3000,
            "flat data should compress"
        );
        let noise = &samples()[3];
        assert!(zlib_compress(noise).len() <= noise.len() + 50);
    }

    #[test]
    fn python_zlib_reads_the_stream() {
        let ok = std::process::Command::new("python3")
            .args(["-c", "import zlib"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            eprintln!("SKIPPED: python3 with zlib not available");
            return;
        }
        let dir = std::env::temp_dir().join(format!("implicit-deflate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (k, data) in samples().iter().enumerate() {
            let (zpath, rawpath) = (dir.join(format!("{k}.z")), dir.join(format!("{k}.raw")));
            std::fs::write(&zpath, zlib_compress(data)).unwrap();
            let script = "import sys, zlib\nopen(sys.argv[2], 'wb').write(zlib.decompress(open(sys.argv[1], 'rb').read()))";
            let out = std::process::Command::new("python3")
                .args(["-c", script])
                .arg(&zpath)
                .arg(&rawpath)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(&std::fs::read(&rawpath).unwrap(), data, "sample {k}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
