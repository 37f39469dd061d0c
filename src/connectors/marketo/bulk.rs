//! Marketo bulk extract (leads, activities) for large volumes: create, enqueue, status, cancel,
//! list, and the file streamed to disk chunk by chunk (memory does not grow with the file) with
//! its SHA-256 taken on the way. The runner that drives these calls over many windows is
//! [`super::extract`].
//!
//! Paths are `/bulk/v1/...` (no `/rest`). A not-ready file answers HTTP 404 in plain text: it is
//! retried like a transient error. This file must not know MQL semantics.

use std::path::Path;

use jiff::Timestamp;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{Body, MarketoClient, SYS, format_datetime};
use crate::connectors::error::{ConnectorError, Result};
use crate::connectors::limits::Admit;
use crate::connectors::retry::Repeat;
use crate::connectors::{Priority, http};

/// What is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    Leads,
    Activities,
}

impl ExportKind {
    /// The path segment, `leads` or `activities`.
    pub fn segment(self) -> &'static str {
        match self {
            ExportKind::Leads => "leads",
            ExportKind::Activities => "activities",
        }
    }
}

/// An export job (`ExportResponse`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportJob {
    pub export_id: String,
    /// `Created`, `Queued`, `Processing`, `Completed`, `Failed`, `Cancelled` (or `Canceled`).
    pub status: String,
    #[serde(default)]
    pub number_of_records: Option<u64>,
    #[serde(default)]
    pub file_size: Option<u64>,
    #[serde(default)]
    pub file_checksum: Option<String>,
    #[serde(default)]
    pub error_msg: Option<String>,
}

/// The longest `createdAt` window one export may cover.
pub const MAX_EXPORT_DAYS: i64 = 31;

/// Refuses a window Marketo would refuse: empty, or longer than 31 days.
pub fn check_window(start: Timestamp, end: Timestamp) -> Result<()> {
    if end <= start || end.duration_since(start).as_secs() > MAX_EXPORT_DAYS * 86_400 {
        return Err(ConnectorError::Config(format!(
            "an export window must be 1 s to {MAX_EXPORT_DAYS} days; split {start}..{end}"
        )));
    }
    Ok(())
}

/// The `createdAt` filter of `[start, end)`: dates without milliseconds.
pub fn created_at(start: Timestamp, end: Timestamp) -> Value {
    json!({"startAt": format_datetime(start), "endAt": format_datetime(end)})
}

/// The request body of an activity export of `type_ids` created in `[start, end)`; dates without
/// milliseconds, window at most 31 days.
pub fn activity_export_request(
    type_ids: &[u32],
    start: Timestamp,
    end: Timestamp,
) -> Result<Value> {
    check_window(start, end)?;
    Ok(json!({
        "format": "CSV",
        "filter": {
            "createdAt": created_at(start, end),
            "activityTypeIds": type_ids,
        },
    }))
}

/// A downloaded export file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub bytes: u64,
    /// SHA-256 of the bytes written, lower-case hex (compare with `fileChecksum` after its
    /// `sha256:` prefix).
    pub sha256: String,
}

impl MarketoClient {
    fn export_path(kind: ExportKind, id: Option<&str>, action: &str) -> Result<String> {
        match id {
            None => Ok(format!("/bulk/v1/{}/export/{action}.json", kind.segment())),
            Some(id)
                if !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
            {
                Ok(format!(
                    "/bulk/v1/{}/export/{id}/{action}.json",
                    kind.segment()
                ))
            }
            Some(id) => Err(ConnectorError::Malformed {
                system: SYS,
                detail: format!("{id:?} is not an export id"),
            }),
        }
    }

    async fn export_call(
        &self,
        method: Method,
        path: &str,
        body: Body<'_>,
        repeat: Repeat,
    ) -> Result<ExportJob> {
        let env = self
            .call_as(method, path, &[], body, Priority::Routine, repeat)
            .await?;
        let first = env
            .result
            .into_iter()
            .next()
            .ok_or_else(|| ConnectorError::Malformed {
                system: SYS,
                detail: "export response without result".into(),
            })?;
        serde_json::from_value(first).map_err(|e| ConnectorError::Malformed {
            system: SYS,
            detail: format!("export job: {e}"),
        })
    }

    /// `POST /bulk/v1/{kind}/export/create.json` with `request` as the JSON body. Not sent
    /// again when its answer is lost (a second job would be created): the caller lists the
    /// jobs (`status=Created`) to find one it may have made.
    pub async fn export_create(&self, kind: ExportKind, request: &Value) -> Result<ExportJob> {
        self.export_call(
            Method::POST,
            &Self::export_path(kind, None, "create")?,
            Body::Json(request),
            Repeat::Unknown,
        )
        .await
    }

    /// `POST /bulk/v1/{kind}/export/{id}/enqueue.json`. Sent again after a lost answer: a job
    /// the first send queued answers 1029 "Job already queued", and its status is returned.
    pub async fn export_enqueue(&self, kind: ExportKind, id: &str) -> Result<ExportJob> {
        let queued = self
            .export_call(
                Method::POST,
                &Self::export_path(kind, Some(id), "enqueue")?,
                Body::None,
                Repeat::Harmless,
            )
            .await;
        match queued {
            Err(ConnectorError::Request { code, message, .. })
                if code == "1029" && message.to_ascii_lowercase().contains("already queued") =>
            {
                self.export_status(kind, id).await
            }
            other => other,
        }
    }

    /// `GET /bulk/v1/{kind}/export/{id}/status.json`.
    pub async fn export_status(&self, kind: ExportKind, id: &str) -> Result<ExportJob> {
        self.export_call(
            Method::GET,
            &Self::export_path(kind, Some(id), "status")?,
            Body::None,
            Repeat::Harmless,
        )
        .await
    }

    /// `POST /bulk/v1/{kind}/export/{id}/cancel.json`.
    pub async fn export_cancel(&self, kind: ExportKind, id: &str) -> Result<ExportJob> {
        self.export_call(
            Method::POST,
            &Self::export_path(kind, Some(id), "cancel")?,
            Body::None,
            Repeat::Harmless,
        )
        .await
    }

    /// `GET /bulk/v1/{kind}/export.json?status=...`: this API user's jobs of the past 7 days
    /// in those states (all states when `statuses` is empty), the first 300.
    pub async fn export_list(&self, kind: ExportKind, statuses: &[&str]) -> Result<Vec<ExportJob>> {
        let mut query = vec![("batchSize", "300".to_string())];
        if !statuses.is_empty() {
            query.push(("status", statuses.join(",")));
        }
        let path = format!("/bulk/v1/{}/export.json", kind.segment());
        let env = self
            .call(Method::GET, &path, &query, Body::None, Priority::Routine)
            .await?;
        env.result
            .into_iter()
            .map(|job| {
                serde_json::from_value(job).map_err(|e| ConnectorError::Malformed {
                    system: SYS,
                    detail: format!("GET {path}: export job: {e}"),
                })
            })
            .collect()
    }

    /// `GET /bulk/v1/{kind}/export/{id}/file.json`, streamed into `path` (rewritten on each
    /// attempt), its SHA-256 taken on the way.
    pub async fn export_download(
        &self,
        kind: ExportKind,
        id: &str,
        path: &Path,
    ) -> Result<Downloaded> {
        let url_path = Self::export_path(kind, Some(id), "file")?;
        crate::connectors::retry::run(&self.inner.settings.retry, || {
            self.download_once(&url_path, path)
        })
        .await
    }

    async fn download_once(&self, url_path: &str, path: &Path) -> Result<Downloaded> {
        let now = Timestamp::now();
        self.inner.budget.check(Priority::Routine, now)?;
        let session = self.inner.tokens.session(|| self.fetch_token()).await?;
        let _permit = self.inner.pacer.admit().await;
        self.inner.budget.count_call(now);
        use secrecy::ExposeSecret;
        self.inner.requests.count();
        let mut resp = self
            .inner
            .http
            .get(format!("{}{url_path}", self.base()))
            .bearer_auth(session.access_token.expose_secret())
            .send()
            .await
            .map_err(|e| http::send_error(SYS, e, &self.inner.api))?;
        let status = resp.status();
        if status.as_u16() == 404 || status.is_server_error() {
            return Err(ConnectorError::Server {
                system: SYS,
                status: status.as_u16(),
                code: String::new(),
                message: "export file not ready".into(),
            });
        }
        if !status.is_success() {
            return Err(ConnectorError::Request {
                system: SYS,
                status: status.as_u16(),
                code: String::new(),
                message: "export file".into(),
            });
        }
        let io = |e: std::io::Error| {
            ConnectorError::Config(format!("cannot write export file {}: {e}", path.display()))
        };
        let mut file = tokio::fs::File::create(path).await.map_err(io)?;
        let mut written = 0u64;
        let mut digest = Sha256::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| http::transport(SYS, e))? {
            file.write_all(&chunk).await.map_err(io)?;
            digest.update(&chunk);
            written += chunk.len() as u64;
        }
        file.flush().await.map_err(io)?;
        let sha256 = digest
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Downloaded {
            bytes: written,
            sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::marketo::MarketoSettings;
    use crate::connectors::retry::RetryPolicy;
    use crate::connectors::testkit::serve;
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    #[test]
    fn export_windows_are_at_most_31_days_without_millis() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let body = activity_export_request(
            &[22, 13],
            t("2026-10-01T00:00:00.250Z"),
            t("2026-11-01T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(
            body["filter"]["createdAt"]["startAt"],
            json!("2026-10-01T00:00:00Z")
        );
        assert_eq!(body["filter"]["activityTypeIds"], json!([22, 13]));
        assert!(
            activity_export_request(&[22], t("2026-10-01T00:00:00Z"), t("2026-11-02T00:00:00Z"))
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn export_lifecycle_and_streamed_file() {
        let file_hits = Arc::new(AtomicUsize::new(0));
        let fh = file_hits.clone();
        let job = |status: &str| {
            Json(
                json!({"success":true,"result":[{"exportId":"ce45a7a1-f19d","status":status,"format":"CSV"}]}),
            )
        };
        let app = Router::new()
            .route(
                "/identity/oauth/token",
                get(|| async { Json(json!({"access_token":"t:int","expires_in":3599})) }),
            )
            .route(
                "/bulk/v1/activities/export/create.json",
                post(move |Json(b): Json<Value>| async move {
                    assert_eq!(b["format"], json!("CSV"));
                    job("Created")
                }),
            )
            .route(
                "/bulk/v1/activities/export/ce45a7a1-f19d/enqueue.json",
                post(move || async move { job("Queued") }),
            )
            .route(
                "/bulk/v1/activities/export/ce45a7a1-f19d/status.json",
                get(move || async move { job("Completed") }),
            )
            .route(
                "/bulk/v1/activities/export/ce45a7a1-f19d/file.json",
                get(move || {
                    let n = fh.fetch_add(1, SeqCst);
                    async move {
                        if n == 0 {
                            (
                                axum::http::StatusCode::NOT_FOUND,
                                "File not ready".to_string(),
                            )
                        } else {
                            (
                                axum::http::StatusCode::OK,
                                "marketoGUID,leadId\n1,7\n2,8\n".to_string(),
                            )
                        }
                    }
                }),
            );
        let base = serve(app).await;
        let settings = MarketoSettings {
            base_url: base,
            identity_url: None,
            client_id: "c".into(),
            calls_per_20s: 100,
            max_in_flight: 10,
            daily_quota: 50_000,
            daily_reserve_pct: 20.0,
            token_margin_secs: 60,
            request_timeout_secs: 30,
            retry: RetryPolicy::default(),
            names: Default::default(),
        };
        let mkto = MarketoClient::new(settings, "s".into()).unwrap();
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let req =
            activity_export_request(&[22], t("2026-11-01T00:00:00Z"), t("2026-11-02T00:00:00Z"))
                .unwrap();
        let created = mkto
            .export_create(ExportKind::Activities, &req)
            .await
            .unwrap();
        assert_eq!(created.status, "Created");
        assert_eq!(
            mkto.export_enqueue(ExportKind::Activities, &created.export_id)
                .await
                .unwrap()
                .status,
            "Queued"
        );
        assert_eq!(
            mkto.export_status(ExportKind::Activities, &created.export_id)
                .await
                .unwrap()
                .status,
            "Completed"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.csv");
        let got = mkto
            .export_download(ExportKind::Activities, &created.export_id, &path)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "marketoGUID,leadId\n1,7\n2,8\n"
        );
        assert_eq!(got.bytes, 27);
        // `printf 'marketoGUID,leadId\n1,7\n2,8\n' | sha256sum`
        assert_eq!(
            got.sha256,
            "d674e73e202c194df00c502d3cff0075c0516c7c47300eba47992c178b13ac67"
        );
        assert_eq!(
            file_hits.load(SeqCst),
            2,
            "the 404 of a not-ready file was retried"
        );
        assert!(
            mkto.export_status(ExportKind::Activities, "../x")
                .await
                .is_err()
        );
    }
}
