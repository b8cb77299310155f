//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

use std::sync::OnceLock;

/// Adds `data` to a running one's-complement sum, big-endian 16-bit words, odd byte padded.
pub fn sum(acc: u32, data: &[u8]) -> u32 {
    let s = match WORD_SUM.get() {
        Some(words) => words(data),
        None => sum_words(data),
    };
    let native = fold16(s);
    // Back to network byte order, then onto the caller's sum (it can carry).
    add(acc, u32::from(native.swap_bytes()))
}

/// Sums `data` as 32-bit words in memory order into 64 bits, a short tail padded with zeros:
/// the loop every checksum spends its time in.
///
/// One's-complement addition is associative and byte-order independent at any word width
/// (RFC 1071 §2): add 32-bit words as they lie in memory into a 64-bit accumulator, which
/// cannot overflow below 16 GiB of data, fold to 16 bits, and swap the two bytes once at the
/// end (§2(B)). With neither a carry chain nor a byte swap per word, the loop is plain widening
/// additions, which the compiler vectorises with baseline SSE2, and with AVX2 twice as wide
/// where a caller compiled for it inlines this (see [`set_word_sum`]).
#[inline(always)]
pub fn sum_words(data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(4);
    let s: u64 = words.by_ref().map(|w| u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]))).sum();
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    s + u64::from(u32::from_le_bytes(tail))
}

/// The word sum [`sum`] uses when one was installed: [`sum_words`] compiled for a wider vector
/// unit than the build's baseline, found at run time by the data plane (which is where
/// `unsafe` may live; this module has none).
static WORD_SUM: OnceLock<fn(&[u8]) -> u64> = OnceLock::new();

/// Makes [`sum`] (and so every checksum) use `words` from now on; the first call wins. `words`
/// must return what [`sum_words`] returns, for every input.
pub fn set_word_sum(words: fn(&[u8]) -> u64) {
    // A second install (another engine starting) finds the first one there: nothing to do.
    let _ = WORD_SUM.set(words);
}

/// Folds a 64-bit one's-complement sum to 16 bits.
fn fold16(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    // The loop above leaves s <= 0xffff, so the conversion is lossless.
    u16::try_from(s).unwrap_or(u16::MAX)
}

/// Adds `v` to a running sum: one's-complement addition at 32 bits (the carry out of the top
/// goes back in at the bottom), which agrees with the 16-bit sum once folded, since
/// 2^32 − 1 is a multiple of 2^16 − 1. A 32-bit field (a TCP sequence number) adds as is.
pub fn add(acc: u32, v: u32) -> u32 {
    let (s, carry) = acc.overflowing_add(v);
    // With a carry, s <= 0xffff_fffe, so adding it back cannot overflow.
    s + u32::from(carry)
}

/// Folds a running sum to 16 bits and complements it: the value to put in a checksum field.
pub fn finish(acc: u32) -> u16 {
    !fold16(u64::from(acc))
}

/// The checksum of one buffer.
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(0, data))
}

/// RFC 1624 eqn. 3: the new checksum after one 16-bit word of the covered data changed
/// from `old` to `new`. `HC' = ~(~HC + ~m + m')`.
pub fn update_word(check: u16, old: u16, new: u16) -> u16 {
    !fold16(u64::from(!check) + u64::from(!old) + u64::from(new))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 §3 example words: 0001 f203 f4f5 f6f7 sum to 0xddf2 (checksum 0x220d).
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
    }

    /// The plain 16-bit-word definition, to check the fast one against.
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u64 = 0;
        for w in data.chunks(2) {
            acc += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    #[test]
    fn fast_sum_matches_the_definition() {
        let mut x: u32 = 12345;
        let data: Vec<u8> = (0..3000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        for len in (0..64).chain([1399, 1400, 1401, 1472, 2999, 3000]) {
            assert_eq!(checksum(&data[..len]), reference(&data[..len]), "len {len}");
        }
        assert_eq!(checksum(&[0xff; 4096]), reference(&[0xff; 4096]));
        // Chained sums over even-length parts equal one sum.
        assert_eq!(finish(sum(sum(0, &data[..20]), &data[20..1000])), checksum(&data[..1000]));
    }

    /// The running sum carried in is added in network byte order, whatever its size: the
    /// native-order sum is swapped before it meets it.
    #[test]
    fn carried_in_sum_is_added_as_is() {
        let data: Vec<u8> = (0u16..1001).map(|i| (i.wrapping_mul(197) >> 3) as u8).collect();
        for acc in [0u32, 1, 0xffff, 0x1_0000, 0xdead_beef, u32::MAX] {
            for len in [0, 1, 2, 3, 999, 1000, 1001] {
                let mut want = u64::from(acc);
                for w in data[..len].chunks(2) {
                    want += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
                }
                while want > 0xffff {
                    want = (want & 0xffff) + (want >> 16);
                }
                assert_eq!(finish(sum(acc, &data[..len])), !(want as u16), "acc {acc:#x} len {len}");
            }
        }
    }

    /// Adding a value to a running sum agrees with summing its bytes, carries included.
    #[test]
    fn add_agrees_with_sum() {
        for acc in [0u32, 1, 0xffff, 0x1_0000, 0x8000_0000, 0xffff_fffe, u32::MAX] {
            for v in [0u32, 1, 0xffff, 0x1234_5678, 0xffff_0000, u32::MAX] {
                assert_eq!(finish(add(acc, v)), finish(sum(acc, &v.to_be_bytes())), "acc {acc:#x} v {v:#x}");
            }
        }
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(checksum(&[0xab]), checksum(&[0xab, 0x00]));
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let mut data: Vec<u8> = (0u8..40).map(|b| b.wrapping_mul(37)).collect();
        data[10] = 0;
        data[11] = 0;
        let c = checksum(&data);
        data[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&data), 0);
        for new_word in [0u16, 1, 0x00ff, 0xff00, 0xfffe, 0xffff, 0x1234] {
            let mut d = data.clone();
            let old = u16::from_be_bytes([d[8], d[9]]);
            d[8..10].copy_from_slice(&new_word.to_be_bytes());
            let upd = update_word(c, old, new_word);
            d[10..12].copy_from_slice(&upd.to_be_bytes());
            assert_eq!(checksum(&d), 0, "word {new_word:#x}");
        }
    }
}
