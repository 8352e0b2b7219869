//! Per-peer rate limits, scores and bans. Pure bookkeeping; the clock is read here, at
//! the edge of the node, never in the consensus crates.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use crate::BAN_SCORE;

/// What to do with a peer's message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within its rate.
    Admit,
    /// Over its rate: drop the message (the peer lost score).
    Drop,
    /// Over its rate so often that its score hit the ban threshold.
    Ban,
}

struct Peer {
    tokens: f64,
    refilled: Instant,
    score: i32,
}

/// Token buckets and scores of all peers.
pub struct PeerLimits {
    rate: f64,
    ban: Duration,
    peers: HashMap<PeerId, Peer>,
    banned: HashMap<PeerId, Instant>,
}

impl PeerLimits {
    pub fn new(per_sec: u32, ban: Duration) -> PeerLimits {
        PeerLimits {
            rate: f64::from(per_sec.max(1)),
            ban,
            peers: HashMap::new(),
            banned: HashMap::new(),
        }
    }

    fn peer(&mut self, id: PeerId, now: Instant) -> &mut Peer {
        let burst = 2.0 * self.rate;
        self.peers.entry(id).or_insert(Peer {
            tokens: burst,
            refilled: now,
            score: 0,
        })
    }

    /// Takes one token from `id`'s bucket.
    pub fn admit(&mut self, id: PeerId) -> Verdict {
        if self.banned.contains_key(&id) {
            return Verdict::Drop;
        }
        let now = Instant::now();
        let (rate, burst) = (self.rate, 2.0 * self.rate);
        let p = self.peer(id, now);
        let elapsed = now.duration_since(p.refilled).as_secs_f64();
        p.tokens = (p.tokens + elapsed * rate).min(burst);
        p.refilled = now;
        if p.tokens >= 1.0 {
            p.tokens -= 1.0;
            return Verdict::Admit;
        }
        if self.penalize(id, 1) {
            Verdict::Ban
        } else {
            Verdict::Drop
        }
    }

    /// Lowers `id`'s score; true if that bans it (now).
    pub fn penalize(&mut self, id: PeerId, points: i32) -> bool {
        if self.banned.contains_key(&id) {
            return false;
        }
        let now = Instant::now();
        let p = self.peer(id, now);
        p.score = p.score.saturating_sub(points.max(0));
        if p.score <= BAN_SCORE {
            self.peers.remove(&id);
            self.banned.insert(id, now + self.ban);
            return true;
        }
        false
    }

    /// Peers whose ban is over (they start again at score 0).
    pub fn expired_bans(&mut self) -> Vec<PeerId> {
        let now = Instant::now();
        let done: Vec<PeerId> = self
            .banned
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in &done {
            self.banned.remove(p);
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_peer_is_dropped_then_banned_and_forgiven_after_the_ban() {
        let mut l = PeerLimits::new(10, Duration::from_millis(0));
        let p = PeerId::random();
        let mut verdicts = Vec::new();
        for _ in 0..200 {
            verdicts.push(l.admit(p));
        }
        // The burst (2 x rate) passes, then drops, then the ban at -100 points.
        assert!(verdicts[..20].iter().all(|v| *v == Verdict::Admit));
        assert_eq!(verdicts[20], Verdict::Drop);
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Ban).count(), 1);
        assert_eq!(l.expired_bans(), vec![p]);
        assert_eq!(l.admit(p), Verdict::Admit);
    }

    #[test]
    fn penalties_accumulate_to_a_ban() {
        let mut l = PeerLimits::new(10, Duration::from_secs(60));
        let p = PeerId::random();
        assert!(!l.penalize(p, 60));
        assert!(l.penalize(p, 60));
        assert_eq!(l.admit(p), Verdict::Drop);
        assert!(l.expired_bans().is_empty());
    }
}
