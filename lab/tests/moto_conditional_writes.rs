//! The lab's S3 conditional writes are atomic, as S3's are: of many
//! `If-None-Match: *` (or `If-Match: <etag>`) PUTs of one key sent at the same
//! moment, exactly one wins and the others get 412 PreconditionFailed (or 409
//! ConditionalRequestConflict), and the object holds the winner's body. The
//! relay's claims rest on this (`src/ledger/s3.rs`).
//!
//! Plain `moto_server` checks the condition and then writes, with other
//! requests' threads free to run in between. Run against it
//! (`LAB_MOTO_SERVER=.venv/bin/moto_server`), these tests found a key with two
//! winners in 15 of 20 runs on a 2-core machine (23 such keys of 2000 raced
//! for); through the lab's launcher (`lab/moto_server.py`), which serialises
//! writes per key, in none of 20.
//!
//! Needs the lab's Python tools: `scripts/setup` (the test command runs it).

use std::sync::Arc;

use aws_credential_types::Credentials;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use lab::moto::Moto;
use lab::s3_client;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

/// Keys raced for, one after another.
const KEYS: usize = 50;
/// PUTs of one key sent at once.
const RACERS: usize = 20;
const BUCKET: &str = "conditional-writes";

/// How a condition is put on a PUT.
#[derive(Clone)]
enum Condition {
    Absent,
    Unchanged(String),
}

/// What the racers for one key got.
#[derive(Debug, Default)]
struct Race {
    /// The racers whose PUT succeeded.
    winners: Vec<usize>,
    /// PUTs refused with 412 or 409.
    refused: usize,
}

/// What `racer` writes: a claim-sized body of its own.
fn body_of(racer: usize) -> Vec<u8> {
    format!("{{\"racer\": {racer}}}").into_bytes()
}

/// Sends `RACERS` PUTs of `key` under `condition`, released together.
async fn race(s3: &aws_sdk_s3::Client, key: &str, condition: &Condition) -> Race {
    let start = Arc::new(Barrier::new(RACERS));
    let mut racers = JoinSet::new();
    for racer in 0..RACERS {
        let (s3, key, condition, start) =
            (s3.clone(), key.to_owned(), condition.clone(), start.clone());
        racers.spawn(async move {
            let request = s3
                .put_object()
                .bucket(BUCKET)
                .key(&key)
                .body(ByteStream::from(body_of(racer)));
            let request = match condition {
                Condition::Absent => request.if_none_match("*"),
                Condition::Unchanged(etag) => request.if_match(etag),
            };
            start.wait().await;
            (racer, request.send().await)
        });
    }
    let mut race = Race::default();
    while let Some(joined) = racers.join_next().await {
        let (racer, result) = joined.expect("racer task");
        match result {
            Ok(_) => race.winners.push(racer),
            Err(err)
                if matches!(
                    err.code(),
                    Some("PreconditionFailed") | Some("ConditionalRequestConflict")
                ) || err
                    .raw_response()
                    .is_some_and(|r| matches!(r.status().as_u16(), 409 | 412)) =>
            {
                race.refused += 1
            }
            Err(err) => panic!("PUT {key} (racer {racer}): {err:?}"),
        }
    }
    race
}

async fn object(s3: &aws_sdk_s3::Client, key: &str) -> (Vec<u8>, String) {
    let output = s3
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .expect("get");
    let etag = output.e_tag().expect("etag").to_owned();
    let body = output.body.collect().await.expect("body").to_vec();
    (body, etag)
}

async fn lab_s3() -> (Moto, aws_sdk_s3::Client) {
    let moto = Moto::start().await.expect("moto");
    let credentials = Credentials::new("AKIALABRACE000000000", "secret", None, None, "test");
    let s3 = s3_client(moto.endpoint(), &credentials);
    s3.create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .expect("create bucket");
    (moto, s3)
}

/// Every key got one winner, whose body the object holds; else a summary of
/// the keys that did not.
async fn check(s3: &aws_sdk_s3::Client, kind: &str, races: &[(String, Race)]) {
    let winners: usize = races.iter().map(|(_, r)| r.winners.len()).sum();
    let mut wrong = Vec::new();
    for (key, race) in races {
        let (body, _) = object(s3, key).await;
        let held_by_winner = race.winners.iter().any(|w| body == body_of(*w));
        if race.winners.len() != 1 || race.refused != RACERS - 1 || !held_by_winner {
            wrong.push(format!(
                "{key}: winners {:?}, refused {}, object {}",
                race.winners,
                race.refused,
                String::from_utf8_lossy(&body).trim_end()
            ));
        }
    }
    eprintln!(
        "{kind}: {} keys x {RACERS} racers: {winners} winners, {} keys with other than one winner",
        races.len(),
        wrong.len()
    );
    assert!(wrong.is_empty(), "{kind}:\n{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_if_none_match_puts_of_one_key_have_one_winner() {
    let (_moto, s3) = lab_s3().await;
    let mut races = Vec::new();
    for n in 0..KEYS {
        let key = format!("absent/{n}.json");
        let race = race(&s3, &key, &Condition::Absent).await;
        races.push((key, race));
    }
    check(&s3, "If-None-Match: *", &races).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_if_match_puts_of_one_key_have_one_winner() {
    let (_moto, s3) = lab_s3().await;
    let mut races = Vec::new();
    for n in 0..KEYS {
        let key = format!("unchanged/{n}.json");
        s3.put_object()
            .bucket(BUCKET)
            .key(&key)
            .body(ByteStream::from_static(b"{\"racer\": null}"))
            .send()
            .await
            .expect("first write");
        let (_, etag) = object(&s3, &key).await;
        let race = race(&s3, &key, &Condition::Unchanged(etag)).await;
        races.push((key, race));
    }
    check(&s3, "If-Match: <etag>", &races).await;
}
