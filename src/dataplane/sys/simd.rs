//! The CPU's vector units, found at run time, for the one loop where they pay: the Internet
//! checksum's word sum ([`checksum::sum_words`]), which cutting a super-packet and verifying a
//! coalesced one run over every payload byte.
//!
//! The build targets baseline x86-64 (SSE2), so that one binary runs on any x86-64 machine;
//! the same safe loop compiled with AVX2 adds twice as many words per instruction. Calling a
//! function compiled for a feature is sound only on a CPU that has it, hence the `unsafe`
//! here, after the check. On other architectures the portable loop stays.

use crate::proto::checksum;

/// Makes every checksum use the widest word sum this CPU runs (see the module doc). Called by
/// each engine before it forwards anything; later calls change nothing.
pub fn install_checksum() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        checksum::set_word_sum(x86::sum_words_avx2);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::proto::checksum;

    /// [`checksum::sum_words`] with AVX2 where the CPU has it, the portable loop where not.
    pub fn sum_words_avx2(data: &[u8]) -> u64 {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above, cached by std after the first
            // time), which is the only precondition of calling a function compiled for it.
            unsafe { with_avx2(data) }
        } else {
            checksum::sum_words(data)
        }
    }

    /// The portable loop, inlined here and so compiled with AVX2.
    #[target_feature(enable = "avx2")]
    fn with_avx2(data: &[u8]) -> u64 {
        checksum::sum_words(data)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "x86_64")]
    use super::x86;
    use crate::proto::checksum;

    /// The AVX2 word sum agrees with the portable loop at every length and alignment the
    /// vector loop and its tail can meet, and with values that carry in every lane. (On a CPU
    /// without AVX2 it falls back to the portable loop, and this compares that with itself.)
    #[test]
    fn avx2_word_sum_agrees_with_the_portable_loop() {
        let mut x: u32 = 0x2545_f491;
        let data: Vec<u8> = (0..70_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x.to_le_bytes()[0]
            })
            .collect();
        #[cfg(target_arch = "x86_64")]
        let fast = x86::sum_words_avx2;
        #[cfg(not(target_arch = "x86_64"))]
        let fast = checksum::sum_words;
        for start in 0..8 {
            for len in (0..300).chain([1398, 1399, 1400, 1448, 65_535, 65_536]) {
                let d = &data[start..start + len];
                assert_eq!(fast(d), checksum::sum_words(d), "start {start} len {len}");
            }
        }
        let ones = vec![0xffu8; 65_536];
        assert_eq!(fast(&ones), checksum::sum_words(&ones));
    }
}
