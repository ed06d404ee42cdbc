//! The one place the kernels look at the CPU: its instruction-set level is detected once, and
//! [`best`] says which implementation each kernel family runs on it.
//!
//! Built as tract-linalg's `best()`/`plug`: the table starts from every family's portable
//! reference ([`Kernels::generic`]) and each x86 level the CPU has upgrades the families that
//! have code for it, AVX2 (with FMA), then AVX-512 VNNI. A kernel file keeps its portable code
//! and its SIMD code side by side (plain functions, then a `mod x86_64` of `#[target_feature]`
//! functions) and reads its entry once per call, outside its loops, so each SIMD body stays one
//! monomorphized, inlined function. Differential tests run every level the CPU has
//! ([`Isa::available`], [`levels`]) against the reference through [`Kernels::at`].

use std::sync::OnceLock;

/// An instruction-set level; each includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust (vectorized by the compiler where it can).
    Generic,
    /// x86-64 AVX2 and FMA.
    Avx2,
    /// x86-64 AVX-512 F, VL, BW and VNNI on top of AVX2 (every VNNI CPU has BW):
    /// `vpdpbusd` on 512-bit registers, 16-bit multiply-adds on 32 lanes.
    Avx512Vnni,
}

impl Isa {
    /// The best level this CPU runs (detected once).
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                use std::is_x86_feature_detected as has;
                if has!("avx2") && has!("fma") {
                    if has!("avx512f") && has!("avx512vl") && has!("avx512bw") && has!("avx512vnni")
                    {
                        return Isa::Avx512Vnni;
                    }
                    return Isa::Avx2;
                }
            }
            Isa::Generic
        })
    }

    /// Every level this CPU runs, lowest first.
    pub fn available() -> Vec<Isa> {
        [Isa::Generic, Isa::Avx2, Isa::Avx512Vnni]
            .into_iter()
            .filter(|&i| i <= Isa::detect())
            .collect()
    }
}

/// The implementation each kernel family runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernels {
    /// f32 GEMM micro-kernel: [`crate::gemm`]'s packed products, [`crate::conv`]'s im2col
    /// products (two B panels per tile on AVX-512), [`crate::wgemm`]'s buffered path.
    pub sgemm: Isa,
    /// f32 depthwise convolution planes ([`crate::depthwise`]).
    pub depthwise_f32: Isa,
    /// Softmax and log-softmax rows ([`crate::norm`]).
    pub softmax: Isa,
    /// u8 × i8 GEMM micro-kernel ([`crate::qgemm`], [`crate::qconv`]'s patch products):
    /// `vpmaddubsw` (or `vpmaddwd` on i16 pairs) on AVX2, `vpdpbusd` on AVX-512 VNNI.
    pub qgemm: Isa,
    /// Requantization of i32 sums, 16 lanes at a time ([`crate::qgemm::requantize_into`]).
    pub requantize: Isa,
    /// Channels-last int8 depthwise convolution ([`crate::qconv`]).
    pub depthwise_i8: Isa,
    /// f32 → 8-bit quantization ([`crate::quantize::quantize_bytes`]).
    pub quantize: Isa,
    /// Weight-only GEMM: dequantization in registers for few rows ([`crate::wgemm`]).
    pub wgemm: Isa,
}

impl Kernels {
    /// Every family on its portable reference.
    pub const fn generic() -> Kernels {
        Kernels {
            sgemm: Isa::Generic,
            depthwise_f32: Isa::Generic,
            softmax: Isa::Generic,
            qgemm: Isa::Generic,
            requantize: Isa::Generic,
            depthwise_i8: Isa::Generic,
            quantize: Isa::Generic,
            wgemm: Isa::Generic,
        }
    }

    /// The table for a CPU of level `isa`: the generic table, upgraded level by level. Asking
    /// for more than [`Isa::detect`] gives code the CPU cannot run: tests ask for each of
    /// [`Isa::available`].
    pub fn at(isa: Isa) -> Kernels {
        let mut k = Kernels::generic();
        if isa >= Isa::Avx2 {
            k.plug_avx2();
        }
        if isa >= Isa::Avx512Vnni {
            k.plug_avx512_vnni();
        }
        k
    }

    /// The families with AVX2 (+FMA) code.
    fn plug_avx2(&mut self) {
        self.sgemm = Isa::Avx2;
        self.depthwise_f32 = Isa::Avx2;
        self.softmax = Isa::Avx2;
        self.qgemm = Isa::Avx2;
        self.requantize = Isa::Avx2;
        self.depthwise_i8 = Isa::Avx2;
        self.quantize = Isa::Avx2;
        self.wgemm = Isa::Avx2;
    }

    /// The families with AVX-512 VNNI code.
    fn plug_avx512_vnni(&mut self) {
        self.sgemm = Isa::Avx512Vnni;
        self.depthwise_f32 = Isa::Avx512Vnni;
        self.qgemm = Isa::Avx512Vnni;
        self.depthwise_i8 = Isa::Avx512Vnni;
    }
}

/// The table for this CPU (built once).
pub fn best() -> &'static Kernels {
    static BEST: OnceLock<Kernels> = OnceLock::new();
    BEST.get_or_init(|| Kernels::at(Isa::detect()))
}

/// The distinct implementations of one family this CPU runs, lowest first: what a
/// differential test of that family iterates over.
pub fn levels(family: fn(&Kernels) -> Isa) -> Vec<Isa> {
    let mut v: Vec<Isa> = Isa::available().into_iter().map(|i| family(&Kernels::at(i))).collect();
    v.dedup();
    v
}

/// An instruction-set extension that decides how fast int8 inference can be, and whether this
/// CPU has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    /// The name `is_x86_feature_detected!` / `is_aarch64_feature_detected!` know it by.
    pub name: &'static str,
    pub present: bool,
    /// What it gives int8 inference.
    pub means: &'static str,
}

/// The int8-relevant extensions of this CPU's architecture, each with whether it is present
/// (what `lowbit doctor` shows; [`Isa::detect`] is what the kernels run).
pub fn int8_features() -> Vec<Feature> {
    #[allow(unused_mut)]
    let mut v: Vec<Feature> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::is_x86_feature_detected as has;
        let f = |name, present, means| Feature { name, present, means };
        v.push(f("avx2", has!("avx2"), "vpmaddubsw u8×s8 pair sums (saturating int16)"));
        v.push(f("fma", has!("fma"), "f32 fused multiply-add"));
        v.push(f("avx512f", has!("avx512f"), "512-bit registers"));
        v.push(f("avx512bw", has!("avx512bw"), "512-bit byte and word arithmetic"));
        v.push(f(
            "avx512vnni",
            has!("avx512vnni"),
            "vpdpbusd on 512 bits: u8×s8 products summed in int32, no saturation",
        ));
        v.push(f(
            "avxvnni",
            has!("avxvnni"),
            "vpdpbusd on 256 bits (Alder Lake and later without AVX-512)",
        ));
    }
    #[cfg(target_arch = "aarch64")]
    {
        use std::arch::is_aarch64_feature_detected as has;
        let f = |name, present, means| Feature { name, present, means };
        v.push(f("neon", has!("neon"), "128-bit SIMD"));
        v.push(f("dotprod", has!("dotprod"), "sdot/udot: 8-bit dot products into int32"));
        v.push(f("i8mm", has!("i8mm"), "smmla/usmmla: 8-bit matrix multiply-accumulate"));
    }
    v
}

/// Whether this CPU has `name` among [`int8_features`].
pub fn has_feature(name: &str) -> bool {
    int8_features().iter().any(|f| f.name == name && f.present)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_upgrade_the_generic_table_in_order() {
        assert_eq!(Kernels::at(Isa::Generic), Kernels::generic());
        let avx2 = Kernels::at(Isa::Avx2);
        assert_eq!((avx2.sgemm, avx2.qgemm), (Isa::Avx2, Isa::Avx2));
        assert_eq!(Kernels::at(Isa::Avx512Vnni).qgemm, Isa::Avx512Vnni);
        assert_eq!(Kernels::at(Isa::Avx512Vnni).sgemm, Isa::Avx512Vnni);
        assert_eq!(Kernels::at(Isa::Avx512Vnni).wgemm, Isa::Avx2);
        assert_eq!(*best(), Kernels::at(Isa::detect()));
    }

    #[test]
    fn every_level_the_cpu_has_is_available() {
        let all = Isa::available();
        assert_eq!(all.first(), Some(&Isa::Generic));
        assert_eq!(all.last(), Some(&Isa::detect()));
        assert_eq!(levels(|k| k.qgemm), all);
        assert!(levels(|k| k.wgemm).len() <= 2);
        // The reported features agree with the level the kernels run.
        if Isa::detect() >= Isa::Avx2 {
            assert!(has_feature("avx2") && has_feature("fma"));
        }
        if Isa::detect() == Isa::Avx512Vnni {
            assert!(has_feature("avx512vnni") && has_feature("avx512bw"));
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512vnni")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("fma")
        {
            assert_eq!(Isa::detect(), Isa::Avx512Vnni);
        }
    }
}
