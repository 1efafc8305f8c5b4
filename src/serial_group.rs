//! Serial groups: the advisory-lock key of a group.
//!
//! Every transaction that changes which job of a group may run (push, claim,
//! finish, cancel, promotion) takes a transaction-scoped advisory lock on this
//! key first. The key is a keyed hash (SipHash-2-4) of the group name in the
//! low 32 bits and a fixed namespace in the high 32 bits, so that our locks
//! never collide with an application's own `pg_advisory_lock(int)` calls. Two
//! group names with the same key only serialize more than they need to; the
//! partial unique index on active group members keeps correctness either way.
//!
//! Keyed, because an unkeyed hash (the CRC-32 of earlier builds) lets anyone
//! who may push into one group name another whose key equals a second team's
//! group, computed in milliseconds, and hold that team's group (its pushes and
//! acks wait) with one open transaction. The secret is drawn at every server
//! start (src/shared.rs), which is all a key of transaction-scoped locks needs
//! to be stable for. Without shared memory (the library not preloaded) the
//! key is fixed. The lock itself is taken under a lock tag no SQL function
//! can name (src/locks.rs): a held key shows in `pg_locks`, and any role may
//! call `pg_advisory_lock`.

use pgrx::prelude::*;
use std::hash::Hasher;

/// High 32 bits of every group lock key: ASCII "queu".
const LOCK_NAMESPACE: i64 = 0x7175_6575;

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), the same value as
/// zlib's `crc32()` and PHP's `crc32()`, computed bytewise from a table built
/// at compile time.
pub fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc = TABLE[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc ^ 0xFFFF_FFFF
}

/// The 64-bit advisory lock key of a serial group. Never negative: the
/// hash's low 32 bits are placed in the low half as an unsigned value.
pub fn lock_key(group: &str) -> i64 {
    let [k0, k1] = crate::shared::group_key().unwrap_or([0x7175_6575, 0]);
    let mut h = siphasher::sip::SipHasher24::new_with_keys(k0, k1);
    h.write(group.as_bytes());
    (LOCK_NAMESPACE << 32) | (h.finish() & 0xFFFF_FFFF) as i64
}

/// SQL face of [`lock_key`], used by the claim query and by the group
/// election in `sql/core.sql`.
#[pg_extern(immutable, strict, parallel_safe, schema = "queue")]
fn group_lock_key(group: &str) -> i64 {
    lock_key(group)
}

/// The plain CRC-32 of a text, as a non-negative bigint (for inspection and
/// for tests that want to build collisions).
#[pg_extern(immutable, strict, parallel_safe, schema = "queue")]
fn crc32_of(value: &str) -> i64 {
    crc32(value.as_bytes()) as i64
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[pg_test]
    fn crc32_matches_known_values() {
        // Reference values of zlib's crc32().
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b"The quick brown fox jumps over the lazy dog"), 0x414F_A339);
    }

    #[pg_test]
    fn lock_keys_are_namespaced_and_distinct() {
        let a = lock_key("customer-42");
        let b = lock_key("customer-43");
        assert_ne!(a, b);
        assert_eq!(a >> 32, LOCK_NAMESPACE);
        assert_eq!(lock_key("customer-42"), a, "stable within a server's life");
        // Not the CRC of earlier builds, whose collisions anyone can compute.
        assert_ne!(a & 0xFFFF_FFFF, crc32(b"customer-42") as i64);
        // A low half above 2^31 must not turn the key negative or overflow.
        let high = (0..10_000).map(|i| format!("g{i}")).find(|g| lock_key(g) & 0x8000_0000 != 0);
        assert!(high.is_some_and(|g| lock_key(&g) > 0));
    }

    #[pg_test]
    fn sql_key_equals_rust_key() {
        let got = Spi::get_one::<i64>("SELECT queue.group_lock_key('customer-42')").unwrap();
        assert_eq!(got, Some(lock_key("customer-42")));
    }
}
