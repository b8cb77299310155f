//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

/// Adds `data` to a running one's-complement sum, big-endian 16-bit words, odd byte padded.
pub fn sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for word in &mut chunks {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([word[0], word[1]])));
        // Fold early so that very long inputs cannot overflow the accumulator.
        if acc > 0xffff_0000 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        acc = acc.wrapping_add(u32::from(*last) << 8);
    }
    acc
}

/// Folds a running sum to 16 bits and complements it: the value to put in a checksum field.
pub fn finish(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // The loop above leaves acc <= 0xffff, so the conversion is lossless.
    !(u16::try_from(acc).unwrap_or(0xffff))
}

/// The checksum of one buffer.
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(0, data))
}

/// RFC 1624 eqn. 3: the new checksum after one 16-bit word of the covered data changed
/// from `old` to `new`. `HC' = ~(~HC + ~m + m')`.
pub fn update_word(check: u16, old: u16, new: u16) -> u16 {
    let mut acc = u32::from(!check) + u32::from(!old) + u32::from(new);
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(u16::try_from(acc).unwrap_or(0xffff))
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
