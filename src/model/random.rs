//! Normal samples for random-initialised weights: Marsaglia and Tsang's ziggurat over a
//! xoshiro256++ stream seeded through splitmix64. Hand-written rather than a crate so the bytes
//! `implicit init` writes for a seed are fixed by this file alone.

/// `n` values normal(0, std), by Marsaglia and Tsang's ziggurat (256 layers): one 64-bit
/// draw per value on the fast path (about 99% of values), exp/ln only at the edges and tail.
pub(crate) fn normals(rng: &mut Xoshiro256pp, n: usize, std: f32, mut put: impl FnMut(usize, f32)) {
    let z = ziggurat();
    for i in 0..n {
        put(i, (z.sample(rng) as f32) * std);
    }
}

/// The ziggurat's layer edges `x` (x[1] = R, the tail's start; x[256] = 0) and the standard
/// normal's unnormalised density there, `f`.
struct Ziggurat {
    x: [f64; 257],
    f: [f64; 257],
}

/// Where the tail begins, and each layer's area, for 256 layers (Marsaglia and Tsang, 2000).
const ZIG_R: f64 = 3.654_152_885_361_009;
const ZIG_V: f64 = 0.004_928_673_233_99;

fn ziggurat() -> &'static Ziggurat {
    static Z: std::sync::OnceLock<Ziggurat> = std::sync::OnceLock::new();
    Z.get_or_init(|| {
        let pdf = |x: f64| (-0.5 * x * x).exp();
        let mut x = [0.0; 257];
        x[0] = ZIG_V / pdf(ZIG_R);
        x[1] = ZIG_R;
        for i in 1..255 {
            x[i + 1] = (-2.0 * (ZIG_V / x[i] + pdf(x[i])).ln()).sqrt();
        }
        x[256] = 0.0;
        Ziggurat { x, f: x.map(pdf) }
    })
}

impl Ziggurat {
    #[inline]
    fn sample(&self, rng: &mut Xoshiro256pp) -> f64 {
        // A uniform in (0, 1) from the top 53 bits.
        let open01 = |bits: u64| ((bits >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
        loop {
            let bits = rng.next_u64();
            let i = (bits & 0xff) as usize;
            let u = 2.0 * open01(bits) - 1.0;
            let x = u * self.x[i];
            if x.abs() < self.x[i + 1] {
                return x;
            }
            if i == 0 {
                // The tail beyond R (Marsaglia, 1964).
                loop {
                    let t = open01(rng.next_u64()).ln() / ZIG_R;
                    let y = open01(rng.next_u64()).ln();
                    if -2.0 * y >= t * t {
                        return if u < 0.0 { t - ZIG_R } else { ZIG_R - t };
                    }
                }
            }
            let c = open01(rng.next_u64());
            if self.f[i + 1] + (self.f[i] - self.f[i + 1]) * c < (-0.5 * x * x).exp() {
                return x;
            }
        }
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xoshiro256++ (Blackman and Vigna).
pub(crate) struct Xoshiro256pp([u64; 4]);

impl Xoshiro256pp {
    /// The stream of chunk `chunk` of tensor `tensor` under `seed`: the three are hashed in turn
    /// through splitmix64, whose output then fills the state.
    pub(crate) fn for_chunk(seed: u64, tensor: u64, chunk: u64) -> Xoshiro256pp {
        let mut h = seed;
        let mut h = splitmix64(&mut h) ^ tensor;
        let mut h = splitmix64(&mut h) ^ chunk;
        let mut h = splitmix64(&mut h);
        Xoshiro256pp([
            splitmix64(&mut h),
            splitmix64(&mut h),
            splitmix64(&mut h),
            splitmix64(&mut h),
        ])
    }

    #[inline]
    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_have_unit_moments() {
        let mut rng = Xoshiro256pp::for_chunk(7, 3, 1);
        let mut v = vec![0.0f32; 200_001];
        normals(&mut rng, v.len(), 1.0, |i, x| v[i] = x);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let within1 = v.iter().filter(|x| x.abs() < 1.0).count() as f64 / n;
        let beyond3 = v.iter().filter(|x| x.abs() > 3.0).count() as f64 / n;
        let beyond_r = v.iter().filter(|x| x.abs() as f64 > ZIG_R).count();
        let kurtosis = v.iter().map(|&x| (x as f64 - mean).powi(4)).sum::<f64>() / n / var / var;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var.sqrt() - 1.0).abs() < 0.01, "std {}", var.sqrt());
        assert!((within1 - 0.6827).abs() < 0.005, "P(|x|<1) {within1}");
        assert!((beyond3 - 0.0027).abs() < 0.0006, "P(|x|>3) {beyond3}");
        assert!((kurtosis - 3.0).abs() < 0.05, "kurtosis {kurtosis}");
        // The tail (P(|x| > R) = 2.6e-4) is reached.
        assert!((20..120).contains(&beyond_r), "{beyond_r} beyond R");
    }
}
