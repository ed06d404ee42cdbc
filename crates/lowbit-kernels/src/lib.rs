//! Hot loops only, no graph knowledge. Each kernel has a portable reference; SIMD paths are
//! chosen at run time by CPU feature detection.
