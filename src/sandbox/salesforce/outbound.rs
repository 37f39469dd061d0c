//! Outbound Messaging: SOAP 1.1 `notifications` (namespace
//! `http://soap.sforce.com/2005/09/outbound`, at most 100 `Notification`s per message, the
//! record's *current* field values) POSTed to the configured URL, retried until the endpoint
//! answers HTTP 200 with `<Ack>true</Ack>`. Retries back off exponentially from
//! `retry_initial_secs` to at most 2 h; a notification not acknowledged within 24 h is
//! dropped. All timing is on the sandbox clock: a test advances the clock and calls
//! [`Salesforce::deliver_outbound`]; the server's worker calls it when woken and once a second.
//! It must not block a request handler on delivery.

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::Salesforce;
use super::store::org_id;
use crate::sandbox::world::salesforce_id;

struct Pending {
    notification_id: String,
    object: String,
    record_id: String,
    first_at: Timestamp,
    attempts: u32,
    next_at: Timestamp,
}

/// One POST to the endpoint.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Delivery {
    pub at: Timestamp,
    pub notification_ids: Vec<String>,
    /// HTTP status, 0 when the endpoint could not be reached.
    pub status: u16,
    pub acknowledged: bool,
}

#[derive(Default)]
pub(crate) struct Queue {
    next: u64,
    pending: Vec<Pending>,
    deliveries: Vec<Delivery>,
    dropped: u64,
}

impl Queue {
    pub fn enqueue(&mut self, object: &str, ids: &[String], now: Timestamp) {
        for id in ids {
            self.next += 1;
            self.pending.push(Pending {
                notification_id: salesforce_id("04l", self.next),
                object: object.to_string(),
                record_id: id.clone(),
                first_at: now,
                attempts: 0,
                next_at: now,
            });
        }
    }

    pub fn summary(&self) -> Value {
        let pending: Vec<Value> = self
            .pending
            .iter()
            .map(|p| {
                json!({"notification_id": p.notification_id, "object": p.object,
                       "record_id": p.record_id, "attempts": p.attempts,
                       "next_attempt_at": p.next_at.to_string()})
            })
            .collect();
        json!({"pending": pending, "deliveries": self.deliveries, "dropped": self.dropped})
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn acknowledged(body: &str) -> bool {
    let re = regex::Regex::new(r"<(?:[A-Za-z0-9_]+:)?Ack>\s*true\s*</(?:[A-Za-z0-9_]+:)?Ack>")
        .expect("static regex");
    re.is_match(body)
}

impl Salesforce {
    /// Attempts every due outbound notification once; returns how many were acknowledged.
    pub async fn deliver_outbound(&self) -> usize {
        let inner = self.inner();
        let Some(config) = inner.config.outbound.clone() else {
            return 0;
        };
        let now = inner.clock.now();
        // Pick due notifications, at most 100 per message, one object per message.
        let batch: Vec<(String, String, String)> = {
            let mut queue = inner.outbound.lock().expect("outbound lock");
            let before = queue.pending.len();
            queue
                .pending
                .retain(|p| now.duration_since(p.first_at) < SignedDuration::from_hours(24));
            queue.dropped += (before - queue.pending.len()) as u64;
            let Some(object) = queue
                .pending
                .iter()
                .find(|p| p.next_at <= now)
                .map(|p| p.object.clone())
            else {
                return 0;
            };
            queue
                .pending
                .iter()
                .filter(|p| p.next_at <= now && p.object == object)
                .take(100)
                .map(|p| {
                    (
                        p.notification_id.clone(),
                        p.object.clone(),
                        p.record_id.clone(),
                    )
                })
                .collect()
        };
        let envelope = {
            let db = inner.db.lock().expect("db lock");
            let mut notifications = String::new();
            for (nid, object, id) in &batch {
                let Some(record) = db.table(object).and_then(|t| t.records.get(id)) else {
                    continue;
                };
                let mut fields = format!("<sf:Id>{}</sf:Id>", xml_escape(id));
                for f in config.fields.iter().filter(|f| f.as_str() != "Id") {
                    match record.fields.get(f) {
                        None => {}
                        Some(Value::Null) => {
                            fields.push_str(&format!("<sf:{f} xsi:nil=\"true\"/>"))
                        }
                        Some(Value::String(s)) => {
                            fields.push_str(&format!("<sf:{f}>{}</sf:{f}>", xml_escape(s)))
                        }
                        Some(v) => fields.push_str(&format!("<sf:{f}>{v}</sf:{f}>")),
                    }
                }
                notifications.push_str(&format!(
                    "<Notification><Id>{nid}</Id><sObject xsi:type=\"sf:{object}\" xmlns:sf=\"urn:sobject.enterprise.soap.sforce.com\">{fields}</sObject></Notification>"
                ));
            }
            let org = org_id();
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\
<soapenv:Body><notifications xmlns=\"http://soap.sforce.com/2005/09/outbound\">\
<OrganizationId>{org}</OrganizationId><ActionId>{action}</ActionId><SessionId xsi:nil=\"true\"/>\
<EnterpriseUrl>https://sandbox.my.salesforce.com/services/Soap/c/62.0/{org15}</EnterpriseUrl>\
<PartnerUrl>https://sandbox.my.salesforce.com/services/Soap/u/62.0/{org15}</PartnerUrl>\
{notifications}</notifications></soapenv:Body></soapenv:Envelope>",
                action = salesforce_id("04k", 1),
                org15 = &org[..15],
            )
        };
        let result = inner
            .http
            .post(&config.url)
            .header("content-type", "text/xml; charset=utf-8")
            .header("soapaction", "\"\"")
            .body(envelope)
            .send()
            .await;
        let (status, acked) = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                (status, status == 200 && acknowledged(&body))
            }
            Err(_) => (0, false),
        };
        let ids: Vec<String> = batch.iter().map(|(nid, _, _)| nid.clone()).collect();
        let now = inner.clock.now();
        let mut queue = inner.outbound.lock().expect("outbound lock");
        queue.deliveries.push(Delivery {
            at: now,
            notification_ids: ids.clone(),
            status,
            acknowledged: acked,
        });
        if acked {
            queue.pending.retain(|p| !ids.contains(&p.notification_id));
            return ids.len();
        }
        let initial = config.retry_initial_secs.max(1);
        for p in queue
            .pending
            .iter_mut()
            .filter(|p| ids.contains(&p.notification_id))
        {
            p.attempts += 1;
            let backoff = initial.saturating_mul(1i64 << p.attempts.saturating_sub(1).min(20));
            p.next_at = now + SignedDuration::from_secs(backoff.min(2 * 3600));
        }
        0
    }

    /// Runs delivery in the background until `shutdown`: when woken by a change, and once a
    /// second so that clock advances are noticed.
    pub fn spawn_outbound_worker(
        &self,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let sf = self.clone();
        tokio::spawn(async move {
            if !sf
                .inner()
                .config
                .outbound
                .as_ref()
                .is_some_and(|o| o.deliver_in_background)
            {
                return;
            }
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = sf.inner().outbound_wake.notified() => {}
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
                while sf.deliver_outbound().await > 0 {}
            }
        })
    }

    /// The delivery attempts so far.
    pub fn outbound_deliveries(&self) -> Vec<Delivery> {
        self.inner()
            .outbound
            .lock()
            .expect("outbound lock")
            .deliveries
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_true_ack_acknowledges() {
        assert!(acknowledged(
            "<soapenv:Body><notificationsResponse xmlns=\"http://soap.sforce.com/2005/09/outbound\"><Ack>true</Ack></notificationsResponse>"
        ));
        assert!(acknowledged("<out:Ack> true </out:Ack>"));
        assert!(!acknowledged("<Ack>false</Ack>"));
        assert!(!acknowledged("OK"));
    }
}
