//! The automerge-repo network protocol v1, as CBOR (the `automerge-repo-network-websocket`
//! README is the specification): one message per binary WebSocket frame, each a CBOR map with
//! a `type` and the fields below. Byte strings are written plain (major type 2), never as
//! tag 64 typed arrays, which some peers refuse; tag 64 around a byte string is accepted on
//! input because cbor-x writes typed arrays that way when asked to.
//!
//! Decoding borrows from the frame (a sync message may be megabytes), ignores fields it does
//! not know (newer peers may add some), refuses anything nested deeper than
//! [`MAX_DEPTH`], and never panics on any input.

use std::fmt;

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

/// The one protocol version.
pub const PROTOCOL_VERSION: &str = "1";

/// Deepest nesting of arrays, maps and tags accepted in a frame.
pub const MAX_DEPTH: usize = 16;

/// What a peer says about itself in `join` and `peer`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerMetadata {
    /// The id of the peer's persistent storage, if it has one.
    pub storage_id: Option<String>,
    /// True when the peer will not come back with the same storage.
    pub is_ephemeral: bool,
}

/// One protocol message. Strings and bytes borrow from the frame they were read from.
#[derive(Clone, PartialEq, Eq)]
pub enum Message<'a> {
    Join {
        sender_id: &'a str,
        supported_protocol_versions: Vec<&'a str>,
        metadata: Option<PeerMetadata>,
    },
    Peer {
        sender_id: &'a str,
        target_id: &'a str,
        selected_protocol_version: &'a str,
        metadata: Option<PeerMetadata>,
    },
    Leave {
        sender_id: &'a str,
    },
    /// Asks for a document (and `doc-unavailable` if the other side lacks it).
    Request(SyncFields<'a>),
    Sync(SyncFields<'a>),
    DocUnavailable {
        sender_id: &'a str,
        target_id: &'a str,
        document_id: &'a str,
    },
    Ephemeral {
        sender_id: &'a str,
        target_id: &'a str,
        count: u64,
        session_id: &'a str,
        document_id: &'a str,
        data: &'a [u8],
    },
    /// The sender will close the connection.
    Error {
        message: &'a str,
    },
    /// Remote-heads gossip: understood, and not used by this server.
    RemoteSubscriptionChange,
    RemoteHeadsChanged,
}

/// The fields of `request` and `sync`.
#[derive(Clone, PartialEq, Eq)]
pub struct SyncFields<'a> {
    pub sender_id: &'a str,
    pub target_id: &'a str,
    pub document_id: &'a str,
    /// An Automerge sync message.
    pub data: &'a [u8],
}

impl Message<'_> {
    /// The `type` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Join { .. } => "join",
            Message::Peer { .. } => "peer",
            Message::Leave { .. } => "leave",
            Message::Request(_) => "request",
            Message::Sync(_) => "sync",
            Message::DocUnavailable { .. } => "doc-unavailable",
            Message::Ephemeral { .. } => "ephemeral",
            Message::Error { .. } => "error",
            Message::RemoteSubscriptionChange => "remote-subscription-change",
            Message::RemoteHeadsChanged => "remote-heads-changed",
        }
    }
}

// Sync data can be megabytes: Debug shows sizes, not bytes.
impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Request(fields) | Message::Sync(fields) => f
                .debug_struct(self.kind())
                .field("sender_id", &fields.sender_id)
                .field("target_id", &fields.target_id)
                .field("document_id", &fields.document_id)
                .field("data_len", &fields.data.len())
                .finish(),
            Message::Ephemeral {
                sender_id,
                document_id,
                data,
                ..
            } => f
                .debug_struct("ephemeral")
                .field("sender_id", sender_id)
                .field("document_id", document_id)
                .field("data_len", &data.len())
                .finish(),
            other => f.debug_struct(other.kind()).finish_non_exhaustive(),
        }
    }
}

impl fmt::Debug for SyncFields<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncFields")
            .field("document_id", &self.document_id)
            .field("data_len", &self.data.len())
            .finish_non_exhaustive()
    }
}

/// Why a frame is not a protocol message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("the frame is not CBOR: {0}")]
    NotCbor(String),
    #[error("a message must be a CBOR map, not {0}")]
    NotAMap(String),
    #[error("the message has bytes after its end")]
    TrailingBytes,
    #[error("the message nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the message has no `type`")]
    MissingType,
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("a `{kind}` message needs `{field}`")]
    MissingField {
        kind: &'static str,
        field: &'static str,
    },
    #[error("field `{field}` has the wrong type: {detail}")]
    WrongType { field: String, detail: String },
    #[error("field `{0}` appears twice")]
    DuplicateField(String),
    #[error("a `{0}` message must carry a non-empty sync message")]
    EmptyData(&'static str),
}

/// A field's value as read, before the message type says what it should be.
#[derive(Debug, Clone)]
enum Value<'a> {
    Str(&'a str),
    Bytes(&'a [u8]),
    Uint(u64),
    Strings(Vec<&'a str>),
    Metadata(PeerMetadata),
    /// Something this server does not read.
    Other,
}

/// Reads one message from a binary frame.
pub fn decode(frame: &[u8]) -> Result<Message<'_>, ProtocolError> {
    let mut d = Decoder::new(frame);
    let fields = read_fields(&mut d)?;
    if d.position() != frame.len() {
        return Err(ProtocolError::TrailingBytes);
    }
    let kind = match fields.iter().find(|(k, _)| *k == "type") {
        Some((_, Value::Str(kind))) => *kind,
        Some(_) => {
            return Err(ProtocolError::WrongType {
                field: "type".into(),
                detail: "expected a text string".into(),
            });
        }
        None => return Err(ProtocolError::MissingType),
    };
    let f = Fields { kind, fields };
    Ok(match kind {
        "join" => Message::Join {
            sender_id: f.str("senderId")?,
            supported_protocol_versions: f.strings("supportedProtocolVersions")?,
            metadata: f.metadata()?,
        },
        "peer" => Message::Peer {
            sender_id: f.str("senderId")?,
            target_id: f.str("targetId")?,
            selected_protocol_version: f.str("selectedProtocolVersion")?,
            metadata: f.metadata()?,
        },
        "leave" => Message::Leave {
            sender_id: f.str("senderId")?,
        },
        "request" => Message::Request(f.sync_fields("request")?),
        "sync" => Message::Sync(f.sync_fields("sync")?),
        "doc-unavailable" => Message::DocUnavailable {
            sender_id: f.str("senderId")?,
            target_id: f.str("targetId")?,
            document_id: f.str("documentId")?,
        },
        "ephemeral" => Message::Ephemeral {
            sender_id: f.str("senderId")?,
            target_id: f.str("targetId")?,
            count: f.uint("count")?,
            session_id: f.str("sessionId")?,
            document_id: f.str("documentId")?,
            data: f.bytes("data")?,
        },
        "error" => Message::Error {
            message: f.str("message")?,
        },
        "remote-subscription-change" => Message::RemoteSubscriptionChange,
        "remote-heads-changed" => Message::RemoteHeadsChanged,
        other => return Err(ProtocolError::UnknownType(shorten(other))),
    })
}

/// The fields of a message, looked up by name.
struct Fields<'a> {
    kind: &'a str,
    fields: Vec<(&'a str, Value<'a>)>,
}

impl<'a> Fields<'a> {
    fn get(&self, name: &'static str) -> Result<&Value<'a>, ProtocolError> {
        self.fields
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
            .ok_or(ProtocolError::MissingField {
                kind: static_kind(self.kind),
                field: name,
            })
    }

    fn wrong(name: &str, expected: &str) -> ProtocolError {
        ProtocolError::WrongType {
            field: name.into(),
            detail: format!("expected {expected}"),
        }
    }

    fn str(&self, name: &'static str) -> Result<&'a str, ProtocolError> {
        match self.get(name)? {
            Value::Str(s) => Ok(s),
            _ => Err(Self::wrong(name, "a text string")),
        }
    }

    fn bytes(&self, name: &'static str) -> Result<&'a [u8], ProtocolError> {
        match self.get(name)? {
            Value::Bytes(b) => Ok(b),
            _ => Err(Self::wrong(name, "a byte string")),
        }
    }

    fn uint(&self, name: &'static str) -> Result<u64, ProtocolError> {
        match self.get(name)? {
            Value::Uint(n) => Ok(*n),
            _ => Err(Self::wrong(name, "an unsigned integer")),
        }
    }

    fn strings(&self, name: &'static str) -> Result<Vec<&'a str>, ProtocolError> {
        match self.get(name)? {
            Value::Strings(v) => Ok(v.clone()),
            _ => Err(Self::wrong(name, "an array of text strings")),
        }
    }

    /// `peerMetadata` (what the JavaScript implementation sends) or `metadata` (the README).
    fn metadata(&self) -> Result<Option<PeerMetadata>, ProtocolError> {
        for name in ["peerMetadata", "metadata"] {
            match self.fields.iter().find(|(k, _)| *k == name) {
                Some((_, Value::Metadata(m))) => return Ok(Some(m.clone())),
                Some(_) => return Err(Self::wrong(name, "a map")),
                None => {}
            }
        }
        Ok(None)
    }

    fn sync_fields(&self, kind: &'static str) -> Result<SyncFields<'a>, ProtocolError> {
        let data = self.bytes("data")?;
        if data.is_empty() {
            return Err(ProtocolError::EmptyData(kind));
        }
        Ok(SyncFields {
            sender_id: self.str("senderId")?,
            target_id: self.str("targetId")?,
            document_id: self.str("documentId")?,
            data,
        })
    }
}

fn static_kind(kind: &str) -> &'static str {
    match kind {
        "join" => "join",
        "peer" => "peer",
        "leave" => "leave",
        "request" => "request",
        "sync" => "sync",
        "doc-unavailable" => "doc-unavailable",
        "ephemeral" => "ephemeral",
        "error" => "error",
        _ => "message",
    }
}

fn cbor(e: minicbor::decode::Error) -> ProtocolError {
    ProtocolError::NotCbor(e.to_string())
}

/// Whether an array or map of `len` items (None: indefinite, ended by a break) has another
/// item after the `index` read so far; counts it, and consumes the break at the end.
fn has_next(d: &mut Decoder<'_>, len: Option<u64>, index: &mut u64) -> Result<bool, ProtocolError> {
    match len {
        Some(n) if *index == n => return Ok(false),
        None if d.datatype().map_err(cbor)? == Type::Break => {
            d.skip().map_err(cbor)?;
            return Ok(false);
        }
        _ => {}
    }
    *index += 1;
    Ok(true)
}

/// The top-level map: field names and the values this server may read.
fn read_fields<'a>(d: &mut Decoder<'a>) -> Result<Vec<(&'a str, Value<'a>)>, ProtocolError> {
    let datatype = d.datatype().map_err(cbor)?;
    if !matches!(datatype, Type::Map | Type::MapIndef) {
        return Err(ProtocolError::NotAMap(datatype.to_string()));
    }
    let mut fields: Vec<(&'a str, Value<'a>)> = Vec::new();
    let len = d.map().map_err(cbor)?;
    let mut index = 0;
    while has_next(d, len, &mut index)? {
        if d.datatype().map_err(cbor)? != Type::String {
            // Not a name this server could know: skip the key and its value.
            skip(d, 1)?;
            skip(d, 1)?;
            continue;
        }
        let key = d.str().map_err(cbor)?;
        let value = read_value(d, key)?;
        if fields.iter().any(|(k, _)| *k == key) {
            return Err(ProtocolError::DuplicateField(shorten(key)));
        }
        fields.push((key, value));
    }
    Ok(fields)
}

fn read_value<'a>(d: &mut Decoder<'a>, key: &str) -> Result<Value<'a>, ProtocolError> {
    let datatype = d.datatype().map_err(cbor)?;
    Ok(match datatype {
        Type::String => Value::Str(d.str().map_err(cbor)?),
        Type::Bytes => Value::Bytes(d.bytes().map_err(cbor)?),
        Type::Tag => {
            // cbor-x's typed-array tag 64 (Uint8Array) around a byte string.
            let tag = d.tag().map_err(cbor)?;
            if tag.as_u64() == 64 && d.datatype().map_err(cbor)? == Type::Bytes {
                Value::Bytes(d.bytes().map_err(cbor)?)
            } else {
                skip(d, 1)?;
                Value::Other
            }
        }
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => Value::Uint(d.u64().map_err(cbor)?),
        Type::Array | Type::ArrayIndef if key == "supportedProtocolVersions" => {
            Value::Strings(read_strings(d)?)
        }
        Type::Map | Type::MapIndef if key == "peerMetadata" || key == "metadata" => {
            Value::Metadata(read_metadata(d)?)
        }
        _ => {
            skip(d, 1)?;
            Value::Other
        }
    })
}

fn read_strings<'a>(d: &mut Decoder<'a>) -> Result<Vec<&'a str>, ProtocolError> {
    let len = d.array().map_err(cbor)?;
    let mut out = Vec::new();
    let mut index = 0;
    while has_next(d, len, &mut index)? {
        if d.datatype().map_err(cbor)? == Type::String {
            out.push(d.str().map_err(cbor)?);
        } else {
            skip(d, 2)?;
        }
    }
    Ok(out)
}

fn read_metadata(d: &mut Decoder<'_>) -> Result<PeerMetadata, ProtocolError> {
    let len = d.map().map_err(cbor)?;
    let mut metadata = PeerMetadata::default();
    let mut index = 0;
    while has_next(d, len, &mut index)? {
        let key = if d.datatype().map_err(cbor)? == Type::String {
            Some(d.str().map_err(cbor)?)
        } else {
            skip(d, 2)?;
            None
        };
        match (key, d.datatype().map_err(cbor)?) {
            (Some("storageId"), Type::String) => {
                metadata.storage_id = Some(d.str().map_err(cbor)?.to_string());
            }
            (Some("isEphemeral"), Type::Bool) => metadata.is_ephemeral = d.bool().map_err(cbor)?,
            _ => skip(d, 2)?,
        }
    }
    Ok(metadata)
}

/// Skips one value, refusing nesting deeper than [`MAX_DEPTH`] (minicbor's own skip keeps a
/// stack as deep as the input is nested).
fn skip(d: &mut Decoder<'_>, depth: usize) -> Result<(), ProtocolError> {
    if depth > MAX_DEPTH {
        return Err(ProtocolError::TooDeep);
    }
    match d.datatype().map_err(cbor)? {
        Type::Array | Type::ArrayIndef => {
            let len = d.array().map_err(cbor)?;
            skip_items(d, len, depth, 1)
        }
        Type::Map | Type::MapIndef => {
            let len = d.map().map_err(cbor)?;
            skip_items(d, len, depth, 2)
        }
        Type::Tag => {
            d.tag().map_err(cbor)?;
            skip(d, depth + 1)
        }
        Type::Break => Err(ProtocolError::NotCbor("unexpected break".into())),
        // Scalars and (possibly chunked) strings hold no nesting.
        _ => d.skip().map_err(cbor),
    }
}

fn skip_items(
    d: &mut Decoder<'_>,
    len: Option<u64>,
    depth: usize,
    per_item: u64,
) -> Result<(), ProtocolError> {
    match len {
        Some(n) => {
            for _ in 0..n.saturating_mul(per_item) {
                skip(d, depth + 1)?;
            }
        }
        None => loop {
            if d.datatype().map_err(cbor)? == Type::Break {
                d.skip().map_err(cbor)?;
                break;
            }
            skip(d, depth + 1)?;
        },
    }
    Ok(())
}

fn shorten(text: &str) -> String {
    text.chars().take(64).collect()
}

/// Writes one message as CBOR: plain byte strings, definite lengths.
pub fn encode(message: &Message<'_>) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    // Writing to a Vec cannot fail.
    let _ = write(&mut e, message);
    e.into_writer()
}

type EncodeResult = Result<(), minicbor::encode::Error<std::convert::Infallible>>;

fn write(e: &mut Encoder<Vec<u8>>, message: &Message<'_>) -> EncodeResult {
    match message {
        Message::Join {
            sender_id,
            supported_protocol_versions,
            metadata,
        } => {
            e.map(3 + u64::from(metadata.is_some()))?;
            e.str("type")?.str("join")?;
            e.str("senderId")?.str(sender_id)?;
            e.str("supportedProtocolVersions")?
                .array(supported_protocol_versions.len() as u64)?;
            for version in supported_protocol_versions {
                e.str(version)?;
            }
            if let Some(metadata) = metadata {
                write_metadata(e, metadata)?;
            }
        }
        Message::Peer {
            sender_id,
            target_id,
            selected_protocol_version,
            metadata,
        } => {
            e.map(4 + u64::from(metadata.is_some()))?;
            e.str("type")?.str("peer")?;
            e.str("senderId")?.str(sender_id)?;
            e.str("selectedProtocolVersion")?
                .str(selected_protocol_version)?;
            e.str("targetId")?.str(target_id)?;
            if let Some(metadata) = metadata {
                write_metadata(e, metadata)?;
            }
        }
        Message::Leave { sender_id } => {
            e.map(2)?;
            e.str("type")?.str("leave")?;
            e.str("senderId")?.str(sender_id)?;
        }
        Message::Request(fields) | Message::Sync(fields) => {
            e.map(5)?;
            e.str("type")?.str(message.kind())?;
            e.str("senderId")?.str(fields.sender_id)?;
            e.str("targetId")?.str(fields.target_id)?;
            e.str("documentId")?.str(fields.document_id)?;
            e.str("data")?.bytes(fields.data)?;
        }
        Message::DocUnavailable {
            sender_id,
            target_id,
            document_id,
        } => {
            e.map(4)?;
            e.str("type")?.str("doc-unavailable")?;
            e.str("senderId")?.str(sender_id)?;
            e.str("targetId")?.str(target_id)?;
            e.str("documentId")?.str(document_id)?;
        }
        Message::Ephemeral {
            sender_id,
            target_id,
            count,
            session_id,
            document_id,
            data,
        } => {
            e.map(7)?;
            e.str("type")?.str("ephemeral")?;
            e.str("senderId")?.str(sender_id)?;
            e.str("targetId")?.str(target_id)?;
            e.str("count")?.u64(*count)?;
            e.str("sessionId")?.str(session_id)?;
            e.str("documentId")?.str(document_id)?;
            e.str("data")?.bytes(data)?;
        }
        Message::Error { message } => {
            e.map(2)?;
            e.str("type")?.str("error")?;
            e.str("message")?.str(message)?;
        }
        Message::RemoteSubscriptionChange | Message::RemoteHeadsChanged => {
            e.map(1)?;
            e.str("type")?.str(message.kind())?;
        }
    }
    Ok(())
}

fn write_metadata(e: &mut Encoder<Vec<u8>>, metadata: &PeerMetadata) -> EncodeResult {
    e.str("peerMetadata")?
        .map(1 + u64::from(metadata.storage_id.is_some()))?;
    if let Some(storage_id) = &metadata.storage_id {
        e.str("storageId")?.str(storage_id)?;
    }
    e.str("isEphemeral")?.bool(metadata.is_ephemeral)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync<'a>(data: &'a [u8]) -> Message<'a> {
        Message::Sync(SyncFields {
            sender_id: "client",
            target_id: "server",
            document_id: "doc",
            data,
        })
    }

    #[test]
    fn every_message_reads_back_as_written() {
        let metadata = Some(PeerMetadata {
            storage_id: Some("store-1".into()),
            is_ephemeral: false,
        });
        let messages = [
            Message::Join {
                sender_id: "client",
                supported_protocol_versions: vec!["1"],
                metadata: metadata.clone(),
            },
            Message::Peer {
                sender_id: "server",
                target_id: "client",
                selected_protocol_version: "1",
                metadata,
            },
            Message::Leave {
                sender_id: "client",
            },
            sync(&[0x42, 1, 2]),
            Message::Request(SyncFields {
                sender_id: "client",
                target_id: "server",
                document_id: "doc",
                data: &[0x42],
            }),
            Message::DocUnavailable {
                sender_id: "server",
                target_id: "client",
                document_id: "doc",
            },
            Message::Ephemeral {
                sender_id: "client",
                target_id: "server",
                count: 7,
                session_id: "s",
                document_id: "doc",
                data: &[1, 2, 3],
            },
            Message::Error { message: "bad" },
        ];
        for message in messages {
            let bytes = encode(&message);
            assert_eq!(decode(&bytes).unwrap(), message, "{message:?}");
        }
    }

    #[test]
    fn byte_strings_are_plain_and_tag_64_is_read() {
        let bytes = encode(&sync(&[9, 9]));
        // "data" then major type 2 (byte string) of length 2: no 0xd8 0x40 tag before it.
        let at = bytes.windows(4).position(|w| w == b"data").unwrap();
        assert_eq!(&bytes[at + 4..at + 7], &[0x42, 9, 9]);
        let mut tagged = bytes[..at + 4].to_vec();
        tagged.extend_from_slice(&[0xd8, 0x40, 0x42, 9, 9]);
        match decode(&tagged).unwrap() {
            Message::Sync(fields) => assert_eq!(fields.data, &[9, 9]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_frames_get_specific_errors() {
        assert!(matches!(
            decode(b"hello"),
            Err(ProtocolError::NotCbor(_)) | Err(ProtocolError::NotAMap(_))
        ));
        assert!(matches!(decode(&[]), Err(ProtocolError::NotCbor(_))));
        assert!(matches!(
            decode(&[0x83, 1, 2, 3]),
            Err(ProtocolError::NotAMap(_))
        ));
        // {"type": "gossip"}
        let mut e = Encoder::new(Vec::new());
        e.map(1)
            .unwrap()
            .str("type")
            .unwrap()
            .str("gossip")
            .unwrap();
        assert_eq!(
            decode(e.writer()),
            Err(ProtocolError::UnknownType("gossip".into()))
        );
        // A sync without data.
        let mut e = Encoder::new(Vec::new());
        e.map(4).unwrap();
        for (k, v) in [
            ("type", "sync"),
            ("senderId", "a"),
            ("targetId", "b"),
            ("documentId", "c"),
        ] {
            e.str(k).unwrap().str(v).unwrap();
        }
        assert_eq!(
            decode(e.writer()),
            Err(ProtocolError::MissingField {
                kind: "sync",
                field: "data"
            })
        );
        let mut trailing = encode(&sync(&[1]));
        trailing.push(0);
        assert_eq!(decode(&trailing), Err(ProtocolError::TrailingBytes));
        // 10,000 nested arrays under an unknown key.
        let mut deep = vec![0xa2, 0x64];
        deep.extend_from_slice(b"type");
        deep.extend_from_slice(&[0x64]);
        deep.extend_from_slice(b"sync");
        deep.extend_from_slice(&[0x61, b'x']);
        deep.extend(std::iter::repeat_n(0x81, 10_000));
        deep.push(0);
        assert_eq!(decode(&deep), Err(ProtocolError::TooDeep));
        // Cut short anywhere: an error, never a panic.
        let whole = encode(&sync(&[1, 2, 3, 4]));
        for cut in 0..whole.len() {
            assert!(decode(&whole[..cut]).is_err(), "cut at {cut}");
        }
    }
}
