//! `ListTasks` page tokens: the keyset position (`created_at`, `task_id`) of a page's last
//! task, hex-encoded and versioned (`v1:`), so a page follows the previous one exactly even
//! while new tasks arrive.

use crate::Error;

/// Keyset position: the last task of a page.
pub(super) fn encode_token(created_at: i64, task_id: &str) -> String {
    hex::encode(format!("v1:{created_at}:{task_id}"))
}

pub(super) fn decode_token(token: &str) -> Result<(i64, String), Error> {
    let bad = || {
        Error::InvalidArgument(
            "invalid page_token: pass next_page_token from the previous response unchanged".into(),
        )
    };
    let bytes = hex::decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let rest = text.strip_prefix("v1:").ok_or_else(bad)?;
    let (created, task_id) = rest.split_once(':').ok_or_else(bad)?;
    Ok((created.parse().map_err(|_| bad())?, task_id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_garbage_is_rejected() {
        let t = encode_token(1_700_000_000_000_000, "task:with:colons");
        assert_eq!(
            decode_token(&t).unwrap(),
            (1_700_000_000_000_000, "task:with:colons".to_string())
        );
        for bad in ["zz", "", &hex::encode("v2:1:x"), &hex::encode("v1:x:y")] {
            assert!(
                matches!(decode_token(bad), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
    }
}
