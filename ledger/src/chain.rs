//! Chain identity and membership: chain ids, consensus engines, validator sets, genesis.

use std::fmt;

use pyralog_crypto::{HashDomain, PublicKey, SigDomain};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Hash;
use crate::codec::{CodecError, Decode, Decoder, Encode, put_bytes, put_count};

/// Longest chain id, in bytes.
pub const MAX_CHAIN_ID_BYTES: usize = 64;
/// Most validators in a set.
pub const MAX_VALIDATORS: usize = 1024;
/// Largest total voting power (keeps every power sum far from overflow).
pub const MAX_TOTAL_POWER: u64 = 1 << 60;
/// Format version of [`ValidatorSet`] and [`Genesis`] encodings.
pub const CHAIN_VERSION: u8 = 1;
/// Largest genesis file accepted, in bytes.
pub const MAX_GENESIS_JSON_BYTES: usize = 1 << 20;

/// A chain's name: 1 to 64 characters from `a-z 0-9 . _ -`. Part of every signature.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChainId(String);

impl ChainId {
    /// Checks the rules and wraps the name.
    pub fn new(name: &str) -> Result<ChainId, CodecError> {
        let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
        // It names directories (wallet homes), so it must not start with a dot.
        let first_ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !first_ok || name.len() > MAX_CHAIN_ID_BYTES || !name.chars().all(ok_char) {
            return Err(CodecError::Invalid {
                what: "chain id",
                reason: format!(
                    "{name:?}: must be 1 to {MAX_CHAIN_ID_BYTES} characters from a-z 0-9 . _ -, starting with a-z or 0-9"
                ),
            });
        }
        Ok(ChainId(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainId({})", self.0)
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Encode for ChainId {
    fn encode(&self, out: &mut Vec<u8>) {
        put_bytes(out, self.0.as_bytes());
    }
}

impl Decode for ChainId {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        ChainId::new(d.text("chain id", MAX_CHAIN_ID_BYTES)?)
    }
}

impl Serialize for ChainId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ChainId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ChainId::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The consensus engine a chain runs, fixed in genesis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineId {
    /// Tendermint (Buchman, Kwon, Milosevic 2018): Byzantine faults, quorum > 2/3.
    Tendermint = 1,
    /// PBFT (Castro, Liskov 1999): Byzantine faults, quorum > 2/3.
    Pbft = 2,
    /// Raft (Ongaro, Ousterhout 2014): crash faults only, quorum > 1/2.
    Raft = 3,
}

impl EngineId {
    /// Whether the engine tolerates Byzantine validators (Raft does not).
    pub fn is_bft(self) -> bool {
        !matches!(self, EngineId::Raft)
    }

    /// The signature domain of the vote that certificates of this engine collect.
    pub fn commit_domain(self) -> SigDomain {
        match self {
            EngineId::Tendermint => SigDomain::Precommit,
            EngineId::Pbft => SigDomain::Commit,
            EngineId::Raft => SigDomain::RaftAck,
        }
    }

    /// The vote kind that certificates of this engine collect.
    pub fn commit_vote_kind(self) -> crate::VoteKind {
        match self {
            EngineId::Tendermint => crate::VoteKind::Precommit,
            EngineId::Pbft => crate::VoteKind::Commit,
            EngineId::Raft => crate::VoteKind::RaftAck,
        }
    }

    /// The engine's name as written in genesis files.
    pub fn name(self) -> &'static str {
        match self {
            EngineId::Tendermint => "tendermint",
            EngineId::Pbft => "pbft",
            EngineId::Raft => "raft",
        }
    }

    pub(crate) fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        match d.u8("engine")? {
            1 => Ok(EngineId::Tendermint),
            2 => Ok(EngineId::Pbft),
            3 => Ok(EngineId::Raft),
            tag => Err(CodecError::BadTag {
                what: "engine",
                tag,
            }),
        }
    }
}

impl std::str::FromStr for EngineId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tendermint" => Ok(EngineId::Tendermint),
            "pbft" => Ok(EngineId::Pbft),
            "raft" => Ok(EngineId::Raft),
            _ => Err(format!(
                "unknown consensus engine {s:?} (tendermint, pbft or raft)"
            )),
        }
    }
}

/// One validator: a signing key and its voting power.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validator {
    /// The validator's consensus signing key.
    pub public_key: PublicKey,
    /// Its voting power (at least 1).
    pub power: u64,
}

/// The validators of a height, sorted by public key, with their voting power.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ValidatorSet {
    validators: Vec<Validator>,
    #[serde(skip)]
    total_power: u64,
}

impl ValidatorSet {
    /// Builds a set: sorts by key and checks there is at least one validator, no
    /// duplicate key, no zero power, and the total stays under [`MAX_TOTAL_POWER`].
    pub fn new(mut validators: Vec<Validator>) -> Result<ValidatorSet, CodecError> {
        let invalid = |reason: String| CodecError::Invalid {
            what: "validator set",
            reason,
        };
        if validators.is_empty() || validators.len() > MAX_VALIDATORS {
            return Err(invalid(format!(
                "must have 1 to {MAX_VALIDATORS} validators"
            )));
        }
        validators.sort_by_key(|v| v.public_key);
        let mut total: u64 = 0;
        for (i, v) in validators.iter().enumerate() {
            if v.power == 0 {
                return Err(invalid(format!(
                    "validator {} has zero power",
                    v.public_key
                )));
            }
            if i > 0 && validators[i - 1].public_key == v.public_key {
                return Err(invalid(format!("validator {} appears twice", v.public_key)));
            }
            total = total.saturating_add(v.power);
        }
        if total > MAX_TOTAL_POWER {
            return Err(invalid(format!(
                "total power {total} over {MAX_TOTAL_POWER}"
            )));
        }
        Ok(ValidatorSet {
            validators,
            total_power: total,
        })
    }

    /// The validators in canonical (public key) order.
    pub fn validators(&self) -> &[Validator] {
        &self.validators
    }

    /// Number of validators.
    pub fn len(&self) -> usize {
        self.validators.len()
    }

    /// Always false: a set has at least one validator.
    pub fn is_empty(&self) -> bool {
        self.validators.is_empty()
    }

    /// The sum of all voting power.
    pub fn total_power(&self) -> u64 {
        self.total_power
    }

    /// The validator at `index` in canonical order.
    pub fn get(&self, index: usize) -> Option<&Validator> {
        self.validators.get(index)
    }

    /// The canonical index of a key, if it is in the set.
    pub fn index_of(&self, key: &PublicKey) -> Option<usize> {
        self.validators
            .binary_search_by(|v| v.public_key.cmp(key))
            .ok()
    }

    /// The smallest voting power that forms a quorum under `engine`'s rule: more than 2/3
    /// of the total for BFT engines, more than 1/2 for Raft.
    pub fn quorum_power(&self, engine: EngineId) -> u64 {
        if engine.is_bft() {
            self.total_power * 2 / 3 + 1
        } else {
            self.total_power / 2 + 1
        }
    }

    /// The smallest voting power that must include an honest validator under a BFT rule:
    /// more than 1/3 of the total (`f + 1`).
    pub fn one_third_plus(&self) -> u64 {
        self.total_power / 3 + 1
    }

    /// The set's identity, committed in headers.
    pub fn hash(&self) -> Hash {
        HashDomain::ValidatorSet.hash(&self.to_bytes())
    }
}

impl Encode for ValidatorSet {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(CHAIN_VERSION);
        put_count(out, self.validators.len());
        for v in &self.validators {
            out.extend_from_slice(v.public_key.as_bytes());
            out.extend_from_slice(&v.power.to_be_bytes());
        }
    }
}

impl Decode for ValidatorSet {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        d.version("validator set", CHAIN_VERSION)?;
        let n = d.count("validators", MAX_VALIDATORS)?;
        let mut validators = Vec::new();
        for _ in 0..n {
            validators.push(Validator {
                public_key: d.public_key("validator")?,
                power: d.u64("power")?,
            });
        }
        let set = ValidatorSet::new(validators.clone())?;
        // Canonical form: the encoding must already be sorted.
        if set.validators != validators {
            return Err(CodecError::Invalid {
                what: "validator set",
                reason: "validators not sorted by public key".into(),
            });
        }
        Ok(set)
    }
}

impl<'de> Deserialize<'de> for ValidatorSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            validators: Vec<Validator>,
        }
        let raw = Raw::deserialize(d)?;
        ValidatorSet::new(raw.validators).map_err(serde::de::Error::custom)
    }
}

/// Chain parameters fixed in genesis. Every field has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChainParams {
    /// Most transactions in one block.
    pub max_block_txs: u32,
    /// Most encoded bytes of transactions in one block.
    pub max_block_bytes: u32,
    /// Propose timeout of round 0, in milliseconds (grows by `timeout_delta_ms` per round).
    pub timeout_propose_ms: u64,
    /// Prevote timeout of round 0, in milliseconds.
    pub timeout_prevote_ms: u64,
    /// Precommit timeout of round 0, in milliseconds.
    pub timeout_precommit_ms: u64,
    /// Growth of every timeout per round, in milliseconds.
    pub timeout_delta_ms: u64,
    /// Pause after a commit before the next height starts, in milliseconds. New
    /// genesis files get 10; a genesis file without the field means 100, the default
    /// when it was written, so its hash (the chain's identity) does not change.
    #[serde(default = "ChainParams::omitted_timeout_commit_ms")]
    pub timeout_commit_ms: u64,
}

impl Default for ChainParams {
    fn default() -> Self {
        ChainParams {
            max_block_txs: 10_000,
            max_block_bytes: 8 << 20,
            timeout_propose_ms: 1000,
            timeout_prevote_ms: 500,
            timeout_precommit_ms: 500,
            timeout_delta_ms: 500,
            timeout_commit_ms: 10,
        }
    }
}

impl ChainParams {
    fn omitted_timeout_commit_ms() -> u64 {
        100
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.max_block_txs.to_be_bytes());
        out.extend_from_slice(&self.max_block_bytes.to_be_bytes());
        for ms in [
            self.timeout_propose_ms,
            self.timeout_prevote_ms,
            self.timeout_precommit_ms,
            self.timeout_delta_ms,
            self.timeout_commit_ms,
        ] {
            out.extend_from_slice(&ms.to_be_bytes());
        }
    }
}

/// A validator as written in a genesis file: key, power and an optional name for humans.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisValidator {
    /// The validator's consensus signing key (hex).
    pub public_key: PublicKey,
    /// Its voting power.
    pub power: u64,
    /// A label for logs and tools; not part of the chain's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The validator's node key (its libp2p peer id and WireGuard key), so every
    /// validator lets the others through its WireGuard overlay. Network configuration,
    /// not part of the chain's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_key: Option<PublicKey>,
}

/// The genesis file: everything a node or verifier needs to know about a chain's start.
///
/// JSON for humans; its identity ([`Genesis::hash`]) is over a canonical binary encoding,
/// and is the `prev_hash` of block 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    /// The chain's name.
    pub chain_id: ChainId,
    /// Start time in milliseconds since the Unix epoch; block 1's time is later.
    pub genesis_time_ms: u64,
    /// The consensus engine.
    pub engine: EngineId,
    /// The initial validators.
    pub validators: Vec<GenesisValidator>,
    /// Chain parameters.
    #[serde(default)]
    pub params: ChainParams,
}

impl Genesis {
    /// Parses and validates a genesis file's text.
    pub fn from_json(text: &str) -> Result<Genesis, CodecError> {
        let genesis: Genesis =
            crate::codec::from_json_limited("genesis file", text, MAX_GENESIS_JSON_BYTES)?;
        genesis.validator_set()?;
        if genesis.params.max_block_txs == 0 || genesis.params.max_block_bytes == 0 {
            return Err(CodecError::Invalid {
                what: "genesis params",
                reason: "max_block_txs and max_block_bytes must be positive".into(),
            });
        }
        Ok(genesis)
    }

    /// Pretty JSON, as written to genesis files.
    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// The initial validator set.
    pub fn validator_set(&self) -> Result<ValidatorSet, CodecError> {
        ValidatorSet::new(
            self.validators
                .iter()
                .map(|v| Validator {
                    public_key: v.public_key,
                    power: v.power,
                })
                .collect(),
        )
    }

    /// The chain's identity: hash of the canonical encoding of chain id, time, engine,
    /// validator set and parameters (names are not included).
    pub fn hash(&self) -> Result<Hash, CodecError> {
        let mut out = vec![CHAIN_VERSION];
        self.chain_id.encode(&mut out);
        out.extend_from_slice(&self.genesis_time_ms.to_be_bytes());
        out.push(self.engine as u8);
        self.validator_set()?.encode(&mut out);
        self.params.encode(&mut out);
        Ok(HashDomain::Genesis.hash(&out))
    }
}
