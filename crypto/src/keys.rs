//! ed25519 keys and signatures with a domain per message kind.
//!
//! A signature is over `len(domain) || domain || len(chain_id) || chain_id || message`
//! (lengths as one byte), so a vote can never be replayed as a transaction, nor anything
//! signed for one chain on another.
//!
//! **Validity rule.** ed25519 with the cofactored equation of ZIP-215 and
//! `verify_strict`'s refusal of small-order keys and `R` ([`crate::rule`] states it in
//! full). Every path (mempool, block validation, certificates, receipts) applies exactly
//! that rule, one signature at a time ([`PublicKey::verify`]) or in batches
//! ([`verify_batch_report`]); the two agree by construction (up to a 2⁻¹²⁸ chance that a
//! batch holding an invalid signature passes), so a batch is about 1.8× as fast per
//! signature here and does not change the answers.
//!
//! The x25519 key of a node (its WireGuard static key) is derived from its ed25519 key:
//! secret `SigningKey::to_scalar_bytes()`, public `VerifyingKey::to_montgomery()`. Only raw
//! 32-byte values cross crate boundaries, because boringtun and libp2p use different
//! curve25519-dalek major versions.

use std::fmt;
use std::sync::{LazyLock, Mutex};

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::CryptoError;
use crate::recent::Recent;
use crate::rule;

/// What a signature is for. Each kind of signed message has its own domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SigDomain {
    /// A transaction signed by its sender.
    Transaction,
    /// A consensus proposal (Tendermint PROPOSAL, PBFT PRE-PREPARE, Raft append).
    Proposal,
    /// Tendermint PREVOTE.
    Prevote,
    /// Tendermint PRECOMMIT (the vote that certificates collect).
    Precommit,
    /// PBFT PREPARE.
    Prepare,
    /// PBFT COMMIT (the vote that certificates collect).
    Commit,
    /// PBFT VIEW-CHANGE and NEW-VIEW messages.
    ViewChange,
    /// Raft follower acknowledgement of a header (the vote that certificates collect).
    RaftAck,
    /// Raft (pre-)vote requests and answers.
    RaftElection,
    /// An auditor's cosignature over a checkpoint of the log.
    Checkpoint,
}

impl SigDomain {
    /// Every domain, for tests that check they are distinct.
    pub const ALL: [SigDomain; 10] = [
        SigDomain::Transaction,
        SigDomain::Proposal,
        SigDomain::Prevote,
        SigDomain::Precommit,
        SigDomain::Prepare,
        SigDomain::Commit,
        SigDomain::ViewChange,
        SigDomain::RaftAck,
        SigDomain::RaftElection,
        SigDomain::Checkpoint,
    ];

    /// The domain string that prefixes the signed bytes.
    pub const fn context(self) -> &'static str {
        match self {
            SigDomain::Transaction => "pyralog v1 sig transaction",
            SigDomain::Proposal => "pyralog v1 sig proposal",
            SigDomain::Prevote => "pyralog v1 sig prevote",
            SigDomain::Precommit => "pyralog v1 sig precommit",
            SigDomain::Prepare => "pyralog v1 sig prepare",
            SigDomain::Commit => "pyralog v1 sig commit",
            SigDomain::ViewChange => "pyralog v1 sig view change",
            SigDomain::RaftAck => "pyralog v1 sig raft ack",
            SigDomain::RaftElection => "pyralog v1 sig raft election",
            SigDomain::Checkpoint => "pyralog v1 sig checkpoint",
        }
    }

    /// The exact bytes a signature in this domain covers.
    ///
    /// # Panics
    /// If `chain_id` is longer than 255 bytes (callers validate chain ids first).
    pub fn signing_bytes(self, chain_id: &str, message: &[u8]) -> Vec<u8> {
        let domain = self.context().as_bytes();
        assert!(
            chain_id.len() <= u8::MAX as usize,
            "chain id longer than 255 bytes"
        );
        let mut out = Vec::with_capacity(2 + domain.len() + chain_id.len() + message.len());
        out.push(domain.len() as u8);
        out.extend_from_slice(domain);
        out.push(chain_id.len() as u8);
        out.extend_from_slice(chain_id.as_bytes());
        out.extend_from_slice(message);
        out
    }
}

/// An ed25519 public key (validated: a point on the curve).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    /// Whether the point has small order (such a key signs every message for anyone, and
    /// no signature by it is valid): known from the key, so found once when the key is
    /// parsed rather than in every signature check.
    small_order: bool,
}

/// Public keys recently parsed, decompressed.
///
/// Decompressing a point costs a field square root, about a fifth of a signature check,
/// and a node parses the same sender and validator keys over and over: a transaction
/// arrives by RPC or gossip and again in a block proposal, and a validator's key comes
/// with every vote. Only keys that decompressed are kept, so the cache never changes
/// what is valid. An adversary feeding new keys only makes it miss.
static KEY_CACHE: LazyLock<Mutex<Recent<[u8; 32], PublicKey>>> =
    LazyLock::new(|| Mutex::new(Recent::new(KEY_CACHE_KEYS)));

/// Keys per generation of [`KEY_CACHE`] (about 200 bytes each).
const KEY_CACHE_KEYS: usize = 8192;

impl PublicKey {
    /// Parses 32 bytes; fails if they are not a valid curve point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, CryptoError> {
        // The cache holds only parsed keys: a poisoned lock still holds valid ones.
        let cache = || KEY_CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = cache().get(bytes) {
            return Ok(key);
        }
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| CryptoError::InvalidPublicKey)?;
        let key = PublicKey::new(key);
        cache().insert(*bytes, key);
        Ok(key)
    }

    fn new(key: VerifyingKey) -> PublicKey {
        PublicKey {
            small_order: key.is_weak(),
            key,
        }
    }

    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Result<PublicKey, CryptoError> {
        PublicKey::from_bytes(&crate::parse_hex("public key", text)?)
    }

    /// The 32 raw bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The raw bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }

    /// The x25519 public key (WireGuard static public key) of the same identity.
    pub fn x25519_public(&self) -> [u8; 32] {
        self.key.to_montgomery().to_bytes()
    }

    /// Checks `signature` over `message` in `domain` on `chain_id` (the rule in the
    /// module docs).
    pub fn verify(
        &self,
        domain: SigDomain,
        chain_id: &str,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), CryptoError> {
        match self.prepare(domain, chain_id, message, signature) {
            Some(p) if rule::check_one(&p) => Ok(()),
            _ => Err(CryptoError::BadSignature),
        }
    }

    fn prepare(
        &self,
        domain: SigDomain,
        chain_id: &str,
        message: &[u8],
        signature: &Signature,
    ) -> Option<rule::Prepared> {
        rule::prepare(
            &self.key.to_edwards(),
            self.small_order,
            self.key.as_bytes(),
            &domain.signing_bytes(chain_id, message),
            &signature.0,
        )
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        PublicKey::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// A 64-byte ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl Signature {
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 128 hex characters.
    pub fn from_hex(text: &str) -> Result<Signature, CryptoError> {
        crate::parse_hex("signature", text).map(Signature)
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", self.to_hex())
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Signature::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// An ed25519 signing key with its public key. `Debug` never shows the secret.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
}

impl Keypair {
    /// The key pair whose secret is this 32-byte seed (RFC 8032 private key).
    pub fn from_seed(seed: &[u8; 32]) -> Keypair {
        Keypair {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// A new key pair from the operating system's random number generator.
    ///
    /// The only use of ambient randomness in this crate; deterministic code takes seeds.
    pub fn generate() -> Result<Keypair, CryptoError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| CryptoError::Randomness(e.to_string()))?;
        Ok(Keypair::from_seed(&seed))
    }

    /// The 32-byte secret seed. Handle with care: it is the whole secret.
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        PublicKey::new(self.signing.verifying_key())
    }

    /// Signs `message` in `domain` on `chain_id`.
    pub fn sign(&self, domain: SigDomain, chain_id: &str, message: &[u8]) -> Signature {
        use ed25519_dalek::Signer;
        Signature(
            self.signing
                .sign(&domain.signing_bytes(chain_id, message))
                .to_bytes(),
        )
    }

    /// The x25519 static secret (WireGuard) of the same identity: the clamped-to-be
    /// ed25519 scalar bytes, `SigningKey::to_scalar_bytes()`.
    pub fn x25519_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_scalar_bytes())
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Keypair {{ public: {}, secret: <redacted> }}",
            self.public().to_hex()
        )
    }
}

/// One signature to check in a batch.
#[derive(Clone, Copy, Debug)]
pub struct BatchItem<'a> {
    /// The signer.
    pub public_key: &'a PublicKey,
    /// The signature's domain.
    pub domain: SigDomain,
    /// The chain it was made for.
    pub chain_id: &'a str,
    /// The message (without domain and chain prefix).
    pub message: &'a [u8],
    /// The signature.
    pub signature: &'a Signature,
}

/// Checks many signatures. `Ok(())` if all are valid; otherwise the indices of the
/// invalid ones. One batch equation for all of them (the same answers as
/// [`PublicKey::verify`] on each, see the module docs); only if it fails are they checked
/// one by one, to name the invalid ones.
pub fn verify_batch_report(items: &[BatchItem<'_>]) -> Result<(), Vec<usize>> {
    let prepared: Vec<Option<rule::Prepared>> = items
        .iter()
        .map(|i| {
            i.public_key
                .prepare(i.domain, i.chain_id, i.message, i.signature)
        })
        .collect();
    let bad = rule::invalid(&prepared);
    if bad.is_empty() { Ok(()) } else { Err(bad) }
}

/// [`verify_batch_report`] spread over the machine's cores: the same rule and the same
/// answer, for a batch large enough to be worth a thread per core (a synced block, or a
/// proposal whose transactions this node had not seen).
pub fn verify_batch_report_parallel(items: &[BatchItem<'_>]) -> Result<(), Vec<usize>> {
    /// Below this, threads cost more than they save (one check is about 0.1 ms).
    const MIN_PER_THREAD: usize = 32;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len() / MIN_PER_THREAD);
    if threads <= 1 {
        return verify_batch_report(items);
    }
    let chunk = items.len().div_ceil(threads);
    let bad: Vec<usize> = std::thread::scope(|scope| {
        let parts: Vec<_> = items
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                scope.spawn(move || match verify_batch_report(part) {
                    Ok(()) => Vec::new(),
                    Err(bad) => bad.into_iter().map(|i| c * chunk + i).collect(),
                })
            })
            .collect();
        parts
            .into_iter()
            // A panicking check is a bug; re-raise it on this thread.
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    if bad.is_empty() { Ok(()) } else { Err(bad) }
}

/// Checks many signatures at once; fails if any is invalid.
pub fn verify_batch(items: &[BatchItem<'_>]) -> Result<(), CryptoError> {
    verify_batch_report(items).map_err(|_| CryptoError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn kp(n: u8) -> Keypair {
        Keypair::from_seed(&[n; 32])
    }

    #[test]
    fn the_parallel_batch_gives_the_same_answer() {
        let keys: Vec<Keypair> = (0..200u8).map(|n| kp(n.wrapping_add(10))).collect();
        let publics: Vec<PublicKey> = keys.iter().map(Keypair::public).collect();
        let messages: Vec<Vec<u8>> = (0..200u32).map(|n| n.to_le_bytes().to_vec()).collect();
        let mut sigs: Vec<Signature> = keys
            .iter()
            .zip(&messages)
            .map(|(k, m)| k.sign(SigDomain::Transaction, "c", m))
            .collect();
        let check = |sigs: &[Signature]| {
            let batch: Vec<BatchItem<'_>> = (0..200)
                .map(|i| BatchItem {
                    public_key: &publics[i],
                    domain: SigDomain::Transaction,
                    chain_id: "c",
                    message: &messages[i],
                    signature: &sigs[i],
                })
                .collect();
            let serial = verify_batch_report(&batch);
            assert_eq!(verify_batch_report_parallel(&batch), serial);
            serial
        };
        assert_eq!(check(&sigs), Ok(()));
        // Bad ones at the edges of the chunks and inside them, reported in order.
        for i in [0, 99, 100, 150, 199] {
            sigs[i].0[0] ^= 1;
        }
        assert_eq!(check(&sigs), Err(vec![0, 99, 100, 150, 199]));
    }

    #[test]
    fn parsed_keys_are_the_same_from_the_cache_and_bad_ones_stay_bad() {
        let bytes = kp(3).public().to_bytes();
        let first = PublicKey::from_bytes(&bytes).unwrap();
        let again = PublicKey::from_bytes(&bytes).unwrap();
        assert_eq!(first, again);
        assert_eq!(again.to_bytes(), bytes);
        let sig = kp(3).sign(SigDomain::Transaction, "c", b"m");
        again
            .verify(SigDomain::Transaction, "c", b"m", &sig)
            .unwrap();
        let cached = || KEY_CACHE.lock().unwrap_or_else(|e| e.into_inner());
        assert!(cached().get(&bytes).is_some());
        // Not a point (y = 2 has no x on the curve), asked twice: refused both times.
        let mut bad = [0u8; 32];
        bad[0] = 2;
        for _ in 0..2 {
            assert!(matches!(
                PublicKey::from_bytes(&bad),
                Err(CryptoError::InvalidPublicKey)
            ));
        }
        assert!(cached().get(&bad).is_none());
        // Past one generation, every key still parses to itself.
        let many: Vec<[u8; 32]> = (0..KEY_CACHE_KEYS + 10)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
                Keypair::from_seed(&seed).public().to_bytes()
            })
            .collect();
        for b in many.iter().chain(many.iter().take(10)) {
            assert_eq!(PublicKey::from_bytes(b).unwrap().to_bytes(), *b);
        }
    }

    #[test]
    fn sign_verify_and_domain_separation() {
        let k = kp(1);
        let sig = k.sign(SigDomain::Transaction, "test-chain", b"hello");
        k.public()
            .verify(SigDomain::Transaction, "test-chain", b"hello", &sig)
            .unwrap();
        // Every other domain, another chain, another message, another key: rejected.
        for d in SigDomain::ALL
            .iter()
            .filter(|d| **d != SigDomain::Transaction)
        {
            assert!(
                k.public().verify(*d, "test-chain", b"hello", &sig).is_err(),
                "{d:?}"
            );
        }
        assert!(
            k.public()
                .verify(SigDomain::Transaction, "other", b"hello", &sig)
                .is_err()
        );
        assert!(
            k.public()
                .verify(SigDomain::Transaction, "test-chain", b"hellO", &sig)
                .is_err()
        );
        assert!(
            kp(2)
                .public()
                .verify(SigDomain::Transaction, "test-chain", b"hello", &sig)
                .is_err()
        );
    }

    #[test]
    fn framing_is_unambiguous() {
        // Moving bytes between chain id and message changes the signed bytes.
        let a = SigDomain::Prevote.signing_bytes("ab", b"c");
        let b = SigDomain::Prevote.signing_bytes("a", b"bc");
        assert_ne!(a, b);
        let contexts: HashSet<_> = SigDomain::ALL.iter().map(|d| d.context()).collect();
        assert_eq!(contexts.len(), SigDomain::ALL.len());
    }

    #[test]
    fn batch_accepts_valid_and_names_invalid() {
        let keys: Vec<Keypair> = (0..16).map(kp).collect();
        let pubs: Vec<PublicKey> = keys.iter().map(Keypair::public).collect();
        let msgs: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; 10]).collect();
        let mut sigs: Vec<Signature> = keys
            .iter()
            .zip(&msgs)
            .map(|(k, m)| k.sign(SigDomain::Precommit, "c", m))
            .collect();
        let items = |sigs: &[Signature]| -> Vec<(usize, Signature)> {
            sigs.iter().copied().enumerate().collect()
        };
        let check = |sigs: &[Signature]| {
            let owned = items(sigs);
            let batch: Vec<BatchItem<'_>> = owned
                .iter()
                .map(|(i, s)| BatchItem {
                    public_key: &pubs[*i],
                    domain: SigDomain::Precommit,
                    chain_id: "c",
                    message: &msgs[*i],
                    signature: s,
                })
                .collect();
            verify_batch_report(&batch)
        };
        assert_eq!(check(&sigs), Ok(()));
        sigs[3].0[0] ^= 1;
        sigs[11] = keys[11].sign(SigDomain::Prevote, "c", &msgs[11]);
        assert_eq!(check(&sigs), Err(vec![3, 11]));
        assert_eq!(verify_batch(&[]).ok(), Some(()));
    }

    /// Batch items of transaction signatures over `m` on chain `c`.
    fn transactions_m<'a>(keys: &'a [PublicKey], sigs: &'a [Signature]) -> Vec<BatchItem<'a>> {
        keys.iter()
            .zip(sigs)
            .map(|(p, s)| BatchItem {
                public_key: p,
                domain: SigDomain::Transaction,
                chain_id: "c",
                message: b"m",
                signature: s,
            })
            .collect()
    }

    /// Whether the batch equation alone accepts `items` (no one-by-one fallback).
    fn batch_equation_holds(items: &[BatchItem<'_>]) -> bool {
        let prepared: Vec<rule::Prepared> = items
            .iter()
            .map(|i| {
                i.public_key
                    .prepare(i.domain, i.chain_id, i.message, i.signature)
                    .unwrap()
            })
            .collect();
        rule::check_all(&prepared.iter().collect::<Vec<_>>()) == Some(true)
    }

    /// What [`craft`] puts in a signature.
    #[derive(Clone, Copy, Default)]
    struct Craft {
        torsion_in_r: bool,
        torsion_in_key: bool,
        identity_r: bool,
        wrong_s: bool,
    }

    /// A signature over `message` (transaction domain, chain `c`) made from `k`'s secret
    /// scalar `a` directly, as only the key's holder can: key `aB` (`+ T`, a point of
    /// order 8, if asked), `R = rB` (`+ T`), or the identity with `r = 0`, and
    /// `s = r + ka` (`+ 1`).
    fn craft(k: &Keypair, message: &[u8], how: Craft) -> (PublicKey, Signature) {
        use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
        use curve25519_dalek::scalar::Scalar;
        use curve25519_dalek::traits::Identity;
        use sha2::{Digest, Sha512};
        let a = k.signing.to_scalar();
        assert_eq!(ED25519_BASEPOINT_POINT * a, k.public().key.to_edwards());
        let key_point = ED25519_BASEPOINT_POINT * a
            + if how.torsion_in_key {
                EIGHT_TORSION[1]
            } else {
                curve25519_dalek::EdwardsPoint::identity()
            };
        let public = PublicKey::from_bytes(key_point.compress().as_bytes()).unwrap();
        let r = if how.identity_r {
            Scalar::ZERO
        } else {
            Scalar::from_bytes_mod_order([7; 32])
        };
        let torsion = if how.torsion_in_r {
            EIGHT_TORSION[1]
        } else {
            curve25519_dalek::EdwardsPoint::identity()
        };
        let big_r = (ED25519_BASEPOINT_POINT * r + torsion).compress();
        let mut h = Sha512::new();
        h.update(big_r.as_bytes());
        h.update(public.as_bytes());
        h.update(SigDomain::Transaction.signing_bytes("c", message));
        let challenge = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        let s = r
            + challenge * a
            + if how.wrong_s {
                Scalar::ONE
            } else {
                Scalar::ZERO
            };
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(big_r.as_bytes());
        sig[32..].copy_from_slice(s.as_bytes());
        (public, Signature(sig))
    }

    /// A signature whose `R` carries a small-order component: `R = rB + T`, `s = r + ka`.
    fn torsion_signature(k: &Keypair, message: &[u8], wrong_s: bool) -> Signature {
        let how = Craft {
            torsion_in_r: true,
            wrong_s,
            ..Craft::default()
        };
        craft(k, message, how).1
    }

    #[test]
    fn a_small_order_component_in_r_is_valid_alone_and_in_every_batch() {
        let k = kp(9);
        let sig = torsion_signature(&k, b"m", false);
        // The cofactorless rule (verify_strict) refuses it; ours accepts it, alone ...
        let dalek = ed25519_dalek::Signature::from_bytes(&sig.0);
        let framed = SigDomain::Transaction.signing_bytes("c", b"m");
        assert!(k.public().key.verify_strict(&framed, &dalek).is_err());
        k.public()
            .verify(SigDomain::Transaction, "c", b"m", &sig)
            .unwrap();
        // ... and in batches, whatever their random weights. A cofactorless batch
        // equation fails it unless the weight is a multiple of 8.
        let keys: Vec<Keypair> = (20..40).map(kp).collect();
        let pubs: Vec<PublicKey> = keys.iter().map(Keypair::public).collect();
        let sigs: Vec<Signature> = keys
            .iter()
            .map(|k| k.sign(SigDomain::Transaction, "c", b"m"))
            .collect();
        let public = k.public();
        for round in 0..32 {
            let mut batch = transactions_m(&pubs, &sigs);
            let at = round % (batch.len() + 1);
            batch.insert(
                at,
                BatchItem {
                    public_key: &public,
                    domain: SigDomain::Transaction,
                    chain_id: "c",
                    message: b"m",
                    signature: &sig,
                },
            );
            assert_eq!(verify_batch_report(&batch), Ok(()), "round {round}");
            // By the batch equation itself, not by the one-by-one fallback.
            assert!(batch_equation_holds(&batch), "round {round}");
            // The same signature with a wrong `s` is refused, and named.
            let wrong = torsion_signature(&k, b"m", true);
            batch[at].signature = &wrong;
            assert_eq!(verify_batch_report(&batch), Err(vec![at]), "round {round}");
        }
    }

    #[test]
    fn batches_and_single_checks_agree_on_every_kind_of_bad_signature() {
        use curve25519_dalek::scalar::Scalar;
        // 72: enough for the parallel check to use two threads.
        let keys: Vec<Keypair> = (40..112).map(kp).collect();
        // The identity point: a small-order key, which "signs" anything with R = sB.
        let identity = PublicKey::from_bytes(&{
            let mut b = [0u8; 32];
            b[0] = 1;
            b
        })
        .unwrap();
        let basepoint_sig = {
            // R = B, s = 1: [s]B − R − [k]·identity = 0 for every message.
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(
                curve25519_dalek::constants::ED25519_BASEPOINT_COMPRESSED.as_bytes(),
            );
            sig[32] = 1;
            Signature(sig)
        };
        let mut publics = Vec::new();
        let mut sigs = Vec::new();
        let mut expect = Vec::new();
        for (n, k) in keys.iter().enumerate() {
            let mut sig = k.sign(SigDomain::Transaction, "c", b"m");
            let mut public = k.public();
            let valid = match n % 8 {
                0 => {
                    // s + ℓ: the same scalar, not canonical.
                    let s = Scalar::from_bytes_mod_order(sig.0[32..].try_into().unwrap());
                    let mut wide = [0u8; 32];
                    let ell: [u8; 32] = (-Scalar::ONE).to_bytes();
                    let mut carry = 1u16; // s + (ℓ − 1) + 1
                    for i in 0..32 {
                        let v = u16::from(s.as_bytes()[i]) + u16::from(ell[i]) + carry;
                        wide[i] = v as u8;
                        carry = v >> 8;
                    }
                    sig.0[32..].copy_from_slice(&wide);
                    false
                }
                1 => {
                    sig.0[5] ^= 0x10; // R changed
                    false
                }
                2 => {
                    sig = torsion_signature(k, b"m", false);
                    true
                }
                3 => {
                    // A small-order R (the identity), with the s that satisfies the
                    // equation: only the small-order check refuses it.
                    let how = Craft {
                        identity_r: true,
                        ..Craft::default()
                    };
                    (public, sig) = craft(k, b"m", how);
                    false
                }
                4 => {
                    public = identity;
                    sig = basepoint_sig;
                    false
                }
                5 => {
                    sig = k.sign(SigDomain::Transaction, "c", b"other");
                    false
                }
                6 => {
                    // A key with a small-order component, signing honestly: the
                    // cofactorless equation fails unless k·T = 0; this one holds.
                    let how = Craft {
                        torsion_in_key: true,
                        ..Craft::default()
                    };
                    (public, sig) = craft(k, b"m", how);
                    true
                }
                _ => true,
            };
            publics.push(public);
            sigs.push(sig);
            expect.push(valid);
        }
        let batch = transactions_m(&publics, &sigs);
        for (i, b) in batch.iter().enumerate() {
            let alone = b
                .public_key
                .verify(b.domain, b.chain_id, b.message, b.signature)
                .is_ok();
            assert_eq!(alone, expect[i], "signature {i}");
        }
        let invalid: Vec<usize> = (0..batch.len()).filter(|&i| !expect[i]).collect();
        assert_eq!(verify_batch_report(&batch), Err(invalid.clone()));
        assert_eq!(verify_batch_report_parallel(&batch), Err(invalid));
        let valid: Vec<BatchItem<'_>> = (0..batch.len())
            .filter(|&i| expect[i])
            .map(|i| batch[i])
            .collect();
        assert_eq!(verify_batch_report(&valid), Ok(()));
        assert!(batch_equation_holds(&valid));
    }

    #[test]
    fn x25519_keys_agree() {
        use curve25519_dalek::montgomery::MontgomeryPoint;
        for n in 0..8 {
            let k = kp(n);
            let derived = MontgomeryPoint::mul_base_clamped(*k.x25519_secret());
            assert_eq!(derived.to_bytes(), k.public().x25519_public());
        }
        // Diffie-Hellman between two identities gives one shared secret.
        let (a, b) = (kp(1), kp(2));
        let ab = MontgomeryPoint(b.public().x25519_public()).mul_clamped(*a.x25519_secret());
        let ba = MontgomeryPoint(a.public().x25519_public()).mul_clamped(*b.x25519_secret());
        assert_eq!(ab, ba);
    }

    #[test]
    fn invalid_public_key_bytes_are_rejected() {
        // y = 2 is not on the curve.
        let mut bytes = [0u8; 32];
        bytes[0] = 2;
        assert!(PublicKey::from_bytes(&bytes).is_err());
        assert!(PublicKey::from_hex("zz").is_err());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let k = kp(7);
        let shown = format!("{k:?}");
        assert!(!shown.contains(&hex::encode(*k.seed())));
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn rfc8032_test_vector_1() {
        let seed = crate::parse_hex::<32>(
            "seed",
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        )
        .unwrap();
        let k = Keypair::from_seed(&seed);
        assert_eq!(
            k.public().to_hex(),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        // The rule accepts the RFC's signature of the empty message (unframed).
        let sig = crate::parse_hex::<64>(
            "signature",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        )
        .unwrap();
        let public = k.public();
        let prepare = |sig: &[u8; 64]| {
            rule::prepare(
                &public.key.to_edwards(),
                public.small_order,
                public.as_bytes(),
                b"",
                sig,
            )
        };
        assert!(rule::check_one(&prepare(&sig).unwrap()));
        let mut other = sig;
        other[63] ^= 1;
        assert!(!prepare(&other).is_some_and(|p| rule::check_one(&p)));
    }
}
