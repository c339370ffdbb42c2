//! Small pure helpers of the plane: ARN and `s3://` URI parsing,
//! timestamps, and the seeded generator (SplitMix64) behind job ids, record
//! ids and the record shuffle.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_smithy_types::date_time::Format;
use aws_smithy_types::DateTime;

/// `s3://bucket/key` → (bucket, key); the key may be empty.
pub(super) fn parse_s3(uri: &str) -> Option<(String, String)> {
    let rest = uri.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    ok.then(|| (bucket.to_owned(), key.to_owned()))
}

/// The account of an ARN (`arn:aws:iam::<account>:role/...`).
pub(super) fn arn_account(arn: &str) -> Option<String> {
    let account = arn.split(':').nth(4)?;
    (account.len() == 12 && account.chars().all(|c| c.is_ascii_digit())).then(|| account.to_owned())
}

/// `arn:aws:iam::<account>:role/path/Name` → `Name`.
pub(super) fn role_name(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or_default()
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(super) fn iso(ms: i64) -> String {
    DateTime::from_millis(ms)
        .fmt(Format::DateTime)
        .unwrap_or_default()
}

/// A small deterministic generator (SplitMix64).
pub(super) struct SplitMix(pub(super) u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The shuffle seed of a job: FNV-1a of its id.
pub(super) fn seed_of(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Fisher–Yates with [`SplitMix`].
pub(super) fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut rng = SplitMix(seed);
    for i in (1..items.len()).rev() {
        let j = rng.below(i + 1);
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shuffle_is_a_permutation_fixed_by_the_seed() {
        let mut a: Vec<usize> = (0..250).collect();
        let mut b = a.clone();
        shuffle(&mut a, seed_of("abcdefghijkl"));
        shuffle(&mut b, seed_of("abcdefghijkl"));
        assert_eq!(a, b);
        assert_ne!(a, (0..250).collect::<Vec<_>>());
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..250).collect::<Vec<_>>());
    }
}
