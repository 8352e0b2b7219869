//! Notarization receipts: self-contained proofs that verify offline from the genesis file.
//!
//! A receipt holds the transaction, its position, the certified header, the proofs, and
//! the chain of validator-set changes from genesis to that header. Binary objects are
//! carried as hex of their canonical encoding, so a verifier hashes exactly what was
//! signed; the few plain fields (`chain_id`, `digest`, `height`, `index`, `log_index`)
//! are checked against those objects. Changing any field makes verification fail.
//! docs/RECEIPTS.md gives the format and the steps of [`verify_receipt`].

use pyralog_crypto::PublicKey;
use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, Decode, Encode};
use crate::verify::{VerifyError, verify_certificate, verify_log_inclusion, verify_tx_inclusion};
use crate::{Certificate, ChainId, Genesis, Hash, Header, Payload, Transaction, ValidatorSet};

/// Format version of receipts.
pub const RECEIPT_VERSION: u32 = 1;
/// Largest receipt file accepted, in bytes.
pub const MAX_RECEIPT_JSON_BYTES: usize = 16 << 20;
/// Most validator-set changes a receipt may carry.
pub const MAX_VALIDATOR_SET_CHANGES: usize = 10_000;

/// A certified header at which the validator set changed, and the new set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorSetChange {
    /// Canonical header (hex) whose `next_validators_hash` names the new set.
    #[serde(with = "crate::hex_bytes")]
    pub header: Vec<u8>,
    /// Canonical certificate (hex) of that header, by the set in force before it.
    #[serde(with = "crate::hex_bytes")]
    pub certificate: Vec<u8>,
    /// Canonical encoding (hex) of the new validator set.
    #[serde(with = "crate::hex_bytes")]
    pub next_validators: Vec<u8>,
}

/// A notarization receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// Format version ([`RECEIPT_VERSION`]).
    pub version: u32,
    /// The chain.
    pub chain_id: ChainId,
    /// The notarized digest (plain BLAKE3 of the file).
    pub digest: Hash,
    /// Height of the block holding the transaction.
    pub height: u64,
    /// Index of the transaction in its block.
    pub index: u32,
    /// Position of the transaction in the log.
    pub log_index: u64,
    /// Canonical transaction (hex).
    #[serde(with = "crate::hex_bytes")]
    pub tx: Vec<u8>,
    /// Canonical header (hex) of the block.
    #[serde(with = "crate::hex_bytes")]
    pub header: Vec<u8>,
    /// Canonical certificate (hex) of that header.
    #[serde(with = "crate::hex_bytes")]
    pub certificate: Vec<u8>,
    /// Inclusion proof of the transaction in the block's transaction tree.
    pub tx_proof: Vec<Hash>,
    /// Inclusion proof of the transaction in the log at the header's log size.
    pub log_proof: Vec<Hash>,
    /// Validator-set changes from genesis to the header, oldest first.
    #[serde(default)]
    pub validator_set_changes: Vec<ValidatorSetChange>,
}

/// What a valid receipt proves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProvenNotarization {
    /// The chain.
    pub chain_id: ChainId,
    /// The notarized digest.
    pub digest: Hash,
    /// The notarization's text.
    pub meta: String,
    /// Who signed the notarization.
    pub signer: PublicKey,
    /// Height of its block.
    pub height: u64,
    /// Index in the block.
    pub index: u32,
    /// Position in the log.
    pub log_index: u64,
    /// BFT time of the block (milliseconds since the Unix epoch).
    pub time_ms: u64,
    /// Hash of the transaction.
    pub tx_hash: Hash,
    /// Hash of the certified header.
    pub header_hash: Hash,
}

/// Why a receipt is not valid: the exact check that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// Unknown format version.
    #[error("unsupported receipt version {0} (this verifier knows version {RECEIPT_VERSION})")]
    Version(u32),
    /// A field does not decode.
    #[error("receipt field {field} is malformed: {error}")]
    Malformed {
        /// Which field.
        field: &'static str,
        /// Why.
        error: CodecError,
    },
    /// The file's digest is not the notarized one.
    #[error("file digest {file} does not match the notarized digest {notarized}")]
    FileDigestMismatch {
        /// Digest of the file given.
        file: Hash,
        /// Digest in the receipt.
        notarized: Hash,
    },
    /// A plain field disagrees with the signed objects.
    #[error("receipt field {field} says {claimed}, the signed data says {actual}")]
    FieldMismatch {
        /// Which field.
        field: &'static str,
        /// The field's value.
        claimed: String,
        /// The value in the signed data.
        actual: String,
    },
    /// The transaction is not a notarization.
    #[error("the transaction is a {0}, not a notarization")]
    NotANotarization(&'static str),
    /// The transaction's signature is invalid.
    #[error("transaction signature does not verify")]
    TxSignature,
    /// Too many validator-set changes.
    #[error("receipt carries {0} validator-set changes, over the limit")]
    TooManyChanges(usize),
    /// A header, certificate or proof check failed.
    #[error("{step}: {error}")]
    Verify {
        /// Which step.
        step: &'static str,
        /// What failed.
        error: VerifyError,
    },
}

fn decode<T: Decode>(field: &'static str, bytes: &[u8]) -> Result<T, ReceiptError> {
    T::from_bytes(bytes).map_err(|error| ReceiptError::Malformed { field, error })
}

fn same<T: PartialEq + std::fmt::Display>(
    field: &'static str,
    claimed: &T,
    actual: &T,
) -> Result<(), ReceiptError> {
    if claimed == actual {
        Ok(())
    } else {
        Err(ReceiptError::FieldMismatch {
            field,
            claimed: claimed.to_string(),
            actual: actual.to_string(),
        })
    }
}

impl Receipt {
    /// Parses receipt JSON (at most [`MAX_RECEIPT_JSON_BYTES`]).
    pub fn from_json(text: &str) -> Result<Receipt, CodecError> {
        crate::codec::from_json_limited("receipt", text, MAX_RECEIPT_JSON_BYTES)
    }

    /// Pretty JSON, as written to receipt files.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Assembles a receipt from its parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tx: &Transaction,
        index: u32,
        log_index: u64,
        header: &Header,
        certificate: &Certificate,
        tx_proof: Vec<Hash>,
        log_proof: Vec<Hash>,
        validator_set_changes: Vec<ValidatorSetChange>,
    ) -> Result<Receipt, ReceiptError> {
        let Payload::Notarize { digest, .. } = &tx.payload else {
            return Err(ReceiptError::NotANotarization(tx.payload.kind()));
        };
        Ok(Receipt {
            version: RECEIPT_VERSION,
            chain_id: header.chain_id.clone(),
            digest: *digest,
            height: header.height,
            index,
            log_index,
            tx: tx.to_bytes(),
            header: header.to_bytes(),
            certificate: certificate.to_bytes(),
            tx_proof,
            log_proof,
            validator_set_changes,
        })
    }
}

/// Verifies `receipt` against `genesis`, offline. With `file_digest`, also checks that
/// the notarized digest is that of the file. Returns what the receipt proves.
///
/// Steps: version; chain id; transaction decodes, is a notarization of `digest` and its
/// signature verifies; validator-set changes chain from the genesis set, each certified by
/// the set before it; the header is certified by the resulting set under the engine's
/// quorum rule; the transaction is at `index` of the header's transaction tree and at
/// `log_index` of its log.
pub fn verify_receipt(
    genesis: &Genesis,
    receipt: &Receipt,
    file_digest: Option<&Hash>,
) -> Result<ProvenNotarization, ReceiptError> {
    if receipt.version != RECEIPT_VERSION {
        return Err(ReceiptError::Version(receipt.version));
    }
    same("chain_id", &receipt.chain_id, &genesis.chain_id)?;
    let tx: Transaction = decode("tx", &receipt.tx)?;
    let Payload::Notarize { digest, meta } = &tx.payload else {
        return Err(ReceiptError::NotANotarization(tx.payload.kind()));
    };
    same("digest", &receipt.digest, digest)?;
    if let Some(file) = file_digest
        && file != digest
    {
        return Err(ReceiptError::FileDigestMismatch {
            file: *file,
            notarized: *digest,
        });
    }
    same("tx chain_id", &tx.chain_id, &genesis.chain_id)?;
    tx.verify_signature()
        .map_err(|_| ReceiptError::TxSignature)?;

    let header: Header = decode("header", &receipt.header)?;
    let cert: Certificate = decode("certificate", &receipt.certificate)?;
    same("header chain_id", &header.chain_id, &genesis.chain_id)?;
    same("height", &receipt.height, &header.height)?;

    let verify =
        |step, r: Result<(), VerifyError>| r.map_err(|error| ReceiptError::Verify { step, error });
    let mut validators = genesis
        .validator_set()
        .map_err(|error| ReceiptError::Malformed {
            field: "genesis validators",
            error,
        })?;
    if receipt.validator_set_changes.len() > MAX_VALIDATOR_SET_CHANGES {
        return Err(ReceiptError::TooManyChanges(
            receipt.validator_set_changes.len(),
        ));
    }
    let mut last_change_height = 0;
    for change in &receipt.validator_set_changes {
        let h: Header = decode("validator set change header", &change.header)?;
        let c: Certificate = decode("validator set change certificate", &change.certificate)?;
        let next: ValidatorSet = decode("validator set change set", &change.next_validators)?;
        same(
            "validator set change chain_id",
            &h.chain_id,
            &genesis.chain_id,
        )?;
        if h.height <= last_change_height || h.height >= header.height {
            return Err(ReceiptError::FieldMismatch {
                field: "validator set change height",
                claimed: h.height.to_string(),
                actual: format!("between {last_change_height} and {}", header.height),
            });
        }
        verify(
            "validator set change certificate",
            verify_certificate(genesis.engine, &validators, &h, &c),
        )?;
        same(
            "validator set change next set",
            &h.next_validators_hash,
            &next.hash(),
        )?;
        last_change_height = h.height;
        validators = next;
    }
    verify(
        "header certificate",
        verify_certificate(genesis.engine, &validators, &header, &cert),
    )?;
    if header.height == 1 {
        verify(
            "first header",
            crate::verify::verify_first_header(genesis, &header),
        )?;
    }

    let tx_hash = tx.hash();
    verify(
        "transaction inclusion",
        verify_tx_inclusion(&header, &tx_hash, receipt.index, &receipt.tx_proof),
    )?;
    let block_start =
        header
            .log_size
            .checked_sub(header.tx_count as u64)
            .ok_or(ReceiptError::FieldMismatch {
                field: "header log_size",
                claimed: header.log_size.to_string(),
                actual: format!("at least tx_count {}", header.tx_count),
            })?;
    same(
        "log_index",
        &receipt.log_index,
        &(block_start + receipt.index as u64),
    )?;
    verify(
        "log inclusion",
        verify_log_inclusion(&header, &tx_hash, receipt.log_index, &receipt.log_proof),
    )?;

    Ok(ProvenNotarization {
        chain_id: header.chain_id.clone(),
        digest: *digest,
        meta: meta.clone(),
        signer: tx.sender,
        height: header.height,
        index: receipt.index,
        log_index: receipt.log_index,
        time_ms: header.time_ms,
        tx_hash,
        header_hash: header.hash(),
    })
}
