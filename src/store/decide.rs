//! The decisions an acceptance makes, written once and called by every backend: whether an
//! idempotency record or a spent signature is still live, what a session's next
//! `stateVersion` is, and whether the answer fits `limits.max_response_bytes`. A backend only
//! reads the previous state and stores the result.
//!
//! The answer itself is rendered by the HTTP layer (see [`Answer`]); the store only puts the
//! session's version into it, so no backend edits response JSON, and, when the session is
//! forgotten, empties its `data` ([`Answer::forgotten`]) the same way on every backend.

use bytes::Bytes;

use super::StoreError;

/// The answer to an accepted event, prepared by the caller: `head`, the decimal
/// `stateVersion`, then `tail`. The store renders it once the version is known and keeps the
/// result for duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    head: Vec<u8>,
    tail: Vec<u8>,
}

/// The longest decimal rendering of a `u64`.
const MAX_VERSION_DIGITS: usize = 20;

impl Answer {
    /// An answer whose `stateVersion` goes between `head` and `tail`.
    pub fn new(head: Vec<u8>, tail: Vec<u8>) -> Answer {
        Answer { head, tail }
    }

    /// The answer with this version in place.
    pub fn render(&self, state_version: u64) -> Bytes {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(state_version).as_bytes();
        let mut out = Vec::with_capacity(self.head.len() + digits.len() + self.tail.len());
        out.extend_from_slice(&self.head);
        out.extend_from_slice(digits);
        out.extend_from_slice(&self.tail);
        Bytes::from(out)
    }

    /// What the answer kept for `event_id`'s duplicates becomes when its session is
    /// forgotten: the envelope as it was (status word, message, correlation and transaction
    /// ids, time) with `data`, which held the route's extracts and a `respond` upstream's
    /// answer, emptied to `{"processed": true, "stateVersion": N, "forgotten": true}`. A
    /// stored answer that is not a JSON object (none the gateway writes) becomes `{eventId,
    /// sessionId, stateVersion, "forgotten": true}`.
    pub fn forgotten(
        stored: &[u8],
        event_id: &str,
        session_id: &str,
        state_version: u64,
    ) -> Vec<u8> {
        let data = serde_json::json!({
            "processed": true,
            "stateVersion": state_version,
            "forgotten": true,
        });
        let emptied = match serde_json::from_slice::<serde_json::Value>(stored) {
            Ok(serde_json::Value::Object(mut envelope)) => {
                envelope.insert("data".into(), data);
                serde_json::Value::Object(envelope)
            }
            _ => serde_json::json!({
                "eventId": event_id,
                "sessionId": session_id,
                "stateVersion": state_version,
                "forgotten": true,
            }),
        };
        serde_json::to_vec(&emptied).unwrap_or_default()
    }

    /// Refuses an answer that could exceed `limit` whatever the version (checked before
    /// anything is written, so a refused event leaves nothing behind).
    pub fn check_size(&self, limit: usize) -> Result<(), StoreError> {
        let longest = self.head.len() + MAX_VERSION_DIGITS + self.tail.len();
        if longest > limit {
            return Err(StoreError::ResponseTooLarge {
                size: longest,
                limit,
            });
        }
        Ok(())
    }
}

/// How long records live (`store.idempotency_window`, `store.session_ttl`), in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub idempotency_ms: i64,
    pub session_ttl_ms: i64,
}

impl Windows {
    /// An idempotency record created at `created_at` still answers duplicates at `now`.
    pub fn key_is_live(&self, created_at: i64, now: i64) -> bool {
        created_at >= self.idempotency_cutoff(now)
    }

    /// Records created before this are past the idempotency window.
    pub fn idempotency_cutoff(&self, now: i64) -> i64 {
        now.saturating_sub(self.idempotency_ms)
    }

    /// Sessions last seen before this have expired.
    pub fn session_cutoff(&self, now: i64) -> i64 {
        now.saturating_sub(self.session_ttl_ms)
    }

    /// The session's `stateVersion` after one more event at `now`, given its stored
    /// `(state_version, last_seen)`: the next count while the session lives, else 1.
    pub fn next_version(&self, previous: Option<(u64, i64)>, now: i64) -> u64 {
        match previous {
            Some((version, last_seen)) if last_seen >= self.session_cutoff(now) => {
                version.saturating_add(1)
            }
            _ => 1,
        }
    }
}

/// A spent signature that expires at `expires_at_s` (Unix seconds) still refuses a replay at
/// `now_ms`.
pub fn signature_is_spent(expires_at_s: i64, now_ms: i64) -> bool {
    expires_at_s >= now_ms / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Windows = Windows {
        idempotency_ms: 1_000,
        session_ttl_ms: 10_000,
    };

    #[test]
    fn a_session_counts_on_while_it_lives_and_starts_again_after_its_ttl() {
        assert_eq!(W.next_version(None, 50_000), 1);
        assert_eq!(W.next_version(Some((4, 40_000)), 50_000), 5);
        assert_eq!(W.next_version(Some((4, 39_999)), 50_000), 1);
    }

    #[test]
    fn an_idempotency_record_answers_inside_its_window_only() {
        assert!(W.key_is_live(49_000, 50_000));
        assert!(!W.key_is_live(48_999, 50_000));
    }

    #[test]
    fn a_spent_signature_refuses_until_it_would_be_stale() {
        assert!(signature_is_spent(50, 50_999));
        assert!(!signature_is_spent(49, 50_000));
    }

    #[test]
    fn the_answer_carries_the_version_and_is_refused_if_it_could_be_too_long() {
        let a = Answer::new(b"{\"v\":".to_vec(), b"}".to_vec());
        assert_eq!(&a.render(12)[..], b"{\"v\":12}");
        assert_eq!(&a.render(u64::MAX)[..], b"{\"v\":18446744073709551615}");
        assert!(a.check_size(26).is_ok());
        assert_eq!(
            a.check_size(25),
            Err(StoreError::ResponseTooLarge {
                size: 26,
                limit: 25
            })
        );
    }

    #[test]
    fn a_forgotten_answer_keeps_its_envelope_in_order_and_loses_its_data() {
        let stored = br#"{"status":"success","message":"m","correlationId":"c","transactionId":"t","timestamp":"2026-12-05T10:00:00.000Z","data":{"processed":true,"stateVersion":3,"orderId":"A-1","result":{"name":"Ada"}}}"#;
        assert_eq!(
            String::from_utf8(Answer::forgotten(stored, "e1", "s1", 3)).expect("UTF-8"),
            r#"{"status":"success","message":"m","correlationId":"c","transactionId":"t","timestamp":"2026-12-05T10:00:00.000Z","data":{"processed":true,"stateVersion":3,"forgotten":true}}"#
        );
        for not_an_object in [&b"[1]"[..], b"not json", b""] {
            assert_eq!(
                String::from_utf8(Answer::forgotten(not_an_object, "e1", "s1", 3)).expect("UTF-8"),
                r#"{"eventId":"e1","sessionId":"s1","stateVersion":3,"forgotten":true}"#
            );
        }
    }
}
