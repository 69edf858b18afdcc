//! The snapshot files' checksum: FNV-1a over 64-bit words, a multiply and an xor per eight
//! bytes, so checking a memory file costs about what reading it does. It finds truncation and
//! damage (a flipped bit, a block of another file); it is not a signature, and a forger who
//! can write the files can also write a matching sum.

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// A running checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checksum(u64);

impl Default for Checksum {
    fn default() -> Self {
        Self(OFFSET)
    }
}

impl Checksum {
    /// Adds one word.
    pub fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(PRIME);
    }

    /// Adds `bytes`: whole words, then the tail padded with zeros, then the length (so a
    /// trailing zero byte counts).
    pub fn bytes(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in words.by_ref() {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            self.word(u64::from_le_bytes(a));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut a = [0u8; 8];
            a[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(a));
        }
        self.word(bytes.len() as u64);
    }

    /// The sum so far.
    pub fn value(self) -> u64 {
        self.0
    }
}

/// The checksum of `bytes` alone.
pub fn of(bytes: &[u8]) -> u64 {
    let mut c = Checksum::default();
    c.bytes(bytes);
    c.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_changed_bit_or_length_changes_the_sum() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let sum = of(&data);
        for i in [0, 7, 8, 500, 999] {
            for bit in 0..8 {
                let mut d = data.clone();
                d[i] ^= 1 << bit;
                assert_ne!(of(&d), sum, "byte {i} bit {bit}");
            }
        }
        assert_ne!(of(&data[..999]), sum);
        let mut longer = data.clone();
        longer.push(0);
        assert_ne!(of(&longer), sum, "a trailing zero counts");
    }
}
