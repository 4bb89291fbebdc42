//! The API spec at `/openapi.json` and an offline docs page at `/docs/`
//! (Swagger UI with its assets vendored into the binary).

use actix_web::web;
use utoipa_swagger_ui::SwaggerUi;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", crate::openapi::spec()));
}
