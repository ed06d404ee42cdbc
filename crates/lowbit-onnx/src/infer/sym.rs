//! Symbolic dims: a dim is a number or a name, and inference computes with them as monomials
//! `coef * s1 * s2 * …` (`batch*seq` after flattening two leading dims, `2*seq` after a Concat
//! of two `seq` halves). A dim inference cannot name gets a fresh `unk__N`.

use std::fmt;

/// One dimension: a number, or a name standing for a size known only at run time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SymDim {
    Known(i64),
    Sym(String),
}

impl SymDim {
    /// A symbolic dim named `name`.
    pub fn sym(name: &str) -> SymDim {
        SymDim::Sym(name.to_string())
    }

    /// The size, if known.
    pub fn known(&self) -> Option<i64> {
        match self {
            SymDim::Known(k) => Some(*k),
            SymDim::Sym(_) => None,
        }
    }

    /// Whether this is a name inference made up (`unk__N`), not one from the model.
    pub fn is_anonymous(&self) -> bool {
        matches!(self, SymDim::Sym(s) if s.starts_with("unk__"))
    }
}

impl fmt::Display for SymDim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SymDim::Known(k) => write!(f, "{k}"),
            SymDim::Sym(s) => f.write_str(s),
        }
    }
}

/// Hands out fresh `unk__N` names.
pub(super) struct Fresh(pub(super) usize);

impl Fresh {
    pub(super) fn dim(&mut self) -> SymDim {
        self.0 += 1;
        SymDim::Sym(format!("unk__{}", self.0 - 1))
    }
}

/// A dim as a monomial `coef * s1 * s2 * …` (symbols sorted).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Mono {
    coef: i64,
    syms: Vec<String>,
}

impl Mono {
    pub(super) fn int(k: i64) -> Mono {
        Mono { coef: k, syms: Vec::new() }
    }

    pub(super) fn from_dim(d: &SymDim) -> Mono {
        match d {
            SymDim::Known(k) => Mono::int(*k),
            SymDim::Sym(s) => {
                let mut m = Mono::int(1);
                for part in s.split('*') {
                    match part.parse::<i64>() {
                        Ok(k) => m.coef = m.coef.saturating_mul(k),
                        Err(_) => m.syms.push(part.to_string()),
                    }
                }
                m.syms.sort();
                m
            }
        }
    }

    pub(super) fn to_dim(&self) -> SymDim {
        if self.syms.is_empty() || self.coef == 0 {
            return SymDim::Known(self.coef);
        }
        let names = self.syms.join("*");
        SymDim::Sym(if self.coef == 1 { names } else { format!("{}*{names}", self.coef) })
    }

    pub(super) fn as_int(&self) -> Option<i64> {
        self.syms.is_empty().then_some(self.coef)
    }

    pub(super) fn mul(&self, o: &Mono) -> Mono {
        let mut syms: Vec<String> = self.syms.iter().chain(&o.syms).cloned().collect();
        syms.sort();
        Mono { coef: self.coef.saturating_mul(o.coef), syms }
    }

    /// Exact division, when the divisor's symbols all occur in the dividend.
    pub(super) fn div(&self, o: &Mono) -> Option<Mono> {
        if o.coef == 0 || self.coef % o.coef != 0 {
            return None;
        }
        let mut syms = self.syms.clone();
        for s in &o.syms {
            let p = syms.iter().position(|x| x == s)?;
            syms.remove(p);
        }
        Some(Mono { coef: self.coef / o.coef, syms })
    }

    pub(super) fn add(&self, o: &Mono) -> Option<Mono> {
        if self.coef == 0 {
            return Some(o.clone());
        }
        if o.coef == 0 {
            return Some(self.clone());
        }
        (self.syms == o.syms).then(|| Mono { coef: self.coef + o.coef, syms: self.syms.clone() })
    }

    pub(super) fn neg(&self) -> Mono {
        Mono { coef: -self.coef, syms: self.syms.clone() }
    }
}

pub(super) fn dim_mul(a: &SymDim, b: &SymDim) -> SymDim {
    Mono::from_dim(a).mul(&Mono::from_dim(b)).to_dim()
}

pub(super) fn dims_product(dims: &[SymDim]) -> SymDim {
    dims.iter().fold(SymDim::Known(1), |acc, d| dim_mul(&acc, d))
}

// ---------------------------------------------------------------------------------------------
// Constant values.

pub(super) fn fmt_shape(s: &[SymDim]) -> String {
    let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monomial_dims() {
        let d = |s: &str| Mono::from_dim(&SymDim::sym(s));
        assert_eq!(d("seq*batch").to_dim(), SymDim::sym("batch*seq"));
        assert_eq!(d("2*batch").mul(&d("seq")).to_dim(), SymDim::sym("2*batch*seq"));
        assert_eq!(d("batch*seq").div(&d("seq")).unwrap().to_dim(), SymDim::sym("batch"));
        assert_eq!(d("batch").div(&d("seq")), None);
        assert_eq!(d("batch").add(&d("batch")).unwrap().to_dim(), SymDim::sym("2*batch"));
        assert_eq!(d("batch").add(&d("seq")), None);
    }
}
