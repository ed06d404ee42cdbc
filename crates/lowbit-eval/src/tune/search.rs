//! The search over per-node precisions, independent of how a configuration is measured
//! ([`Evaluate`]). Every node starts at the cheapest rung of the ladder; nodes are promoted
//! to the safest rung worst-first (the order per-layer noise gives): by bisection on how many
//! (the fewest that keep the budget, assuming more promoted nodes never score worse); then,
//! rung by rung down the ladder, a bisection again on how many of them, quietest first, can
//! take the cheaper rung, those that could trying the next one down. About
//! `(rungs) · log2(nodes)` configurations are measured whatever the model. The `greedy` strategy is the baseline NNCF's accuracy
//! control follows: promote one more node at a time until the budget holds, no refinement.
//! The chosen configuration is the cheapest evaluated one within the budget.

use super::scorer::within_probability;
use super::{Objective, TuneError};
use lowbit_quant::config::Precision;
use lowbit_quant::samples::Progress;
use std::collections::HashMap;
use std::time::Instant;

/// What one configuration measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    /// The task metric on the search samples (higher is better).
    pub metric: f64,
    /// The model file's size.
    pub bytes: u64,
    /// Median latency of one sample on lowbit's engine (`None`: not timed).
    pub latency_ms: Option<f64>,
    /// Standard error of the metric's drop from FP32's, paired over the same search samples
    /// (`None` when the metric is no mean over samples: Spearman, SQNR).
    pub drop_se: Option<f64>,
}

impl Measured {
    /// The cost `objective` minimizes (latency falls back to size when not timed).
    pub fn cost(&self, objective: Objective) -> f64 {
        match (objective, self.latency_ms) {
            (Objective::Latency, Some(ms)) => ms,
            _ => self.bytes as f64,
        }
    }
}

/// Measures configurations: `precisions[i]` is node `i`'s precision; `what` names it for
/// progress and errors.
pub trait Evaluate {
    fn evaluate(&mut self, precisions: &[Precision], what: &str) -> Result<Measured, TuneError>;
}

/// How the search promotes nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Bisection on the number of promoted nodes, then per-node refinement.
    Bisect,
    /// One more promoted node at a time (the baseline).
    Greedy,
}

/// The search's settings.
pub struct SearchSettings<'a> {
    /// Precisions from cheapest to safest; the first is every node's start.
    pub ladder: &'a [Precision],
    /// The lowest metric within budget (the reference's minus the allowed drop).
    pub floor: f64,
    /// A configuration meets the budget when the probability that its true metric is at least
    /// `floor`, given its measured drop and that drop's standard error, is at least this
    /// (0.5: the measured drop alone decides; higher guards against the noise of few search
    /// samples letting a worse configuration through, lower lets near-lossless ones through
    /// when a few samples flip by chance).
    pub confidence: f64,
    pub objective: Objective,
    pub strategy: Strategy,
    /// Stop evaluating new configurations after this instant.
    pub deadline: Option<Instant>,
}

/// One evaluated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Trial {
    /// How the search reached it, in words.
    pub label: String,
    pub precisions: Vec<Precision>,
    pub measured: Measured,
    /// The probability that the configuration's true metric is within budget
    /// ([`super::scorer::within_probability`]).
    pub p_within: f64,
    pub meets_budget: bool,
}

/// What [`search`] evaluated and chose.
#[derive(Debug)]
pub struct Outcome {
    /// Every configuration evaluated, in order (no configuration twice).
    pub trials: Vec<Trial>,
    /// The cheapest trial within budget; `None` when none met it.
    pub chosen: Option<usize>,
    /// Promoted nodes after bisection (or the greedy scan).
    pub promoted: usize,
    /// Whether the time budget cut the search short.
    pub cut_short: bool,
}

struct Run<'a, E: Evaluate> {
    s: &'a SearchSettings<'a>,
    eval: &'a mut E,
    trials: Vec<Trial>,
    seen: HashMap<Vec<Precision>, usize>,
    cut_short: bool,
}

impl<E: Evaluate> Run<'_, E> {
    /// The trial of `p`, evaluated unless it was before; `None` once past the deadline.
    fn trial(&mut self, p: Vec<Precision>, label: String) -> Result<Option<&Trial>, TuneError> {
        if let Some(&i) = self.seen.get(&p) {
            return Ok(Some(&self.trials[i]));
        }
        if self.s.deadline.is_some_and(|d| Instant::now() >= d) {
            self.cut_short = true;
            return Ok(None);
        }
        let measured = self.eval.evaluate(&p, &label)?;
        let p_within = within_probability(measured.metric, self.s.floor, measured.drop_se);
        let meets_budget = p_within >= self.s.confidence;
        self.seen.insert(p.clone(), self.trials.len());
        self.trials.push(Trial { label, precisions: p, measured, p_within, meets_budget });
        Ok(self.trials.last())
    }

    fn meets(&mut self, p: Vec<Precision>, label: String) -> Result<Option<bool>, TuneError> {
        Ok(self.trial(p, label)?.map(|t| t.meets_budget))
    }
}

/// `order[..k]` at `top`, every other node at `bottom`.
fn prefix(
    n: usize,
    order: &[usize],
    k: usize,
    bottom: Precision,
    top: Precision,
) -> Vec<Precision> {
    let mut p = vec![bottom; n];
    for &i in &order[..k] {
        p[i] = top;
    }
    p
}

/// Searches precisions for `nodes` (their names, for labels) promoted in `order` (indices
/// into `nodes`, noisiest first); see the [module docs](self).
pub fn search<E: Evaluate>(
    nodes: &[String],
    order: &[usize],
    settings: &SearchSettings,
    eval: &mut E,
    progress: &dyn Progress,
) -> Result<Outcome, TuneError> {
    let ladder = settings.ladder;
    let (Some(&bottom), Some(&top)) = (ladder.first(), ladder.last()) else {
        return Err(TuneError::Config("the candidate list is empty".into()));
    };
    let n = nodes.len();
    let mut run =
        Run { s: settings, eval, trials: Vec::new(), seen: HashMap::new(), cut_short: false };
    let steps = 2 + (usize::BITS - n.leading_zeros()) as u64;
    let scan = if settings.strategy == Strategy::Greedy { n as u64 } else { steps };
    progress.start("tune: promote", scan);
    let mut promoted = 0;
    let base_ok = run.meets(vec![bottom; n], format!("all {bottom}"))?;
    progress.advance(1, Some(&format!("all {bottom}")));
    if base_ok == Some(false) && bottom != top {
        let all = run.meets(vec![top; n], format!("all {top}"))?;
        progress.advance(1, Some(&format!("all {top}")));
        if all == Some(true) {
            promoted = n;
            match settings.strategy {
                Strategy::Bisect => {
                    let (mut lo, mut hi) = (0, n);
                    while hi - lo > 1 {
                        let mid = (lo + hi) / 2;
                        let label = format!("{mid} noisiest at {top}");
                        match run.meets(prefix(n, order, mid, bottom, top), label.clone())? {
                            Some(true) => hi = mid,
                            Some(false) => lo = mid,
                            None => break,
                        }
                        progress.advance(1, Some(&label));
                    }
                    promoted = hi;
                }
                Strategy::Greedy => {
                    for k in 1..n {
                        let label = format!("{k} noisiest at {top}");
                        let ok = run.meets(prefix(n, order, k, bottom, top), label.clone())?;
                        progress.advance(1, Some(&label));
                        if ok != Some(false) {
                            if ok == Some(true) {
                                promoted = k;
                            }
                            break;
                        }
                    }
                }
            }
        }
    }
    progress.finish();
    if settings.strategy == Strategy::Bisect && promoted > 0 && ladder.len() > 1 {
        // Rung by rung down the ladder: how many of the promoted nodes, quietest first, can
        // take the next cheaper rung (bisection again); those that could try the one below.
        let mut current = prefix(n, order, promoted, bottom, top);
        let mut group: Vec<usize> = order[..promoted].iter().rev().copied().collect();
        let rounds = (usize::BITS - promoted.leading_zeros()) as u64 + 1;
        progress.start("tune: refine", rounds * (ladder.len() - 1) as u64);
        for &level in ladder[..ladder.len() - 1].iter().rev() {
            let m = group.len();
            let lower = |j: usize| {
                let mut p = current.clone();
                for &i in &group[..j] {
                    p[i] = level;
                }
                p
            };
            let label = |j: usize| format!("{j} quietest of {m} at {level}");
            let kept = match run.meets(lower(m), label(m))? {
                Some(true) => m,
                Some(false) => {
                    let (mut lo, mut hi) = (0, m);
                    while hi - lo > 1 {
                        let mid = (lo + hi) / 2;
                        match run.meets(lower(mid), label(mid))? {
                            Some(true) => lo = mid,
                            Some(false) => hi = mid,
                            None => break,
                        }
                        progress.advance(1, Some(&label(mid)));
                    }
                    lo
                }
                None => 0,
            };
            progress.advance(1, Some(&label(m)));
            current = lower(kept);
            group.truncate(kept);
            if kept == 0 || run.cut_short {
                break;
            }
        }
        progress.finish();
    }
    // Every rung uniformly too (most are measured already): the front's anchors, so it spans
    // the ladder even when the cheapest rung met the budget at once.
    for &level in ladder {
        if run.trial(vec![level; n], format!("all {level}"))?.is_none() {
            break;
        }
    }
    let objective = settings.objective;
    let chosen = run
        .trials
        .iter()
        .enumerate()
        .filter(|(_, t)| t.meets_budget)
        .min_by(|(a, x), (b, y)| {
            let (cx, cy) = (x.measured.cost(objective), y.measured.cost(objective));
            cx.total_cmp(&cy).then(y.measured.metric.total_cmp(&x.measured.metric)).then(a.cmp(b))
        })
        .map(|(i, _)| i);
    Ok(Outcome { trials: run.trials, chosen, promoted, cut_short: run.cut_short })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowbit_quant::samples::NoProgress;
    use Precision::*;

    /// A model whose metric loses `loss[i][rung]` points per node and whose size adds up the
    /// rungs' bytes per weight: the search's logic without a model.
    struct Synthetic {
        ladder: Vec<Precision>,
        loss: Vec<Vec<f64>>,
        calls: usize,
        /// Every configuration's standard error of the drop.
        se: Option<f64>,
    }

    impl Evaluate for Synthetic {
        fn evaluate(&mut self, p: &[Precision], _: &str) -> Result<Measured, TuneError> {
            self.calls += 1;
            let rung = |x: Precision| self.ladder.iter().position(|&l| l == x).unwrap();
            let metric =
                80.0 - p.iter().enumerate().map(|(i, &x)| self.loss[i][rung(x)]).sum::<f64>();
            let bytes = p.iter().map(|&x| [1u64, 2, 4][rung(x)] * 100).sum();
            Ok(Measured { metric, bytes, latency_ms: None, drop_se: self.se })
        }
    }

    fn settings<'a>(ladder: &'a [Precision], strategy: Strategy) -> SearchSettings<'a> {
        SearchSettings {
            ladder,
            floor: 79.0,
            confidence: 0.5,
            objective: Objective::Size,
            strategy,
            deadline: None,
        }
    }

    fn model() -> Synthetic {
        // Node 2 is hurt badly at int4 and a little at int8; node 0 a little at int4.
        let loss = vec![
            vec![1.0, 0.1, 0.0],
            vec![0.1, 0.0, 0.0],
            vec![5.0, 0.3, 0.0],
            vec![0.2, 0.0, 0.0],
        ];
        Synthetic { ladder: vec![Int4, Int8, Fp32], loss, calls: 0, se: None }
    }

    fn names() -> Vec<String> {
        (0..4).map(|i| format!("n{i}")).collect()
    }

    #[test]
    fn bisection_then_refinement_finds_a_cheap_configuration_within_budget() {
        let mut m = model();
        let ladder = m.ladder.clone();
        let order = [2, 0, 3, 1];
        let out =
            search(&names(), &order, &settings(&ladder, Strategy::Bisect), &mut m, &NoProgress)
                .unwrap();
        let chosen = &out.trials[out.chosen.unwrap()];
        assert!(chosen.meets_budget && chosen.measured.metric >= 79.0);
        // Two nodes must leave int4 (5.9 pt lost otherwise); node 2 only needs int8.
        assert_eq!(out.promoted, 2);
        assert_eq!(chosen.precisions, vec![Int8, Int4, Int8, Int4]);
        assert_eq!(chosen.measured.bytes, 600);
        // Nothing cheaper within budget was evaluated, and nothing twice.
        for t in &out.trials {
            assert!(!t.meets_budget || t.measured.bytes >= chosen.measured.bytes);
        }
        assert_eq!(m.calls, out.trials.len());
    }

    #[test]
    fn the_confidence_level_moves_the_decision_by_the_drops_standard_error() {
        let ladder = [Int4, Int8, Fp32];
        let chosen_at = |confidence: f64, se: Option<f64>| {
            let mut m = Synthetic { se, ..model() };
            let s = SearchSettings { confidence, ..settings(&ladder, Strategy::Bisect) };
            let out = search(&names(), &[2, 0, 3, 1], &s, &mut m, &NoProgress).unwrap();
            for t in &out.trials {
                // The decision is the probability reaching the level, and the probability is
                // the normal tail of the margin over the floor.
                assert_eq!(t.meets_budget, t.p_within >= confidence, "{t:?}");
                let want = within_probability(t.measured.metric, 79.0, se);
                assert!((t.p_within - want).abs() < 1e-12);
            }
            out.trials[out.chosen.unwrap()].clone()
        };
        // Without a standard error every level is the plain threshold.
        let plain = chosen_at(0.5, None);
        assert_eq!(chosen_at(0.9, None).precisions, plain.precisions);
        assert_eq!(chosen_at(0.5, Some(0.4)).precisions, plain.precisions);
        // A standard error of 0.4 pt: 0.9 asks the metric to clear the floor by 1.28 se,
        // which the plain choice (79.3) does not, so a safer, bigger one is chosen. With 0.5 pt,
        // 0.1 lets one 1.28 se under the floor through, a smaller one.
        let safe = chosen_at(0.9, Some(0.4));
        assert!(safe.measured.metric >= 79.0 + 1.2815 * 0.4, "{safe:?}");
        assert!(safe.measured.bytes > plain.measured.bytes, "{safe:?} vs {plain:?}");
        let loose = chosen_at(0.1, Some(0.5));
        assert!(loose.measured.metric < 79.0 && loose.measured.metric >= 79.0 - 1.2816 * 0.5);
        assert!(loose.measured.bytes < plain.measured.bytes, "{loose:?} vs {plain:?}");
    }

    #[test]
    fn greedy_baseline_promotes_one_node_at_a_time_and_stops_at_the_budget() {
        let mut m = model();
        let ladder = m.ladder.clone();
        let out = search(
            &names(),
            &[2, 0, 3, 1],
            &settings(&ladder, Strategy::Greedy),
            &mut m,
            &NoProgress,
        )
        .unwrap();
        // Greedy stops at two nodes promoted to fp32 ...
        let stop = out.trials.iter().find(|t| t.label == "2 noisiest at fp32").unwrap();
        assert!(stop.meets_budget);
        assert_eq!(stop.precisions, vec![Fp32, Int4, Fp32, Int4]);
        // ... but the all-int8 anchor is cheaper and within budget too, so it is chosen.
        let chosen = &out.trials[out.chosen.unwrap()];
        assert_eq!(chosen.precisions, vec![Int8; 4]);
        let labels: Vec<&str> = out.trials.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(
            labels,
            ["all int4", "all fp32", "1 noisiest at fp32", "2 noisiest at fp32", "all int8"]
        );
    }

    #[test]
    fn a_base_within_budget_is_chosen_at_once_and_an_impossible_budget_chooses_none() {
        let mut m = model();
        let ladder = m.ladder.clone();
        let loose = SearchSettings { floor: 70.0, ..settings(&ladder, Strategy::Bisect) };
        let out = search(&names(), &[0, 1, 2, 3], &loose, &mut m, &NoProgress).unwrap();
        // The base, then the other rungs as anchors.
        assert_eq!(out.trials.len(), 3);
        assert_eq!(out.chosen, Some(0));
        let strict = SearchSettings { floor: 81.0, ..settings(&ladder, Strategy::Bisect) };
        let out = search(&names(), &[0, 1, 2, 3], &strict, &mut model(), &NoProgress).unwrap();
        assert_eq!(out.chosen, None);
        assert_eq!(out.trials.len(), 3);
    }

    #[test]
    fn a_past_deadline_stops_after_nothing_new() {
        let mut m = model();
        let ladder = m.ladder.clone();
        let s = SearchSettings {
            deadline: Some(Instant::now()),
            ..settings(&ladder, Strategy::Bisect)
        };
        let out = search(&names(), &[0, 1, 2, 3], &s, &mut m, &NoProgress).unwrap();
        assert!(out.cut_short && out.trials.is_empty() && out.chosen.is_none());
    }
}
