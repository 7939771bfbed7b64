//! CPython's `random` module, bit for bit: the Mersenne Twister (MT19937) with CPython's seeding
//! of integers and strings, `random()`, `getrandbits`, `randint` and `choices`.
//!
//! Two protocols depend on it: the paper's response ranking draws its negatives with
//! `random.seed(0)` and `random.randint` (john-hewitt/implicit-ins, open_instruct/ratio_eval.py),
//! and AlpacaEval decides whether to swap the two outputs with
//! `random.Random("is_switched_outputs" + instruction + "0").choices([False, True])`
//! (alpaca_eval utils.random_seeded_choice, processors.RandomSwitchTwoColumnsProcessor).

use super::sha512::sha512;

const N: usize = 624;
const M: usize = 397;

/// A `random.Random` instance.
#[derive(Clone)]
pub struct PyRandom {
    mt: [u32; N],
    index: usize,
}

impl PyRandom {
    /// `random.Random(n)` / `random.seed(n)` for a non-negative integer.
    pub fn from_u64(n: u64) -> PyRandom {
        // CPython splits abs(n) into 32-bit words, least significant first; 0 gives [0].
        let key: Vec<u32> = if n >> 32 == 0 {
            vec![n as u32]
        } else {
            vec![n as u32, (n >> 32) as u32]
        };
        Self::from_key(&key)
    }

    /// `random.Random(s)` for a str (seed version 2): the integer whose big-endian bytes are
    /// `s.encode() + sha512(s.encode()).digest()`.
    pub fn from_str_seed(s: &str) -> PyRandom {
        let mut bytes = s.as_bytes().to_vec();
        bytes.extend_from_slice(&sha512(s.as_bytes()));
        // Leading zero bytes do not count towards the integer's length.
        let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        let significant = &bytes[first..];
        // 32-bit words, least significant first: walk the big-endian bytes from the end.
        let mut key: Vec<u32> = significant
            .rchunks(4)
            .map(|chunk| chunk.iter().fold(0u32, |acc, &b| (acc << 8) | b as u32))
            .collect();
        if key.is_empty() {
            key.push(0);
        }
        Self::from_key(&key)
    }

    /// MT19937's `init_by_array`, as CPython's `random_seed` calls it.
    fn from_key(key: &[u32]) -> PyRandom {
        let mut mt = [0u32; N];
        mt[0] = 19_650_218;
        for i in 1..N {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        PyRandom { mt, index: N }
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            for k in 0..N {
                let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % N] & 0x7fff_ffff);
                let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
                self.mt[k] = self.mt[(k + M) % N] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `random()`: a float in [0, 1) with 53 random bits.
    pub fn random(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `getrandbits(k)` for 0 <= k <= 64 (words filled least significant first, as CPython).
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(k <= 64, "getrandbits supports at most 64 bits");
        if k == 0 {
            return 0;
        }
        if k <= 32 {
            return (self.next_u32() >> (32 - k)) as u64;
        }
        let low = self.next_u32() as u64;
        let high = (self.next_u32() >> (64 - k)) as u64;
        low | (high << 32)
    }

    /// `_randbelow(n)`: rejection sampling on `n.bit_length()` random bits.
    pub fn randbelow(&mut self, n: u64) -> u64 {
        assert!(n > 0, "randbelow(0)");
        let k = 64 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// `randint(a, b)`, both ends included.
    pub fn randint(&mut self, a: u64, b: u64) -> u64 {
        assert!(a <= b, "randint with an empty range");
        a + self.randbelow(b - a + 1)
    }

    /// The index `choices(population, k=1)[0]` picks from a population of `n` (no weights):
    /// `floor(random() * n)`.
    pub fn choice_index(&mut self, n: usize) -> usize {
        ((self.random() * n as f64).floor() as usize).min(n.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values printed by CPython 3 (`import random`).
    #[test]
    fn integer_seed_matches_cpython() {
        let mut r = PyRandom::from_u64(0);
        assert_eq!(r.random(), 0.8444218515250481);
        assert_eq!(r.random(), 0.7579544029403025);
        // random.seed(0); [random.randint(0, 1029) for _ in range(12)]
        let mut r = PyRandom::from_u64(0);
        let got: Vec<u64> = (0..12).map(|_| r.randint(0, 1029)).collect();
        assert_eq!(
            got,
            [788, 861, 82, 530, 995, 829, 621, 976, 733, 447, 285, 577]
        );
        let mut r = PyRandom::from_u64(0);
        let got: Vec<u64> = (0..12).map(|_| r.randint(0, 15)).collect();
        assert_eq!(got, [12, 13, 1, 8, 15, 12, 9, 15, 11, 6, 4, 9]);
        let mut r = PyRandom::from_u64(12345);
        let got: Vec<u64> = (0..8).map(|_| r.randint(0, 2)).collect();
        assert_eq!(got, [1, 2, 0, 1, 1, 0, 1, 2]);
        // A seed wider than 32 bits, and getrandbits over 32 bits.
        let mut r = PyRandom::from_u64((1 << 40) + 5);
        assert_eq!(r.random(), 0.5043802970418443);
        assert_eq!(r.getrandbits(40), 727003120297);
        assert_eq!(r.randint(0, 6), 0);
    }

    #[test]
    fn string_seed_matches_cpython() {
        let mut r = PyRandom::from_str_seed("abc");
        assert_eq!(r.random(), 0.7720246314157545);
        assert_eq!(r.getrandbits(32), 2397318194);
        assert_eq!(PyRandom::from_str_seed("").random(), 0.9602256525641875);
        // A leading NUL byte does not count in the integer (it is trimmed).
        assert_eq!(PyRandom::from_str_seed("\0").random(), 0.761237843064138);
        // random.Random("is_switched_outputs" + instruction + "0").choices([False, True])[0]
        let seed = "is_switched_outputsHow did US states get their names?0";
        assert_eq!(PyRandom::from_str_seed(seed).choice_index(2), 1);
    }
}
