//! The light client: a trusted header per chain, moved forward only on verified evidence,
//! and cross-checked with witnesses.
//!
//! The rules are `pyralog_ledger::light` (the same functions the auditor uses); this module
//! fetches, keeps the trusted state on disk, and turns contradictions into fork alarms
//! whose evidence is printed and saved.

use std::path::{Path, PathBuf};

use pyralog_ledger::light::{UpdateError, check_update, verify_signed_header};
use pyralog_ledger::{Certificate, Decode, Encode, Genesis, Header, ValidatorSet};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::client::{ConsistencyAnswer, NOT_FOUND, Rpc, SignedHeader};
use crate::error::{Result, WalletError, check, usage};
use crate::home::{io, read_text, write_atomic};

/// Format version of `trusted.json`.
pub const TRUSTED_VERSION: u32 = 1;

/// `trusted.json`: the latest verified header, its certificate, and the validator set.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustedFile {
    version: u32,
    #[serde(with = "pyralog_ledger::hex_bytes")]
    header: Vec<u8>,
    #[serde(with = "pyralog_ledger::hex_bytes")]
    certificate: Vec<u8>,
    #[serde(with = "pyralog_ledger::hex_bytes")]
    validators: Vec<u8>,
}

/// One side of a fork alarm: a certified header and where it came from.
#[derive(Clone, Debug, Serialize)]
pub struct Evidence {
    /// Who sent it (`trusted state` or a URL).
    pub source: String,
    /// Height.
    pub height: u64,
    /// Header hash (hex).
    pub hash: String,
    /// Canonical header (hex).
    pub header: String,
    /// Canonical certificate (hex).
    pub certificate: String,
}

impl Evidence {
    fn of(source: &str, s: &SignedHeader) -> Evidence {
        Evidence {
            source: source.to_string(),
            height: s.header.height,
            hash: s.header.hash().to_hex(),
            header: hex::encode(s.header.to_bytes()),
            certificate: hex::encode(s.cert.to_bytes()),
        }
    }
}

/// A chain as this wallet follows it.
pub struct LightClient {
    dir: PathBuf,
    genesis: Genesis,
    validators: ValidatorSet,
    trusted: Option<SignedHeader>,
}

const TRUSTED: &str = "trusted.json";
const LOCAL: &str = "trusted state";

impl LightClient {
    /// Opens the chain state in `dir` (see [`crate::home::Home::resolve_chain`]).
    pub fn open(genesis: Genesis, dir: &Path) -> Result<LightClient> {
        let validators = genesis
            .validator_set()
            .map_err(|e| usage(format!("genesis validators: {e}")))?;
        let mut lc = LightClient {
            dir: dir.to_path_buf(),
            genesis,
            validators,
            trusted: None,
        };
        let path = dir.join(TRUSTED);
        if path.exists() {
            let text = read_text(&path, 1 << 20)?;
            let corrupt = |e: &dyn std::fmt::Display| {
                usage(format!(
                    "{} is corrupt ({e}); move it away to start again from the genesis",
                    path.display()
                ))
            };
            let file: TrustedFile = serde_json::from_str(&text).map_err(|e| corrupt(&e))?;
            if file.version != TRUSTED_VERSION {
                return Err(corrupt(&format!("unknown version {}", file.version)));
            }
            let signed = SignedHeader {
                header: Header::from_bytes(&file.header).map_err(|e| corrupt(&e))?,
                cert: Certificate::from_bytes(&file.certificate).map_err(|e| corrupt(&e))?,
            };
            let set = ValidatorSet::from_bytes(&file.validators).map_err(|e| corrupt(&e))?;
            // Never trust a file blindly: it must still verify from the genesis.
            verify_signed_header(&lc.genesis, &set, &signed.header, &signed.cert)
                .map_err(|e| corrupt(&e))?;
            lc.validators = set;
            lc.trusted = Some(signed);
        }
        Ok(lc)
    }

    /// The genesis.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    /// The validator set.
    pub fn validators(&self) -> &ValidatorSet {
        &self.validators
    }

    /// The trusted header, if any was verified yet.
    pub fn trusted(&self) -> Option<&SignedHeader> {
        self.trusted.as_ref()
    }

    /// The trusted height (0 before the first update).
    pub fn height(&self) -> u64 {
        self.trusted.as_ref().map_or(0, |t| t.header.height)
    }

    fn save(&self) -> Result<()> {
        let Some(t) = &self.trusted else {
            return Ok(());
        };
        let file = TrustedFile {
            version: TRUSTED_VERSION,
            header: t.header.to_bytes(),
            certificate: t.cert.to_bytes(),
            validators: self.validators.to_bytes(),
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| io("creating", &self.dir, e))?;
        let text = serde_json::to_string_pretty(&file).map_err(|e| check(e.to_string()))?;
        write_atomic(&self.dir.join(TRUSTED), text.as_bytes())
    }

    /// Saves the evidence of a fork and returns the alarm.
    pub fn fork_alarm(&self, kind: &str, summary: String, sides: Vec<Evidence>) -> WalletError {
        let dir = self.dir.join("forks");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let path = dir.join(format!("fork-{now}-{kind}.json"));
        let report = json!({
            "kind": kind,
            "chain_id": self.genesis.chain_id.as_str(),
            "summary": summary,
            "evidence": sides,
        });
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        // The alarm is raised even if the evidence cannot be saved; it is printed too.
        let saved = std::fs::create_dir_all(&dir)
            .map_err(|e| e.to_string())
            .and_then(|()| write_atomic(&path, text.as_bytes()).map_err(|e| e.to_string()));
        eprintln!("{text}");
        WalletError::Fork {
            summary,
            evidence: match saved {
                Ok(()) => path,
                Err(e) => PathBuf::from(format!("(not saved: {e})")),
            },
        }
    }

    /// Checks that `s`, sent by `source`, is certified for this chain.
    fn certified(&self, source: &str, s: &SignedHeader) -> Result<()> {
        verify_signed_header(&self.genesis, &self.validators, &s.header, &s.cert).map_err(|e| {
            check(format!(
                "{source} sent a header at height {} that is not certified: {e}",
                s.header.height
            ))
        })
    }

    /// The fork alarm for two different certified headers at one height.
    fn conflicting(
        &self,
        summary: String,
        a: (&str, &SignedHeader),
        b: (&str, &SignedHeader),
    ) -> WalletError {
        self.fork_alarm(
            "conflicting_headers",
            summary,
            vec![Evidence::of(a.0, a.1), Evidence::of(b.0, b.1)],
        )
    }

    /// Verifies a header a server sent with an answer: certified, and not newer than the
    /// trusted head (call [`LightClient::update`] first). At the trusted height it must be
    /// the trusted header itself; a different certified one is a fork alarm.
    pub fn check_header(&self, source: &str, s: &SignedHeader) -> Result<()> {
        self.certified(source, s)?;
        let Some(t) = &self.trusted else {
            return Err(check("no trusted header yet"));
        };
        if s.header.height > t.header.height {
            return Err(check(format!(
                "{source} answered at height {}, above the verified head {}",
                s.header.height, t.header.height
            )));
        }
        if s.header.height == t.header.height && s.header.hash() != t.header.hash() {
            return Err(self.conflicting(
                format!(
                    "{source} sent a certified header at height {} that differs from the trusted one",
                    s.header.height
                ),
                (LOCAL, t),
                (source, s),
            ));
        }
        Ok(())
    }

    fn refuse(&self, source: &str, offered: &SignedHeader, e: UpdateError) -> WalletError {
        match (&e, &self.trusted) {
            (UpdateError::Conflict { .. }, Some(t)) => {
                self.conflicting(format!("{source}: {e}"), (LOCAL, t), (source, offered))
            }
            (UpdateError::NotExtension { .. }, Some(t)) => self.fork_alarm(
                "log_not_extension",
                format!("{source}: {e}"),
                vec![Evidence::of(LOCAL, t), Evidence::of(source, offered)],
            ),
            _ => check(format!("{source}: {e}")),
        }
    }

    /// Fetches the newest header of `primary`, verifies it from the trusted one (certificate,
    /// time, consistency of the log), cross-checks it with every witness, and makes it the
    /// trusted head. Returns the new head.
    pub async fn update(&mut self, primary: &Rpc, witnesses: &[Rpc]) -> Result<Header> {
        let from = self.height().max(1);
        let answer = match primary.call("log_consistency", vec![json!(from)]).await? {
            Ok(v) => ConsistencyAnswer::parse(primary.url(), &v)?,
            Err(e) if e.code == NOT_FOUND || self.trusted.is_none() => {
                return Err(crate::error::node(format!(
                    "node {} has no certified block to verify yet: {e}",
                    primary.url()
                )));
            }
            Err(e) => {
                // Asked from a height the server says it does not have: it is behind us.
                let head = self.head_of(primary).await?;
                let trusted = self.height();
                if head.header.height >= trusted {
                    return Err(check(format!(
                        "node {}: log_consistency from height {trusted}: {e}",
                        primary.url()
                    )));
                }
                return Err(check(format!(
                    "node {}: its head is height {}, older than the trusted height {trusted}: it is stale or rolled back",
                    primary.url(),
                    head.header.height
                )));
            }
        };
        let offered = answer.new.clone();
        if let Some(t) = &self.trusted
            && answer.old.height == t.header.height
            && answer.old.hash() != t.header.hash()
        {
            // The server's own history differs at the trusted height: certified there too?
            let theirs = primary.signed_at(t.header.height).await?;
            self.certified(primary.url(), &theirs)?;
            return Err(self.conflicting(
                format!(
                    "node {} has another certified header at the trusted height {}",
                    primary.url(),
                    t.header.height
                ),
                (LOCAL, t),
                (primary.url(), &theirs),
            ));
        }
        check_update(
            &self.genesis,
            &self.validators,
            self.trusted.as_ref().map(|t| &t.header),
            &offered.header,
            &offered.cert,
            &answer.proof,
        )
        .map_err(|e| self.refuse(primary.url(), &offered, e))?;
        for w in witnesses {
            self.cross_check(w, primary, &offered).await?;
        }
        self.trusted = Some(offered.clone());
        self.save()?;
        Ok(offered.header)
    }

    /// The newest certified header of `rpc` (verified).
    async fn head_of(&self, rpc: &Rpc) -> Result<SignedHeader> {
        let v = rpc.must("log_consistency", vec![json!(1)]).await?;
        let a = ConsistencyAnswer::parse(rpc.url(), &v)?;
        self.certified(rpc.url(), &a.new)?;
        Ok(a.new)
    }

    /// Compares a witness with the primary's new head `offered`: a different certified
    /// header at the same height is a fork alarm. A witness that is behind is compared at
    /// its own head, against the primary's header there.
    async fn cross_check(&self, w: &Rpc, primary: &Rpc, offered: &SignedHeader) -> Result<()> {
        let height = offered.header.height;
        let theirs = match w.signed_at(height).await {
            Ok(s) => s,
            Err(WalletError::Node(e)) => {
                // Behind (no such height yet) or unreachable: compare at its head if it
                // answers at all; an unreachable witness only warns.
                match self.head_of(w).await {
                    Ok(head) if head.header.height < height => {
                        let ours = primary.signed_at(head.header.height).await?;
                        return self.compare(primary.url(), &ours, w.url(), &head);
                    }
                    Ok(_) => return Err(check(format!("witness {}: {e}", w.url()))),
                    Err(e2) => {
                        eprintln!("warning: witness {} not checked: {e}; {e2}", w.url());
                        return Ok(());
                    }
                }
            }
            Err(e) => return Err(e),
        };
        self.compare(primary.url(), offered, w.url(), &theirs)
    }

    fn compare(&self, a_src: &str, a: &SignedHeader, b_src: &str, b: &SignedHeader) -> Result<()> {
        self.certified(&format!("witness {b_src}"), b)?;
        self.certified(a_src, a)?;
        if a.header.hash() != b.header.hash() {
            return Err(self.conflicting(
                format!(
                    "{a_src} and witness {b_src} sent different certified headers at height {}",
                    a.header.height
                ),
                (a_src, a),
                (b_src, b),
            ));
        }
        Ok(())
    }
}
