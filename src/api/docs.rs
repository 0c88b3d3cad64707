//! The OpenAPI 3.1 document, generated from the handlers, and Swagger UI (served from assets
//! compiled into the binary, so it works offline).

use axum::Router;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::AppState;

pub const OPENAPI_PATH: &str = "/docs/signal/openapi.json";
pub const SWAGGER_PATH: &str = "/docs/signal/swagger";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Palisade Signal API",
        description = "Submit access-rule signals and read back the rules and the audit log."
    ),
    paths(
        super::signal::submit,
        super::rules::list,
        super::rules::show,
        super::rules::delete,
        super::audit::list,
        super::check::check_one,
        super::check::check_many,
        super::check::forward_auth,
        super::crowdsec::decisions,
        super::crowdsec::stream,
        super::crowdsec::usage_metrics,
        super::reports::report,
        super::reports::unban,
        super::reports::false_add,
        super::reports::false_remove,
        super::reports::test_token,
        super::reports::queue,
        super::exports::blocklist,
        super::exports::agent_config,
        super::exports::authcheck,
        super::healthz,
        super::readyz,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "signal", description = "Signal ingestion"),
        (name = "rules", description = "The tenant's active rules"),
        (name = "audit", description = "Everything received"),
        (name = "decisions", description = "Is this client blocked?"),
        (name = "crowdsec", description = "CrowdSec's Local API for bouncers"),
        (name = "reports", description = "Abuse reports: accepted with 202, applied asynchronously"),
        (name = "exports", description = "The blocklist for firewalls and edge agents that pull it"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key made with `palisade keys create`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Api-Key"))),
        );
    }
}

pub fn router() -> Router<AppState> {
    // The UI lives at `/docs/signal/swagger/`; the crate redirects the bare path there.
    SwaggerUi::new(SWAGGER_PATH)
        .url(OPENAPI_PATH, ApiDoc::openapi())
        .into()
}
