//! The binary encoding of replicated data: log entries, snapshots and the messages nodes send
//! each other ([`encode`], [`decode`]).
//!
//! MessagePack with named fields (`rmp-serde`), marked by a leading [`BINARY_MARK`] byte. A
//! self-describing format, like the JSON it replaced, so that `skip_serializing_if`, defaults
//! for fields older data lacks, and openraft's `#[serde(flatten)]` keep working (bincode and
//! postcard cannot decode them); but without JSON's text: no escaping, no number formatting,
//! bytes as bytes. Under `loadgen --workload regions` JSON took a seventh of the nodes' CPU,
//! most of it in Raft's own data (log writes and reads, AppendEntries, snapshots).
//! Commands leave their unset optional fields out (`skip_serializing_if`): with named fields a
//! `None` costs its name, and a region creation with no services spelled seven of them in the
//! log, in AppendEntries and in every forwarded call.
//!
//! [`decode`] also reads JSON (whatever does not start with the mark): logs and snapshots
//! written before this encoding still load. The mark, `0xc1`, is the one byte MessagePack
//! never uses and that cannot start UTF-8 text, so neither format is taken for the other.
//! The REST API stays JSON; the state's hash stays over its JSON encoding
//! ([`crate::State::hash`]).

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The first byte of every [`encode`]d value.
pub const BINARY_MARK: u8 = 0xc1;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("decode (JSON): {0}")]
    DecodeJson(#[from] serde_json::Error),
    #[error("write: {0}")]
    Write(#[from] std::io::Error),
}

/// `value` in the binary encoding.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut bytes = Vec::with_capacity(128);
    encode_into(&mut bytes, value)?;
    Ok(bytes)
}

/// Appends `value` in the binary encoding to `bytes`.
pub fn encode_into<T: Serialize + ?Sized>(bytes: &mut Vec<u8>, value: &T) -> Result<(), CodecError> {
    encode_to(bytes, value)
}

/// Writes `value` in the binary encoding to `out` (a snapshot goes straight to its file,
/// never whole in memory).
pub fn encode_to<W: std::io::Write + ?Sized, T: Serialize + ?Sized>(out: &mut W, value: &T) -> Result<(), CodecError> {
    out.write_all(&[BINARY_MARK])?;
    rmp_serde::encode::write_named(out, value)?;
    Ok(())
}

/// Reads [`encode`]'s output, or JSON (data from before the binary encoding).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        Some((&BINARY_MARK, body)) => Ok(rmp_serde::from_slice(body)?),
        _ => Ok(serde_json::from_slice(bytes)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, Proposal};
    use std::collections::BTreeMap;

    #[test]
    fn round_trips_and_still_reads_json() {
        let proposal = Proposal::new(Command::DeleteRegion { id: "r1".into() }, 7);
        let bytes = encode(&proposal).expect("encode");
        assert_eq!(bytes[0], BINARY_MARK);
        assert_eq!(decode::<Proposal>(&bytes).expect("decode"), proposal);
        let json = serde_json::to_vec(&proposal).expect("json");
        assert_eq!(decode::<Proposal>(&json).expect("decode json"), proposal);
        assert!(bytes.len() < json.len(), "{} bytes binary against {} JSON", bytes.len(), json.len());
    }

    #[test]
    fn numeric_map_keys_options_and_byte_strings_round_trip() {
        let members: BTreeMap<u64, Option<String>> = [(1, Some("a".into())), (2, None)].into();
        assert_eq!(
            decode::<BTreeMap<u64, Option<String>>>(&encode(&members).expect("encode")).expect("decode"),
            members
        );
        let data = serde_bytes::ByteBuf::from(vec![0u8, 200, 255, 7]);
        let bytes = encode(&data).expect("encode");
        assert!(bytes.len() <= 1 + 2 + 4, "bytes travel as bytes: {bytes:?}");
        assert_eq!(decode::<serde_bytes::ByteBuf>(&bytes).expect("decode"), data);
    }

    #[test]
    fn unset_options_are_left_out_and_entries_that_spell_them_still_read() {
        let region = crate::command::NewRegion::new("r1", "org", "eu", crate::RegionType::Custom);
        let proposal = Proposal::new(Command::CreateRegion(region), 7);
        let bytes = encode(&proposal).expect("encode");
        for unset in [&b"proxy_url"[..], b"snapshot_manager_password", b"idempotency_key", b"fingerprint", b"scope"] {
            assert!(!bytes.windows(unset.len()).any(|w| w == unset), "{} written", String::from_utf8_lossy(unset));
        }
        assert_eq!(decode::<Proposal>(&bytes).expect("decode"), proposal);
        // An entry of an older build, with every unset field written as nil, reads the same.
        let mut spelled = serde_json::to_value(&proposal).expect("json");
        for field in ["idempotency_key", "fingerprint", "scope", "credential"] {
            spelled[field] = serde_json::Value::Null;
        }
        for field in [
            "proxy_url",
            "ssh_gateway_url",
            "snapshot_manager_url",
            "proxy_api_key_hash",
            "ssh_gateway_api_key_hash",
            "snapshot_manager_username",
            "snapshot_manager_password",
        ] {
            spelled["command"]["CreateRegion"][field] = serde_json::Value::Null;
        }
        assert!(spelled.to_string().contains("\"proxy_url\":null"), "{spelled}");
        let mut old = vec![BINARY_MARK];
        rmp_serde::encode::write_named(&mut old, &spelled).expect("encode");
        assert!(old.len() > bytes.len() + 150, "{} bytes with nils against {}", old.len(), bytes.len());
        assert_eq!(decode::<Proposal>(&old).expect("decode"), proposal);
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        for bytes in [&b""[..], &[BINARY_MARK][..], &[BINARY_MARK, 0xde, 0xff][..], b"{\"command\":", &[0xff, 0x00]] {
            assert!(decode::<Proposal>(bytes).is_err(), "{bytes:?}");
        }
    }
}
