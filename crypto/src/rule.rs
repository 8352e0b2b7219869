//! The signature validity rule, one signature at a time and in batches.
//!
//! A signature `(R, s)` by key `A` over the framed message `M` is valid iff
//! 1. `s` is canonical (`s < ℓ`),
//! 2. `A` and `R` decompress (non-canonical encodings of a point decompress as the point
//!    they name, as ZIP-215 requires) and neither has small order,
//! 3. `[8]([s]B − R − [k]A)` is the identity, where `k = SHA-512(R ‖ A ‖ M) mod ℓ`
//!    over the encodings as given.
//!
//! Step 3 is the *cofactored* equation of ZIP-215, which is what makes batches agree with
//! single checks: a batch checks `[8](Σ zᵢ(Rᵢ + kᵢAᵢ − sᵢB)) = 0` for random 128-bit
//! `zᵢ`, which holds for any set of signatures that are each valid, and, except with
//! probability about 2⁻¹²⁸, for no set holding an invalid one. The cofactorless equation
//! (ed25519-dalek's `verify_strict`, and its batch) lets a signer craft a signature
//! carrying a small-order component that one check rejects and a batch may accept (1 try
//! in 8), so nodes batching differently would disagree.
//!
//! Step 2's small-order checks are `verify_strict`'s: a small-order key signs every
//! message for anyone. Every signature `verify_strict` accepts is valid here (it
//! satisfies the equation without the cofactor); the converse fails only for signatures
//! whose signer put a small-order component in `R` or in the key itself, or wrote `R`
//! non-canonically. Nodes on the two rules would disagree about such a signature, so all
//! validators of a chain must run the same rule.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use sha2::{Digest, Sha512};

/// One signature, ready for the equation: steps 1 and 2 passed, `k` computed.
pub(crate) struct Prepared {
    minus_a: EdwardsPoint,
    r: EdwardsPoint,
    s: Scalar,
    k: Scalar,
}

/// Steps 1 and 2 and the challenge `k`; `None` if the signature fails them. `a` is the
/// decompressed key, `a_small_order` whether it has small order (found when the key was
/// parsed), `a_bytes` its encoding, `framed` the domain-framed message.
pub(crate) fn prepare(
    a: &EdwardsPoint,
    a_small_order: bool,
    a_bytes: &[u8; 32],
    framed: &[u8],
    signature: &[u8; 64],
) -> Option<Prepared> {
    let (r_bytes, s_bytes) = signature.split_at(32);
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes.try_into().ok()?))?;
    if a_small_order {
        return None;
    }
    let r = CompressedEdwardsY(r_bytes.try_into().ok()?).decompress()?;
    if r.is_small_order() {
        return None;
    }
    let mut h = Sha512::new();
    h.update(r_bytes);
    h.update(a_bytes);
    h.update(framed);
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    Some(Prepared {
        minus_a: -a,
        r,
        s,
        k,
    })
}

/// Step 3 for one signature.
pub(crate) fn check_one(p: &Prepared) -> bool {
    // [k](−A) + [s]B − R
    let sb_minus_ka = EdwardsPoint::vartime_double_scalar_mul_basepoint(&p.k, &p.minus_a, &p.s);
    (sb_minus_ka - p.r).mul_by_cofactor().is_identity()
}

/// Step 3 for all of `batch` at once: `true` iff every one passes (up to the 2⁻¹²⁸
/// chance above). `false` says only that at least one fails. `None` if the system's
/// random number generator failed (the caller checks one by one instead).
pub(crate) fn check_all(batch: &[&Prepared]) -> Option<bool> {
    let mut weights = vec![0u8; 16 * batch.len()];
    getrandom::fill(&mut weights).ok()?;
    let mut scalars = Vec::with_capacity(2 * batch.len() + 1);
    let mut points = Vec::with_capacity(2 * batch.len() + 1);
    let mut b = Scalar::ZERO;
    for (p, w) in batch.iter().zip(weights.chunks_exact(16)) {
        let z = Scalar::from(u128::from_le_bytes(w.try_into().ok()?));
        // zᵢ(Rᵢ + kᵢAᵢ − sᵢB), with −A stored: (−zᵢkᵢ)(−Aᵢ).
        scalars.push(-(z * p.k));
        points.push(p.minus_a);
        scalars.push(z);
        points.push(p.r);
        b -= z * p.s;
    }
    scalars.push(b);
    points.push(ED25519_BASEPOINT_POINT);
    let sum = EdwardsPoint::vartime_multiscalar_mul(scalars, points);
    Some(sum.mul_by_cofactor().is_identity())
}

/// Which of `items` are invalid (`None` from [`prepare`], or failing step 3), by index.
/// Checks the prepared ones in one batch and, only if that fails, one by one.
pub(crate) fn invalid(items: &[Option<Prepared>]) -> Vec<usize> {
    let mut bad: Vec<usize> = (0..items.len()).filter(|&i| items[i].is_none()).collect();
    let ready: Vec<(usize, &Prepared)> = items
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
        .collect();
    let all_pass = match ready.len() {
        0 => true,
        1 => check_one(ready[0].1),
        _ => check_all(&ready.iter().map(|(_, p)| *p).collect::<Vec<_>>()).unwrap_or(false),
    };
    if !all_pass {
        bad.extend(ready.iter().filter(|(_, p)| !check_one(p)).map(|(i, _)| *i));
        bad.sort_unstable();
    }
    bad
}
