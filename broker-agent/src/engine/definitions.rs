//! The definitions snapshot (durable exchanges, queues, bindings, users, vhosts), encoded as
//! JSON. Storage keeps the bytes; this module owns their meaning.

use amq_protocol::types::FieldTable;
use serde::{Deserialize, Serialize};

use super::users::UserDef;

pub const DEFINITIONS_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Definitions {
    pub version: u32,
    pub users: Vec<UserDef>,
    pub vhosts: Vec<String>,
    pub exchanges: Vec<ExchangeDef>,
    pub queues: Vec<QueueDef>,
    pub bindings: Vec<BindingDef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDef {
    pub vhost: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    pub vhost: String,
    pub name: String,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingDef {
    pub vhost: String,
    pub source: String,
    pub destination: String,
    /// "queue" or "exchange".
    pub destination_type: String,
    pub routing_key: String,
    pub arguments: FieldTable,
}

impl Definitions {
    pub fn encode(&self) -> anyhow::Result<Vec<u8>> {
        Ok(serde_json::to_vec(self)?)
    }

    pub fn decode(bytes: &[u8]) -> anyhow::Result<Definitions> {
        let d: Definitions = serde_json::from_slice(bytes)?;
        anyhow::ensure!(
            d.version == DEFINITIONS_VERSION,
            "unsupported definitions version {}",
            d.version
        );
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::AMQPValue;

    #[test]
    fn roundtrip_keeps_argument_types() {
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongInt(5));
        let d = Definitions {
            version: DEFINITIONS_VERSION,
            queues: vec![QueueDef {
                vhost: "/".into(),
                name: "q".into(),
                auto_delete: false,
                arguments: args,
            }],
            ..Default::default()
        };
        let back = Definitions::decode(&d.encode().expect("encodes")).expect("decodes");
        assert_eq!(back, d);
        assert!(Definitions::decode(b"{\"version\":99,\"users\":[],\"vhosts\":[],\"exchanges\":[],\"queues\":[],\"bindings\":[]}").is_err());
    }
}
