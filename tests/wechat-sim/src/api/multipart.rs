//! Just enough `multipart/form-data` for `setpdf`: find one field's bytes.

use serde_json::{Value, json};

/// One part: its form field name, file name and content.
pub(crate) struct Part<'a> {
    pub name: String,
    pub filename: Option<String>,
    pub data: &'a [u8],
}

fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').map(str::trim).find_map(|p| {
        p.strip_prefix("boundary=")
            .map(|b| b.trim_matches('"').to_owned())
            .filter(|b| !b.is_empty())
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `name="x"` style parameter of a Content-Disposition header.
fn param(header: &str, key: &str) -> Option<String> {
    header.split(';').map(str::trim).find_map(|p| {
        p.strip_prefix(key)
            .and_then(|v| v.strip_prefix('='))
            .map(|v| v.trim_matches('"').to_owned())
    })
}

/// The parts of a multipart body; `None` if it is not well formed.
pub(crate) fn parts<'a>(content_type: &str, body: &'a [u8]) -> Option<Vec<Part<'a>>> {
    let delimiter = format!("--{}", boundary(content_type)?);
    let delimiter = delimiter.as_bytes();
    let mut rest = &body[find(body, delimiter)? + delimiter.len()..];
    let mut out = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            return Some(out);
        }
        rest = rest.strip_prefix(b"\r\n")?;
        let head_end = find(rest, b"\r\n\r\n")?;
        let head = std::str::from_utf8(&rest[..head_end]).ok()?;
        let content = &rest[head_end + 4..];
        let end = find(content, delimiter)?;
        let data = content[..end].strip_suffix(b"\r\n")?;
        let disposition = head
            .split("\r\n")
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))?;
        out.push(Part {
            name: param(disposition, "name")?,
            filename: param(disposition, "filename"),
            data,
        });
        rest = &content[end + delimiter.len()..];
    }
}

/// The content of field `name`.
pub(crate) fn field<'a>(content_type: &str, body: &'a [u8], name: &str) -> Option<&'a [u8]> {
    parts(content_type, body)?
        .into_iter()
        .find(|p| p.name == name)
        .map(|p| p.data)
}

/// What a recorded call keeps of a multipart body: names and sizes, not the bytes.
pub(crate) fn summary(content_type: &str, body: &[u8]) -> Value {
    match parts(content_type, body) {
        Some(parts) => json!({
            "multipart": parts
                .iter()
                .map(|p| json!({ "name": p.name, "filename": p.filename, "bytes": p.data.len() }))
                .collect::<Vec<_>>()
        }),
        None => json!({ "multipart": null, "bytes": body.len() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_field() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nabc\r\n\
            --XyZ\r\nContent-Disposition: form-data; name=\"pdf\"; filename=\"r.pdf\"\r\nContent-Type: application/pdf\r\n\r\n%PDF-1.4\r\n\r\nend\r\n--XyZ--\r\n";
        let ct = "multipart/form-data; boundary=XyZ";
        assert_eq!(field(ct, body, "pdf"), Some(&b"%PDF-1.4\r\n\r\nend"[..]));
        assert_eq!(field(ct, body, "other"), Some(&b"abc"[..]));
        assert_eq!(field(ct, body, "missing"), None);
        assert_eq!(
            field("multipart/form-data; boundary=\"XyZ\"", body, "pdf").map(<[u8]>::len),
            Some(15)
        );
        assert_eq!(summary(ct, body)["multipart"][1]["filename"], "r.pdf");
        assert!(parts("multipart/form-data", body).is_none());
        assert!(parts(ct, b"--XyZ\r\ngarbage").is_none());
    }
}
