//! The automerge-repo network protocol v1 as the load generator speaks it: one CBOR map per
//! binary frame. Written independently of the server's codec (so the server is not measured
//! against itself); byte strings are plain (major type 2), never tag 64.

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

/// A message the load generator cares about; everything else is `Other`.
#[derive(Debug)]
pub enum Incoming {
    Peer { sender_id: String },
    Sync { document_id: String, data: Vec<u8> },
    DocUnavailable { document_id: String },
    Error { message: String },
    Other,
}

pub fn join(sender_id: &str) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.map(4)
        .and_then(|e| e.str("type")?.str("join"))
        .and_then(|e| e.str("senderId")?.str(sender_id))
        .and_then(|e| e.str("supportedProtocolVersions")?.array(1)?.str("1"))
        .and_then(|e| {
            e.str("peerMetadata")?
                .map(1)?
                .str("isEphemeral")?
                .bool(true)
        })
        .map(|_| ())
        .unwrap_or_else(|e| unreachable!("writing to a Vec: {e}"));
    e.into_writer()
}

/// `request` (the sender lacks the document) or `sync`.
pub fn sync(
    kind: &str,
    sender_id: &str,
    target_id: &str,
    document_id: &str,
    data: &[u8],
) -> Vec<u8> {
    let mut e = Encoder::new(Vec::with_capacity(data.len() + 128));
    e.map(5)
        .and_then(|e| e.str("type")?.str(kind))
        .and_then(|e| e.str("senderId")?.str(sender_id))
        .and_then(|e| e.str("targetId")?.str(target_id))
        .and_then(|e| e.str("documentId")?.str(document_id))
        .and_then(|e| e.str("data")?.bytes(data))
        .map(|_| ())
        .unwrap_or_else(|e| unreachable!("writing to a Vec: {e}"));
    e.into_writer()
}

pub fn decode(frame: &[u8]) -> anyhow::Result<Incoming> {
    let mut d = Decoder::new(frame);
    let Some(len) = d.map()? else {
        anyhow::bail!("indefinite-length map")
    };
    let mut kind = String::new();
    let mut sender_id = String::new();
    let mut document_id = String::new();
    let mut message = String::new();
    let mut data = Vec::new();
    for _ in 0..len {
        let key = d.str()?;
        match key {
            "type" => kind = d.str()?.to_string(),
            "senderId" => sender_id = d.str()?.to_string(),
            "documentId" => document_id = d.str()?.to_string(),
            "message" => message = d.str()?.to_string(),
            "data" => {
                if d.datatype()? == Type::Tag {
                    d.tag()?;
                }
                data = d.bytes()?.to_vec();
            }
            _ => d.skip()?,
        }
    }
    Ok(match kind.as_str() {
        "peer" => Incoming::Peer { sender_id },
        "sync" | "request" => Incoming::Sync { document_id, data },
        "doc-unavailable" => Incoming::DocUnavailable { document_id },
        "error" => Incoming::Error { message },
        _ => Incoming::Other,
    })
}

/// The automerge-repo document id of a Doorstep case id (`case-<uuid>`): base58check of the
/// UUID's 16 bytes.
pub fn document_id(case_id: &str) -> String {
    let uuid = case_id
        .strip_prefix("case-")
        .and_then(|u| uuid::Uuid::try_parse(u).ok())
        .unwrap_or_else(|| panic!("not a case id: {case_id}"));
    bs58::encode(uuid.as_bytes()).with_check().into_string()
}
