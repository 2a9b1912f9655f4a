//! Per-sample random generators: the augmentation of a sample depends only on
//! (run seed, epoch, sample index), never on which loader thread handles it or when.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// SplitMix64's output function: a bijective mixer of 64-bit words.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator of one sample: ChaCha8 (a named algorithm, so the stream never changes
/// between versions of `rand`) seeded with 256 bits derived from `(seed, epoch, index)` by
/// chaining SplitMix64's mixer over the three words.
///
/// Two different triples give unrelated streams; the same triple gives the same stream on
/// every machine, whatever the number of threads.
///
/// ```
/// use rand::Rng;
/// let a: u64 = swav_augment::sample_rng(31, 2, 1000).random();
/// let b: u64 = swav_augment::sample_rng(31, 2, 1000).random();
/// assert_eq!(a, b);
/// ```
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> ChaCha8Rng {
    let a = mix(seed);
    let b = mix(a ^ epoch);
    let c = mix(b ^ index);
    let mut key = [0u8; 32];
    let mut w = c;
    for chunk in key.chunks_exact_mut(8) {
        w = mix(w);
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}
