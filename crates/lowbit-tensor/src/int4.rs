//! 4-bit packing as ONNX stores int4/uint4: two values per byte, the first in the low nibble.

/// Packs 4-bit values (one per byte, low nibble used) two per byte, low nibble first. An odd
/// count leaves the last high nibble zero.
pub fn pack_nibbles(values: impl IntoIterator<Item = u8>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut it = values.into_iter();
    while let Some(lo) = it.next() {
        let hi = it.next().unwrap_or(0);
        out.push((lo & 0x0f) | (hi << 4));
    }
    out
}

/// Unpacks `n` uint4 values.
pub fn unpack_u4(bytes: &[u8], n: usize) -> Vec<u8> {
    (0..n).map(|i| (bytes[i / 2] >> ((i % 2) * 4)) & 0x0f).collect()
}

/// A 4-bit two's-complement value (low nibble of `u`) as an `i8`.
pub fn sign_extend4(u: u8) -> i8 {
    ((u << 4) as i8) >> 4
}

/// Unpacks `n` int4 values, sign-extended.
pub fn unpack_i4(bytes: &[u8], n: usize) -> Vec<i8> {
    unpack_u4(bytes, n).into_iter().map(sign_extend4).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int4_pack_round_trip() {
        let v: Vec<i8> = vec![-8, 7, 0, -1, 3];
        let packed = pack_nibbles(v.iter().map(|&x| x as u8));
        assert_eq!(packed.len(), 3);
        assert_eq!(unpack_i4(&packed, v.len()), v);
    }
}
