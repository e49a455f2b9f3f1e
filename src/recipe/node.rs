//! A YAML document as a tree of nodes that remember where they were written, so every recipe
//! problem can name its file, line and column.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;

/// Where a value came from: a line/column of the recipe, or a `--set` override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    At { line: u64, column: u64 },
    Override(String),
    Unknown,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::At { line, column } => write!(f, "{line}:{column}"),
            Origin::Override(s) => write!(f, "--set {s}"),
            Origin::Unknown => f.write_str("?"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in document order, each with its own origin.
    Map(Vec<(String, Origin, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub origin: Origin,
}

impl Node {
    pub fn map(&self) -> Option<&Vec<(String, Origin, Node)>> {
        match &self.kind {
            NodeKind::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.map()?
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, v)| v)
    }

    /// The node at a dotted path (`train.optimizer.lr`; list items by index).
    pub fn at_path(&self, path: &str) -> Option<&Node> {
        let mut node = self;
        for part in path.split('.').filter(|p| !p.is_empty()) {
            node = match &node.kind {
                NodeKind::Map(_) => node.get(part)?,
                NodeKind::Seq(items) => items.get(part.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// The key's own origin (where `key:` is written), falling back to the value's.
    pub fn key_origin(&self, key: &str) -> Option<&Origin> {
        self.map()?
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, o, _)| o)
    }

    pub fn to_json(&self) -> Value {
        match &self.kind {
            NodeKind::Null => Value::Null,
            NodeKind::Bool(b) => Value::Bool(*b),
            NodeKind::Int(i) => Value::from(*i),
            NodeKind::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            NodeKind::Str(s) => Value::String(s.clone()),
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Map(m) => {
                Value::Object(m.iter().map(|(k, _, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    /// Set `path` to `value`, creating maps on the way (for `--set`).
    pub fn set_path(&mut self, path: &[&str], value: Node) -> Result<(), String> {
        let Some((first, rest)) = path.split_first() else {
            *self = value;
            return Ok(());
        };
        if matches!(self.kind, NodeKind::Null) {
            self.kind = NodeKind::Map(Vec::new());
        }
        match &mut self.kind {
            NodeKind::Map(m) => {
                if let Some((_, _, child)) = m.iter_mut().find(|(k, _, _)| k == first) {
                    return child.set_path(rest, value);
                }
                let mut child = Node {
                    kind: NodeKind::Null,
                    origin: value.origin.clone(),
                };
                child.set_path(rest, value.clone())?;
                m.push((first.to_string(), value.origin.clone(), child));
                Ok(())
            }
            NodeKind::Seq(items) => {
                let idx: usize = first
                    .parse()
                    .map_err(|_| format!("'{first}' is not a list index"))?;
                let child = items
                    .get_mut(idx)
                    .ok_or_else(|| format!("list has no item {idx}"))?;
                child.set_path(rest, value)
            }
            _ => Err(format!("'{first}' is inside a value that is not a mapping")),
        }
    }

    pub fn with_origin(mut self, origin: &Origin) -> Self {
        self.origin = origin.clone();
        if let NodeKind::Seq(items) = &mut self.kind {
            for item in items {
                *item = item.clone().with_origin(origin);
            }
        }
        if let NodeKind::Map(m) = &mut self.kind {
            for (_, o, v) in m {
                *o = origin.clone();
                *v = v.clone().with_origin(origin);
            }
        }
        self
    }
}

/// The value of a node, deserialised through `Spanned` so children carry locations.
struct Kind(NodeKind);

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindVisitor)
    }
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = Kind;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind(NodeKind::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind(NodeKind::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        Kind::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Kind, E> {
        Ok(Kind(NodeKind::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Kind, E> {
        Ok(Kind(NodeKind::Int(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Kind, E> {
        Ok(Kind(
            i64::try_from(v)
                .map(NodeKind::Int)
                .unwrap_or(NodeKind::Float(v as f64)),
        ))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Kind, E> {
        Ok(Kind(NodeKind::Float(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Kind, E> {
        Ok(Kind(NodeKind::Str(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Kind, E> {
        Ok(Kind(NodeKind::Str(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Kind>>()? {
            items.push(spanned_node(item));
        }
        Ok(Kind(NodeKind::Seq(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Kind>>()? {
            let name = match key.value.0 {
                NodeKind::Str(s) => s,
                NodeKind::Int(i) => i.to_string(),
                NodeKind::Bool(b) => b.to_string(),
                NodeKind::Float(f) => f.to_string(),
                NodeKind::Null => "null".into(),
                _ => return Err(de::Error::custom("mapping keys must be plain scalars")),
            };
            let origin = origin_of(&key.referenced);
            let value = map.next_value::<Spanned<Kind>>()?;
            entries.push((name, origin, spanned_node(value)));
        }
        Ok(Kind(NodeKind::Map(entries)))
    }
}

fn origin_of(loc: &serde_saphyr::Location) -> Origin {
    if loc.line() == 0 {
        Origin::Unknown
    } else {
        Origin::At {
            line: loc.line(),
            column: loc.column(),
        }
    }
}

fn spanned_node(s: Spanned<Kind>) -> Node {
    Node {
        kind: s.value.0,
        origin: origin_of(&s.referenced),
    }
}

/// Parse a YAML document into a located tree. Syntax errors come back rendered by serde-saphyr
/// (with line, column and a snippet).
pub fn parse(text: &str) -> Result<Node, String> {
    let root: Spanned<Kind> = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    Ok(spanned_node(root))
}
