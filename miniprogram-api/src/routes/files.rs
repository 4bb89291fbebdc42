//! Downloading a receipt's file (PDF or OFD): a short-lived link signed for one
//! payer and one receipt, streamed from the object store with the right content
//! type and file name, with single-range `Range` requests for resumable downloads.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use chrono::{Duration, Utc};
use futures_util::TryStreamExt as _;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange};
use piaojia_web::error::{ApiError, ErrorCode, Problem};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::receipts::load;
use crate::tokens::{DownloadGrant, TokenError};
use crate::views::DownloadLinkView;
use crate::{Payer, WalletState};

fn content_type(format: &str) -> &'static str {
    match format {
        "pdf" => "application/pdf",
        "ofd" => "application/ofd",
        _ => "application/octet-stream",
    }
}

/// Create a download link for a receipt's file.
#[utoipa::path(
    post,
    path = "/v1/mp/receipts/{receipt_id}/download",
    tag = "mini-program",
    security(("payer_jwt" = [])),
    params(("receipt_id" = Uuid, Path)),
    responses(
        (status = 200, description = "A link valid for `miniprogram.download_link_secs` (5 minutes by default)", body = DownloadLinkView),
        (status = 401, description = "`auth_missing`, `token_invalid`, `token_expired`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`receipt_not_found`, or `file_not_found` (the issuer sent no file)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/mp/receipts/{receipt_id}/download")]
pub async fn link(
    state: web::Data<WalletState>,
    payer: Payer,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let d = load(&state, &payer, path.into_inner()).await?;
    let file = d
        .receipt
        .file
        .as_ref()
        .ok_or_else(|| ApiError::with(ErrorCode::FileNotFound, "the issuer sent no file for this receipt"))?;
    let now = Utc::now();
    let ttl = state.settings.miniprogram.download_link_ttl.as_secs();
    let token = state.tokens.issue_download(
        &DownloadGrant {
            payer_id: payer.id,
            app_id: payer.app.app_id.clone(),
            receipt_id: d.receipt.id,
        },
        now,
        ttl,
    );
    let path = format!("/v1/mp/files/{}?token={token}", d.receipt.id);
    let base = state.settings.public_url.trim_end_matches('/');
    Ok(HttpResponse::Ok().json(DownloadLinkView {
        url: format!("{base}{path}"),
        expires_at: now + Duration::seconds(ttl as i64),
        file_name: format!("{}-{}.{}", d.receipt.bill_batch_code, d.receipt.bill_no, file.format),
        format: file.format.clone(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LinkQuery {
    /// The link's signed token.
    pub token: String,
}

/// What a `Range` header asks of a file of `size` bytes: `None` for the whole
/// file (absent, several ranges, or not bytes), `Err` when it cannot be satisfied.
fn byte_range(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Multipart answers are optional (RFC 9110 §14.2): serve the whole file.
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        let n: u64 = end.parse().map_err(|_| ())?;
        if n == 0 || size == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let s: u64 = start.parse().map_err(|_| ())?;
        let e: u64 = if end.is_empty() {
            size.saturating_sub(1)
        } else {
            end.parse::<u64>().map_err(|_| ())?.min(size.saturating_sub(1))
        };
        if s >= size || e < s {
            return Err(());
        }
        (s, e)
    };
    Ok(Some(range))
}

fn refused(e: TokenError) -> ApiError {
    match e {
        TokenError::Expired => ApiError::with(ErrorCode::DownloadLinkExpired, "the download link has expired"),
        TokenError::Invalid => ApiError::with(ErrorCode::DownloadLinkInvalid, "the download link is not valid"),
    }
}

/// Download a receipt's file through a link from `…/download`.
///
/// No `Authorization` header: the link is the credential, for this payer and
/// receipt only, until it expires. Supports `Range: bytes=…` (one range).
#[utoipa::path(
    get,
    path = "/v1/mp/files/{receipt_id}",
    tag = "mini-program",
    params(("receipt_id" = Uuid, Path), LinkQuery),
    responses(
        (status = 200, description = "The file (`application/pdf` or `application/ofd`)", content_type = "application/pdf"),
        (status = 206, description = "The requested byte range"),
        (status = 403, description = "`download_link_invalid` (altered, for another receipt, revoked) or `download_link_expired`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`receipt_not_found`, `file_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "`range_not_satisfiable`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/v1/mp/files/{receipt_id}")]
pub async fn download(
    req: HttpRequest,
    state: web::Data<WalletState>,
    path: web::Path<Uuid>,
    query: web::Query<LinkQuery>,
) -> Result<HttpResponse, ApiError> {
    let grant = state.tokens.verify_download(&query.token).map_err(refused)?;
    if grant.receipt_id != path.into_inner() {
        return Err(refused(TokenError::Invalid));
    }
    // The link is only as good as the payer's hold on the receipt now: a deleted
    // account, a removed receipt or a disabled mini-program ends it.
    let record = state
        .store
        .payer(grant.payer_id)
        .await?
        .ok_or(refused(TokenError::Invalid))?;
    let app = state
        .apps
        .get(&grant.app_id)
        .await?
        .ok_or(refused(TokenError::Invalid))?;
    let payer = Payer {
        id: record.id,
        record,
        app,
    };
    let d = load(&state, &payer, grant.receipt_id).await?;
    let file = d
        .receipt
        .file
        .as_ref()
        .ok_or_else(|| ApiError::with(ErrorCode::FileNotFound, "the issuer sent no file for this receipt"))?;
    let location = ObjectPath::from(file.object_key.as_str());
    let size = u64::try_from(file.size).unwrap_or(0);
    let range_header = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok());
    let range = byte_range(range_header, size)
        .map_err(|()| ApiError::with(ErrorCode::RangeNotSatisfiable, format!("the file has {size} bytes")))?;
    let options = GetOptions {
        range: range.map(|(s, e)| GetRange::Bounded(s..e + 1)),
        ..GetOptions::default()
    };
    let got = state.files.get_opts(&location, options).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => {
            tracing::error!(receipt_id = %d.receipt.id, "the receipt's file is missing from the object store");
            ApiError::with(ErrorCode::FileNotFound, "the file is not available")
        }
        other => ApiError::internal(other),
    })?;
    let file_name = format!("{}-{}.{}", d.receipt.bill_batch_code, d.receipt.bill_no, file.format);
    let mut resp = match range {
        Some((s, e)) => {
            let mut r = HttpResponse::build(StatusCode::PARTIAL_CONTENT);
            r.insert_header((header::CONTENT_RANGE, format!("bytes {s}-{e}/{size}")));
            r.insert_header((header::CONTENT_LENGTH, (e - s + 1).to_string()));
            r
        }
        None => {
            let mut r = HttpResponse::Ok();
            r.insert_header((header::CONTENT_LENGTH, size.to_string()));
            r
        }
    };
    resp.insert_header((header::CONTENT_TYPE, content_type(&file.format)))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::ETAG, format!("\"{}\"", file.sha256)))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("private, no-store")))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{file_name}\""),
        ));
    Ok(resp.streaming(got.into_stream().map_err(std::io::Error::other)))
}

#[cfg(test)]
mod tests {
    use super::byte_range;

    #[test]
    fn ranges() {
        assert_eq!(byte_range(None, 100), Ok(None));
        assert_eq!(byte_range(Some("bytes=0-9"), 100), Ok(Some((0, 9))));
        assert_eq!(byte_range(Some("bytes=90-"), 100), Ok(Some((90, 99))));
        assert_eq!(byte_range(Some("bytes=-10"), 100), Ok(Some((90, 99))));
        assert_eq!(byte_range(Some("bytes=95-200"), 100), Ok(Some((95, 99))));
        assert_eq!(byte_range(Some("bytes=0-1,5-6"), 100), Ok(None));
        assert_eq!(byte_range(Some("items=0-1"), 100), Ok(None));
        assert_eq!(byte_range(Some("bytes=100-"), 100), Err(()));
        assert_eq!(byte_range(Some("bytes=5-1"), 100), Err(()));
        assert_eq!(byte_range(Some("bytes=x-1"), 100), Err(()));
    }
}
