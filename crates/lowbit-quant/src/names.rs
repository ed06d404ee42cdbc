//! The text form of the settings enums (calibration method, mode, precision, target): each has
//! `ALL` and `name()`, the one table of its names; this writes `Display` and `FromStr` from it.

/// `Display` as `name()`, `FromStr` by name over `ALL`; an unknown name is `QuantError::$err`
/// saying `unknown $what '...' (use ...)` with every accepted name (`$also` first: names a
/// wrapper type accepts, such as the target's `auto`).
macro_rules! display_and_parse_by_name {
    ($t:ident, $err:ident, $what:literal $(, also $also:literal)?) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $t {
            type Err = $crate::error::QuantError;
            fn from_str(s: &str) -> std::result::Result<$t, Self::Err> {
                $t::ALL.into_iter().find(|v| v.name() == s).ok_or_else(|| {
                    let names: Vec<&str> =
                        [$($also)?].into_iter().chain($t::ALL.iter().map(|v| v.name())).collect();
                    $crate::error::QuantError::$err(format!(
                        concat!("unknown ", $what, " '{}' (use {})"),
                        s,
                        names.join(", ")
                    ))
                })
            }
        }
    };
}
