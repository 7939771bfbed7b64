//! SHA-512 (the `sha2` crate): CPython seeds `random.Random(str)` with a string's UTF-8 bytes and
//! their SHA-512 (`eval::pyrandom`), and experiment and journal fingerprints use it too.

use sha2::{Digest, Sha512};

/// The SHA-512 digest of `bytes`.
pub fn sha512(bytes: &[u8]) -> [u8; 64] {
    Sha512::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn matches_hashlib() {
        // hashlib.sha512(b"abc").hexdigest() and hashlib.sha512(b"a" * 200).hexdigest()
        assert_eq!(
            hex(&sha512(b"abc")),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
        assert_eq!(
            hex(&sha512(&[b'a'; 200])),
            "4b11459c33f52a22ee8236782714c150a3b2c60994e9acee17fe68947a3e6789\
             f31e7668394592da7bef827cddca88c4e6f86e4df7ed1ae6cba71f3e98faee9f"
        );
    }
}
