//! A Bloom filter in front of a key generation, so that a new key (most of them) is known to
//! be new without a look-up in the tree.
//!
//! Every event looks its key up before it is accepted, and a look-up in `fjall` walks the
//! newest generation's memtables (skip lists whose nodes are mostly cache misses) before its
//! files' own Bloom filters: 1.4–1.5 µs of the sequencer's ~9 µs per event at saturation
//! (measured by leaving the look-up out, bench/README.md, nineteenth session). This filter
//! answers "not here" in one cache line.
//!
//! It covers only a generation this process started (empty when it began), and each of the
//! generation's keys is added before the batch that writes the key is committed, so a key
//! the generation holds is never reported absent. A generation found on disk at start has
//! none and is probed as before. The filter has a fixed size (`BYTES`), and a key it wrongly
//! says "maybe" to costs a probe of the tree, never a wrong answer: about 1 in 10,000 keys
//! at 200,000 keys in the generation, 2 % at a million, 7 % at 1.5 million, 29 % at 3 million
//! (a generation is a quarter of the window: 100 events/s for 6 h are 2.2 million).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// The filter's size: one per key generation this process started (a generation lasts a
/// quarter of the idempotency window, so at most five or six are live).
const BYTES: usize = 1024 * 1024;

/// Bits set per key, all in one 64-byte block (one cache line).
const PROBES: u32 = 4;

const WORDS_PER_BLOCK: usize = 8;
const BLOCKS: usize = BYTES / 8 / WORDS_PER_BLOCK;

pub(super) struct Filter {
    words: Box<[AtomicU64]>,
    hasher: foldhash::fast::RandomState,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter").field("bytes", &BYTES).finish()
    }
}

impl Filter {
    pub(super) fn new() -> Filter {
        Filter {
            words: (0..BYTES / 8).map(|_| AtomicU64::new(0)).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The words and bits of `key`: `PROBES` bit positions of 9 bits each (512 bits a block)
    /// from the hash's low 36 bits, and the block from the bits above them (none shared: a
    /// block's keys would otherwise agree on part of a position).
    fn positions(&self, key: &[u8]) -> impl Iterator<Item = (usize, u64)> {
        let h = self.hasher.hash_one(key);
        let block = ((h >> (9 * PROBES)) as usize % BLOCKS) * WORDS_PER_BLOCK;
        (0..PROBES).map(move |i| {
            let bit = (h >> (9 * i)) & 511;
            (block + (bit >> 6) as usize, 1u64 << (bit & 63))
        })
    }

    /// Adds `key`. Relaxed: a reader learns that a key was written through the position the
    /// writer publishes afterwards (the projected log position), which orders this before.
    pub(super) fn insert(&self, key: &[u8]) {
        for (word, bit) in self.positions(key) {
            self.words[word].fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// False when `key` was certainly never added.
    pub(super) fn may_hold(&self, key: &[u8]) -> bool {
        self.positions(key)
            .all(|(word, bit)| self.words[word].load(Ordering::Relaxed) & bit != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_added_key_may_be_held_and_most_others_are_not() {
        let f = Filter::new();
        let others = |f: &Filter| {
            (0..100_000)
                .filter(|i| f.may_hold(format!("other-{i}").as_bytes()))
                .count()
        };
        for i in 0..200_000 {
            f.insert(format!("key-{i}").as_bytes());
        }
        assert!((0..200_000).all(|i| f.may_hold(format!("key-{i}").as_bytes())));
        // 200,000 keys in 16,384 blocks of 512 bits, four bits each: about 0.01 %.
        let false_positives = others(&f);
        assert!(false_positives < 100, "{false_positives} of 100,000");
        for i in 200_000..1_000_000 {
            f.insert(format!("key-{i}").as_bytes());
        }
        // A million: about 2.2 % with positions independent of the block (4.7 % if a position
        // shared bits with the block's number).
        let false_positives = others(&f);
        assert!(false_positives < 3_000, "{false_positives} of 100,000");
    }

    #[test]
    fn an_empty_filter_holds_nothing() {
        let f = Filter::new();
        assert!(!f.may_hold(b""));
        assert!(!f.may_hold(b"a key"));
    }
}
