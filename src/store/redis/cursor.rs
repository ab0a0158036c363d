//! Feed and audit-stream cursors: Redis stream ids that sort as strings.

use crate::store::StoreError;

/// Feed cursor: the stream id `ms-seq` as two zero-padded numbers, so
/// cursors sort as strings in feed order.
pub(crate) fn encode_cursor(stream_id: &str) -> Result<String, StoreError> {
    let (ms, seq) = parse_stream_id(stream_id)
        .ok_or_else(|| StoreError::Protocol("unexpected stream id from redis".into()))?;
    Ok(format!("{ms:020}-{seq:020}"))
}

fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

pub(crate) fn decode_cursor(c: &str) -> Result<String, StoreError> {
    let invalid = || StoreError::Protocol("invalid cursor".into());
    let (ms, seq) = c.split_once('-').ok_or_else(invalid)?;
    if ms.len() != 20 || seq.len() != 20 {
        return Err(invalid());
    }
    let ms: u64 = ms.parse().map_err(|_| invalid())?;
    let seq: u64 = seq.parse().map_err(|_| invalid())?;
    Ok(format!("{ms}-{seq}"))
}
