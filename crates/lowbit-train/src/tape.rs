//! Reverse-mode autodiff over a [`Program`] for one sample: the forward pass keeps every value
//! it computes (one sample's activations; the largest tensors are recomputed in the backward
//! pass where cheap, see the conv op), the backward pass walks the steps in reverse and sums
//! each input's gradient.

use crate::arr::Arr;
use crate::error::{Result, TrainError};
use crate::program::Program;

/// Values shared by every sample of a batch: constants and the parameter leaves.
pub struct Base {
    values: Vec<Option<Arr>>,
    /// Slots whose gradient is wanted (the leaves) or that lead to one.
    needs_grad: Vec<bool>,
}

impl Base {
    pub fn new(p: &Program) -> Base {
        let mut values: Vec<Option<Arr>> = vec![None; p.num_slots];
        for (s, a) in &p.consts {
            values[*s] = Some(a.clone());
        }
        let mut needs_grad = vec![false; p.num_slots];
        for (s, a) in p.leaf_values() {
            values[s] = Some(a);
            needs_grad[s] = true;
        }
        for st in &p.steps {
            if st
                .inputs
                .iter()
                .enumerate()
                .any(|(i, x)| x.is_some_and(|x| needs_grad[x]) && !st.op.constant_input(i))
            {
                needs_grad[st.output] = true;
            }
        }
        Base { values, needs_grad }
    }

    /// Replaces the leaf values after a parameter update.
    pub fn refresh(&mut self, p: &Program) {
        for (s, a) in p.leaf_values() {
            self.values[s] = Some(a);
        }
    }
}

/// One sample's forward values.
pub struct Tape<'a> {
    p: &'a Program,
    base: &'a Base,
    local: Vec<Option<Arr>>,
}

impl<'a> Tape<'a> {
    /// Runs the forward pass on `feeds` (by input name).
    pub fn forward(p: &'a Program, base: &'a Base, feeds: &[(String, Arr)]) -> Result<Tape<'a>> {
        let mut local: Vec<Option<Arr>> = vec![None; p.num_slots];
        for (name, slot) in &p.inputs {
            let v = feeds
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| TrainError::MissingValue(name.clone()))?;
            local[*slot] = Some(v.1.clone());
        }
        let mut t = Tape { p, base, local };
        for st in &p.steps {
            let ins: Vec<Option<&Arr>> =
                st.inputs.iter().map(|x| x.and_then(|s| t.get(s))).collect();
            let y = st.op.forward(&ins).map_err(|m| step_err(&st.label, m))?;
            t.local[st.output] = Some(y);
        }
        Ok(t)
    }

    fn get(&self, s: usize) -> Option<&Arr> {
        self.local[s].as_ref().or(self.base.values[s].as_ref())
    }

    pub fn output(&self) -> &Arr {
        self.get(self.p.output).expect("the forward pass computed the output")
    }

    /// Backpropagates `gy` (the loss gradient of the output) and adds each leaf's gradient to
    /// `acc` (one entry per [`Program::leaves`]).
    pub fn backward(&self, gy: Arr, acc: &mut [Option<Arr>]) -> Result<()> {
        let p = self.p;
        let mut grads: Vec<Option<Arr>> = vec![None; p.num_slots];
        grads[p.output] = Some(gy);
        for st in p.steps.iter().rev() {
            let Some(g) = grads[st.output].take() else { continue };
            if !self.base.needs_grad[st.output] {
                continue;
            }
            let ins: Vec<Option<&Arr>> =
                st.inputs.iter().map(|x| x.and_then(|s| self.get(s))).collect();
            let y = self.get(st.output).expect("computed in the forward pass");
            let gs = st.op.backward(&ins, y, &g).map_err(|m| step_err(&st.label, m))?;
            for (i, gi) in gs.into_iter().enumerate() {
                let (Some(gi), Some(Some(s))) = (gi, st.inputs.get(i)) else { continue };
                if st.op.constant_input(i) || !self.base.needs_grad[*s] {
                    continue;
                }
                match &mut grads[*s] {
                    Some(a) => a.add_assign(&gi),
                    slot => *slot = Some(gi),
                }
            }
        }
        for (l, a) in p.leaves.iter().zip(acc.iter_mut()) {
            let s = match l {
                crate::program::Leaf::Weight { slot, .. }
                | crate::program::Leaf::Direct { slot, .. } => *slot,
            };
            if let Some(g) = grads[s].take() {
                match a {
                    Some(a) => a.add_assign(&g),
                    none => *none = Some(g),
                }
            }
        }
        Ok(())
    }
}

fn step_err(label: &str, msg: String) -> TrainError {
    let (node, op) =
        label.rsplit_once(" (").map_or((label, ""), |(n, o)| (n, o.trim_end_matches(')')));
    TrainError::Node { node: node.to_string(), op_type: op.to_string(), msg }
}
