//! The host side of a simulated node: its committed chain, and the block building and
//! validation a real node does, with the ledger's own functions.

use std::collections::BTreeMap;

use pyralog_crypto::{Hash, HashDomain, Keypair, PublicKey};
use pyralog_ledger::log::MemLog;
use pyralog_ledger::state::MemState;
use pyralog_ledger::verify::{
    verify_block_contents, verify_execution, verify_first_header, verify_header_link,
    verify_last_certificate,
};
use pyralog_ledger::{
    Block, BlockContext, BlockExecutor, Certificate, Execution, Genesis, Payload, Tip, Transaction,
    ValidatorSet, apply_block, verify_tx_signatures,
};

/// One node's committed chain, held in memory.
#[derive(Clone)]
pub struct App {
    genesis: Genesis,
    validators: ValidatorSet,
    state: MemState,
    log: MemLog,
    tip: Tip,
    blocks: Vec<(Block, Certificate)>,
    /// Executions of blocks validated at the current height, by header hash.
    validated: BTreeMap<Hash, Execution>,
}

impl App {
    /// An empty chain for `genesis`.
    pub fn new(genesis: Genesis, validators: ValidatorSet) -> App {
        App {
            genesis,
            validators,
            state: MemState::new(),
            log: MemLog::new(),
            tip: Tip::genesis(),
            blocks: Vec::new(),
            validated: BTreeMap::new(),
        }
    }

    /// Height of the last committed block.
    pub fn height(&self) -> u64 {
        self.tip.height
    }

    /// The committed block and certificate at `height`.
    pub fn committed(&self, height: u64) -> Option<&(Block, Certificate)> {
        self.blocks
            .get(usize::try_from(height).ok()?.checked_sub(1)?)
    }

    fn prev(&self) -> Option<&(Block, Certificate)> {
        self.blocks.last()
    }

    /// Builds the next block, proposed by `proposer`, with `tx_count` notarizations from
    /// `users` (each sender's next nonce read from the committed state); `salt` varies the
    /// digests so two calls give two different blocks.
    pub fn build_block(
        &self,
        proposer: PublicKey,
        users: &[Keypair],
        tx_count: usize,
        salt: u64,
    ) -> Result<Block, String> {
        let prev = self.prev().map(|(b, c)| (&b.header, c));
        let ctx = BlockContext::next(&self.genesis, &self.validators, prev)
            .map_err(|e| format!("building block: {e}"))?;
        let height = ctx.height;
        let mut exec = BlockExecutor::new(
            &self.state,
            &self.log,
            self.tip.clone(),
            self.genesis.chain_id.clone(),
            ctx.time_ms,
        );
        let mut txs = Vec::new();
        for i in 0..tx_count.min(users.len()) {
            let user = &users[(height as usize + i) % users.len()];
            let Ok(nonce) = exec.next_nonce(&user.public()) else {
                break;
            };
            let mut seed = height.to_be_bytes().to_vec();
            seed.extend_from_slice(&salt.to_be_bytes());
            seed.extend_from_slice(&(i as u64).to_be_bytes());
            let payload = Payload::Notarize {
                digest: HashDomain::Tx.hash(&seed),
                meta: format!("sim h{height}"),
            };
            let Ok(tx) =
                Transaction::new_signed(user, self.genesis.chain_id.clone(), nonce, payload)
            else {
                break;
            };
            if exec.apply(&tx).is_ok() {
                txs.push(tx);
            }
        }
        let execution = exec.finish().map_err(|e| format!("building block: {e}"))?;
        Ok(ctx.seal(&execution, proposer, txs))
    }

    /// Everything a node checks before voting for a block: it extends the committed chain
    /// (link, validator sets, BFT time from the carried certificate), its body matches its
    /// header, its transactions are signed and execute to the header's roots.
    pub fn validate(&mut self, block: &Block) -> Result<(), String> {
        let header = &block.header;
        if header.height != self.tip.height + 1 {
            return Err(format!(
                "block at height {} does not follow committed height {}",
                header.height, self.tip.height
            ));
        }
        let prev = self.prev().map(|(b, _)| b.header.clone());
        match &prev {
            None => verify_first_header(&self.genesis, header),
            Some(p) => verify_header_link(p, header),
        }
        .map_err(|e| e.to_string())?;
        if header.next_validators_hash != self.validators.hash() {
            return Err("next validator set changes, which this chain does not allow".into());
        }
        if self.validators.index_of(&header.proposer).is_none() {
            return Err("proposer is not a validator".into());
        }
        verify_last_certificate(block, prev.as_ref().map(|p| (p, &self.validators)))
            .map_err(|e| e.to_string())?;
        verify_block_contents(block).map_err(|e| e.to_string())?;
        verify_tx_signatures(&block.txs)
            .map_err(|bad| format!("bad transaction signatures at {bad:?}"))?;
        let execution = apply_block(&self.state, &self.log, &self.tip, block)
            .map_err(|e| format!("execution: {e}"))?;
        verify_execution(header, &execution).map_err(|e| e.to_string())?;
        self.validated.insert(header.hash(), execution);
        Ok(())
    }

    /// Stores a decided block with its certificate (validating it first if needed).
    pub fn commit(&mut self, block: Block, certificate: Certificate) -> Result<(), String> {
        let hash = block.header.hash();
        if !self.validated.contains_key(&hash) {
            self.validate(&block)?;
        }
        let execution = self
            .validated
            .remove(&hash)
            .ok_or_else(|| "validated execution missing".to_string())?;
        self.state.insert_all(execution.state_writes.clone());
        self.log
            .append(&execution.tx_hashes)
            .map_err(|e| e.to_string())?;
        self.tip = execution.tip(block.header.height);
        self.blocks.push((block, certificate));
        self.validated.clear();
        Ok(())
    }
}
