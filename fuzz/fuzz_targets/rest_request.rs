//! REST request bodies as clients send them: every request type is decoded from the input
//! (as the API's JSON extractor does, unknown fields refused) and, when it decodes, its
//! fields go through the same validators the handlers use. Nothing may panic; every refusal
//! must be an ordinary error.
#![no_main]

use corral_api::api_keys::CreateApiKeyRequest;
use corral_api::organizations::{CreateOrganizationRequest, QuotaView};
use corral_api::regions::{CreateRegionRequest, UpdateRegionRequest};
use corral_api::runners::{AdminCreateRunnerRequest, CreateRunnerRequest, RunnerStateRequest, SchedulingRequest};
use corral_api::sandboxes::CreateSandboxRequest;
use corral_api::{validate, AddMemberRequest};
use libfuzzer_sys::fuzz_target;

fn text(value: &str) {
    let _ = validate::name("name", value);
    let _ = validate::url("url", value);
    let _ = validate::domain("domain", value);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<CreateRegionRequest>(data) {
        text(&r.name);
        for url in [&r.proxy_url, &r.ssh_gateway_url, &r.snapshot_manager_url].into_iter().flatten() {
            text(url);
        }
    }
    let _ = serde_json::from_slice::<UpdateRegionRequest>(data);
    if let Ok(r) = serde_json::from_slice::<CreateOrganizationRequest>(data) {
        text(&r.name);
    }
    if let Ok(r) = serde_json::from_slice::<CreateApiKeyRequest>(data) {
        text(&r.name);
        let _ = corral_api::api_keys::parse_expiry(r.expires_at.as_deref(), 1_700_000_000_000);
    }
    let _ = serde_json::from_slice::<QuotaView>(data);
    let _ = serde_json::from_slice::<CreateRunnerRequest>(data);
    let _ = serde_json::from_slice::<AdminCreateRunnerRequest>(data);
    let _ = serde_json::from_slice::<SchedulingRequest>(data);
    let _ = serde_json::from_slice::<RunnerStateRequest>(data);
    let _ = serde_json::from_slice::<CreateSandboxRequest>(data);
    let _ = serde_json::from_slice::<AddMemberRequest>(data);
    if let Ok(s) = std::str::from_utf8(data) {
        text(s);
    }
});
