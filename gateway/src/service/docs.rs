//! The API spec at `/openapi.json` and an offline docs page at `/docs/`
//! (Swagger UI with its assets vendored into the binary).

use actix_web::web;
use utoipa_swagger_ui::SwaggerUi;

/// The docs page's policy: Swagger UI's bundled scripts and styles (it sets inline
/// styles), the spec from this origin, never framed.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; form-action 'none'; base-uri 'none'; \
     object-src 'none'; frame-ancestors 'none'";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", crate::openapi::spec()));
}
