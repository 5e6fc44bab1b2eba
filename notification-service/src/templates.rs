//! The mails' templates: one plain-text and one HTML file per kind (`templates/<kind>.txt`,
//! `.html`), built in and replaceable by files in `TEMPLATES_DIR`. The text file's first line is
//! `Subject: …`. Placeholders `{{name}}`, `{{starts_at}}`, `{{ends_at}}` (on `MAIL_TIME_ZONE`'s
//! clock), `{{time_zone}}` (that clock's abbreviation at the start, e.g. `CET`) and
//! `{{appointment_id}}` are filled in (HTML-escaped in the HTML part); nothing else is
//! interpreted.

use std::{collections::HashMap, path::Path};

use anyhow::{bail, Context};

use crate::mails::Kind;

/// Subject, text and HTML of one kind of mail.
#[derive(Debug, Clone)]
struct Template {
    subject: String,
    text: String,
    html: String,
}

/// A rendered mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

#[derive(Debug, Clone)]
pub struct Templates {
    by_kind: HashMap<Kind, Template>,
}

/// The built-in templates, from the files in `templates/`.
const BUILT_IN: [(Kind, &str, &str); 5] = [
    (Kind::Welcome, include_str!("../templates/welcome.txt"), include_str!("../templates/welcome.html")),
    (Kind::Booked, include_str!("../templates/booked.txt"), include_str!("../templates/booked.html")),
    (Kind::Rescheduled, include_str!("../templates/rescheduled.txt"), include_str!("../templates/rescheduled.html")),
    (Kind::Cancelled, include_str!("../templates/cancelled.txt"), include_str!("../templates/cancelled.html")),
    (Kind::Reminder, include_str!("../templates/reminder.txt"), include_str!("../templates/reminder.html")),
];

fn parse(kind: Kind, text: &str, html: &str) -> anyhow::Result<Template> {
    let (first, body) = text.split_once('\n').unwrap_or((text, ""));
    let Some(subject) = first.strip_prefix("Subject:") else {
        bail!("the {} text template must start with a `Subject:` line", kind.file_stem());
    };
    Ok(Template { subject: subject.trim().to_owned(), text: body.trim_start_matches('\n').to_owned(), html: html.to_owned() })
}

impl Templates {
    /// The built-in templates, each replaced by `dir`'s files of the same name when present.
    pub fn load(dir: Option<&Path>) -> anyhow::Result<Self> {
        let mut by_kind = HashMap::new();
        for (kind, text, html) in BUILT_IN {
            let read = |ext: &str, built_in: &str| -> anyhow::Result<String> {
                match dir.map(|d| d.join(format!("{}.{ext}", kind.file_stem()))).filter(|p| p.exists()) {
                    Some(path) => std::fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display())),
                    None => Ok(built_in.to_owned()),
                }
            };
            by_kind.insert(kind, parse(kind, &read("txt", text)?, &read("html", html)?)?);
        }
        Ok(Self { by_kind })
    }

    /// The mail of `kind` with `values` filled in.
    pub fn render(&self, kind: Kind, values: &[(&str, &str)]) -> Rendered {
        let t = &self.by_kind[&kind];
        Rendered {
            // A header line: no line breaks from any value.
            subject: fill(&t.subject, values, |v| v.replace(['\r', '\n'], " ")),
            text: fill(&t.text, values, str::to_owned),
            html: fill(&t.html, values, escape_html),
        }
    }
}

fn fill(template: &str, values: &[(&str, &str)], encode: impl Fn(&str) -> String) -> String {
    let mut out = template.to_owned();
    for (key, value) in values {
        out = out.replace(&format!("{{{{{key}}}}}"), &encode(value));
    }
    out
}

fn escape_html(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_template_renders_its_placeholders() {
        let t = Templates::load(None).unwrap();
        let values = [
            ("name", "Ada <Lovelace>"),
            ("starts_at", "2027-01-02 09:00"),
            ("ends_at", "09:30"),
            ("time_zone", "CET"),
            ("appointment_id", "a-1"),
        ];
        for (kind, _, _) in BUILT_IN {
            let r = t.render(kind, &values);
            assert!(!r.subject.is_empty() && !r.subject.contains("{{"), "{kind:?}: {}", r.subject);
            assert!(r.text.contains("Ada <Lovelace>") && !r.text.contains("{{"), "{kind:?}");
            assert!(r.html.contains("Ada &lt;Lovelace&gt;") && !r.html.contains("<Lovelace>"), "{kind:?}");
        }
    }

    #[test]
    fn a_header_never_takes_a_line_break_from_a_value() {
        let t = Templates::load(None).unwrap();
        let r = t.render(Kind::Booked, &[("starts_at", "x\r\nBcc: evil@example.org")]);
        assert!(!r.subject.contains('\n') && !r.subject.contains('\r'));
    }

    #[test]
    fn a_directory_replaces_what_it_has() {
        let dir = std::env::temp_dir().join(format!("templates-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("welcome.txt"), "Subject: Hi {{name}}\n\nWelcome, {{name}}.").unwrap();
        let t = Templates::load(Some(&dir)).unwrap();
        assert_eq!(t.render(Kind::Welcome, &[("name", "Bo")]).subject, "Hi Bo");
        assert!(t.render(Kind::Booked, &[]).subject.contains("booked"), "the others stay built in");
        std::fs::write(dir.join("welcome.txt"), "no subject line").unwrap();
        assert!(Templates::load(Some(&dir)).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
