//! What the embedded store's log holds: one record per committed change of the request path,
//! complete enough that applying the records in order to the database rebuilds every table
//! the request path writes (see `project`). The encoding is private to this store: fields in
//! a fixed order, strings and byte strings as `u32` length + bytes, integers little-endian.
//! An acceptance is written packed when it can be (`packed`: the columns its body repeats
//! and its standard answer are left out, ~30 % of its bytes); both encodings are read.

use bytes::Bytes;

mod packed;

/// One committed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Record {
    /// An accepted event with its session version, answer and outbox rows.
    Accept(Box<AcceptRecord>),
    /// A duplicate spent its (timestamped) signature.
    Spend(Spend),
    /// The stored answer of an idempotency key was replaced (a `respond` upstream answered).
    /// `event_id` is the event the key made (`None` in records written before the keys moved
    /// out of the database: the key then finds it).
    Answer {
        key: String,
        event_id: Option<String>,
        status: u16,
        body: Bytes,
    },
    /// A session was forgotten at `at` (Unix ms): its state, its events' payloads, its
    /// undelivered rows and its dead letters (SPEC §12.3).
    Forget { session_id: String, at: i64 },
}

/// A signature used once (route, MAC), refused again until `expires_at` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Spend {
    pub(super) route: String,
    pub(super) mac: Vec<u8>,
    pub(super) expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AcceptRecord {
    /// When it was committed (Unix ms).
    pub(super) at: i64,
    pub(super) event_id: String,
    pub(super) correlation_id: String,
    pub(super) route: String,
    pub(super) session_id: String,
    pub(super) event_type: String,
    pub(super) state_version: u64,
    pub(super) simulated: bool,
    pub(super) received_at: String,
    /// The normalised event as JSON, `stateVersion` included.
    pub(super) body: String,
    pub(super) key: String,
    pub(super) status: u16,
    pub(super) answer: Bytes,
    pub(super) rows: Vec<OutboxRow>,
    pub(super) spend: Option<Spend>,
}

/// An outbox row an acceptance writes. Ids are given out by the store (not the database) so
/// that the request can hold its `respond` row before the row reaches the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OutboxRow {
    pub(super) id: i64,
    pub(super) sink: String,
    pub(super) held: Option<Held>,
}

/// A `respond.upstream` row, inserted already leased to the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Held {
    pub(super) lease_until: i64,
    pub(super) token: String,
    /// The `on_late` sink, "" for none.
    pub(super) respond_to: String,
}

const ACCEPT: u8 = 1;
const SPEND: u8 = 2;
const ANSWER: u8 = 3;
const FORGET: u8 = 4;
/// `ANSWER` with the event id.
const ANSWER_FOR: u8 = 5;
/// `ACCEPT` packed (schema 18, see [`packed`]): the columns the body repeats are read from
/// the body, and a standard success answer is kept as what follows its `stateVersion`.
const ACCEPT_PACKED: u8 = 6;

impl Record {
    /// Appends the encoding to `out`.
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Record::Accept(a) => a.encode_with(out, &a.key, a.spend.as_ref()),
            Record::Spend(s) => {
                out.push(SPEND);
                put_spend(out, s);
            }
            Record::Answer {
                key,
                event_id,
                status,
                body,
            } => {
                out.push(if event_id.is_some() {
                    ANSWER_FOR
                } else {
                    ANSWER
                });
                put_bytes(out, key.as_bytes());
                if let Some(id) = event_id {
                    put_bytes(out, id.as_bytes());
                }
                put_i64(out, i64::from(*status));
                put_bytes(out, body);
            }
            Record::Forget { session_id, at } => {
                out.push(FORGET);
                put_bytes(out, session_id.as_bytes());
                put_i64(out, *at);
            }
        }
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
        let mut d = Decoder { bytes, at: 0 };
        let r = match d.u8()? {
            ACCEPT_PACKED => Record::Accept(Box::new(packed::decode(&mut d)?)),
            ACCEPT => {
                let at = d.i64()?;
                let event_id = d.string()?;
                let correlation_id = d.string()?;
                let route = d.string()?;
                let session_id = d.string()?;
                let event_type = d.string()?;
                let state_version = d.i64()?.max(0) as u64;
                let simulated = d.u8()? != 0;
                let received_at = d.string()?;
                let body = d.string()?;
                let key = d.string()?;
                let status = d.status()?;
                let answer = Bytes::copy_from_slice(d.bytes()?);
                let (rows, spend) = d.tail()?;
                Record::Accept(Box::new(AcceptRecord {
                    at,
                    event_id,
                    correlation_id,
                    route,
                    session_id,
                    event_type,
                    state_version,
                    simulated,
                    received_at,
                    body,
                    key,
                    status,
                    answer,
                    rows,
                    spend,
                }))
            }
            SPEND => Record::Spend(d.spend()?),
            kind @ (ANSWER | ANSWER_FOR) => Record::Answer {
                key: d.string()?,
                event_id: if kind == ANSWER_FOR {
                    Some(d.string()?)
                } else {
                    None
                },
                status: d.status()?,
                body: Bytes::copy_from_slice(d.bytes()?),
            },
            FORGET => Record::Forget {
                session_id: d.string()?,
                at: d.i64()?,
            },
            other => return Err(DecodeError::Kind(other)),
        };
        if d.at != bytes.len() {
            return Err(DecodeError::Trailing(bytes.len() - d.at));
        }
        Ok(r)
    }
}

impl AcceptRecord {
    /// The record of this event kept beside the database (`beside`): its `Record::Accept`
    /// encoding without the idempotency key and the spent signature, which only the log's
    /// decisions need (the key's hash is in `keys`).
    pub(super) fn encode_beside(&self, out: &mut Vec<u8>) {
        self.encode_with(out, "", None);
    }

    /// `Record::Accept`'s encoding with `key` and `spend` for the event's own: packed when
    /// the body holds the columns as [`packed`] reads them (every event the gateway makes),
    /// else whole.
    fn encode_with(&self, out: &mut Vec<u8>, key: &str, spend: Option<&Spend>) {
        if let Some(fields) = packed::BodyFields::of(&self.body).filter(|f| f.are_of(self)) {
            packed::encode(self, &fields, out, key);
        } else {
            self.encode_whole(out, key);
        }
        put_tail(out, &self.rows, spend);
    }

    /// The `ACCEPT` encoding up to its outbox rows.
    fn encode_whole(&self, out: &mut Vec<u8>, key: &str) {
        out.push(ACCEPT);
        put_i64(out, self.at);
        for s in [
            &self.event_id,
            &self.correlation_id,
            &self.route,
            &self.session_id,
            &self.event_type,
        ] {
            put_bytes(out, s.as_bytes());
        }
        put_i64(out, self.state_version as i64);
        out.push(u8::from(self.simulated));
        put_bytes(out, self.received_at.as_bytes());
        put_bytes(out, self.body.as_bytes());
        put_bytes(out, key.as_bytes());
        put_i64(out, i64::from(self.status));
        put_bytes(out, &self.answer);
    }
}

/// What both encodings of an acceptance end with: its outbox rows and its spent signature.
fn put_tail(out: &mut Vec<u8>, rows: &[OutboxRow], spend: Option<&Spend>) {
    put_i64(out, rows.len() as i64);
    for row in rows {
        put_i64(out, row.id);
        put_bytes(out, row.sink.as_bytes());
        match &row.held {
            None => out.push(0),
            Some(h) => {
                out.push(1);
                put_i64(out, h.lease_until);
                put_bytes(out, h.token.as_bytes());
                put_bytes(out, h.respond_to.as_bytes());
            }
        }
    }
    match spend {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_spend(out, s);
        }
    }
}

fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Every field is far below 4 GiB: bodies are bounded by `max_body_bytes`.
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_spend(out: &mut Vec<u8>, s: &Spend) {
    put_bytes(out, s.route.as_bytes());
    put_bytes(out, &s.mac);
    put_i64(out, s.expires_at);
}

/// Why a log record's bytes are not a record this version reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("record ends early (at byte {at})")]
    EndsEarly { at: usize },
    #[error("status {0} out of range")]
    Status(i64),
    #[error("a text field is not UTF-8")]
    NotUtf8,
    #[error("unknown record kind {0}")]
    Kind(u8),
    #[error("{0} bytes left over after the record")]
    Trailing(usize),
    #[error("a packed acceptance: {0}")]
    Packed(&'static str),
}

struct Decoder<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(DecodeError::EndsEarly { at: self.at })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_le_bytes(a))
    }

    fn status(&mut self) -> Result<u16, DecodeError> {
        let v = self.i64()?;
        u16::try_from(v).map_err(|_| DecodeError::Status(v))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let b = self.take(4)?;
        let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::NotUtf8)
    }

    /// What `put_tail` wrote: the outbox rows and the spent signature.
    fn tail(&mut self) -> Result<(Vec<OutboxRow>, Option<Spend>), DecodeError> {
        let n = self.i64()?;
        let mut rows = Vec::new();
        for _ in 0..n {
            let id = self.i64()?;
            let sink = self.string()?;
            let held = match self.u8()? {
                0 => None,
                _ => Some(Held {
                    lease_until: self.i64()?,
                    token: self.string()?,
                    respond_to: self.string()?,
                }),
            };
            rows.push(OutboxRow { id, sink, held });
        }
        let spend = match self.u8()? {
            0 => None,
            _ => Some(self.spend()?),
        };
        Ok((rows, spend))
    }

    fn spend(&mut self) -> Result<Spend, DecodeError> {
        Ok(Spend {
            route: self.string()?,
            mac: self.bytes()?.to_vec(),
            expires_at: self.i64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept() -> AcceptRecord {
        AcceptRecord {
            at: 1_700_000_000_123,
            event_id: "01J".into(),
            correlation_id: "c".into(),
            route: "r".into(),
            session_id: "s".into(),
            event_type: "t".into(),
            state_version: 7,
            simulated: true,
            received_at: "2026-01-01T00:00:00.000Z".into(),
            body: "{\"eventId\":\"01J\"}".into(),
            key: "k".into(),
            status: 202,
            answer: Bytes::from_static(b"{}"),
            rows: vec![
                OutboxRow {
                    id: 5,
                    sink: "a".into(),
                    held: None,
                },
                OutboxRow {
                    id: 6,
                    sink: "up".into(),
                    held: Some(Held {
                        lease_until: 99,
                        token: "tok".into(),
                        respond_to: "late".into(),
                    }),
                },
            ],
            spend: Some(Spend {
                route: "r".into(),
                mac: vec![1, 2, 3],
                expires_at: 42,
            }),
        }
    }

    #[test]
    fn every_record_kind_decodes_to_what_was_encoded() {
        let records = [
            Record::Accept(Box::new(accept())),
            Record::Accept(Box::new(AcceptRecord {
                rows: vec![],
                spend: None,
                ..accept()
            })),
            Record::Spend(Spend {
                route: "r".into(),
                mac: vec![9; 32],
                expires_at: -1,
            }),
            Record::Answer {
                key: "k".into(),
                event_id: None,
                status: 200,
                body: Bytes::from_static(b"{\"ok\":true}"),
            },
            Record::Answer {
                key: "k".into(),
                event_id: Some("01J0000000000000000000000E".into()),
                status: 202,
                body: Bytes::from_static(b"{}"),
            },
            Record::Forget {
                session_id: "s-1".into(),
                at: 1_700_000_000_000,
            },
        ];
        for r in records {
            let mut out = Vec::new();
            r.encode(&mut out);
            assert_eq!(Record::decode(&out), Ok(r));
        }
    }

    /// An acceptance as the sequencer makes one for `event` (its body `to_json`) with the
    /// gateway's standard answer of `status`.
    fn made_for(
        event: &crate::event::NormalisedEvent,
        status: u16,
        extracts: &str,
    ) -> AcceptRecord {
        let (word, message) = if status == 202 {
            (
                "accepted",
                "Payload accepted; the backend's answer follows when it arrives",
            )
        } else {
            ("success", "Payload processed successfully")
        };
        let answer = format!(
            "{{\"status\":\"{word}\",\"message\":\"{message}\",\"correlationId\":{},\
             \"transactionId\":{},\"timestamp\":{},\"data\":{{\"processed\":true,\
             \"stateVersion\":{}{extracts}}}}}",
            serde_json::to_string(&event.correlation_id).expect("JSON"),
            serde_json::to_string(&event.transaction_id).expect("JSON"),
            serde_json::to_string(&event.received_at).expect("JSON"),
            event.state_version,
        );
        AcceptRecord {
            at: 1_700_000_000_123,
            event_id: event.event_id.clone(),
            correlation_id: event.correlation_id.clone(),
            route: event.route.clone(),
            session_id: event.session_id.clone(),
            event_type: event.event_type.clone(),
            state_version: event.state_version,
            simulated: event.simulated,
            received_at: event.received_at.clone(),
            body: event.to_json(),
            key: "nlu:idempotency-key:k-1".into(),
            status,
            answer: Bytes::from(answer),
            rows: vec![],
            spend: None,
        }
    }

    fn event(session: &str, user: &str) -> crate::event::NormalisedEvent {
        let mut e = crate::event::NormalisedEvent::new_at(
            1_700_000_000_000,
            "nlu-orders",
            "bench-0".into(),
            "4bd89260-182e-4089-a47c-e41f6dce7736".into(),
            session.into(),
            user.into(),
            "nlu.input".into(),
            serde_json::json!({"input": "Where is my order A-0?"}),
        );
        e.state_version = 12;
        e
    }

    #[test]
    fn an_event_the_gateway_makes_is_packed_and_decodes_to_what_was_encoded() {
        let mut traced = event("s-1", "u-1");
        traced.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        traced.simulated = true;
        for (a, answer_packed) in [
            (
                made_for(&event("s-1", "u-1"), 200, ",\"orderId\":\"A-0\""),
                true,
            ),
            (made_for(&event("s-1", "u-1"), 202, ""), true),
            (made_for(&traced, 200, ""), true),
            // A status with no standard answer, and an answer replaced by another: the
            // columns are still read from the body, the answer is kept whole.
            (made_for(&event("s-1", "u-1"), 201, ""), false),
            (
                AcceptRecord {
                    answer: Bytes::from_static(b"{\"status\":\"success\"}"),
                    ..made_for(&event("s-1", "u-1"), 200, "")
                },
                false,
            ),
            // The version in the answer is 1, the record's 12: the answer's bytes from the
            // version on are what is kept, so they come back as they were.
            (
                AcceptRecord {
                    state_version: 1,
                    ..made_for(&event("s-1", "u-1"), 200, "")
                },
                true,
            ),
        ] {
            let whole = {
                let mut out = Vec::new();
                a.encode_whole(&mut out, &a.key);
                put_tail(&mut out, &a.rows, a.spend.as_ref());
                out
            };
            let mut out = Vec::new();
            Record::Accept(Box::new(a.clone())).encode(&mut out);
            assert_eq!(out[0], ACCEPT_PACKED, "{}", a.body);
            assert_eq!(
                Record::decode(&out),
                Ok(Record::Accept(Box::new(a.clone())))
            );
            let saved = whole.len() - out.len();
            // The six columns and their lengths, at least; the answer's envelope too.
            let columns = [&a.event_id, &a.route, &a.correlation_id, &a.received_at]
                .iter()
                .map(|s| s.len() + 4)
                .sum::<usize>();
            assert!(saved > columns, "saved {saved}");
            assert_eq!(saved > 150 + columns, answer_packed, "saved {saved}");
            // Beside the database too, without the key.
            let mut beside = Vec::new();
            a.encode_beside(&mut beside);
            assert_eq!(beside[0], ACCEPT_PACKED);
        }
    }

    #[test]
    fn an_event_whose_body_does_not_hold_its_columns_as_they_are_is_written_whole() {
        let base = made_for(&event("s-1", "u-1"), 200, "");
        for a in [
            // An escape in a column, or in the user id between them.
            made_for(&event("s-\"1", "u-1"), 200, ""),
            made_for(&event("s-1", "u\\1"), 200, ""),
            // A column the body does not say (a sealed body says none).
            AcceptRecord {
                route: "other".into(),
                ..base.clone()
            },
            AcceptRecord {
                body: "sealed:AAAA".into(),
                ..base.clone()
            },
            AcceptRecord {
                body: String::new(),
                ..base.clone()
            },
        ] {
            let mut out = Vec::new();
            Record::Accept(Box::new(a.clone())).encode(&mut out);
            assert_eq!(out[0], ACCEPT, "{}", a.body);
            assert_eq!(Record::decode(&out), Ok(Record::Accept(Box::new(a))));
        }
    }

    #[test]
    fn a_packed_record_with_unknown_flags_or_a_body_that_lost_its_columns_is_refused() {
        let a = made_for(&event("s-1", "u-1"), 200, "");
        let mut out = Vec::new();
        Record::Accept(Box::new(a.clone())).encode(&mut out);
        let mut flagged = out.clone();
        flagged[9] |= 0x80;
        assert!(matches!(
            Record::decode(&flagged),
            Err(DecodeError::Packed(_))
        ));
        // The body's first byte: `{` becomes `[`.
        let mut other = out.clone();
        other[9 + 1 + 8 + 4] = b'[';
        assert!(matches!(
            Record::decode(&other),
            Err(DecodeError::Packed(_))
        ));
        for cut in [1, 9, 10, out.len() / 2, out.len() - 1] {
            assert!(Record::decode(&out[..cut]).is_err(), "cut at {cut}");
        }
    }

    proptest::proptest! {
        /// Whatever the columns, the body and the answer hold, a record decodes to what was
        /// encoded, packed or not.
        #[test]
        fn any_acceptance_decodes_to_what_was_encoded(
            session in "[a-z\"\\\\é0-9-]{0,12}",
            user in "[a-z\"\\\\0-9]{0,6}",
            correlation in "[a-z\"/0-9-]{0,10}",
            version in 0u64..200,
            status in proptest::sample::select(vec![200u16, 202, 201, 500]),
            extracts in "[a-z,:\"{}0-9]{0,20}",
            drift in 0u8..4,
        ) {
            let mut e = event(&session, &user);
            e.correlation_id = correlation;
            e.state_version = version;
            let mut a = made_for(&e, status, &extracts);
            match drift {
                1 => a.state_version += 1,
                2 => a.session_id.push('x'),
                3 => a.answer = a.answer.slice(..a.answer.len() / 2),
                _ => {}
            }
            let mut out = Vec::new();
            Record::Accept(Box::new(a.clone())).encode(&mut out);
            proptest::prop_assert_eq!(Record::decode(&out), Ok(Record::Accept(Box::new(a))));
        }
    }

    #[test]
    fn a_short_or_padded_record_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        Record::Accept(Box::new(accept())).encode(&mut out);
        for cut in [0, 1, 9, out.len() / 2, out.len() - 1] {
            assert!(Record::decode(&out[..cut]).is_err(), "cut at {cut}");
        }
        out.push(0);
        assert!(Record::decode(&out).is_err());
    }
}
