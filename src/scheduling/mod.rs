//! How model calls are scheduled: which account of a pool, how fast, and
//! whether the time left can hold the answer.

pub(crate) mod pacer;
