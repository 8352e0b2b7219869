//! Proposer rotation weighted by voting power.
//!
//! Smooth weighted round-robin (the proposer-priority rule of CometBFT, without its
//! rescaling, which only matters when the set changes): every step, each validator's
//! priority grows by its power; the highest priority (ties: lowest index) proposes and
//! loses the total power. Over any `total / g` consecutive steps (`g` the gcd of the
//! powers) each validator proposes exactly `power / g` times, spread evenly, and the
//! priorities return to zero, so the sequence is periodic.
//!
//! Step `k = (height - 1) + round` of the sequence picks the proposer of `(height, round)`,
//! as CometBFT does (one step per height, one more per round). The engine keeps the
//! priorities of round 0 of its height and advances them one step per height; computing
//! a height from scratch costs `O(min(height, total / g) × validators)`.

use pyralog_ledger::ValidatorSet;

/// The rotation state at one step of the sequence.
#[derive(Clone, Debug)]
pub struct ProposerRotation {
    weights: Vec<u64>,
    total: u64,
    priorities: Vec<i128>,
    step: u64,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl ProposerRotation {
    /// The rotation at step 0 (height 1, round 0).
    pub fn new(validators: &ValidatorSet) -> ProposerRotation {
        let g = validators
            .validators()
            .iter()
            .fold(0, |g, v| gcd(g, v.power))
            .max(1);
        let weights: Vec<u64> = validators
            .validators()
            .iter()
            .map(|v| v.power / g)
            .collect();
        let total = weights.iter().sum();
        ProposerRotation {
            priorities: vec![0; weights.len()],
            weights,
            total,
            step: 0,
        }
    }

    /// The rotation at round 0 of `height` (at least 1).
    pub fn at_height(validators: &ValidatorSet, height: u64) -> ProposerRotation {
        let mut r = ProposerRotation::new(validators);
        let steps = height.saturating_sub(1) % r.total.max(1);
        for _ in 0..steps {
            r.advance();
        }
        r.step = height.saturating_sub(1);
        r
    }

    /// The validator that proposes at the current step.
    pub fn current(&self) -> u32 {
        let mut next = self.clone();
        next.advance()
    }

    /// Moves one step on and returns the validator chosen at the step it left.
    pub fn advance(&mut self) -> u32 {
        for (p, w) in self.priorities.iter_mut().zip(&self.weights) {
            *p += *w as i128;
        }
        let mut best = 0;
        for (i, p) in self.priorities.iter().enumerate() {
            if *p > self.priorities[best] {
                best = i;
            }
        }
        self.priorities[best] -= self.total as i128;
        self.step += 1;
        best as u32
    }

    /// The proposer `round` rounds after the current step.
    pub fn proposer_at_round(&self, round: u32) -> u32 {
        let mut r = self.clone();
        let skip = u64::from(round) % self.total.max(1);
        for _ in 0..skip {
            r.advance();
        }
        r.advance()
    }
}
