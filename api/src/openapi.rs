//! The OpenAPI 3.1 document, served at `/api/openapi.json`; and `/docs`, a self-contained page
//! that renders it (no CDN, so it works on an air-gapped cluster).
//!
//! The document starts from the handlers' `#[utoipa::path]` annotations and the types'
//! `ToSchema` derives. [`document`] then adds what those cannot say, from the same constants
//! the handlers enforce: the input rules of [`crate::validate`] and the sandbox limits as
//! patterns, lengths and ranges; the accepted values of the state enums; and the error
//! responses every operation can give (bad query or header, auth, body, rate limit, no
//! leader). So a client generated from the document sends nothing the server refuses for its
//! shape, and expects every status the server can answer; schemathesis checks both (see
//! `.ci/schemathesis`).

use std::sync::OnceLock;

use axum::response::Html;
use axum::routing::get;
use axum::{Json, Router};
use corral_model::{RegionType, RunnerState, SandboxState};
use serde_json::{json, Map, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::idempotency::IDEMPOTENCY_KEY_MAX_LEN;
use crate::organizations::MAX_QUOTA;
use crate::runners::{API_VERSIONS, MAX_RUNNER_CAPACITY, MAX_SANDBOXES_LIMIT};
use crate::sandboxes::MAX_RESOURCES;
use crate::validate::{
    DOMAIN_MAX_LEN, DOMAIN_PATTERN, LABEL_KEY_MAX_LEN, LABEL_VALUE_MAX_LEN, MAX_LABELS, NAME_MAX_LEN, NAME_PATTERN,
    TOKEN_MAX_LEN, TOKEN_PATTERN, URL_MAX_LEN, URL_PATTERN,
};
use crate::{api_keys, organizations, regions, runners, sandboxes, AppState, ReadConsistency};

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
        runners::update_draining,
        runners::update_runner,
        runners::delete_runner,
        runners::admin_create_runner,
        runners::admin_list_runners,
        runners::admin_get_runner,
        runners::admin_update_scheduling,
        runners::admin_update_draining,
        runners::admin_update_runner,
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
        organizations::set_quota,
        organizations::get_quota,
        api_keys::create_api_key,
        api_keys::list_api_keys,
        api_keys::delete_api_key,
        api_keys::admin_create_api_key,
        api_keys::admin_list_api_keys,
        api_keys::admin_delete_api_key,
        runners::regenerate_token,
        runners::admin_regenerate_token,
        crate::cluster_status,
        crate::state_hash,
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
        runners::DrainingRequest,
        runners::UpdateRunnerRequest,
        runners::ResourcesView,
        runners::UsageView,
        runners::RunnerView,
        runners::RunnerFull,
        runners::RunnerStateRequest,
        sandboxes::CreateSandboxRequest,
        sandboxes::SandboxView,
        organizations::CreateOrganizationRequest,
        organizations::OrganizationView,
        organizations::CreatedOrganization,
        organizations::QuotaView,
        organizations::QuotaUsed,
        organizations::QuotaStatus,
        api_keys::KeyRole,
        api_keys::CreateApiKeyRequest,
        api_keys::ApiKeyView,
        api_keys::CreatedApiKey,
        crate::ClusterStatus,
        crate::StateHash,
        crate::MemberStatus,
        crate::GossipMemberStatus,
        crate::AddMemberRequest,
    )),
    modifiers(&BearerAuth),
    tags((name = "regions"), (name = "runners"), (name = "sandboxes"), (name = "api-keys"), (name = "admin"))
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

/// The served document (built once).
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
        add_input_rules(&mut doc);
        to_openapi_3_1(&mut doc);
        add_common_responses(&mut doc);
        add_links(&mut doc);
        doc
    })
}

/// The JSON strings of a serde enum's variants.
fn variant_names<T: serde::Serialize>(all: &[T]) -> Vec<Value> {
    all.iter().filter_map(|v| serde_json::to_value(v).ok()).collect()
}

fn name_rule() -> Value {
    json!({ "pattern": NAME_PATTERN, "minLength": 1, "maxLength": NAME_MAX_LEN })
}

fn url_rule() -> Value {
    json!({ "pattern": URL_PATTERN, "maxLength": URL_MAX_LEN })
}

/// Merges `rule` into the schema of `property` of component `schema`.
fn constrain(doc: &mut Value, schema: &str, property: &str, rule: Value) {
    let pointer = format!("/components/schemas/{schema}/properties/{property}");
    let (Some(target), Value::Object(rule)) = (doc.pointer_mut(&pointer).and_then(Value::as_object_mut), rule) else {
        // A renamed field must not silently lose its rule: the unit test below checks each.
        return;
    };
    target.extend(rule);
}

/// Merges `rule` into the schema of every parameter named `name`, on every operation.
fn constrain_parameter(doc: &mut Value, name: &str, rule: &Value) {
    for op in operations(doc) {
        let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else { continue };
        for param in params.iter_mut().filter(|p| p["name"] == name) {
            if let (Some(schema), Some(rule)) =
                (param.get_mut("schema").and_then(Value::as_object_mut), rule.as_object())
            {
                schema.extend(rule.clone());
            }
        }
    }
}

fn operations(doc: &mut Value) -> impl Iterator<Item = &mut Map<String, Value>> {
    doc.get_mut("paths")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(Value::as_object_mut)
}

/// Request bodies whose `name` follows [`NAME_PATTERN`].
const NAMED_BODIES: [&str; 5] = [
    "CreateRegionRequest",
    "CreateRunnerRequest",
    "AdminCreateRunnerRequest",
    "CreateOrganizationRequest",
    "CreateApiKeyRequest",
];

/// Request body fields that hold a URL ([`URL_PATTERN`]).
const URL_FIELDS: [(&str, &str); 8] = [
    ("CreateRegionRequest", "proxyUrl"),
    ("CreateRegionRequest", "sshGatewayUrl"),
    ("CreateRegionRequest", "snapshotManagerUrl"),
    ("UpdateRegionRequest", "proxyUrl"),
    ("UpdateRegionRequest", "sshGatewayUrl"),
    ("UpdateRegionRequest", "snapshotManagerUrl"),
    ("AdminCreateRunnerRequest", "apiUrl"),
    ("AdminCreateRunnerRequest", "proxyUrl"),
];

/// The rules [`crate::validate`] and the handlers enforce, in the document's terms.
fn add_input_rules(doc: &mut Value) {
    for schema in NAMED_BODIES {
        constrain(doc, schema, "name", name_rule());
    }
    for (schema, field) in URL_FIELDS {
        constrain(doc, schema, field, url_rule());
    }
    constrain(
        doc,
        "AdminCreateRunnerRequest",
        "domain",
        json!({ "pattern": DOMAIN_PATTERN, "maxLength": DOMAIN_MAX_LEN }),
    );
    constrain(
        doc,
        "AdminCreateRunnerRequest",
        "apiKey",
        json!({ "pattern": TOKEN_PATTERN, "minLength": 1, "maxLength": TOKEN_MAX_LEN }),
    );
    constrain(doc, "AdminCreateRunnerRequest", "apiVersion", json!({ "enum": API_VERSIONS }));
    for field in ["cpu", "memoryGiB", "diskGiB", "gpu"] {
        constrain(doc, "AdminCreateRunnerRequest", field, json!({ "minimum": 0, "maximum": MAX_RUNNER_CAPACITY }));
    }
    for (field, max) in
        [("cpu", MAX_RESOURCES.cpu), ("memoryGiB", MAX_RESOURCES.memory_gib), ("diskGiB", MAX_RESOURCES.disk_gib)]
    {
        constrain(doc, "CreateSandboxRequest", field, json!({ "minimum": 1, "maximum": max }));
    }
    constrain(doc, "CreateSandboxRequest", "gpu", json!({ "minimum": 0, "maximum": MAX_RESOURCES.gpu }));
    for field in ["cpu", "memoryGiB", "diskGiB", "sandboxes"] {
        constrain(doc, "QuotaView", field, json!({ "minimum": 0, "maximum": MAX_QUOTA }));
    }
    constrain(doc, "CreateApiKeyRequest", "expiresAt", json!({ "format": "date-time" }));
    let labels = json!({
        "maxProperties": MAX_LABELS,
        "propertyNames": { "minLength": 1, "maxLength": LABEL_KEY_MAX_LEN },
        "additionalProperties": { "type": "string", "maxLength": LABEL_VALUE_MAX_LEN },
    });
    for (schema, field) in [
        ("CreateSandboxRequest", "labels"),
        ("CreateSandboxRequest", "runnerTags"),
        ("CreateRunnerRequest", "tags"),
        ("AdminCreateRunnerRequest", "tags"),
        ("UpdateRunnerRequest", "tags"),
    ] {
        constrain(doc, schema, field, labels.clone());
    }
    for schema in ["CreateRunnerRequest", "AdminCreateRunnerRequest", "UpdateRunnerRequest"] {
        constrain(doc, schema, "maxSandboxes", json!({ "minimum": 1, "maximum": MAX_SANDBOXES_LIMIT }));
    }

    let runner_states = json!({ "enum": variant_names(&RunnerState::ALL) });
    let sandbox_states = json!({ "enum": variant_names(&SandboxState::ALL) });
    let region_types = json!({ "enum": variant_names(&RegionType::ALL) });
    constrain(doc, "RunnerStateRequest", "state", runner_states.clone());
    constrain(doc, "RunnerView", "state", runner_states);
    constrain(doc, "SandboxView", "state", sandbox_states.clone());
    constrain(doc, "RegionView", "regionType", region_types.clone());
    constrain(doc, "RunnerFull", "regionType", region_types);

    let consistency = variant_names(&[ReadConsistency::Linearizable, ReadConsistency::Stale]);
    constrain_parameter(doc, "consistency", &json!({ "enum": consistency }));
    constrain_parameter(doc, "state", &sandbox_states);
    // Visible ASCII without spaces, so that no proxy trims or folds it on the way.
    constrain_parameter(
        doc,
        "Idempotency-Key",
        &json!({ "pattern": "^[!-~]+$", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX_LEN }),
    );
}

/// utoipa 4 writes OpenAPI 3.0, whose schemas cannot constrain map keys (`propertyNames`)
/// and spell "or null" as `nullable`. 3.1 schemas are JSON Schema 2020-12: rewrite
/// `nullable` as a `"null"` type (or a `oneOf` with one, around a `$ref`), and drop it from
/// parameters, where a value is present or absent but never null.
fn to_openapi_3_1(doc: &mut Value) {
    if let Some(version) = doc.get_mut("openapi") {
        *version = json!("3.1.0");
    }
    for op in operations(doc) {
        let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else { continue };
        for param in params {
            if let Some(schema) = param.get_mut("schema").and_then(Value::as_object_mut) {
                schema.remove("nullable");
            }
        }
    }
    rewrite_nullable(doc);
}

fn rewrite_nullable(value: &mut Value) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(rewrite_nullable),
        Value::Object(object) => {
            object.values_mut().for_each(rewrite_nullable);
            if object.remove("nullable") != Some(Value::Bool(true)) {
                return;
            }
            if let Some(Value::String(kind)) = object.get("type").cloned() {
                object.insert("type".into(), json!([kind, "null"]));
                if let Some(Value::Array(values)) = object.get_mut("enum") {
                    values.push(Value::Null);
                }
            } else {
                let inner = Value::Object(std::mem::take(object));
                object.insert("oneOf".into(), json!([{ "type": "null" }, inner]));
            }
        }
        _ => {}
    }
}

/// What the id in a create's response can be used for: OpenAPI links, so that generated
/// clients and test generators can follow a resource through its life.
const LINKS: &[(&str, &str, &[&str])] = &[
    (
        "/api/regions",
        "region_id",
        &[
            "get_region",
            "update_region",
            "delete_region",
            "regenerate_proxy_api_key",
            "regenerate_ssh_gateway_api_key",
            "regenerate_snapshot_manager_credentials",
        ],
    ),
    (
        "/api/runners",
        "runner_id",
        &["get_runner", "update_runner", "update_scheduling", "update_draining", "regenerate_token", "delete_runner"],
    ),
    ("/api/sandboxes", "sandbox_id", &["get_sandbox", "stop_sandbox", "start_sandbox", "delete_sandbox"]),
    (
        "/api/admin/runners",
        "runner_id",
        &[
            "admin_get_runner",
            "admin_update_runner",
            "admin_update_scheduling",
            "admin_update_draining",
            "admin_set_state",
            "admin_regenerate_token",
            "admin_delete_runner",
        ],
    ),
    (
        "/api/admin/organizations",
        "organization_id",
        &["admin_create_api_key", "admin_list_api_keys", "admin_delete_api_key", "set_quota"],
    ),
];

fn add_links(doc: &mut Value) {
    for (path, parameter, targets) in LINKS {
        let pointer = format!("/paths/{}/post/responses/201", path.replace('/', "~1"));
        let Some(created) = doc.pointer_mut(&pointer).and_then(Value::as_object_mut) else { continue };
        let links: Map<String, Value> = targets
            .iter()
            .map(|op| {
                (op.to_string(), json!({ "operationId": op, "parameters": { *parameter: "$response.body#/id" } }))
            })
            .collect();
        created.insert("links".into(), Value::Object(links));
    }
    // A new region can take runners: the link fills the body's regionId.
    if let Some(region_links) =
        doc.pointer_mut("/paths/~1api~1regions/post/responses/201/links").and_then(Value::as_object_mut)
    {
        region_links.insert(
            "create_runner".into(),
            json!({ "operationId": "create_runner", "requestBody": { "name": "linked-runner", "regionId": "$response.body#/id" } }),
        );
    }
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } },
    })
}

/// The errors any operation can answer, whatever its handler: malformed query or header, the
/// caller's key, the body's size and type, the rate limit, and the cluster's availability.
/// Responses an annotation already documents keep their own description.
fn add_common_responses(doc: &mut Value) {
    for op in operations(doc) {
        let secured = op.contains_key("security");
        let has_body = op.contains_key("requestBody");
        let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else { continue };
        let mut add = |status: &str, description: &str| {
            responses.entry(status.to_string()).or_insert_with(|| error_response(description));
        };
        add(
            "400",
            "Malformed path, query string or header (`bad_request`, `invalid_query`, `invalid_header`), JSON \
             (`malformed_json`), or the admin key on an organization route without X-Organization-ID \
             (`organization_required`)",
        );
        if secured {
            add("401", "No key, or a key Corral does not know (`unauthorized`)");
            add("403", "The key may not act here: an organization key on an admin route, or another organization in X-Organization-ID (`forbidden`)");
        }
        if has_body {
            add("413", "The body is larger than the node accepts (`payload_too_large`)");
            add("415", "The body is not `application/json` (`unsupported_media_type`)");
            add("422", "The body has the wrong shape or breaks a rule (`invalid_request`)");
        }
        add("429", "This key's request rate on this node is over its limit (`rate_limited`); see Retry-After");
        add("503", "No leader, a timeout, or an overloaded scheduler (`no_leader`, `timeout`, `overloaded`, `unavailable`): the outcome is unknown, retry with the same Idempotency-Key");
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/openapi.json", get(|| async { Json(document()) }))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at<'a>(doc: &'a Value, pointer: &str) -> &'a Value {
        doc.pointer(pointer).unwrap_or_else(|| panic!("{pointer} missing from the document"))
    }

    #[test]
    fn every_input_rule_reaches_its_field() {
        let doc = document();
        let schemas = "/components/schemas";
        for schema in NAMED_BODIES {
            assert_eq!(at(doc, &format!("{schemas}/{schema}/properties/name/pattern")), NAME_PATTERN);
        }
        for (schema, field) in URL_FIELDS {
            assert_eq!(at(doc, &format!("{schemas}/{schema}/properties/{field}/pattern")), URL_PATTERN);
        }
        let admin = format!("{schemas}/AdminCreateRunnerRequest/properties");
        assert_eq!(at(doc, &format!("{admin}/domain/pattern")), DOMAIN_PATTERN);
        assert_eq!(at(doc, &format!("{admin}/apiKey/maxLength")), TOKEN_MAX_LEN);
        assert_eq!(at(doc, &format!("{admin}/apiVersion/enum")), &json!(["0", "2"]));
        assert_eq!(at(doc, &format!("{admin}/diskGiB/maximum")), MAX_RUNNER_CAPACITY);
        let sandbox = format!("{schemas}/CreateSandboxRequest/properties");
        assert_eq!(at(doc, &format!("{sandbox}/cpu/maximum")), MAX_RESOURCES.cpu);
        assert_eq!(at(doc, &format!("{sandbox}/labels/propertyNames/minLength")), 1);
        assert_eq!(
            at(doc, &format!("{schemas}/RunnerStateRequest/properties/state/enum")).as_array().map(Vec::len),
            Some(5)
        );
        assert_eq!(
            at(doc, &format!("{schemas}/RegionView/properties/regionType/enum")),
            &json!(["shared", "dedicated", "custom"])
        );
    }

    #[test]
    fn query_parameters_are_in_the_query_and_list_their_values() {
        let doc = document();
        let params = at(doc, "/paths/~1api~1sandboxes/get/parameters").as_array().cloned().unwrap_or_default();
        assert!(!params.is_empty());
        assert!(params.iter().all(|p| p["in"] == "query"), "{params:?}");
        let state = params.iter().find(|p| p["name"] == "state").map(|p| p["schema"]["enum"].clone());
        assert_eq!(state, Some(json!(["pending", "started", "stopped", "error", "destroyed"])));
        let consistency = params.iter().find(|p| p["name"] == "consistency").map(|p| p["schema"]["enum"].clone());
        assert_eq!(consistency, Some(json!(["linearizable", "stale"])));
        let runners = at(doc, "/paths/~1api~1runners/get/parameters").as_array().cloned().unwrap_or_default();
        assert!(runners.iter().all(|p| p["in"] == "query"), "{runners:?}");
    }

    #[test]
    fn every_operation_documents_the_common_errors() {
        let mut doc = document().clone();
        let mut checked = 0;
        for op in operations(&mut doc) {
            let responses = &op["responses"];
            for status in ["400", "401", "403", "429", "503"] {
                assert!(responses.get(status).is_some(), "{status} missing in {op:?}");
            }
            if op.contains_key("requestBody") {
                for status in ["413", "415", "422"] {
                    assert!(responses.get(status).is_some(), "{status} missing in {op:?}");
                }
            }
            checked += 1;
        }
        assert!(checked >= 30, "only {checked} operations");
    }

    #[test]
    fn creates_link_to_what_their_ids_are_for() {
        let mut doc = document().clone();
        let ids: Vec<String> =
            operations(&mut doc).filter_map(|op| op.get("operationId")?.as_str().map(String::from)).collect();
        for (path, parameter, targets) in LINKS {
            let links = at(document(), &format!("/paths/{}/post/responses/201/links", path.replace('/', "~1")));
            for target in *targets {
                assert!(ids.iter().any(|id| id == target), "{target} is no operation");
                assert_eq!(links[*target]["parameters"][*parameter], "$response.body#/id");
            }
        }
    }

    #[test]
    fn the_document_is_openapi_3_1_without_nullable() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(!doc.to_string().contains("\"nullable\""));
        let cpu = at(doc, "/components/schemas/CreateSandboxRequest/properties/cpu/type");
        assert_eq!(cpu, &json!(["integer", "null"]));
        let params = at(doc, "/paths/~1api~1regions/get/parameters/0/schema");
        assert_eq!(params["type"], "string", "parameters are absent, never null: {params}");
    }
}
