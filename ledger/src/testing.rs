//! Builders of real, signed and certified chains for tests (feature `test-utils`).
//!
//! A test kit: it panics on misuse (an invalid test transaction, a missing node) so that
//! tests fail loudly at the line that built the bad input.
#![allow(clippy::expect_used)]

use pyralog_crypto::{Hash, Keypair};

use crate::exec::{BlockContext, BlockExecutor, Execution, Tip};
use crate::log::{self, LogNodes, MemLog};
use crate::merkle::TxTree;
use crate::state::{MemState, StateNodes, Subtree};
use crate::{
    Block, Certificate, ChainId, ChainParams, CommitSig, EngineId, Genesis, GenesisValidator,
    Header, Payload, Receipt, Transaction, ValidatorSet, Vote,
};

/// A deterministic test user key.
pub fn user(n: u64) -> Keypair {
    let mut seed = [0x55u8; 32];
    seed[..8].copy_from_slice(&n.to_be_bytes());
    Keypair::from_seed(&seed)
}

/// A chain built in memory: every block executed and certified by all validators.
pub struct TestChain {
    /// The genesis document.
    pub genesis: Genesis,
    /// Validator keys, in the validator set's canonical order.
    pub validator_keys: Vec<Keypair>,
    /// The validator set (constant in test chains).
    pub validators: ValidatorSet,
    /// State nodes.
    pub state: MemState,
    /// Log nodes.
    pub log: MemLog,
    /// The committed tip.
    pub tip: Tip,
    /// Committed blocks, `blocks[h - 1]` at height `h`.
    pub blocks: Vec<Block>,
    /// Their certificates.
    pub certs: Vec<Certificate>,
    /// Their executions.
    pub executions: Vec<Execution>,
}

impl TestChain {
    /// A chain named `test-chain` with `n` validators of power 10 under `engine`.
    pub fn new(n: usize, engine: EngineId) -> TestChain {
        let mut keys: Vec<Keypair> = (0..n)
            .map(|i| Keypair::from_seed(&[i as u8 + 1; 32]))
            .collect();
        keys.sort_by_key(|k| k.public());
        let genesis = Genesis {
            chain_id: ChainId::new("test-chain").expect("valid chain id"),
            genesis_time_ms: 1_700_000_000_000,
            engine,
            validators: keys
                .iter()
                .enumerate()
                .map(|(i, k)| GenesisValidator {
                    public_key: k.public(),
                    power: 10,
                    name: Some(format!("v{i}")),
                    node_key: None,
                })
                .collect(),
            params: ChainParams::default(),
        };
        let validators = genesis.validator_set().expect("valid set");
        TestChain {
            genesis,
            validator_keys: keys,
            validators,
            state: MemState::new(),
            log: MemLog::new(),
            tip: Tip::genesis(),
            blocks: Vec::new(),
            certs: Vec::new(),
            executions: Vec::new(),
        }
    }

    /// The chain id.
    pub fn chain_id(&self) -> ChainId {
        self.genesis.chain_id.clone()
    }

    /// A signed notarization of `digest` by `key` with `nonce`.
    pub fn notarize(&self, key: &Keypair, nonce: u64, digest: Hash, meta: &str) -> Transaction {
        Transaction::new_signed(
            key,
            self.chain_id(),
            nonce,
            Payload::Notarize {
                digest,
                meta: meta.into(),
            },
        )
        .expect("within limits")
    }

    /// A signed put.
    pub fn put(&self, key: &Keypair, nonce: u64, k: &[u8], v: &[u8]) -> Transaction {
        Transaction::new_signed(
            key,
            self.chain_id(),
            nonce,
            Payload::Put {
                key: k.to_vec(),
                value: v.to_vec(),
            },
        )
        .expect("within limits")
    }

    /// The next block over `txs` (not committed) and its execution.
    pub fn make_block(&self, txs: Vec<Transaction>) -> (Block, Execution) {
        let prev = self.blocks.last().map(|b| &b.header).zip(self.certs.last());
        self.build_block(&self.state, &self.log, &self.tip, prev, txs)
    }

    /// The block after `prev` (header and certificate; `None` for block 1) over `txs`,
    /// executed on any stores holding the chain at `tip`.
    pub fn build_block<S: StateNodes + ?Sized, L: LogNodes + ?Sized>(
        &self,
        state: &S,
        log: &L,
        tip: &Tip,
        prev: Option<(&Header, &Certificate)>,
        txs: Vec<Transaction>,
    ) -> (Block, Execution) {
        let ctx = BlockContext::next(&self.genesis, &self.validators, prev)
            .expect("a valid previous block");
        let proposer =
            self.validator_keys[(ctx.height as usize) % self.validator_keys.len()].public();
        let mut exec = BlockExecutor::new(state, log, tip.clone(), self.chain_id(), ctx.time_ms);
        for tx in &txs {
            exec.apply(tx).expect("test transactions are valid");
        }
        let execution = exec.finish().expect("readable stores");
        (ctx.seal(&execution, proposer, txs), execution)
    }

    /// A certificate of `header` signed by all validators.
    pub fn certify_all(&self, header: &Header) -> Certificate {
        let all: Vec<usize> = (0..self.validator_keys.len()).collect();
        self.certify(header, &all)
    }

    /// A certificate of `header` signed by the validators at `signers` (canonical indices).
    pub fn certify(&self, header: &Header, signers: &[usize]) -> Certificate {
        let mut cert = Certificate {
            height: header.height,
            round: 0,
            header_hash: header.hash(),
            votes: vec![],
        };
        for &i in signers {
            let time_ms = header.time_ms + 500 + i as u64;
            let vote = Vote {
                kind: header.engine.commit_vote_kind(),
                height: header.height,
                round: 0,
                block: Some(cert.header_hash),
                time_ms,
            };
            let signature = vote.sign(&self.validator_keys[i], &header.chain_id);
            cert.votes.push(CommitSig {
                validator: i as u32,
                time_ms,
                signature,
            });
        }
        cert
    }

    /// Builds, certifies (all validators) and commits the next block.
    pub fn commit(&mut self, txs: Vec<Transaction>) -> &Block {
        let (block, execution) = self.make_block(txs);
        let cert = self.certify_all(&block.header);
        self.apply_committed(block, cert, execution)
    }

    /// The state tree after the block at `height` (the empty tree at 0).
    pub fn state_at(&self, height: u64) -> Subtree {
        match height {
            0 => Subtree::EMPTY,
            h => self.executions[h as usize - 1].tip(h).state(),
        }
    }

    /// Stores a block that was certified elsewhere.
    pub fn apply_committed(
        &mut self,
        block: Block,
        cert: Certificate,
        execution: Execution,
    ) -> &Block {
        self.state.insert_all(execution.state_writes.clone());
        self.log
            .append(&execution.tx_hashes)
            .expect("in-memory log");
        self.tip = execution.tip(block.header.height);
        self.blocks.push(block);
        self.certs.push(cert);
        self.executions.push(execution);
        self.blocks.last().expect("just pushed")
    }

    /// A receipt for the transaction at `index` of block `height`.
    pub fn receipt(&self, height: u64, index: u32) -> Receipt {
        let block = &self.blocks[height as usize - 1];
        let tx_hashes: Vec<Hash> = block.txs.iter().map(Transaction::hash).collect();
        let tx_proof = TxTree::new(&tx_hashes)
            .inclusion_proof(index as usize)
            .expect("in range");
        let log_index = block.header.log_size - block.header.tx_count as u64 + index as u64;
        let log_proof =
            log::inclusion_proof(&self.log, log_index, block.header.log_size).expect("stored");
        Receipt::new(
            &block.txs[index as usize],
            index,
            log_index,
            &block.header,
            &self.certs[height as usize - 1],
            tx_proof,
            log_proof,
            vec![],
        )
        .expect("a notarization")
    }
}
