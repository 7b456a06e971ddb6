//! Quorum unlock (DESIGN §6): no node unlocks its data alone, not even a consensus member. Each
//! consensus member's CUK is split into Shamir shares over GF(256), one per other member, any
//! [`threshold`] of which recover it; the holders keep them TPM-sealed on their ESPs. On a cold
//! start of the whole cluster (no etcd quorum, so no Curator to answer JoinNode) a member asks its
//! peers for their shares of its CUK ([`client`]), which each serves from its sealed shares
//! before its own etcd is up ([`holder`]), and checks what they combine to against the digest
//! of its CUK that its sealed configuration keeps.
//!
//! The Curator side, which splits and redistributes shares as membership changes, is
//! [`crate::curator`]'s escrow reconciler.

pub mod client;
pub mod holder;

use std::collections::BTreeMap;

use ring::digest::{digest, SHA256};
use subtle::ConstantTimeEq;

use crate::proto::private::Share;
use crate::storage::UnlockKey;

/// The port every node serves its held shares on (`ColdStart`), beside the Curator's 7835.
pub const COLD_START_PORT: u16 = 7836;

/// Why a member's CUK could not be recovered from its peers' shares.
#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    /// Too few peers answered with a share of one split.
    #[error("{have} of the {need} shares needed to unlock ({failures})")]
    NotEnough {
        /// The most shares of one split that arrived.
        have: usize,
        /// How many that split needs.
        need: usize,
        /// What each peer that gave none said.
        failures: String,
    },
    /// Enough shares arrived, but none of their combinations is this node's CUK: a peer holds a
    /// wrong or tampered share.
    #[error("the shares of {0} peers combine to a key that is not this node's cluster unlock key")]
    WrongShares(usize),
    /// A share is malformed.
    #[error("a share from {holder} is malformed: {reason}")]
    Malformed {
        /// The peer that answered it.
        holder: String,
        /// What is wrong.
        reason: String,
    },
    /// The directory lists no other consensus member to ask.
    #[error("the cluster directory lists no other consensus member to ask for shares")]
    NoPeers,
}

/// How many of the shares of an `n`-member cluster's split recover a CUK: ⌈(n−1)/2⌉, at least
/// one, so that a member comes back with a majority of its peers and one stolen machine (with
/// its own sealed shares of others) learns nothing.
pub fn threshold(members: usize) -> u32 {
    let holders = members.saturating_sub(1) as u32;
    holders.div_ceil(2).max(1)
}

/// SHA-256 of `cuk`: what a member keeps to recognise its own CUK (it reveals nothing of a
/// random 32-byte key).
pub fn cuk_digest(cuk: &UnlockKey) -> Vec<u8> {
    digest(&SHA256, cuk.as_bytes()).as_ref().to_vec()
}

/// Split `cuk`, the CUK of `owner` (who joins with `owner_join_key`), into one share per holder
/// of `holders`, as split `generation`. None are confirmed yet.
pub fn split(
    cuk: &[u8],
    owner: &str,
    owner_join_key: &[u8],
    holders: &[String],
    generation: u64,
) -> Vec<Share> {
    let threshold = threshold(holders.len() + 1);
    let dealer = blahaj::Sharks(threshold as u8).dealer(cuk);
    holders
        .iter()
        .zip(dealer)
        .map(|(holder, share)| Share {
            owner: owner.to_owned(),
            owner_join_key: owner_join_key.to_vec(),
            holder: holder.clone(),
            generation,
            threshold,
            value: Vec::from(&share),
            confirmed: false,
        })
        .collect()
}

/// The CUK that `shares` (from peers, for one owner) recover and that matches `digest`: shares
/// combine within one generation, with as many as its threshold asks.
pub fn combine(shares: &[Share], digest: &[u8]) -> Result<UnlockKey, QuorumError> {
    let mut splits: BTreeMap<u64, Vec<&Share>> = BTreeMap::new();
    for share in shares {
        splits.entry(share.generation).or_default().push(share);
    }
    let mut most = (0, 1);
    // The newest split first: an older one is only there while holders catch up.
    for split in splits.values().rev() {
        let need = split[0].threshold.max(1) as usize;
        if split.len() < need {
            if split.len() > most.0 {
                most = (split.len(), need);
            }
            continue;
        }
        let mut parsed = Vec::with_capacity(split.len());
        for share in split {
            let value = blahaj::Share::try_from(share.value.as_slice()).map_err(|reason| {
                QuorumError::Malformed {
                    holder: share.holder.clone(),
                    reason: reason.to_owned(),
                }
            })?;
            parsed.push(value);
        }
        let recovered = zeroize::Zeroizing::new(
            blahaj::Sharks(need as u8)
                .recover(parsed.iter())
                .map_err(|reason| QuorumError::Malformed {
                    holder: split
                        .iter()
                        .map(|s| s.holder.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    reason: reason.to_owned(),
                })?,
        );
        let Ok(cuk) = UnlockKey::from_slice(&recovered) else {
            continue;
        };
        if bool::from(cuk_digest(&cuk).ct_eq(digest)) {
            return Ok(cuk);
        }
        return Err(QuorumError::WrongShares(split.len()));
    }
    Err(QuorumError::NotEnough {
        have: most.0,
        need: most.1,
        failures: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holders(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("holder{i}")).collect()
    }

    #[test]
    fn the_threshold_is_half_the_other_members_rounded_up_and_at_least_one() {
        let thresholds: Vec<u32> = (1..=7).map(threshold).collect();
        assert_eq!(thresholds, [1, 1, 1, 2, 2, 3, 3]);
    }

    #[test]
    fn threshold_shares_of_one_generation_recover_the_key_and_fewer_do_not() {
        let cuk = UnlockKey::from_slice(&[7; 32]).unwrap();
        let digest = cuk_digest(&cuk);
        // Five members: four holders, threshold two.
        let shares = split(cuk.as_bytes(), "owner", &[1; 32], &holders(4), 3);
        assert!(shares.iter().all(|s| s.threshold == 2 && s.generation == 3));
        let recovered = combine(&shares[1..3], &digest).unwrap();
        assert_eq!(recovered.as_bytes(), cuk.as_bytes());
        match combine(&shares[..1], &digest) {
            Err(QuorumError::NotEnough {
                have: 1, need: 2, ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // Shares of two different splits do not combine with each other.
        let older = split(cuk.as_bytes(), "owner", &[1; 32], &holders(4), 2);
        assert!(matches!(
            combine(&[shares[0].clone(), older[1].clone()], &digest),
            Err(QuorumError::NotEnough { .. })
        ));
    }

    #[test]
    fn a_tampered_share_is_caught_by_the_digest() {
        let cuk = UnlockKey::from_slice(&[9; 32]).unwrap();
        let mut shares = split(cuk.as_bytes(), "owner", &[1; 32], &holders(4), 1);
        shares[0].value[5] ^= 1;
        assert!(matches!(
            combine(&shares[..2], &cuk_digest(&cuk)),
            Err(QuorumError::WrongShares(2))
        ));
        shares[0].value.truncate(1);
        assert!(matches!(
            combine(&shares[..2], &cuk_digest(&cuk)),
            Err(QuorumError::Malformed { .. })
        ));
    }
}
