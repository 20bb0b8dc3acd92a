//! W3C trace context (`traceparent`) for what the service causes. While
//! traces are exported, an event carries the span that caused it (the
//! request's or the consumed message's, itself a child of the caller's), so
//! a peer's span joins the trace under it; otherwise the caller's own
//! `traceparent` is passed on, else a new root, so that every event a
//! change causes names the trace it belongs to.

use super::apm;
use rand::Rng;

/// `incoming` if it is a well-formed `traceparent`, else the current span's
/// while traces are exported, else a new root one.
pub fn continue_or_start(incoming: Option<&str>) -> String {
    well_formed(incoming)
        .or_else(apm::current_traceparent)
        .unwrap_or_else(new_root)
}

/// The `traceparent` for what the current span causes: the span's own
/// while traces are exported (a child of `incoming`, in its trace), else
/// `incoming` if well-formed, else a new root.
pub fn for_what_follows(incoming: Option<&str>) -> String {
    apm::current_traceparent()
        .or_else(|| well_formed(incoming))
        .unwrap_or_else(new_root)
}

fn well_formed(incoming: Option<&str>) -> Option<String> {
    incoming.filter(|v| is_valid(v)).map(str::to_string)
}

/// Version 00, a non-zero 32-hex trace id and 16-hex parent id, 2-hex flags.
pub fn is_valid(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit());
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1] != "0".repeat(32)
        && parts[2] != "0".repeat(16)
}

fn new_root() -> String {
    let mut rng = rand::rng();
    format!(
        "00-{:032x}-{:016x}-01",
        rng.random::<u128>().max(1),
        rng.random::<u64>().max(1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_valid_traceparent_and_replaces_a_bad_one() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(continue_or_start(Some(good)), good);
        for bad in [
            "00-zz-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "",
        ] {
            let fresh = continue_or_start(Some(bad));
            assert_ne!(fresh, bad);
            assert!(is_valid(&fresh), "{fresh}");
        }
        assert!(is_valid(&continue_or_start(None)));
        // Without exported spans there is no span of ours to name: the
        // caller's is passed on.
        assert_eq!(for_what_follows(Some(good)), good);
    }
}
