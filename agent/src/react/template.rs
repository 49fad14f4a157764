//! Alert message templates: text with `{field}` placeholders filled from the member and zone.
//! Placeholders are checked when the rules file loads, so a typo fails the load, not an alert.

use instore_protocol::rules::TemplatePart as Part;

use crate::cache::Member;

#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<Part>);

impl Template {
    pub fn parse(s: &str) -> Result<Self, String> {
        instore_protocol::rules::parse_template(s).map(Self)
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
