//! The checksum written with each part of an undo record: a 64-bit hash
//! that reads eight bytes at a time, the same on every platform, so a part
//! altered since it was written is found before an undo applies it.

/// Odd multipliers (the golden ratio's, and murmur3's finalizer's).
const K: u64 = 0x9E37_79B9_7F4A_7C15;
const F1: u64 = 0xFF51_AFD7_ED55_8CCD;
const F2: u64 = 0xC4CE_B9FE_1A85_EC53;

/// The hash of `bytes`, started from `seed`.
///
/// Each step (xor a word in, multiply by an odd number, rotate) is a
/// bijection of the state for a given word, and so is the finish: two
/// inputs of one length that differ inside a single 8-byte word always
/// hash apart, so any one flipped bit is found, not just most of them.
pub fn hash(seed: u64, bytes: &[u8]) -> u64 {
    let len = bytes.len() as u64;
    let mut h = seed ^ len.wrapping_mul(K);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h = mix(
            h,
            u64::from_le_bytes(<[u8; 8]>::try_from(w).unwrap_or_default()),
        );
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        // The tail, zero-padded; the length, mixed in above, tells it apart
        // from a longer input that ends in zeros.
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        h = mix(h, u64::from_le_bytes(last));
    }
    finish(h)
}

fn mix(h: u64, word: u64) -> u64 {
    (h ^ word).wrapping_mul(K).rotate_left(29)
}

/// Spreads every bit of the state over the result (murmur3's `fmix64`).
fn finish(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(F1);
    h ^= h >> 33;
    h = h.wrapping_mul(F2);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::hash;

    /// The stored checksums must mean the same in every later version and
    /// on every platform: these values are part of the record's format
    /// (worked out apart from this code, by a separate implementation).
    #[test]
    fn known_values_never_change() {
        assert_eq!(hash(0, b""), 0);
        assert_eq!(hash(0, b"batchsse"), 0x1baf_f2cd_2273_f989);
        assert_eq!(hash(7, b"a run you can take back"), 0x9824_e126_1bbf_d6fe);
    }

    #[test]
    fn one_flipped_bit_anywhere_changes_the_hash() {
        for len in [1usize, 7, 8, 9, 16, 23, 64] {
            let input: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let h = hash(3, &input);
            for bit in 0..len * 8 {
                let mut flipped = input.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert_ne!(hash(3, &flipped), h, "length {len}, bit {bit}");
            }
        }
    }

    #[test]
    fn the_seed_the_length_and_trailing_zeros_count() {
        assert_ne!(hash(1, b"abc"), hash(2, b"abc"));
        assert_ne!(hash(0, b"abc"), hash(0, b"abc\0"));
        assert_ne!(hash(0, &[0; 8]), hash(0, &[0; 16]));
        assert_ne!(hash(0, b""), hash(0, &[0]));
    }
}
