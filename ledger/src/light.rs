//! The rules of a light client: when a header may be trusted, and when a newer header may
//! replace the trusted one. Pure functions; the wallet and the auditor do the fetching.
//!
//! A light client starts from the genesis file and keeps one trusted header. A header is
//! believed only with a certificate that verifies under the validator set (the quorum rule
//! of the chain's engine). A newer header replaces the trusted one only if its BFT time does
//! not go back and a consistency proof shows its log extends the trusted log. Two
//! certified headers for one height, or a certified log that does not extend the trusted
//! one, mean the chain forked: [`UpdateError::is_fork`].

use crate::verify::{VerifyError, verify_certificate, verify_first_header, verify_log_consistency};
use crate::{Certificate, Genesis, Hash, Header, ValidatorSet};

/// Why a newer header cannot replace the trusted one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// The header is not certified by the validator set (forged or altered).
    #[error("header at height {height} is not certified: {error}")]
    Uncertified {
        /// Its height.
        height: u64,
        /// What failed.
        error: VerifyError,
    },
    /// The header is older than the trusted one: the server is behind or rolled back.
    #[error(
        "the server's head is height {offered}, older than the trusted height {trusted}: it is stale or rolled back"
    )]
    Stale {
        /// Trusted height.
        trusted: u64,
        /// Height offered.
        offered: u64,
    },
    /// Another certified header at the trusted height.
    #[error("two certified headers at height {height}: {trusted} (trusted) and {offered}")]
    Conflict {
        /// The height.
        height: u64,
        /// Hash of the trusted header.
        trusted: Hash,
        /// Hash of the other.
        offered: Hash,
    },
    /// BFT time went back.
    #[error("BFT time goes back from {trusted} ms at the trusted head to {offered} ms")]
    TimeBackwards {
        /// Trusted header's time.
        trusted: u64,
        /// Offered header's time.
        offered: u64,
    },
    /// The certified log does not extend the trusted one.
    #[error(
        "the log at height {offered} is not an extension of the trusted log at height {trusted}: {error}"
    )]
    NotExtension {
        /// Trusted height.
        trusted: u64,
        /// Offered height.
        offered: u64,
        /// The failed consistency check.
        error: VerifyError,
    },
}

impl UpdateError {
    /// Whether this is evidence of a fork (certified data that contradicts the trusted
    /// history), as opposed to a server that sends bad or old data.
    pub fn is_fork(&self) -> bool {
        matches!(
            self,
            UpdateError::Conflict { .. } | UpdateError::NotExtension { .. }
        )
    }
}

/// Checks that `cert` certifies `header` for the chain of `genesis` under `validators`;
/// a header at height 1 must also follow from the genesis itself.
pub fn verify_signed_header(
    genesis: &Genesis,
    validators: &ValidatorSet,
    header: &Header,
    cert: &Certificate,
) -> Result<(), VerifyError> {
    if header.chain_id != genesis.chain_id {
        return Err(VerifyError::WrongChain {
            expected: genesis.chain_id.clone(),
            found: header.chain_id.clone(),
        });
    }
    verify_certificate(genesis.engine, validators, header, cert)?;
    if header.height == 1 {
        verify_first_header(genesis, header)?;
    }
    Ok(())
}

/// Checks that `offered` (with `cert`) may replace `trusted` (`None`: only the genesis is
/// trusted): it is certified, not older, not a different header at the same height, its
/// time does not go back, and `consistency` proves its log extends the trusted log.
pub fn check_update(
    genesis: &Genesis,
    validators: &ValidatorSet,
    trusted: Option<&Header>,
    offered: &Header,
    cert: &Certificate,
    consistency: &[Hash],
) -> Result<(), UpdateError> {
    verify_signed_header(genesis, validators, offered, cert).map_err(|error| {
        UpdateError::Uncertified {
            height: offered.height,
            error,
        }
    })?;
    let Some(trusted) = trusted else {
        return Ok(());
    };
    if offered.height < trusted.height {
        return Err(UpdateError::Stale {
            trusted: trusted.height,
            offered: offered.height,
        });
    }
    if offered.height == trusted.height {
        return match offered.hash() == trusted.hash() {
            true => Ok(()),
            false => Err(UpdateError::Conflict {
                height: offered.height,
                trusted: trusted.hash(),
                offered: offered.hash(),
            }),
        };
    }
    if offered.time_ms < trusted.time_ms {
        return Err(UpdateError::TimeBackwards {
            trusted: trusted.time_ms,
            offered: offered.time_ms,
        });
    }
    verify_log_consistency(trusted, offered, consistency).map_err(|error| {
        UpdateError::NotExtension {
            trusted: trusted.height,
            offered: offered.height,
            error,
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::EngineId;
    use crate::testing::TestChain;

    fn chain() -> TestChain {
        let mut chain = TestChain::new(4, EngineId::Tendermint);
        for h in 0..5u64 {
            let alice = crate::testing::user(1);
            let tx = chain.put(&alice, h, b"k", &h.to_be_bytes());
            chain.commit(vec![tx]);
        }
        chain
    }

    #[test]
    fn updates_forward_and_refuses_stale_conflicting_and_broken_logs() {
        let chain = chain();
        let set = chain.genesis.validator_set().unwrap();
        let (h2, c2) = (&chain.blocks[1].header, &chain.certs[1]);
        let (h5, c5) = (&chain.blocks[4].header, &chain.certs[4]);
        let proof = crate::log::consistency_proof(&chain.log, h2.log_size, h5.log_size).unwrap();
        check_update(&chain.genesis, &set, None, h2, c2, &[]).unwrap();
        check_update(&chain.genesis, &set, Some(h2), h5, c5, &proof).unwrap();
        check_update(&chain.genesis, &set, Some(h5), h5, c5, &[]).unwrap();

        let stale = check_update(&chain.genesis, &set, Some(h5), h2, c2, &[]).unwrap_err();
        assert!(matches!(stale, UpdateError::Stale { .. }) && !stale.is_fork());

        let mut forged = h5.clone();
        forged.state_root = Hash::ZERO;
        let e = check_update(&chain.genesis, &set, Some(h2), &forged, c5, &proof).unwrap_err();
        assert!(matches!(e, UpdateError::Uncertified { .. }) && !e.is_fork());

        let mut bad = proof.clone();
        bad[0] = Hash::ZERO;
        let e = check_update(&chain.genesis, &set, Some(h2), h5, c5, &bad).unwrap_err();
        assert!(matches!(e, UpdateError::NotExtension { .. }) && e.is_fork());

        // A different header at the trusted height, certified by the same quorum.
        let mut other = h5.clone();
        other.state_root = Hash::ZERO;
        let other_cert = chain.certify_all(&other);
        let e = check_update(&chain.genesis, &set, Some(h5), &other, &other_cert, &[]).unwrap_err();
        assert!(matches!(e, UpdateError::Conflict { height: 5, .. }) && e.is_fork());

        // Another chain's header is refused.
        let mut foreign = chain.genesis.clone();
        foreign.chain_id = crate::ChainId::new("other").unwrap();
        assert!(verify_signed_header(&foreign, &set, h5, c5).is_err());
    }
}
