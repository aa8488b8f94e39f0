//! The one mapping between JSON values (what serde makes of a record body) and Automerge
//! objects. Why our own mapping rather than autosurgeon: a write touches only the fields whose
//! value changed, so keys written by a newer schema survive an older client's edit, and an
//! unchanged field never becomes a spurious concurrent write (a false conflict).

use automerge::{
    AutoCommit, ChangeHash, ObjId, ObjType, ReadDoc, ScalarValue, Value, ValueRef,
    transaction::Transactable,
};
use serde_json::{Map, Number, Value as Json};

use crate::error::Result;

/// Writes `value` at `key` of the map `obj`. Objects and arrays become Automerge maps and lists.
pub(crate) fn put_json(doc: &mut AutoCommit, obj: &ObjId, key: &str, value: &Json) -> Result<()> {
    match value {
        Json::Object(fields) => {
            let child = doc.put_object(obj, key, ObjType::Map)?;
            for (k, v) in fields {
                put_json(doc, &child, k, v)?;
            }
        }
        Json::Array(items) => {
            let child = doc.put_object(obj, key, ObjType::List)?;
            for (i, item) in items.iter().enumerate() {
                insert_json(doc, &child, i, item)?;
            }
        }
        scalar => doc.put(obj, key, scalar_of(scalar))?,
    }
    Ok(())
}

fn insert_json(doc: &mut AutoCommit, list: &ObjId, index: usize, value: &Json) -> Result<()> {
    match value {
        Json::Object(fields) => {
            let child = doc.insert_object(list, index, ObjType::Map)?;
            for (k, v) in fields {
                put_json(doc, &child, k, v)?;
            }
        }
        Json::Array(items) => {
            let child = doc.insert_object(list, index, ObjType::List)?;
            for (i, item) in items.iter().enumerate() {
                insert_json(doc, &child, i, item)?;
            }
        }
        scalar => doc.insert(list, index, scalar_of(scalar))?,
    }
    Ok(())
}

fn scalar_of(value: &Json) -> ScalarValue {
    match value {
        Json::Bool(b) => ScalarValue::Boolean(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                ScalarValue::Int(i)
            } else if let Some(u) = n.as_u64() {
                ScalarValue::Uint(u)
            } else {
                ScalarValue::F64(n.as_f64().unwrap_or(0.0))
            }
        }
        Json::String(s) => ScalarValue::Str(s.as_str().into()),
        Json::Null | Json::Array(_) | Json::Object(_) => ScalarValue::Null,
    }
}

/// Sets the fields of `fields` on the map `obj`, writing only those whose value differs.
/// Keys absent from `fields` are left alone: they may belong to a newer schema.
pub(crate) fn put_changed_fields(
    doc: &mut AutoCommit,
    obj: &ObjId,
    fields: &Map<String, Json>,
) -> Result<usize> {
    let mut written = 0;
    for (key, value) in fields {
        let current = read_key(doc, obj, key);
        let unchanged = match &current {
            Some(current) => current == value,
            None => value.is_null(),
        };
        if !unchanged {
            put_json(doc, obj, key, value)?;
            written += 1;
        }
    }
    Ok(written)
}

/// The JSON form of the value at `key` (the winning value where several were set at once).
pub(crate) fn read_key(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<Json> {
    doc.get(obj, key)
        .ok()
        .flatten()
        .map(|(value, id)| json_of(doc, value, &id))
}

/// The JSON form of a whole map object.
pub(crate) fn read_map(doc: &AutoCommit, obj: &ObjId) -> Map<String, Json> {
    let mut out = Map::new();
    for item in doc.map_range(obj, ..) {
        let id = item.id();
        out.insert(item.key.to_string(), json_of(doc, item.value.into(), &id));
    }
    out
}

/// The JSON form of a value read from the document; `id` is the value's object id when it is
/// an object.
pub(crate) fn json_of(doc: &AutoCommit, value: Value<'_>, id: &ObjId) -> Json {
    match value {
        Value::Object(ObjType::Map | ObjType::Table) => Json::Object(read_map(doc, id)),
        Value::Object(ObjType::List) => Json::Array(
            doc.list_range(id, ..)
                .map(|item| {
                    let child = item.id();
                    json_of(doc, item.value.into(), &child)
                })
                .collect(),
        ),
        Value::Object(ObjType::Text) => Json::String(doc.text(id).unwrap_or_default()),
        Value::Scalar(scalar) => json_of_scalar(&scalar),
    }
}

/// The path of the first Automerge `Text` object at `key` of `parent` (the value itself, or
/// anything under it), if any; `path` names `key`.
pub(crate) fn text_object_at(
    doc: &AutoCommit,
    parent: &ObjId,
    key: &str,
    path: &str,
) -> Option<String> {
    match doc.get(parent, key).ok().flatten()? {
        (Value::Object(ObjType::Text), _) => Some(path.to_string()),
        (Value::Object(_), id) => first_text_object(doc, &id, path),
        (Value::Scalar(_), _) => None,
    }
}

/// The path of the first Automerge `Text` object under `obj`, if any. Case files hold text as
/// plain strings (Text costs 15-30x more to load and hold; DESIGN.md), so a client that writes
/// Text (automerge-repo's default for JS strings) is refused rather than left to slow every
/// replica down.
fn first_text_object(doc: &AutoCommit, obj: &ObjId, path: &str) -> Option<String> {
    // Only objects are visited and a path is written only for them: this runs on every field
    // a sync touches, and nearly all of them are scalars.
    let visit = |step: String, kind: ObjType, id: ObjId| {
        let child_path = format!("{path}{step}");
        match kind {
            ObjType::Text => Some(child_path),
            _ => first_text_object(doc, &id, &child_path),
        }
    };
    match doc.object_type(obj) {
        Ok(ObjType::Map | ObjType::Table) => {
            doc.map_range(obj, ..).find_map(|item| match item.value {
                ValueRef::Object(kind) => visit(format!(".{}", item.key), kind, item.id()),
                ValueRef::Scalar(_) => None,
            })
        }
        Ok(ObjType::List) => doc.list_range(obj, ..).find_map(|item| match item.value {
            ValueRef::Object(kind) => visit(format!("[{}]", item.index), kind, item.id()),
            ValueRef::Scalar(_) => None,
        }),
        _ => None,
    }
}

fn json_of_scalar(scalar: &ScalarValue) -> Json {
    match scalar {
        ScalarValue::Str(s) => Json::String(s.to_string()),
        ScalarValue::Int(i) => Json::Number((*i).into()),
        ScalarValue::Uint(u) => Json::Number((*u).into()),
        ScalarValue::F64(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        ScalarValue::Counter(c) => Json::Number(i64::from(c).into()),
        ScalarValue::Timestamp(t) => Json::Number((*t).into()),
        ScalarValue::Boolean(b) => Json::Bool(*b),
        ScalarValue::Bytes(bytes) => Json::String(hex_string(bytes)),
        ScalarValue::Unknown { .. } | ScalarValue::Null => Json::Null,
    }
}

pub(crate) fn hex_string(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The map at `key` of `parent`, if there is one.
pub(crate) fn map_at(doc: &AutoCommit, parent: &ObjId, key: &str) -> Option<ObjId> {
    map_at_version(doc, parent, key, None)
}

/// The value at `key` of `obj`: now, or as it was at the heads `version`.
fn value_at_version<'a>(
    doc: &'a AutoCommit,
    obj: &ObjId,
    key: &str,
    version: Option<&[ChangeHash]>,
) -> Option<(Value<'a>, ObjId)> {
    match version {
        None => doc.get(obj, key),
        Some(heads) => doc.get_at(obj, key, heads),
    }
    .ok()
    .flatten()
}

/// The map at `key` of `parent`, now or at the heads `version`.
pub(crate) fn map_at_version(
    doc: &AutoCommit,
    parent: &ObjId,
    key: &str,
    version: Option<&[ChangeHash]>,
) -> Option<ObjId> {
    match value_at_version(doc, parent, key, version) {
        Some((Value::Object(ObjType::Map), id)) => Some(id),
        _ => None,
    }
}

/// The map at `key` of `parent`, created when missing.
pub(crate) fn ensure_map(doc: &mut AutoCommit, parent: &ObjId, key: &str) -> Result<ObjId> {
    match map_at(doc, parent, key) {
        Some(id) => Ok(id),
        None => Ok(doc.put_object(parent, key, ObjType::Map)?),
    }
}

/// The string at `key`, if that is what it holds.
pub(crate) fn str_at(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<String> {
    str_at_version(doc, obj, key, None)
}

/// The string at `key`, now or at the heads `version`, if that is what it holds.
pub(crate) fn str_at_version(
    doc: &AutoCommit,
    obj: &ObjId,
    key: &str,
    version: Option<&[ChangeHash]>,
) -> Option<String> {
    match value_at_version(doc, obj, key, version) {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    }
}
