//! Event ids: ULIDs whose first 63 bits are a number no other event of this process has had.
//!
//! An id made here is a canonical ULID (26 Crockford digits): 48 bits of Unix milliseconds,
//! then a 15-bit sequence within that millisecond, then 65 random bits. The first 63 bits
//! (`row_of`) come from one counter per process (`next_row`): each id takes the larger of the
//! last one plus one and `now_ms << 15`, so they only grow, and a millisecond with more than
//! 32,768 ids borrows the next millisecond's numbers. The embedded store uses that number as
//! the event's `rowid`, so it finds an event's row from its id without an index on the id
//! (`store::sqlite`, schema 15); when it opens, it raises the counter past every row it holds
//! (`raise_floor`), so a clock set back cannot hand out a number already taken.
//!
//! Ids are still ULIDs: sortable by time, unique without coordination across replicas (the
//! random part), and every id made before (a random ULID) stays valid: the store finds those
//! through a table of its own when their numbers collide (`store::sqlite` `events_moved`).

use std::sync::atomic::{AtomicI64, Ordering};

/// Bits of the sequence within a millisecond.
const SEQUENCE_BITS: u32 = 15;

/// The last number handed out (or the floor a store raised it to).
static LAST_ROW: AtomicI64 = AtomicI64::new(0);

/// A new event id (canonical ULID text).
pub fn new_event_id() -> String {
    new_event_id_at(crate::now_millis())
}

/// A new event id made at `now_ms` (Unix ms, `crate::now_millis`; a request's one reading).
pub fn new_event_id_at(now_ms: i64) -> String {
    let row = next_row(now_ms);
    let random: u128 = rand::random::<u128>() >> (128 - 65);
    ulid::Ulid((u128::from(row as u64) << 65) | random).to_string()
}

/// The next number: after every one handed out, and at least `now_ms`'s first.
fn next_row(now_ms: i64) -> i64 {
    let floor = now_ms.max(0) << SEQUENCE_BITS;
    let prev = LAST_ROW
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(floor.max(last + 1))
        })
        .expect("the update always returns a value");
    floor.max(prev + 1)
}

/// Makes every later id's number larger than `row` (a store's largest rowid when it opens).
pub fn raise_floor(row: i64) {
    LAST_ROW.fetch_max(row, Ordering::Relaxed);
}

/// The number in an id's first 63 bits, for any canonical ULID text (`None` for any other
/// text). For an id made here it is unique in this process; for any other ULID it is only
/// likely to be (its 15 bits after the time are random).
pub fn row_of(id: &str) -> Option<i64> {
    let bytes = canonical_ulid(id)?;
    Some((u128::from_be_bytes(bytes) >> 65) as i64)
}

/// Crockford's base-32 digits as a ULID's canonical text writes them, by value.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The value of each byte as a canonical ULID digit, `NOT_A_DIGIT` for every other byte.
const DIGIT_VALUES: [u8; 256] = {
    let mut t = [NOT_A_DIGIT; 256];
    let mut i = 0;
    while i < 32 {
        t[CROCKFORD[i] as usize] = i as u8;
        i += 1;
    }
    t
};
const NOT_A_DIGIT: u8 = 0xFF;

/// A ULID's 16 bytes (big-endian, as `ulid::Ulid::to_bytes`) from its canonical text only:
/// 26 upper-case digits, the first at most `7` (a larger one is over 128 bits). Anything else
/// (lower case, the letters `I L O U` the crate would also read, other lengths) is `None`, so
/// the bytes always give the same text back (tested with the key store's encoding,
/// `store::sqlite::keys`). Written here because the crate's parse and the
/// text written again to compare took ~440 instructions per id, twice per request
/// (bench/README.md, thirty-eighth session).
pub fn canonical_ulid(text: &str) -> Option<[u8; 16]> {
    let b = text.as_bytes();
    if b.len() != ulid::ULID_LEN || b[0] > b'7' {
        return None;
    }
    let mut value: u128 = 0;
    for &c in b {
        let d = DIGIT_VALUES[usize::from(c)];
        if d == NOT_A_DIGIT {
            return None;
        }
        value = (value << 5) | u128::from(d);
    }
    Some(value.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_a_growing_number_and_the_time_and_give_it_back() {
        let before = crate::now_millis();
        let ids: Vec<String> = (0..5_000).map(|_| new_event_id()).collect();
        let rows: Vec<i64> = ids
            .iter()
            .map(|id| row_of(id).expect("a canonical ULID"))
            .collect();
        assert!(rows.windows(2).all(|w| w[0] < w[1]), "numbers only grow");
        for (id, row) in ids.iter().zip(&rows) {
            let parsed = ulid::Ulid::from_string(id).expect("a ULID");
            assert_eq!(parsed.to_string(), *id, "canonical text");
            assert_eq!((parsed.0 >> 65) as i64, *row);
            // The time field is the millisecond the number was taken for (or a later one
            // borrowed), never before the ids were asked for.
            assert!(parsed.timestamp_ms() as i64 >= before);
        }
        // Sorting the texts sorts the numbers.
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids);
    }

    #[test]
    fn a_full_millisecond_borrows_the_next_and_a_raised_floor_is_passed() {
        let ms = 1 << 40;
        // Another test's ids may be taken in between: every number is still larger.
        let first = next_row(ms);
        assert!(first >= ms << SEQUENCE_BITS);
        let mut last = first;
        for _ in 0..(1 << SEQUENCE_BITS) {
            let next = next_row(ms);
            assert!(next > last);
            last = next;
        }
        assert!(
            last >> SEQUENCE_BITS > ms,
            "past the millisecond's 32,768 numbers"
        );
        raise_floor(last + 1_000_000);
        assert!(next_row(ms) > last + 1_000_000);
        // A lower floor changes nothing.
        raise_floor(5);
        assert!(next_row(0) > last + 1_000_000);
    }

    #[test]
    fn the_number_of_any_ulid_text_is_its_first_63_bits_and_other_text_has_none() {
        assert_eq!(row_of("00000000000000000000000000"), Some(0));
        assert_eq!(row_of("7ZZZZZZZZZZZZZZZZZZZZZZZZZ"), Some(i64::MAX));
        let u = ulid::Ulid::from_parts(1_700_000_000_000, 0x1234_5678_9ABC_DEF0_1234);
        assert_eq!(row_of(&u.to_string()), Some((u.0 >> 65) as i64));
        for other in [
            "e1",
            "",
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
            "01arz3ndektsv4rrffq69g5fav",
        ] {
            assert_eq!(row_of(other), None, "{other:?}");
        }
    }
}
