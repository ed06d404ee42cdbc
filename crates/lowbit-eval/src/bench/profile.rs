//! Where a run's time goes (`lowbit bench --profile`): milliseconds per run by op type, slowest
//! first, and the slowest steps, from `Session::run_profiled`'s per-step seconds.

use serde::Serialize;

/// Milliseconds per run by op type, slowest first, and the slowest steps.
#[derive(Debug, Serialize)]
pub struct Profile {
    pub by_op: Vec<ProfileEntry>,
    pub slowest: Vec<ProfileEntry>,
    /// Every step in the order the session runs them (to set beside another engine's
    /// per-node profile).
    pub steps: Vec<ProfileEntry>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProfileEntry {
    /// Op type, or `node (op)` for a step.
    pub name: String,
    pub ms_per_run: f64,
    pub share: f64,
}

impl Profile {
    /// Summarizes `step_s` (seconds per step of `session`, summed over `runs` runs).
    pub fn of(session: &lowbit_engine::Session, step_s: &[f64], runs: usize) -> Profile {
        let total: f64 = step_s.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        let entry = |name: String, s: f64| ProfileEntry {
            name,
            ms_per_run: s * 1e3 / runs.max(1) as f64,
            share: s / total,
        };
        let mut by: std::collections::BTreeMap<&str, f64> = Default::default();
        for (op, s) in session.step_ops().into_iter().zip(step_s) {
            *by.entry(op).or_default() += s;
        }
        let mut by_op: Vec<ProfileEntry> =
            by.into_iter().map(|(op, s)| entry(op.to_string(), s)).collect();
        by_op.sort_by(|a, b| b.ms_per_run.total_cmp(&a.ms_per_run));
        let names = session.step_names();
        let ops = session.step_ops();
        let steps: Vec<ProfileEntry> = (0..step_s.len())
            .map(|i| entry(format!("{} ({})", names[i], ops[i]), step_s[i]))
            .collect();
        let mut order: Vec<usize> = (0..steps.len()).collect();
        order.sort_by(|&a, &b| steps[b].ms_per_run.total_cmp(&steps[a].ms_per_run));
        let slowest = order.into_iter().take(10).map(|i| steps[i].clone()).collect();
        Profile { by_op, slowest, steps }
    }
}
