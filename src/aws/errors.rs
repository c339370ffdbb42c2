//! What an AWS SDK failure says, read once for every adapter: the service's
//! error code and message, the HTTP status, whether the request reached the
//! service at all, and the chain of causes the SDK wraps around it.

/// An error and its sources, outermost first: the SDK wraps what went wrong in
/// layers of its own, and what to tell the user is often inside.
pub fn chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| e.source())
}

/// The messages of an error's chain joined with `: `.
pub fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    chain(err)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}
