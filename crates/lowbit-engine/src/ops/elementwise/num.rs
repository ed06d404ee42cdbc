//! Scalar arithmetic shared by every numeric element type, and the dtype dispatch macros.
//!
//! Integer arithmetic wraps (what ONNX Runtime's C++ kernels do in practice); integer division
//! truncates toward zero. `f16`/`bf16` compute in `f32` and round back once per operation.

use half::{bf16, f16};
use lowbit_tensor::tensor::Element;

/// A numeric element type: every arithmetic operation the element-wise ops need.
pub trait Num: Element + PartialOrd + Default {
    const IS_FLOAT: bool;
    const IS_SIGNED: bool;
    fn zero() -> Self;
    fn one() -> Self;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    /// Division; integers truncate toward zero and give 0 for a zero divisor (callers check).
    fn div(self, o: Self) -> Self;
    /// C `fmod`: the remainder has the sign of the dividend.
    fn fmod(self, o: Self) -> Self;
    /// Python `%` for integers: the remainder has the sign of the divisor.
    fn pymod(self, o: Self) -> Self;
    fn abs(self) -> Self;
    fn neg(self) -> Self;
    fn to_f64(self) -> f64;
    /// Nearest value (floats) or truncation toward zero, saturating (integers).
    fn from_f64(v: f64) -> Self;
    fn is_nan(self) -> bool;
}

macro_rules! int_num {
    ($t:ty, $signed:expr) => {
        impl Num for $t {
            const IS_FLOAT: bool = false;
            const IS_SIGNED: bool = $signed;
            #[inline(always)]
            fn zero() -> Self {
                0
            }
            #[inline(always)]
            fn one() -> Self {
                1
            }
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                self.wrapping_add(o)
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                self.wrapping_sub(o)
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                self.wrapping_mul(o)
            }
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                self.checked_div(o).unwrap_or_else(|| if o == 0 { 0 } else { self.wrapping_div(o) })
            }
            #[inline(always)]
            fn fmod(self, o: Self) -> Self {
                if o == 0 {
                    0
                } else {
                    self.wrapping_rem(o)
                }
            }
            #[inline(always)]
            #[allow(unused_comparisons)]
            fn pymod(self, o: Self) -> Self {
                let r = self.fmod(o);
                if r != 0 && ((r < 0) != (o < 0)) {
                    r.wrapping_add(o)
                } else {
                    r
                }
            }
            #[inline(always)]
            #[allow(unused_comparisons)]
            fn abs(self) -> Self {
                if self < 0 {
                    (0 as $t).wrapping_sub(self)
                } else {
                    self
                }
            }
            #[inline(always)]
            fn neg(self) -> Self {
                (0 as $t).wrapping_sub(self)
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                false
            }
        }
    };
}

int_num!(i8, true);
int_num!(i16, true);
int_num!(i32, true);
int_num!(i64, true);
int_num!(u8, false);
int_num!(u16, false);
int_num!(u32, false);
int_num!(u64, false);

macro_rules! float_num {
    ($t:ty) => {
        impl Num for $t {
            const IS_FLOAT: bool = true;
            const IS_SIGNED: bool = true;
            #[inline(always)]
            fn zero() -> Self {
                0.0
            }
            #[inline(always)]
            fn one() -> Self {
                1.0
            }
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                self + o
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                self - o
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                self * o
            }
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                self / o
            }
            #[inline(always)]
            fn fmod(self, o: Self) -> Self {
                self % o
            }
            #[inline(always)]
            fn pymod(self, o: Self) -> Self {
                let r = self % o;
                if r != 0.0 && ((r < 0.0) != (o < 0.0)) {
                    r + o
                } else {
                    r
                }
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn neg(self) -> Self {
                -self
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}

float_num!(f32);
float_num!(f64);

macro_rules! half_num {
    ($t:ty) => {
        impl Num for $t {
            const IS_FLOAT: bool = true;
            const IS_SIGNED: bool = true;
            #[inline(always)]
            fn zero() -> Self {
                <$t>::ZERO
            }
            #[inline(always)]
            fn one() -> Self {
                <$t>::ONE
            }
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                <$t>::from_f32(self.to_f32() + o.to_f32())
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                <$t>::from_f32(self.to_f32() - o.to_f32())
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                <$t>::from_f32(self.to_f32() * o.to_f32())
            }
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                <$t>::from_f32(self.to_f32() / o.to_f32())
            }
            #[inline(always)]
            fn fmod(self, o: Self) -> Self {
                <$t>::from_f32(self.to_f32() % o.to_f32())
            }
            #[inline(always)]
            fn pymod(self, o: Self) -> Self {
                <$t>::from_f32(self.to_f32().pymod(o.to_f32()))
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::from_f32(self.to_f32().abs())
            }
            #[inline(always)]
            fn neg(self) -> Self {
                -self
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                <$t>::to_f64(self)
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                <$t>::from_f64(v)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}

half_num!(f16);
half_num!(bf16);

/// Integer-only operations (bitwise ops, shifts).
pub trait Int: Num {
    fn and(self, o: Self) -> Self;
    fn or(self, o: Self) -> Self;
    fn xor(self, o: Self) -> Self;
    fn not(self) -> Self;
    /// Shift left; shifting by the width or more gives 0.
    fn shl(self, n: Self) -> Self;
    fn shr(self, n: Self) -> Self;
}

macro_rules! int_ops {
    ($($t:ty),*) => {$(
        impl Int for $t {
            #[inline(always)]
            fn and(self, o: Self) -> Self {
                self & o
            }
            #[inline(always)]
            fn or(self, o: Self) -> Self {
                self | o
            }
            #[inline(always)]
            fn xor(self, o: Self) -> Self {
                self ^ o
            }
            #[inline(always)]
            fn not(self) -> Self {
                !self
            }
            #[inline(always)]
            fn shl(self, n: Self) -> Self {
                u32::try_from(n).ok().and_then(|n| self.checked_shl(n)).unwrap_or(0)
            }
            #[inline(always)]
            fn shr(self, n: Self) -> Self {
                u32::try_from(n).ok().and_then(|n| self.checked_shr(n)).unwrap_or(0)
            }
        }
    )*};
}

int_ops!(i8, i16, i32, i64, u8, u16, u32, u64);

/// The error function to f64 precision: for |x| < 6 the series
/// `erf(x) = 2/√π · e^{-x²} · Σ 2ⁿ x^{2n+1} / (1·3·…·(2n+1))`, whose terms are all positive
/// (no cancellation); beyond that erf is ±1 in f64.
pub fn erf_f64(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    if a >= 6.0 {
        return x.signum();
    }
    let x2 = a * a;
    let mut term = a;
    let mut sum = a;
    let mut n = 0.0;
    while term > sum * 1e-17 {
        n += 1.0;
        term *= 2.0 * x2 / (2.0 * n + 1.0);
        sum += term;
    }
    let r = std::f64::consts::FRAC_2_SQRT_PI * (-x2).exp() * sum;
    r.min(1.0).copysign(x)
}

/// Runs `$body` with `$T` bound to the Rust type of whichever listed dtype `$dt` is; `$other`
/// for any other dtype.
macro_rules! dispatch_among {
    ($dt:expr, $T:ident => $body:expr, _ => $other:expr, [$($D:ident => $R:ty),*]) => {
        match $dt {
            $(lowbit_tensor::DType::$D => {
                #[allow(dead_code)]
                type $T = $R;
                $body
            })*
            _ => $other,
        }
    };
}

/// Runs `$body` with `$T` bound to the Rust element type of dtype `$dt`, for every numeric
/// dtype (floats including f16/bf16, and all integer widths); `$other` otherwise.
macro_rules! dispatch_num {
    ($dt:expr, $T:ident => $body:expr, _ => $other:expr) => {
        $crate::ops::elementwise::num::dispatch_among!($dt, $T => $body, _ => $other, [
            F32 => f32, F64 => f64, F16 => half::f16, BF16 => half::bf16,
            I8 => i8, I16 => i16, I32 => i32, I64 => i64, U8 => u8, U16 => u16, U32 => u32, U64 => u64
        ])
    };
}

/// [`dispatch_num`] over the integer dtypes only.
macro_rules! dispatch_int {
    ($dt:expr, $T:ident => $body:expr, _ => $other:expr) => {
        $crate::ops::elementwise::num::dispatch_among!($dt, $T => $body, _ => $other, [
            I8 => i8, I16 => i16, I32 => i32, I64 => i64, U8 => u8, U16 => u16, U32 => u32, U64 => u64
        ])
    };
}

/// [`dispatch_num`] plus `bool`: every element type with a total-enough order and `Copy`.
macro_rules! dispatch_ord {
    ($dt:expr, $T:ident => $body:expr, _ => $other:expr) => {
        match $dt {
            lowbit_tensor::DType::Bool => { #[allow(dead_code)] type $T = bool; $body }
            dt => dispatch_num!(dt, $T => $body, _ => $other),
        }
    };
}

pub(crate) use {dispatch_among, dispatch_int, dispatch_num, dispatch_ord};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_division_truncates_and_mod_follows_divisor_sign() {
        assert_eq!((-7i32).div(2), -3);
        assert_eq!(7i32.div(0), 0);
        assert_eq!(i32::MIN.div(-1), i32::MIN);
        assert_eq!((-7i32).pymod(3), 2);
        assert_eq!(7i32.pymod(-3), -2);
        assert_eq!((-7i32).fmod(3), -1);
        assert_eq!(200u8.add(100), 44);
    }

    #[test]
    fn erf_matches_known_values() {
        let cases = [(0.0, 0.0), (0.5, 0.520_499_877_813_046_5), (1.0, 0.842_700_792_949_714_9)];
        for (x, want) in cases {
            assert!((erf_f64(x) - want).abs() < 1e-15, "erf({x})");
            assert!((erf_f64(-x) + want).abs() < 1e-15);
        }
        assert!((erf_f64(3.0) - 0.999_977_909_503_001_4).abs() < 1e-15);
        assert_eq!(erf_f64(10.0), 1.0);
    }

    #[test]
    fn shifts_past_the_width_give_zero() {
        assert_eq!(1u8.shl(9), 0);
        assert_eq!(0x80u8.shr(7), 1);
    }
}
