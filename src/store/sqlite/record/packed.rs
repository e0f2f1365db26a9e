//! The packed encoding of an acceptance (`ACCEPT_PACKED`, schema 18): what every event the
//! gateway makes is written as, in the log and beside the database.
//!
//! # Why
//! An event's record was written twice (the log, then the bodies' files for an event kept
//! beside the database), and about a third of it was written already elsewhere in it: the
//! columns `event_id`, `route`, `correlation_id`, `received_at`, `session_id` and
//! `event_type` open the body too, and the answer (~240 bytes) is the standard envelope
//! around those same values. Packed, the seed NLU event's log record is 881 bytes instead of
//! 1,252 and its record beside the database 938 instead of 1,314 (`wchar` per request of
//! the sequencer and the projector): ~750 bytes less to copy into the page cache, to write
//! back and to keep on disk for `retention`. The decision costs the sequencer ~800 and the
//! projector ~700 instructions more per event (callgrind, +1.8 % of a request's); natively
//! the two were not told apart at saturation on a noisy host (bench/README.md, fifty-fifth
//! session).
//!
//! # Layout
//! ```text
//! kind (6) · at i64 · flags u8 · state_version i64 · body · key · status u16 · answer
//!          · outbox rows and spent signature as in `ACCEPT`
//! flags:   1 simulated, 2 the answer is packed
//! ```
//! The six columns are read from the body's opening ([`BodyFields`]), which
//! `NormalisedEvent::to_json` writes in a fixed order; an event is packed only when its body
//! opens that way with each of them as it is (no escape in any, so the text between the
//! quotes is the value) and equal to the record's. A packed answer keeps only what follows
//! its `stateVersion`; the rest is rendered again from the record ([`standard_head`]). An
//! answer is packed only when it opens with exactly that rendering, so decoding gives back
//! the same bytes. Anything else is written whole, as `ACCEPT`. Deciding costs no
//! allocation: the body's opening is scanned for quotes (`memchr`) and the answer compared
//! piece by piece.
//!
//! The words of the standard answers below are this encoding's, not the HTTP layer's: a
//! record written with them must decode the same forever. If the gateway's answer changes,
//! its answers stop matching and are kept whole until a new flag names the new words.

use bytes::Bytes;

use super::{put_bytes, put_i64, AcceptRecord, DecodeError, Decoder, ACCEPT_PACKED};

const SIMULATED: u8 = 1;
const ANSWER_PACKED: u8 = 2;

/// The columns a body repeats, read from its opening (and the transaction id, which the
/// standard answer holds).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct BodyFields<'a> {
    event_id: &'a str,
    route: &'a str,
    correlation_id: &'a str,
    transaction_id: &'a str,
    received_at: &'a str,
    session_id: &'a str,
    event_type: &'a str,
}

impl<'a> BodyFields<'a> {
    /// The fields of a body that opens as `NormalisedEvent::to_json` writes one, each string
    /// without an escape; `None` for any other body.
    pub(super) fn of(body: &'a str) -> Option<BodyFields<'a>> {
        let mut rest = body.strip_prefix("{\"eventId\":\"")?;
        let event_id = plain(&mut rest)?;
        if let Some(r) = rest.strip_prefix(",\"traceparent\":\"") {
            rest = r;
            plain(&mut rest)?;
        }
        let mut next = |name: &str| {
            rest = rest.strip_prefix(name)?;
            plain(&mut rest)
        };
        let route = next(",\"route\":\"")?;
        let correlation_id = next(",\"correlationId\":\"")?;
        let transaction_id = next(",\"transactionId\":\"")?;
        let received_at = next(",\"receivedAt\":\"")?;
        let session_id = next(",\"sessionId\":\"")?;
        next(",\"userId\":\"")?;
        let event_type = next(",\"eventType\":\"")?;
        Some(BodyFields {
            event_id,
            route,
            correlation_id,
            transaction_id,
            received_at,
            session_id,
            event_type,
        })
    }

    /// Whether these are `a`'s columns (so that decoding gives them back).
    pub(super) fn are_of(&self, a: &AcceptRecord) -> bool {
        self.event_id == a.event_id
            && self.route == a.route
            && self.correlation_id == a.correlation_id
            && self.received_at == a.received_at
            && self.session_id == a.session_id
            && self.event_type == a.event_type
    }
}

/// The string at the start of `rest` up to its closing quote, `rest` moved past the quote;
/// `None` when a backslash comes first (an escape: the text is not the value) or there is
/// no quote. (A control character is not looked for: JSON has none raw in a string, and
/// an answer that escapes one does not match the head it would be packed against.)
fn plain<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let at = memchr::memchr2(b'"', b'\\', rest.as_bytes())?;
    if rest.as_bytes()[at] != b'"' {
        return None;
    }
    let value = &rest[..at];
    *rest = &rest[at + 1..];
    Some(value)
}

/// The standard answer of `status` up to and with its `stateVersion`, in pieces, as the
/// gateway renders it for an event with these fields (each a [`plain`] value, which JSON
/// writes between quotes as it is); `None` for a status with no standard answer.
fn standard_head<'a>(status: u16, f: &BodyFields<'a>, version: &'a str) -> Option<[&'a str; 12]> {
    let (word, message) = match status {
        200 => ("success", "Payload processed successfully"),
        202 => (
            "accepted",
            "Payload accepted; the backend's answer follows when it arrives",
        ),
        _ => return None,
    };
    Some([
        "{\"status\":\"",
        word,
        "\",\"message\":\"",
        message,
        "\",\"correlationId\":\"",
        f.correlation_id,
        "\",\"transactionId\":\"",
        f.transaction_id,
        "\",\"timestamp\":\"",
        f.received_at,
        "\",\"data\":{\"processed\":true,\"stateVersion\":",
        version,
    ])
}

/// How many bytes of `answer` are its standard head (0 when it does not open with it).
fn head_len(answer: &[u8], head: &[&str]) -> usize {
    let mut rest = answer;
    for piece in head {
        match rest.strip_prefix(piece.as_bytes()) {
            Some(r) => rest = r,
            None => return 0,
        }
    }
    answer.len() - rest.len()
}

/// Appends `a`'s packed encoding up to its outbox rows (`f`: its body's fields, which
/// [`BodyFields::are_of`] it).
pub(super) fn encode(a: &AcceptRecord, f: &BodyFields<'_>, out: &mut Vec<u8>, key: &str) {
    let mut digits = itoa::Buffer::new();
    let head = standard_head(a.status, f, digits.format(a.state_version))
        .map_or(0, |h| head_len(&a.answer, &h));
    out.push(ACCEPT_PACKED);
    put_i64(out, a.at);
    let mut flags = 0;
    if a.simulated {
        flags |= SIMULATED;
    }
    if head > 0 {
        flags |= ANSWER_PACKED;
    }
    out.push(flags);
    put_i64(out, a.state_version as i64);
    put_bytes(out, a.body.as_bytes());
    put_bytes(out, key.as_bytes());
    out.extend_from_slice(&a.status.to_le_bytes());
    put_bytes(out, &a.answer[head..]);
}

/// Reads a packed acceptance, its kind byte already read.
pub(super) fn decode(d: &mut Decoder<'_>) -> Result<AcceptRecord, DecodeError> {
    let at = d.i64()?;
    let flags = d.u8()?;
    if flags & !(SIMULATED | ANSWER_PACKED) != 0 {
        return Err(DecodeError::Packed("unknown flags"));
    }
    let state_version = d.i64()?.max(0) as u64;
    let body = d.string()?;
    let key = d.string()?;
    let status = d.take(2)?;
    let status = u16::from_le_bytes([status[0], status[1]]);
    let answer = d.bytes()?;
    let (rows, spend) = d.tail()?;
    let f = BodyFields::of(&body).ok_or(DecodeError::Packed(
        "the body does not open with its fields",
    ))?;
    let answer = if flags & ANSWER_PACKED != 0 {
        let mut digits = itoa::Buffer::new();
        let head = standard_head(status, &f, digits.format(state_version)).ok_or(
            DecodeError::Packed("a packed answer of a status with no standard answer"),
        )?;
        let mut whole =
            Vec::with_capacity(head.iter().map(|p| p.len()).sum::<usize>() + answer.len());
        for piece in head {
            whole.extend_from_slice(piece.as_bytes());
        }
        whole.extend_from_slice(answer);
        Bytes::from(whole)
    } else {
        Bytes::copy_from_slice(answer)
    };
    let (event_id, route, correlation_id, received_at, session_id, event_type) = (
        f.event_id.to_owned(),
        f.route.to_owned(),
        f.correlation_id.to_owned(),
        f.received_at.to_owned(),
        f.session_id.to_owned(),
        f.event_type.to_owned(),
    );
    Ok(AcceptRecord {
        at,
        event_id,
        correlation_id,
        route,
        session_id,
        event_type,
        state_version,
        simulated: flags & SIMULATED != 0,
        received_at,
        body,
        key,
        status,
        answer,
        rows,
        spend,
    })
}
