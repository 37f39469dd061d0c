//! What the two webhooks accept, without any I/O: the Marketo "Call Webhook" JSON body
//! (rendered from [`MARKETO_TEMPLATE`]) and its shared secret, compared in constant time; the
//! Salesforce Outbound Message (SOAP 1.1, namespace `http://soap.sforce.com/2005/09/outbound`,
//! 1 to 100 `Notification`s) and its organisation id; and the Ack Salesforce waits for.
//!
//! Wire facts (vendor docs, `docs/apis` in the developers' notes): Marketo sends exactly the
//! rendered template, string tokens JSON-quoted by the "JSON" request token encoding, empty
//! tokens as `null`, `{{system.dateTime}}` as `yyyy-MM-dd HH:mm:ss` without a zone, custom
//! headers as set in "Set Custom Header"; it signs nothing, so a shared secret in a header is
//! the authentication. Salesforce sends the records' current values in an `sObject` typed
//! `sf:<Object>` (`xmlns:sf="urn:sobject.enterprise.soap.sforce.com"`), and retries for
//! 24 hours until the endpoint answers HTTP 200 with `<Ack>true</Ack>`.
//!
//! Must not: panic on any input, keep or log a body or a secret (errors name what is wrong
//! with a body, never quote it whole), or parse XML other than with a real XML parser.

use std::collections::BTreeMap;

use jiff::Timestamp;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::MarketoScore;
use crate::engine::model::{Campaign, ScorePart};
use crate::mapping::MapSection;

/// The body template of the Marketo webhook for the default mapping: put it in the webhook's
/// "Template" with "Request Token Encoding" JSON. The keys of `scores` are the mapping's MAP
/// score fields (`[map] total_score`, `behavior_score`, `demographic_score`); a score field
/// the mapping does not use may be left out.
pub const MARKETO_TEMPLATE: &str = r#"{
  "leadId": {{lead.Id}},
  "scores": {
    "leadScore": {{lead.Lead Score}},
    "behaviorScore": {{lead.Behavior Score}},
    "demographicScore": {{lead.Demographic Score}}
  },
  "sfdcLeadId": {{lead.SFDC Lead ID}},
  "sfdcContactId": {{lead.SFDC Contact ID}},
  "campaignId": {{campaign.id}},
  "campaignName": {{campaign.name}},
  "sentAt": {{system.dateTime}}
}"#;

/// The SOAP envelope namespace (SOAP 1.1).
pub const SOAP_ENVELOPE_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// The Outbound Messaging namespace.
pub const OUTBOUND_NS: &str = "http://soap.sforce.com/2005/09/outbound";
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// Salesforce puts at most this many notifications in one message.
pub const MAX_NOTIFICATIONS: usize = 100;
/// Deeper XML than this is not an Outbound Message.
const MAX_DEPTH: usize = 16;

/// The answer that makes Salesforce stop retrying a message (HTTP 200, `text/xml`). One Ack
/// covers every notification of the message.
pub const ACK: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8"?>"#,
    r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">"#,
    r#"<soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">"#,
    r#"<Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#
);

/// A body that is not what the webhook takes. The message says what is wrong and is safe to
/// log and to answer with: it quotes at most a short name from the body, never its values.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(String);

impl Malformed {
    fn new(message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        if message.len() > 200 {
            let mut end = 200;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        Malformed(message)
    }
}

/// A name from the body, shortened and made printable for a message.
fn shown(name: &str) -> String {
    let clean: String = name.chars().filter(|c| !c.is_control()).take(40).collect();
    if clean.len() < name.len() {
        format!("{clean:?}…")
    } else {
        format!("{clean:?}")
    }
}

/// Whether the presented secret is the expected one, in time that depends on neither (both
/// are hashed first, so not even the length leaks; the digests are compared with `subtle`).
pub fn secret_matches(presented: &[u8], expected: &[u8]) -> bool {
    let a = Sha256::digest(presented);
    let b = Sha256::digest(expected);
    a.as_slice().ct_eq(b.as_slice()).into()
}

/// The MAP's score fields of the mapping, by part: the keys `scores` may have.
#[derive(Clone, Debug)]
pub struct ScoreFields {
    fields: Vec<(String, ScorePart)>,
}

impl ScoreFields {
    pub fn new(map: &MapSection) -> Self {
        let mut fields = vec![(map.total_score.clone(), ScorePart::Total)];
        if let Some(f) = &map.behavior_score {
            fields.push((f.clone(), ScorePart::Behavior));
        }
        if let Some(f) = &map.demographic_score {
            fields.push((f.clone(), ScorePart::Demographic));
        }
        ScoreFields { fields }
    }

    fn part(&self, key: &str) -> Option<ScorePart> {
        self.fields
            .iter()
            .find(|(f, _)| f.eq_ignore_ascii_case(key))
            .map(|(_, p)| *p)
    }

    fn names(&self) -> String {
        self.fields
            .iter()
            .map(|(f, _)| f.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Reads a Marketo webhook body.
pub fn parse_marketo(
    body: &[u8],
    fields: &ScoreFields,
    received_at: Timestamp,
) -> Result<MarketoScore, Malformed> {
    let text = std::str::from_utf8(body)
        .map_err(|_| Malformed::new("the body is not UTF-8 text; Marketo sends JSON"))?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        Malformed::new(format!(
            "the body is not JSON ({e}); use the template of README \"Daemon endpoints\" with Request Token Encoding JSON"
        ))
    })?;
    let Value::Object(object) = value else {
        return Err(Malformed::new("the body is not a JSON object"));
    };
    let lead_id = match object.get("leadId") {
        None | Some(Value::Null) => {
            return Err(Malformed::new(
                "leadId is missing or empty; the template needs \"leadId\": {{lead.Id}}",
            ));
        }
        Some(v) => integer(v).filter(|id| *id > 0).ok_or_else(|| {
            Malformed::new("leadId is not a Marketo lead id (a positive integer)")
        })?,
    };
    let mut scores = Vec::new();
    match object.get("scores") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (key, v) in map {
                let part = fields.part(key).ok_or_else(|| {
                    Malformed::new(format!(
                        "scores has {}, which is no score field of the mapping (it has: {})",
                        shown(key),
                        fields.names()
                    ))
                })?;
                match v {
                    Value::Null => {}
                    v => {
                        let n = number(v).ok_or_else(|| {
                            Malformed::new(format!("scores.{key} is not a number"))
                        })?;
                        scores.push((part, n));
                    }
                }
            }
        }
        Some(_) => {
            return Err(Malformed::new(
                "scores is not an object of score field -> value",
            ));
        }
    }
    scores.sort_by_key(|(part, _)| part.index());
    let crm_lead_id = crm_id(&object, "sfdcLeadId")?;
    let crm_contact_id = crm_id(&object, "sfdcContactId")?;
    let campaign = match object.get("campaignId") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let id = integer(v)
                .ok_or_else(|| Malformed::new("campaignId is not a campaign id (an integer)"))?;
            let name = match object.get("campaignName") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(Malformed::new("campaignName is not text")),
            };
            Some(Campaign {
                id: id.to_string().into(),
                name: name.map(Into::into),
            })
        }
    };
    let sent_at = match object.get("sentAt") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(marketo_time(s).ok_or_else(|| {
            Malformed::new("sentAt is not a date and time (yyyy-MM-dd HH:mm:ss, as {{system.dateTime}} renders)")
        })?),
        Some(_) => return Err(Malformed::new("sentAt is not text")),
    };
    Ok(MarketoScore {
        map_lead_id: lead_id,
        scores,
        crm_lead_id,
        crm_contact_id,
        campaign,
        sent_at,
        received_at,
    })
}

/// An integer, or text holding one (a template may quote a token).
fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A finite number, or text holding one.
fn number(v: &Value) -> Option<f64> {
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }?;
    n.is_finite().then_some(n)
}

/// A Salesforce record id (15 or 18 letters and digits), or nothing when null or empty.
fn crm_id(object: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>, Malformed> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if is_salesforce_id(s) => Ok(Some(s.clone())),
        Some(_) => Err(Malformed::new(format!(
            "{key} is not a Salesforce record id (15 or 18 letters and digits)"
        ))),
    }
}

fn is_salesforce_id(s: &str) -> bool {
    (s.len() == 15 || s.len() == 18) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `{{system.dateTime}}` (`2026-11-02 12:00:00`, read as UTC) or an RFC 3339 instant.
fn marketo_time(s: &str) -> Option<Timestamp> {
    if let Ok(at) = s.parse::<Timestamp>() {
        return Some(at);
    }
    let civil: jiff::civil::DateTime = s.parse().ok()?;
    civil
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

/// One Salesforce Outbound Message.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboundMessage {
    pub organization_id: String,
    pub action_id: Option<String>,
    pub notifications: Vec<Notification>,
}

/// One notification: a record's current values.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    /// The notification's id (the same on a redelivery).
    pub id: String,
    /// The object's API name, from `xsi:type="sf:<Object>"`.
    pub object: String,
    /// The record's `Id`.
    pub record_id: String,
    /// The other fields the message carries; `None` for `xsi:nil="true"`.
    pub fields: BTreeMap<String, Option<String>>,
}

/// Where in the message the parser is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Envelope,
    Header,
    Body,
    Notifications,
    /// An element of `notifications` other than `Notification`.
    MessageField,
    Notification,
    /// An element of `Notification` other than `sObject`.
    NotificationField,
    SObject,
    RecordField,
    /// Anything else (a SOAP header's content, an element of a field).
    Other,
}

#[derive(Default)]
struct Partial {
    id: Option<String>,
    object: Option<String>,
    record_id: Option<String>,
    fields: BTreeMap<String, Option<String>>,
}

/// What has been read of a message so far.
#[derive(Default)]
struct Reading {
    /// (place, local name) of each open element.
    stack: Vec<(Place, String)>,
    /// The text of the innermost element so far.
    text: String,
    /// The innermost element has `xsi:nil="true"`.
    nil: bool,
    closed_root: bool,
    seen_notifications: bool,
    org: Option<String>,
    action: Option<String>,
    current: Option<Partial>,
    notifications: Vec<Notification>,
}

/// Reads a Salesforce Outbound Message.
pub fn parse_outbound(body: &[u8]) -> Result<OutboundMessage, Malformed> {
    let text = std::str::from_utf8(body)
        .map_err(|_| Malformed::new("the body is not UTF-8 XML; Salesforce sends UTF-8"))?;
    let mut reader = quick_xml::NsReader::from_str(text);
    let xml_error =
        |e: &dyn std::fmt::Display| Malformed::new(format!("the body is not well-formed XML: {e}"));
    let mut r = Reading::default();
    loop {
        let (ns, event) = reader.read_resolved_event().map_err(|e| xml_error(&e))?;
        let ns = match ns {
            ResolveResult::Bound(n) => Some(n.0.to_string()),
            ResolveResult::Unbound => None,
            ResolveResult::Unknown(p) => {
                return Err(Malformed::new(format!(
                    "the XML uses the undeclared namespace prefix {}",
                    shown(&p)
                )));
            }
        };
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                r.open(&reader, ns.as_deref(), e)?;
                if matches!(event, Event::Empty(_)) {
                    r.close()?;
                }
            }
            Event::End(_) => r.close()?,
            Event::Text(t) => {
                if r.stack.is_empty() {
                    if !t.xml10_content().trim().is_empty() {
                        return Err(Malformed::new("the XML has text outside its root element"));
                    }
                } else {
                    r.text.push_str(&t.xml10_content());
                }
            }
            Event::CData(c) => r.text.push_str(&c.xml10_content()),
            Event::GeneralRef(g) => match g.resolve_char_ref() {
                Ok(Some(c)) => r.text.push(c),
                Ok(None) => match quick_xml::escape::resolve_predefined_entity(&g) {
                    Some(s) => r.text.push_str(s),
                    None => {
                        return Err(Malformed::new(format!(
                            "the XML uses the undefined entity &{};",
                            shown(&g).trim_matches('"')
                        )));
                    }
                },
                Err(e) => return Err(xml_error(&e)),
            },
            Event::DocType(_) => {
                return Err(Malformed::new(
                    "the XML has a DOCTYPE; SOAP messages have none",
                ));
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    r.finish()
}

impl Reading {
    /// A new innermost element.
    fn open(
        &mut self,
        reader: &quick_xml::NsReader<&[u8]>,
        ns: Option<&str>,
        e: &BytesStart<'_>,
    ) -> Result<(), Malformed> {
        if self.closed_root {
            return Err(Malformed::new("the XML has more than one root element"));
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(Malformed::new(
                "the XML is nested deeper than an Outbound Message",
            ));
        }
        let local = e.local_name().into_inner().to_string();
        let place = place_of(self.stack.last().map(|(p, _)| *p), ns, &local)?;
        self.text.clear();
        self.nil = is_nil(reader, e);
        match place {
            Place::Notifications => self.seen_notifications = true,
            Place::Notification => {
                if self.notifications.len() >= MAX_NOTIFICATIONS {
                    return Err(Malformed::new(format!(
                        "the message has more than {MAX_NOTIFICATIONS} notifications"
                    )));
                }
                self.current = Some(Partial::default());
            }
            Place::SObject => {
                let object = sobject_type(reader, e)?;
                if let Some(c) = self.current.as_mut() {
                    c.object = Some(object);
                }
            }
            _ => {}
        }
        self.stack.push((place, local));
        Ok(())
    }

    /// Ends the innermost element: keeps its text where it belongs, finishes a notification.
    fn close(&mut self) -> Result<(), Malformed> {
        let Some((place, local)) = self.stack.pop() else {
            return Err(Malformed::new("the XML closes an element it never opened"));
        };
        self.closed_root = self.stack.is_empty();
        let value = std::mem::take(&mut self.text);
        let value = value.trim();
        match place {
            Place::MessageField => match local.as_str() {
                "OrganizationId" => self.org = Some(id_value(value, "OrganizationId")?),
                "ActionId" => self.action = Some(value.to_string()),
                _ => {}
            },
            Place::NotificationField if local == "Id" => {
                if let Some(c) = self.current.as_mut() {
                    c.id = Some(id_value(value, "a Notification's Id")?);
                }
            }
            Place::RecordField => {
                if let Some(c) = self.current.as_mut() {
                    if local == "Id" {
                        c.record_id = Some(id_value(value, "a record's Id")?);
                    } else {
                        c.fields
                            .insert(local, (!self.nil).then(|| value.to_string()));
                    }
                }
            }
            Place::Notification => {
                let Some(c) = self.current.take() else {
                    return Ok(());
                };
                let id =
                    c.id.ok_or_else(|| Malformed::new("a Notification has no Id"))?;
                let object = c
                    .object
                    .ok_or_else(|| Malformed::new("a Notification has no sObject"))?;
                let record_id = c
                    .record_id
                    .ok_or_else(|| Malformed::new("a Notification's sObject has no Id"))?;
                self.notifications.push(Notification {
                    id,
                    object,
                    record_id,
                    fields: c.fields,
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// The message, once the document has ended.
    fn finish(self) -> Result<OutboundMessage, Malformed> {
        if !self.closed_root || !self.stack.is_empty() {
            return Err(Malformed::new(
                "the XML ends before its root element is closed",
            ));
        }
        if !self.seen_notifications {
            return Err(Malformed::new(format!(
                "the SOAP body has no notifications element in namespace {OUTBOUND_NS}"
            )));
        }
        let organization_id = self
            .org
            .ok_or_else(|| Malformed::new("the message has no OrganizationId"))?;
        if self.notifications.is_empty() {
            return Err(Malformed::new("the message has no Notification"));
        }
        Ok(OutboundMessage {
            organization_id,
            action_id: self.action,
            notifications: self.notifications,
        })
    }
}

/// What an element is, from its parent and its (namespace, local name); an element that
/// cannot be where it is makes the message malformed.
fn place_of(parent: Option<Place>, ns: Option<&str>, local: &str) -> Result<Place, Malformed> {
    let soap = ns == Some(SOAP_ENVELOPE_NS);
    let outbound = ns == Some(OUTBOUND_NS);
    Ok(match parent {
        None if soap && local == "Envelope" => Place::Envelope,
        None => {
            return Err(Malformed::new(format!(
                "the root element is {}, not a SOAP 1.1 Envelope ({SOAP_ENVELOPE_NS})",
                shown(local)
            )));
        }
        Some(Place::Envelope) if soap && local == "Header" => Place::Header,
        Some(Place::Envelope) if soap && local == "Body" => Place::Body,
        Some(Place::Envelope) => {
            return Err(Malformed::new(format!(
                "the SOAP Envelope holds {}, not a Header and a Body",
                shown(local)
            )));
        }
        Some(Place::Body) if outbound && local == "notifications" => Place::Notifications,
        Some(Place::Body) => {
            return Err(Malformed::new(format!(
                "the SOAP body holds {}, not notifications in namespace {OUTBOUND_NS}",
                shown(local)
            )));
        }
        Some(Place::Notifications) if local == "Notification" => Place::Notification,
        Some(Place::Notifications) => Place::MessageField,
        Some(Place::Notification) if local == "sObject" => Place::SObject,
        Some(Place::Notification) => Place::NotificationField,
        Some(Place::SObject) => Place::RecordField,
        Some(_) => Place::Other,
    })
}

fn is_nil(reader: &quick_xml::NsReader<&[u8]>, e: &BytesStart<'_>) -> bool {
    e.attributes().flatten().any(|a| {
        let (ns, local) = reader.resolver().resolve_attribute(a.key);
        matches!(ns, ResolveResult::Bound(n) if n.0 == XSI_NS)
            && local.into_inner() == "nil"
            && a.value.trim() == "true"
    })
}

/// The object of an `sObject`, from `xsi:type="sf:Object"`.
fn sobject_type(
    reader: &quick_xml::NsReader<&[u8]>,
    e: &BytesStart<'_>,
) -> Result<String, Malformed> {
    for a in e.attributes() {
        let a = a.map_err(|e| Malformed::new(format!("the XML has a bad attribute: {e}")))?;
        let (ns, local) = reader.resolver().resolve_attribute(a.key);
        if matches!(ns, ResolveResult::Bound(n) if n.0 == XSI_NS) && local.into_inner() == "type" {
            let value = a.value.trim();
            let object = value.rsplit_once(':').map_or(value, |(_, o)| o);
            if object.is_empty()
                || object.len() > 80
                || !object
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(Malformed::new(
                    "an sObject's xsi:type is not an object name",
                ));
            }
            return Ok(object.to_string());
        }
    }
    Err(Malformed::new(
        "an sObject has no xsi:type naming its object",
    ))
}

fn id_value(value: &str, what: &str) -> Result<String, Malformed> {
    if is_salesforce_id(value) {
        Ok(value.to_string())
    } else {
        Err(Malformed::new(format!(
            "{what} is not a Salesforce id (15 or 18 letters and digits)"
        )))
    }
}

/// Whether the organisation id of a message is the expected one. Salesforce ids come with 15
/// (case-sensitive) or 18 characters; the first 15 identify the org.
pub fn same_org(expected: &str, received: &str) -> bool {
    match (expected.get(..15), received.get(..15)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The organisation id in an OAuth identity URL (`https://login.salesforce.com/id/<org>/<user>`),
/// which is how the daemon learns which org's messages to accept.
pub fn org_id_from_identity_url(url: &str) -> Option<&str> {
    let path = url.split(['?', '#']).next()?;
    let mut parts = path.rsplit('/');
    let _user = parts.next()?;
    let org = parts.next()?;
    (parts.next()? == "id" && is_salesforce_id(org)).then_some(org)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> ScoreFields {
        ScoreFields::new(&crate::mapping::load(None).unwrap().mapping.map)
    }

    fn at() -> Timestamp {
        "2026-11-02T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn the_template_rendered_as_marketo_does_is_accepted() {
        // The template with its tokens replaced by Marketo's JSON token encoding.
        let body = MARKETO_TEMPLATE
            .replace("{{lead.Id}}", "1042")
            .replace("{{lead.Lead Score}}", "87")
            .replace("{{lead.Behavior Score}}", "52")
            .replace("{{lead.Demographic Score}}", "null")
            .replace("{{lead.SFDC Lead ID}}", "\"00Q000000000001AAA\"")
            .replace("{{lead.SFDC Contact ID}}", "null")
            .replace("{{campaign.id}}", "1003")
            .replace("{{campaign.name}}", "\"Webinar \\\"Q4\\\" & more\"")
            .replace("{{system.dateTime}}", "\"2026-11-02 11:59:58\"");
        let score = parse_marketo(body.as_bytes(), &fields(), at()).unwrap();
        assert_eq!(score.map_lead_id, 1042);
        assert_eq!(
            score.scores,
            vec![(ScorePart::Total, 87.0), (ScorePart::Behavior, 52.0)]
        );
        assert_eq!(score.crm_lead_id.as_deref(), Some("00Q000000000001AAA"));
        assert_eq!(score.crm_contact_id, None);
        assert_eq!(
            score.campaign,
            Some(Campaign {
                id: "1003".into(),
                name: Some("Webinar \"Q4\" & more".into())
            })
        );
        assert_eq!(score.sent_at, Some("2026-11-02T11:59:58Z".parse().unwrap()));
        assert_eq!(score.received_at, at());
        // Only a lead id is required.
        let bare = parse_marketo(br#"{"leadId": "7"}"#, &fields(), at()).unwrap();
        assert_eq!((bare.map_lead_id, bare.scores.len()), (7, 0));
    }

    #[test]
    fn bad_marketo_bodies_say_what_is_wrong_and_never_panic() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "not JSON"),
            (b"\xff\xfe{}", "not UTF-8"),
            (b"[1,2]", "not a JSON object"),
            (b"{}", "leadId is missing"),
            (br#"{"leadId": -3}"#, "positive integer"),
            (br#"{"leadId": 1e400}"#, "not JSON"),
            (
                br#"{"leadId": 99999999999999999999999}"#,
                "positive integer",
            ),
            (br#"{"leadId": 1.5}"#, "positive integer"),
            (
                br#"{"leadId": 1, "scores": {"lead_score": 3}}"#,
                "no score field",
            ),
            (
                br#"{"leadId": 1, "scores": {"leadScore": "high"}}"#,
                "not a number",
            ),
            (
                br#"{"leadId": 1, "scores": {"leadScore": 1e308, "x": 1}}"#,
                "no score field",
            ),
            (br#"{"leadId": 1, "scores": [1]}"#, "not an object"),
            (
                br#"{"leadId": 1, "sfdcLeadId": "abc"}"#,
                "sfdcLeadId is not",
            ),
            (br#"{"leadId": 1, "campaignId": {}}"#, "campaignId"),
            (br#"{"leadId": 1, "sentAt": "yesterday"}"#, "sentAt"),
            (br#"{"leadId": 1"#, "not JSON"),
        ];
        for (body, expected) in cases {
            let e = parse_marketo(body, &fields(), at())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(expected),
                "{:?}: {e}",
                String::from_utf8_lossy(body)
            );
        }
        let deep = "[".repeat(10_000);
        assert!(parse_marketo(deep.as_bytes(), &fields(), at()).is_err());
        let long_key = format!(
            r#"{{"leadId": 1, "scores": {{"{}": 1}}}}"#,
            "k".repeat(5000)
        );
        let e = parse_marketo(long_key.as_bytes(), &fields(), at()).unwrap_err();
        assert!(e.to_string().len() < 260, "{e}");
    }

    #[test]
    fn the_secret_compare_is_exact() {
        assert!(secret_matches(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!secret_matches(b"0123456789abcdeF", b"0123456789abcdef"));
        assert!(!secret_matches(b"0123456789abcde", b"0123456789abcdef"));
        assert!(!secret_matches(b"0123456789abcdef0", b"0123456789abcdef"));
        assert!(!secret_matches(b"", b"0123456789abcdef"));
    }

    pub(crate) fn message(org: &str, notifications: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>{org}</OrganizationId>
   <ActionId>04k000000000001AAA</ActionId>
   <SessionId xsi:nil="true"/>
   <EnterpriseUrl>https://acme.my.salesforce.com/services/Soap/c/62.0/00D000000000001</EnterpriseUrl>
   <PartnerUrl>https://acme.my.salesforce.com/services/Soap/u/62.0/00D000000000001</PartnerUrl>
   {notifications}
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>"#
        )
    }

    const ORG: &str = "00D000000000001AAA";

    #[test]
    fn an_outbound_message_is_read_with_its_records() {
        let body = message(
            ORG,
            r#"<Notification><Id>04l000000000001AAA</Id>
                 <sObject xsi:type="sf:MQL_Threshold__c" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
                   <sf:Id>a0B000000000001AAA</sf:Id>
                   <sf:Score_Threshold__c>65.0</sf:Score_Threshold__c>
                   <sf:Reason__c>Q4 &amp; pipeline &#x2192; <![CDATA[<more>]]></sf:Reason__c>
                   <sf:Effective_To__c xsi:nil="true"/>
                 </sObject></Notification>
               <Notification><Id>04l000000000002AAA</Id>
                 <sObject xsi:type="sf:MQL_Threshold__c" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
                   <sf:Id>a0B000000000002AAA</sf:Id>
                 </sObject></Notification>"#,
        );
        let m = parse_outbound(body.as_bytes()).unwrap();
        assert_eq!(m.organization_id, ORG);
        assert_eq!(m.action_id.as_deref(), Some("04k000000000001AAA"));
        assert_eq!(m.notifications.len(), 2);
        let n = &m.notifications[0];
        assert_eq!(
            (n.id.as_str(), n.object.as_str(), n.record_id.as_str()),
            (
                "04l000000000001AAA",
                "MQL_Threshold__c",
                "a0B000000000001AAA"
            )
        );
        assert_eq!(n.fields["Score_Threshold__c"].as_deref(), Some("65.0"));
        assert_eq!(
            n.fields["Reason__c"].as_deref(),
            Some("Q4 & pipeline \u{2192} <more>")
        );
        assert_eq!(n.fields["Effective_To__c"], None);
    }

    #[test]
    fn bad_outbound_messages_say_what_is_wrong_and_never_panic() {
        let one = r#"<Notification><Id>04l000000000001AAA</Id><sObject xsi:type="sf:Lead" xmlns:sf="urn:sobject.enterprise.soap.sforce.com"><sf:Id>00Q000000000001AAA</sf:Id></sObject></Notification>"#;
        let good = message(ORG, one);
        assert!(parse_outbound(good.as_bytes()).is_ok());
        let many = message(ORG, &one.repeat(101));
        let mut cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "ends before"),
            (b"\xff\xfe<a/>".to_vec(), "not UTF-8"),
            (b"not xml at all".to_vec(), "text outside"),
            (
                br#"<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body></e:Envelope>"#.to_vec(),
                "not well-formed",
            ),
            (b"<x:a/>".to_vec(), "undeclared namespace prefix"),
            (b"<Envelope/>".to_vec(), "not a SOAP 1.1 Envelope"),
            (
                br#"<!DOCTYPE x [<!ENTITY e "boom">]><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"/>"#.to_vec(),
                "DOCTYPE",
            ),
            (message(ORG, "").into_bytes(), "no Notification"),
            (message("not-an-org", one).into_bytes(), "OrganizationId is not"),
            (many.into_bytes(), "more than 100"),
            (
                message(ORG, &one.replace("<Id>04l000000000001AAA</Id>", "")).into_bytes(),
                "has no Id",
            ),
            (
                message(ORG, &one.replace(r#" xsi:type="sf:Lead""#, "")).into_bytes(),
                "no xsi:type",
            ),
            (
                message(ORG, &one.replace("<sf:Id>00Q000000000001AAA</sf:Id>", "")).into_bytes(),
                "sObject has no Id",
            ),
            (
                message(ORG, &one.replace("AAA</sf:Id>", "AAA&bogus;</sf:Id>")).into_bytes(),
                "undefined entity",
            ),
            (
                format!("{}{}", "<a>".repeat(20), "</a>".repeat(20)).into_bytes(),
                "not a SOAP 1.1 Envelope",
            ),
            (good.replace("</soapenv:Envelope>", "</soapenv:Envelope><x/>").into_bytes(), "more than one root"),
        ];
        // Every truncation of a good message is refused, none panics.
        for cut in (0..good.len()).step_by(7) {
            cases.push((good.as_bytes()[..cut].to_vec(), ""));
        }
        for (body, expected) in cases {
            let e = parse_outbound(&body).unwrap_err().to_string();
            assert!(
                e.contains(expected),
                "{:?}: {e}",
                String::from_utf8_lossy(&body[..body.len().min(120)])
            );
        }
        let deep = format!(
            r#"<soapenv:Envelope xmlns:soapenv="{SOAP_ENVELOPE_NS}"><soapenv:Header>{}"#,
            "<a>".repeat(100_000)
        );
        let e = parse_outbound(deep.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("nested deeper"), "{e}");
    }

    #[test]
    fn the_ack_is_the_one_salesforce_expects() {
        assert_eq!(
            ACK,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"><soapenv:Body><notificationsResponse xmlns=\"http://soap.sforce.com/2005/09/outbound\"><Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"
        );
    }

    #[test]
    fn org_ids_compare_on_their_first_15_characters() {
        assert!(same_org("00D000000000001AAA", "00D000000000001AAA"));
        assert!(same_org("00D000000000001", "00D000000000001AAA"));
        assert!(!same_org("00D000000000001AAA", "00D000000000002AAA"));
        assert!(!same_org("00D000000000001AAA", "00d000000000001AAA"));
        assert!(!same_org("00D000000000001AAA", "00D"));
        assert_eq!(
            org_id_from_identity_url(
                "https://login.salesforce.com/id/00D000000000001AAA/005000000000001AAA"
            ),
            Some("00D000000000001AAA")
        );
        assert_eq!(org_id_from_identity_url("https://x/services/oauth2"), None);
    }
}
