//! Trust-root rotation over the air: the agent walks the chain the control
//! plane publishes from the root it holds ([`TrustChain::advance`]), and
//! from then on verifies announcements and commands with the newest root.

use meshota_protocol::{codec, Event, TrustChain, TrustRoot};

use super::{Agent, AgentAction};

impl Agent {
    /// A retained message from the fleet's trust topic, as received.
    pub fn handle_trust_chain_bytes(&mut self, bytes: &[u8], now: u64) {
        match codec::decode::<TrustChain>(bytes) {
            Ok(chain) => self.handle_trust_chain(chain, now),
            Err(e) => {
                let e = meshota_protocol::VerifyError::from(e);
                self.error(e.code(), format!("trust chain: {e}"), None);
            }
        }
    }

    /// Adopts the newest root `chain` leads to from the current one.
    ///
    /// Nothing changes unless every link verifies and the final root is
    /// unexpired. A chain with nothing newer is silently ignored, so the
    /// retained chain can be re-delivered on every connect. On success the
    /// chain is persisted before anything else happens (a restart keeps
    /// the new root), a `TrustRotated` event is published, and retained
    /// announcements are read again: one that failed under the old root
    /// (signed with a rotated-in key) may verify now.
    pub fn handle_trust_chain(&mut self, chain: TrustChain, now: u64) {
        let from = self.cfg.root.version;
        let next = match chain.advance(&self.cfg.root) {
            Ok(Some(next)) => next,
            Ok(None) => return,
            Err(e) => {
                self.error(e.code(), format!("trust chain refused: {e}"), None);
                return;
            }
        };
        if let Err(e) = next.check_expiry(now) {
            self.error(e.code(), format!("trust chain refused: {e}"), None);
            return;
        }
        let to = next.version;
        self.cfg.root = next;
        self.state.trust_chain = Some(chain);
        self.persist();
        self.publish(Event::TrustRotated { from, to });
        self.publish_status();
        self.actions.push_back(AgentAction::Resync);
    }

    /// The root to verify with after a restart: the shipped one, advanced
    /// along the persisted chain. The chain is verified again from the
    /// shipped root rather than trusted from disk; a chain that no longer
    /// verifies (a different root shipped in a new image) is dropped and
    /// reported. Expiry is left to verification, which reports
    /// `E_EXPIRED` for every document while the root is stale.
    pub(super) fn restore_trust(&mut self) {
        let Some(chain) = self.state.trust_chain.clone() else {
            return;
        };
        match chain.advance(&self.cfg.root) {
            Ok(Some(root)) => self.cfg.root = root,
            // The shipped root is already as new (a new image): the chain
            // has done its work.
            Ok(None) => {}
            Err(e) => {
                self.state.trust_chain = None;
                self.error(
                    e.code(),
                    format!("persisted trust chain no longer verifies from the shipped root; dropped: {e}"),
                    None,
                );
            }
        }
    }

    /// The root currently verified with.
    pub fn trust_root(&self) -> &TrustRoot {
        &self.cfg.root
    }
}
