//! FP8 encodings (E4M3FN and E5M2) as ONNX defines them, stored as bit patterns.
//!
//! Encoding rounds half to even. With `saturate`, values beyond the largest finite number
//! become ±max (E4M3FN: 448, E5M2: 57344); without it they become NaN (E4M3FN, which has no
//! infinity) or ±inf (E5M2). NaN maps to the format's NaN. This is ONNX `Cast`/`QuantizeLinear`
//! behaviour for float8 targets.

/// Layout of one float8 format.
#[derive(Clone, Copy, Debug)]
pub struct F8Format {
    mant_bits: u32,
    bias: i32,
    max: f64,
    nan: u8,
    inf: Option<u8>,
}

pub const E4M3FN: F8Format = F8Format { mant_bits: 3, bias: 7, max: 448.0, nan: 0x7f, inf: None };
pub const E5M2: F8Format =
    F8Format { mant_bits: 2, bias: 15, max: 57344.0, nan: 0x7f, inf: Some(0x7c) };

impl F8Format {
    /// The value of a bit pattern.
    pub fn decode(&self, bits: u8) -> f32 {
        let sign: f64 = if bits & 0x80 != 0 { -1.0 } else { 1.0 };
        let mag = bits & 0x7f;
        if let Some(inf) = self.inf {
            if mag == inf {
                return (sign * f64::INFINITY) as f32;
            }
            if mag > inf {
                return f32::NAN;
            }
        } else if mag == self.nan {
            return f32::NAN;
        }
        let exp = (mag >> self.mant_bits) as i32;
        let mant = (mag & ((1 << self.mant_bits) - 1)) as f64;
        let scale = (1u32 << self.mant_bits) as f64;
        let v = if exp == 0 {
            mant / scale * 2f64.powi(1 - self.bias)
        } else {
            (1.0 + mant / scale) * 2f64.powi(exp - self.bias)
        };
        (sign * v) as f32
    }

    /// The nearest bit pattern (round half to even).
    pub fn encode(&self, x: f32, saturate: bool) -> u8 {
        if x.is_nan() {
            return self.nan;
        }
        let sign: u8 = if x.is_sign_negative() { 0x80 } else { 0 };
        let a = (x as f64).abs();
        if a.is_infinite() {
            return match (saturate, self.inf) {
                (true, _) => sign | self.max_bits(),
                (false, Some(inf)) => sign | inf,
                (false, None) => sign | self.nan,
            };
        }
        let min_exp = 1 - self.bias;
        let e = if a == 0.0 { min_exp } else { (a.log2().floor() as i32).max(min_exp) };
        let quantum = 2f64.powi(e - self.mant_bits as i32);
        let r = crate::cast::round_half_even_f64(a / quantum) * quantum;
        if r > self.max {
            return match (saturate, self.inf) {
                (true, _) => sign | self.max_bits(),
                (false, Some(inf)) => sign | inf,
                (false, None) => sign | self.nan,
            };
        }
        if r == 0.0 {
            return sign;
        }
        let scale = (1u32 << self.mant_bits) as f64;
        let bits = if r < 2f64.powi(min_exp) {
            (r / 2f64.powi(min_exp) * scale).round() as u32
        } else {
            let e = r.log2().floor() as i32;
            let m = (r / 2f64.powi(e) - 1.0) * scale;
            (((e + self.bias) as u32) << self.mant_bits) | m.round() as u32
        };
        sign | bits as u8
    }

    fn max_bits(&self) -> u8 {
        match self.inf {
            Some(inf) => inf - 1,
            None => self.nan - 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_finite_pattern_round_trips() {
        for fmt in [E4M3FN, E5M2] {
            for b in 0..=255u8 {
                let v = fmt.decode(b);
                if v.is_finite() {
                    let back = fmt.encode(v, true);
                    // -0 and +0 are distinct patterns with the same value.
                    assert_eq!(fmt.decode(back), v, "pattern {b:#x}");
                }
            }
        }
    }

    #[test]
    fn saturation_and_specials() {
        assert_eq!(E4M3FN.decode(E4M3FN.encode(1000.0, true)), 448.0);
        assert!(E4M3FN.decode(E4M3FN.encode(1000.0, false)).is_nan());
        assert_eq!(E5M2.decode(E5M2.encode(1e6, true)), 57344.0);
        assert_eq!(E5M2.decode(E5M2.encode(1e6, false)), f32::INFINITY);
        assert_eq!(E4M3FN.decode(E4M3FN.encode(-448.0, true)), -448.0);
        // 1.0625 lies halfway between 1.0 and 1.125 in E4M3: ties to even mantissa (1.0).
        assert_eq!(E4M3FN.decode(E4M3FN.encode(1.0625, true)), 1.0);
        assert_eq!(E4M3FN.decode(E4M3FN.encode(1.1875, true)), 1.25);
    }
}
