//! Alert message templates: text with `{field}` placeholders filled from the member and zone.
//! Placeholders are checked when the rules file loads, so a typo fails the load, not an alert.

use crate::cache::Member;

const FIELDS: [&str; 7] = [
    "display_name",
    "member_id",
    "tier",
    "stage",
    "tags",
    "zone",
    "last_purchase",
];

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Field(&'static str),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<Part>);

impl Template {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in message {s:?}"))?;
            let name = &after[..close];
            let field = FIELDS.iter().find(|f| **f == name).ok_or_else(|| {
                format!(
                    "unknown placeholder {{{name}}} in message (known: {})",
                    FIELDS.join(", ")
                )
            })?;
            parts.push(Part::Field(field));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if parts.is_empty() {
            return Err("message must not be empty".into());
        }
        Ok(Self(parts))
    }

    pub fn render(&self, m: &Member, zone: &str) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => out.push_str(&match *f {
                    "display_name" => m.display_name.clone(),
                    "member_id" => m.member_id.clone(),
                    "tier" => m.tier.clone(),
                    "stage" => m.stage.clone().unwrap_or_default(),
                    "tags" => m.tags.join(", "),
                    "zone" => zone.to_string(),
                    "last_purchase" => m
                        .last_purchase
                        .as_ref()
                        .map(|p| format!("{} on {}", p.summary, p.date))
                        .unwrap_or_else(|| "nothing yet".into()),
                    _ => String::new(),
                }),
            }
        }
        out
    }
}
