//! Control flow: `If`, `Loop` and `Scan` run their subgraphs as nested plans
//! ([`crate::session::Plan`], built once at load).
//!
//! A subgraph may read any value of the graphs around it. The planner appends those
//! outer-scope values to the node's inputs, so they are scheduled and kept alive like inputs;
//! the ones constant at load are copied into the subgraph's plan (its weights are then known
//! to its builders and folds), the others are handed to it on every run. Nested control flow
//! works the same way one level down. With an observer, values inside a subgraph are shown as
//! `node/attribute/name` (`Loop` and `Scan` bodies once per iteration).
//!
//! `Scan` before opset 9 (a batch axis first, `directions`) runs each batch row on its own.

use crate::bail;
use crate::error::{OpError, OpResult};
use crate::op::{input, opt_input, BuildCtx, Kernel, KernelResult};
use crate::ops::shape::{stack, take_index};
use crate::ops::util::normalize_axis;
use crate::registry::Registry;
use crate::session::{Observer, Plan};
use lowbit_tensor::{Tensor, TensorData};

pub fn register(reg: &mut Registry) {
    reg.register("", "If", build_if);
    reg.register("", "Loop", build_loop);
    reg.register("", "Scan", build_scan);
}

/// One subgraph attribute, planned, with where its outer-scope values sit among the node's
/// inputs.
struct Body {
    attr: &'static str,
    plan: Plan,
    outer_args: Vec<usize>,
}

impl Body {
    fn build(ctx: &BuildCtx, attr: &'static str) -> OpResult<Body> {
        let Some(sc) = ctx.subgraphs else {
            bail!("control flow runs only inside a session (no planner for '{attr}')");
        };
        let Some(g) = ctx.attrs.get(attr).and_then(|a| a.g.as_ref()) else {
            bail!("attribute '{attr}' (a graph) is required");
        };
        let outer: Vec<(String, Option<&Tensor>)> = ctx
            .node
            .input
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.is_empty())
            .map(|(i, n)| (n.clone(), ctx.constant(i)))
            .collect();
        let plan = Plan::subgraph(g, &outer, sc).map_err(|e| OpError(format!("{attr}: {e}")))?;
        let outer_args = plan
            .outer_names()
            .map(|n| ctx.node.input.iter().position(|x| x == n).unwrap_or(usize::MAX))
            .collect();
        Ok(Body { attr, plan, outer_args })
    }

    fn run(
        &self,
        feeds: Vec<Tensor>,
        inputs: &[Option<&Tensor>],
        observer: Option<&mut Observer<'_>>,
        scope: &str,
    ) -> OpResult<Vec<Tensor>> {
        let outer: Vec<&Tensor> =
            self.outer_args.iter().map(|&i| input(inputs, i)).collect::<OpResult<_>>()?;
        let prefix =
            if observer.is_some() { format!("{scope}{}/", self.attr) } else { String::new() };
        self.plan
            .execute(feeds, &outer, observer, &prefix, None, None)
            .map_err(|e| OpError(format!("{}: {e}", self.attr)))
    }
}

/// A one-element boolean (or numeric, non-zero is true) tensor's value.
fn truth(t: &Tensor, what: &str) -> OpResult<bool> {
    if t.len() != 1 {
        bail!("{what} must have one element, got shape {:?}", t.shape());
    }
    Ok(match t.data() {
        TensorData::Bool(v) => v[0],
        _ => t.to_f64_vec()?[0] != 0.0,
    })
}

/// The kernels here all run through one function that takes the observer, if any.
trait Control: Send + Sync {
    fn go(
        &self,
        inputs: &[Option<&Tensor>],
        observer: Option<&mut Observer<'_>>,
        scope: &str,
    ) -> OpResult<Vec<Tensor>>;
}

struct ControlKernel<C>(C);

impl<C: Control> Kernel for ControlKernel<C> {
    fn run(&self, inputs: &[Option<&Tensor>]) -> OpResult<Vec<Tensor>> {
        self.0.go(inputs, None, "")
    }

    fn run_observed(
        &self,
        inputs: &[Option<&Tensor>],
        observer: &mut Observer<'_>,
        scope: &str,
    ) -> OpResult<Vec<Tensor>> {
        self.0.go(inputs, Some(observer), scope)
    }
}

// ---------------------------------------------------------------------------------------------
// If

struct If {
    then_branch: Body,
    else_branch: Body,
    outputs: usize,
}

fn build_if(ctx: &BuildCtx) -> KernelResult {
    let then_branch = Body::build(ctx, "then_branch")?;
    let else_branch = Body::build(ctx, "else_branch")?;
    let outputs = ctx.node.output.len();
    for b in [&then_branch, &else_branch] {
        let n = b.plan.arity().1;
        if n != outputs {
            bail!("{} has {n} outputs, the node {outputs}", b.attr);
        }
    }
    Ok(Box::new(ControlKernel(If { then_branch, else_branch, outputs })))
}

impl Control for If {
    fn go(
        &self,
        inputs: &[Option<&Tensor>],
        observer: Option<&mut Observer<'_>>,
        scope: &str,
    ) -> OpResult<Vec<Tensor>> {
        let branch =
            if truth(input(inputs, 0)?, "cond")? { &self.then_branch } else { &self.else_branch };
        let outs = branch.run(Vec::new(), inputs, observer, scope)?;
        debug_assert_eq!(outs.len(), self.outputs);
        Ok(outs)
    }
}

// ---------------------------------------------------------------------------------------------
// Loop

struct Loop {
    body: Body,
    /// Loop-carried values.
    carried: usize,
    /// Scan outputs (one value per iteration, stacked on a new first axis).
    scans: usize,
}

fn build_loop(ctx: &BuildCtx) -> KernelResult {
    let explicit = ctx.subgraphs.map_or(ctx.num_inputs(), |s| s.explicit_inputs);
    if explicit < 2 {
        bail!("Loop needs the inputs M and cond (either may be empty)");
    }
    let carried = explicit - 2;
    let body = Body::build(ctx, "body")?;
    let (ins, outs) = body.plan.arity();
    if ins != carried + 2 {
        bail!("body has {ins} inputs; with {carried} loop-carried values it needs {}", carried + 2);
    }
    if outs < carried + 1 {
        bail!(
            "body has {outs} outputs; with {carried} loop-carried values it needs at least {}",
            carried + 1
        );
    }
    Ok(Box::new(ControlKernel(Loop { body, carried, scans: outs - 1 - carried })))
}

impl Control for Loop {
    fn go(
        &self,
        inputs: &[Option<&Tensor>],
        mut observer: Option<&mut Observer<'_>>,
        scope: &str,
    ) -> OpResult<Vec<Tensor>> {
        let trips = match opt_input(inputs, 0) {
            Some(m) if m.len() != 1 => bail!("M must have one element, got shape {:?}", m.shape()),
            Some(m) => Some(m.to_i64_vec()?[0]),
            None => None,
        };
        let cond_in = opt_input(inputs, 1);
        if trips.is_none() && cond_in.is_none() {
            bail!("neither M nor cond is given: the loop would never end");
        }
        let mut cond = cond_in.map(|c| truth(c, "cond")).transpose()?.unwrap_or(true);
        let mut carried: Vec<Tensor> =
            (0..self.carried).map(|i| input(inputs, 2 + i).cloned()).collect::<OpResult<_>>()?;
        let mut scans: Vec<Vec<Tensor>> = vec![Vec::new(); self.scans];
        let mut i = 0i64;
        while cond && trips.is_none_or(|m| i < m) {
            let mut feeds = vec![Tensor::scalar(i), Tensor::scalar(cond)];
            feeds.append(&mut carried);
            let mut outs = self.body.run(feeds, inputs, observer.as_deref_mut(), scope)?;
            let rest = outs.split_off(1);
            // Without a cond input the loop is a plain for loop: the body's cond is ignored.
            if cond_in.is_some() {
                cond = truth(&outs[0], "the body's cond output")?;
            }
            let mut rest = rest.into_iter();
            carried = rest.by_ref().take(self.carried).collect();
            for (s, t) in scans.iter_mut().zip(rest) {
                s.push(t);
            }
            i += 1;
        }
        let mut outs = carried;
        for s in scans {
            outs.push(if s.is_empty() {
                Tensor::from_vec(vec![0], Vec::<f32>::new())?
            } else {
                stack(&s, 0)?
            });
        }
        Ok(outs)
    }
}

// ---------------------------------------------------------------------------------------------
// Scan

struct Scan {
    body: Body,
    /// State variables.
    states: usize,
    /// Scan inputs, each with its axis (may be negative) and `true` when read backwards.
    inputs: Vec<(i64, bool)>,
    /// Scan outputs, each with its axis and `true` when written backwards.
    outputs: Vec<(i64, bool)>,
    /// Opset 8: every input has a batch axis first, and input 0 is `sequence_lens`.
    batched: bool,
}

fn axis_list(ctx: &BuildCtx, name: &str, n: usize) -> OpResult<Vec<i64>> {
    match ctx.attrs.ints(name)? {
        None => Ok(vec![0; n]),
        Some(v) if v.len() == n => Ok(v),
        Some(v) => bail!("attribute '{name}' has {} values for {n} scan values", v.len()),
    }
}

fn build_scan(ctx: &BuildCtx) -> KernelResult {
    let explicit = ctx.subgraphs.map_or(ctx.num_inputs(), |s| s.explicit_inputs);
    let batched = ctx.opset < 9;
    let m = ctx.attrs.req_int("num_scan_inputs")?;
    let given = explicit - usize::from(batched);
    if m < 1 || m as usize > given {
        bail!("num_scan_inputs is {m} with {given} state and scan inputs");
    }
    let m = m as usize;
    let states = given - m;
    let body = Body::build(ctx, "body")?;
    let (ins, outs) = body.plan.arity();
    if ins != given {
        bail!("body has {ins} inputs for {states} states and {m} scan inputs");
    }
    if outs < states {
        bail!("body has {outs} outputs for {states} states");
    }
    let k = outs - states;
    let (in_axes, in_dirs, out_axes, out_dirs) = if batched {
        (vec![0; m], axis_list(ctx, "directions", m)?, vec![0; k], vec![0; k])
    } else {
        (
            axis_list(ctx, "scan_input_axes", m)?,
            axis_list(ctx, "scan_input_directions", m)?,
            axis_list(ctx, "scan_output_axes", k)?,
            axis_list(ctx, "scan_output_directions", k)?,
        )
    };
    let zip = |a: Vec<i64>, d: Vec<i64>| a.into_iter().zip(d.into_iter().map(|d| d != 0)).collect();
    Ok(Box::new(ControlKernel(Scan {
        body,
        states,
        inputs: zip(in_axes, in_dirs),
        outputs: zip(out_axes, out_dirs),
        batched,
    })))
}

impl Scan {
    /// One scan over `values` (states, then scan inputs; no batch axis).
    fn scan(
        &self,
        values: Vec<Tensor>,
        inputs: &[Option<&Tensor>],
        mut observer: Option<&mut Observer<'_>>,
        scope: &str,
    ) -> OpResult<Vec<Tensor>> {
        let mut states = values;
        let xs = states.split_off(self.states);
        let mut len = None;
        let mut axes = Vec::with_capacity(xs.len());
        for (x, &(axis, _)) in xs.iter().zip(&self.inputs) {
            let a = normalize_axis(axis, x.rank())?;
            let n = x.shape()[a];
            if len.is_some_and(|l| l != n) {
                bail!("scan inputs have different lengths ({} and {n})", len.unwrap_or(0));
            }
            len = Some(n);
            axes.push(a);
        }
        let len = len.unwrap_or(0);
        let mut scans: Vec<Vec<Tensor>> = vec![Vec::new(); self.outputs.len()];
        for t in 0..len {
            let mut feeds = std::mem::take(&mut states);
            for ((x, &a), &(_, rev)) in xs.iter().zip(&axes).zip(&self.inputs) {
                feeds.push(take_index(x, a, if rev { len - 1 - t } else { t })?);
            }
            let mut outs = self.body.run(feeds, inputs, observer.as_deref_mut(), scope)?;
            let ys = outs.split_off(self.states);
            states = outs;
            for (s, y) in scans.iter_mut().zip(ys) {
                s.push(y);
            }
        }
        let mut outs = states;
        for (mut s, &(axis, rev)) in scans.into_iter().zip(&self.outputs) {
            if s.is_empty() {
                bail!("a scan over zero steps has no output shape");
            }
            if rev {
                s.reverse();
            }
            let a = normalize_axis(axis, s[0].rank() + 1)?;
            outs.push(stack(&s, a)?);
        }
        Ok(outs)
    }
}

impl Control for Scan {
    fn go(
        &self,
        inputs: &[Option<&Tensor>],
        mut observer: Option<&mut Observer<'_>>,
        scope: &str,
    ) -> OpResult<Vec<Tensor>> {
        let first = usize::from(self.batched);
        let n = self.states + self.inputs.len();
        let values: Vec<&Tensor> =
            (first..first + n).map(|i| input(inputs, i)).collect::<OpResult<_>>()?;
        if !self.batched {
            let owned = values.into_iter().cloned().collect();
            return self.scan(owned, inputs, observer, scope);
        }
        if let Some(lens) = opt_input(inputs, 0) {
            let full =
                values.get(self.states).map_or(0, |x| x.shape().get(1).copied().unwrap_or(0));
            if lens.to_i64_vec()?.iter().any(|&l| l as usize != full) {
                bail!("sequence_lens shorter than the scan inputs is not supported");
            }
        }
        let batch = values.first().map_or(0, |v| v.shape().first().copied().unwrap_or(0));
        let mut per_batch: Vec<Vec<Tensor>> = Vec::with_capacity(batch);
        for b in 0..batch {
            let row = values.iter().map(|v| take_index(v, 0, b)).collect::<OpResult<_>>()?;
            per_batch.push(self.scan(row, inputs, observer.as_deref_mut(), scope)?);
        }
        let outputs = self.states + self.outputs.len();
        (0..outputs)
            .map(|j| {
                let parts: Vec<Tensor> = per_batch.iter().map(|o| o[j].clone()).collect();
                stack(&parts, 0)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_and_stack_are_inverse_on_any_axis() {
        let x = Tensor::from_vec(vec![2, 3, 2], (0..12).map(|v| v as i64).collect()).unwrap();
        for axis in 0..3 {
            let parts: Vec<Tensor> =
                (0..x.shape()[axis]).map(|i| take_index(&x, axis, i).unwrap()).collect();
            assert_eq!(stack(&parts, axis).unwrap(), x, "axis {axis}");
        }
        let mid = take_index(&x, 1, 2).unwrap();
        assert_eq!(mid.shape(), [2, 2]);
        assert_eq!(mid.as_i64().unwrap(), &[4, 5, 10, 11]);
        assert!(take_index(&x, 1, 3).is_err());
    }
}
