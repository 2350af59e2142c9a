//! The OpenAPI 3 document, generated from the handlers' `#[utoipa::path]` annotations and the
//! types' `ToSchema` derives, served at `/api/openapi.json`; and `/docs`, a self-contained page
//! that renders it (no CDN, so it works on an air-gapped cluster).

use axum::response::Html;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{organizations, regions, runners, sandboxes, AppState};

#[derive(OpenApi)]
#[openapi(
    info(title = "Corral", description = "Control plane for bring-your-own-compute fleets."),
    paths(
        regions::create_region,
        regions::list_regions,
        regions::get_region,
        regions::update_region,
        regions::delete_region,
        regions::regenerate_proxy_api_key,
        regions::regenerate_ssh_gateway_api_key,
        regions::regenerate_snapshot_manager_credentials,
        runners::create_runner,
        runners::list_runners,
        runners::get_runner,
        runners::update_scheduling,
        runners::delete_runner,
        runners::admin_create_runner,
        runners::admin_list_runners,
        runners::admin_get_runner,
        runners::admin_update_scheduling,
        runners::admin_delete_runner,
        runners::admin_set_state,
        sandboxes::create_sandbox,
        sandboxes::list_sandboxes,
        sandboxes::get_sandbox,
        sandboxes::stop_sandbox,
        sandboxes::start_sandbox,
        sandboxes::delete_sandbox,
        organizations::create_organization,
        organizations::list_organizations,
        organizations::create_api_key,
        crate::cluster_status,
        crate::add_member,
        crate::remove_member,
    ),
    components(schemas(
        crate::ErrorBody,
        regions::CreateRegionRequest,
        regions::UpdateRegionRequest,
        regions::RegionView,
        regions::CreatedRegion,
        regions::RegeneratedApiKey,
        regions::SnapshotManagerCredentials,
        runners::CreateRunnerRequest,
        runners::CreatedRunner,
        runners::AdminCreateRunnerRequest,
        runners::SchedulingRequest,
        runners::ResourcesView,
        runners::UsageView,
        runners::RunnerView,
        runners::RunnerFull,
        runners::RunnerStateRequest,
        sandboxes::CreateSandboxRequest,
        sandboxes::SandboxView,
        organizations::CreateOrganizationRequest,
        organizations::CreateApiKeyRequest,
        organizations::OrganizationView,
        organizations::CreatedOrganization,
        organizations::CreatedApiKey,
        crate::ClusterStatus,
        crate::MemberStatus,
        crate::GossipMemberStatus,
        crate::AddMemberRequest,
    )),
    modifiers(&BearerAuth),
    tags((name = "regions"), (name = "runners"), (name = "sandboxes"), (name = "admin"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .route("/docs", get(|| async { Html(DOCS_PAGE) }))
}

const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Corral API</title>
<style>
body{font:15px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#222}
h1{margin-bottom:0} .op{border:1px solid #ddd;border-radius:6px;margin:.6rem 0;padding:.4rem .8rem}
.m{display:inline-block;min-width:4.5rem;font-weight:600;text-transform:uppercase}
.get{color:#1565c0}.post{color:#2e7d32}.patch{color:#ef6c00}.delete{color:#c62828}
code{background:#f4f4f4;padding:0 .2rem} summary{cursor:pointer} pre{background:#f7f7f7;padding:.5rem;overflow:auto}
</style></head><body>
<h1>Corral API</h1><p>Generated from <a href="/api/openapi.json">/api/openapi.json</a>.
Authenticate with <code>Authorization: Bearer &lt;key&gt;</code>.</p><div id="ops">Loading…</div>
<script>
fetch('/api/openapi.json').then(r=>r.json()).then(doc=>{
  const ops=document.getElementById('ops'); ops.textContent='';
  for (const [path,item] of Object.entries(doc.paths)) for (const [method,op] of Object.entries(item)) {
    const d=document.createElement('details'); d.className='op';
    const s=document.createElement('summary');
    s.innerHTML='<span class="m '+method+'"></span><code></code> <span></span>';
    s.children[0].textContent=method; s.children[1].textContent=path; s.children[2].textContent=op.summary||op.description||'';
    const pre=document.createElement('pre'); pre.textContent=JSON.stringify({parameters:op.parameters,requestBody:op.requestBody,responses:op.responses},null,2);
    d.append(s,pre); ops.append(d);
  }
}).catch(e=>{document.getElementById('ops').textContent='Cannot load the OpenAPI document: '+e;});
</script></body></html>"#;
