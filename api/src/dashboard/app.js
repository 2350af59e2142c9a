// Corral dashboard: plain ES module over the REST API, no build step. The key lives in this
// tab's sessionStorage only. Text from the server is always set as text, never as HTML.

const main = document.getElementById('main');
const alertBox = document.getElementById('alert');
const REFRESH_MS = 1000;
let refreshTimer = null;

// ---- session -------------------------------------------------------------------------------
const session = {
  get key() { return sessionStorage.getItem('corral.key') || ''; },
  get org() { return sessionStorage.getItem('corral.org') || ''; },
  save(key, org) { sessionStorage.setItem('corral.key', key); sessionStorage.setItem('corral.org', org); },
  clear() { sessionStorage.removeItem('corral.key'); sessionStorage.removeItem('corral.org'); },
};

// ---- DOM helpers ---------------------------------------------------------------------------
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else if (name === 'class') el.className = value;
    else el.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}
const badge = (text, kind = text) => h('span', { class: `badge ${kind}` }, text);
const when = (iso) => (iso ? new Date(iso).toLocaleString() : '—');
const short = (id) => (id && id.length > 12 ? id.slice(0, 8) + '…' : id || '—');

function table(columns, rows, empty) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h('div', { class: 'table-wrap' },
    h('table', {},
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, rows)));
}

// ---- messages ------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}
function showError(what, e) {
  alertBox.className = 'alert';
  alertBox.replaceChildren(
    h('strong', {}, `${what}: `), e.message || String(e), ' ',
    e.code ? h('code', { 'data-code': e.code }, e.code) : null);
  alertBox.hidden = false;
}
function showInfo(text) {
  alertBox.className = 'alert info';
  alertBox.replaceChildren(text);
  alertBox.hidden = false;
}
function clearAlert() { alertBox.hidden = true; alertBox.replaceChildren(); }

// ---- API -----------------------------------------------------------------------------------
async function api(method, path, body, base = '') {
  const headers = { Authorization: `Bearer ${session.key}` };
  if (session.org) headers['X-Organization-ID'] = session.org;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, 'unreachable', `the node did not answer (${e.message})`);
  }
  if (response.status === 204) return null;
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (!response.ok) {
    const code = (data && data.code) || `http_${response.status}`;
    throw new ApiError(response.status, code, (data && data.error) || response.statusText);
  }
  return data;
}

// Runs an action from a button or form: errors become a readable message, success may say so.
async function act(what, fn, done) {
  clearAlert();
  try {
    const result = await fn();
    if (done) showInfo(done);
    await route(true);
    return result;
  } catch (e) {
    showError(what, e);
    return undefined;
  }
}

// ---- show-once secrets ---------------------------------------------------------------------
function showSecrets(title, intro, pairs, extra) {
  const dialog = document.getElementById('secret-dialog');
  document.getElementById('secret-title').textContent = title;
  document.getElementById('secret-intro').textContent = intro;
  const body = document.getElementById('secret-body');
  body.replaceChildren(
    h('div', { class: 'kv' }, pairs.flatMap(([label, value]) => [
      h('span', {}, label), h('code', { class: 'secret', 'data-label': label }, value)])),
    extra || null);
  dialog.showModal();
  document.getElementById('secret-close').focus();
}

// ---- sign in -------------------------------------------------------------------------------
function signIn() {
  const key = h('input', { id: 'key', type: 'password', autocomplete: 'off', required: true });
  const org = h('input', { id: 'org', autocomplete: 'off', placeholder: 'only with the admin key' });
  const form = h('form', { class: 'inline', id: 'sign-in', onsubmit: (ev) => {
    ev.preventDefault();
    session.save(key.value.trim(), org.value.trim());
    location.hash = '#/regions';
    route();
  } },
  h('label', { for: 'key' }, 'API key', key),
  h('label', { for: 'org' }, 'Organization ID', org),
  h('button', { type: 'submit' }, 'Sign in'));
  main.replaceChildren(
    h('h1', {}, 'Sign in'),
    h('p', {}, 'Use an organization API key, or the cluster admin key with the organization to act for. ',
      'The key stays in this browser tab only and is sent to this node with every request.'),
    h('div', { class: 'panel' }, form));
  key.focus();
}

// ---- regions -------------------------------------------------------------------------------
async function regionsPage() {
  const regions = await api('GET', '/api/regions');
  const own = regions.filter((r) => r.regionType !== 'shared');
  const rows = regions.map((r) => {
    const mine = r.regionType !== 'shared';
    const urlInputs = mine ? ['proxyUrl', 'sshGatewayUrl', 'snapshotManagerUrl'] : [];
    return h('tr', { 'data-region': r.name },
      h('td', {}, h('strong', {}, r.name), h('div', { class: 'mono' }, r.id)),
      h('td', {}, badge(r.regionType, 'region')),
      h('td', {}, r.proxyUrl || '—'), h('td', {}, r.sshGatewayUrl || '—'), h('td', {}, r.snapshotManagerUrl || '—'),
      h('td', { class: 'actions' }, mine ? [
        h('button', { type: 'button', class: 'quiet', onclick: () => editUrls(r, urlInputs) }, 'Edit URLs'),
        r.proxyUrl && h('button', { type: 'button', class: 'quiet', onclick: () => regenerate(r, 'regenerate-proxy-api-key', 'Proxy API key') }, 'New proxy key'),
        r.sshGatewayUrl && h('button', { type: 'button', class: 'quiet', onclick: () => regenerate(r, 'regenerate-ssh-gateway-api-key', 'SSH gateway API key') }, 'New SSH key'),
        r.snapshotManagerUrl && h('button', { type: 'button', class: 'quiet', onclick: () => regenerate(r, 'regenerate-snapshot-manager-credentials', 'Snapshot manager') }, 'New snapshot credentials'),
        h('button', { type: 'button', class: 'danger', 'data-action': 'delete-region', onclick: () => act(`Could not delete region ${r.name}`, () => api('DELETE', `/api/regions/${r.id}`), `Region ${r.name} deleted.`) }, 'Delete'),
      ] : h('span', { class: 'empty' }, 'shared')));
  });
  const name = h('input', { id: 'region-name', required: true, pattern: '[A-Za-z0-9._-]+', maxlength: 63 });
  const urls = ['proxyUrl', 'sshGatewayUrl', 'snapshotManagerUrl'].map((f) => h('input', { id: `region-${f}`, type: 'url', placeholder: 'https://…' }));
  const create = h('form', { class: 'inline', id: 'create-region', onsubmit: async (ev) => {
    ev.preventDefault();
    const body = { name: name.value.trim() };
    urls.forEach((input, i) => { if (input.value.trim()) body[['proxyUrl', 'sshGatewayUrl', 'snapshotManagerUrl'][i]] = input.value.trim(); });
    const created = await act('Could not create the region', () => api('POST', '/api/regions', body));
    if (created) {
      const secrets = [['proxyApiKey', 'Proxy API key'], ['sshGatewayApiKey', 'SSH gateway API key'],
        ['snapshotManagerUsername', 'Snapshot manager user'], ['snapshotManagerPassword', 'Snapshot manager password']]
        .filter(([f]) => created[f]).map(([f, label]) => [label, created[f]]);
      if (secrets.length) showSecrets(`Region ${created.name} created`, 'These credentials are shown this once; Corral keeps only their hashes.', secrets);
      else showInfo(`Region ${created.name} created.`);
    }
  } },
  h('label', { for: 'region-name' }, 'Name', name),
  h('label', { for: 'region-proxyUrl' }, 'Proxy URL (optional)', urls[0]),
  h('label', { for: 'region-sshGatewayUrl' }, 'SSH gateway URL (optional)', urls[1]),
  h('label', { for: 'region-snapshotManagerUrl' }, 'Snapshot manager URL (optional)', urls[2]),
  h('button', { type: 'submit' }, 'Create region'));
  return [
    h('h1', {}, 'Regions'),
    own.length ? null : h('p', { class: 'empty', id: 'regions-empty' }, 'No custom regions yet. Create one below, then add runners to it on the Runners page.'),
    table(['Name', 'Type', 'Proxy', 'SSH gateway', 'Snapshot manager', 'Actions'], rows, 'No regions.'),
    h('h2', {}, 'New custom region'), h('div', { class: 'panel' }, create),
  ];
}

function editUrls(region, fields) {
  const inputs = fields.map((f) => h('input', { id: `edit-${f}`, type: 'url', value: region[f] || '', placeholder: 'empty: remove' }));
  const labels = { proxyUrl: 'Proxy URL', sshGatewayUrl: 'SSH gateway URL', snapshotManagerUrl: 'Snapshot manager URL' };
  const form = h('form', { class: 'inline', onsubmit: async (ev) => {
    ev.preventDefault();
    const body = {};
    fields.forEach((f, i) => { body[f] = inputs[i].value.trim() || null; });
    await act(`Could not update region ${region.name}`, () => api('PATCH', `/api/regions/${region.id}`, body), `Region ${region.name} updated.`);
  } }, fields.map((f, i) => h('label', { for: `edit-${f}` }, labels[f], inputs[i])), h('button', { type: 'submit' }, 'Save URLs'));
  stopRefresh();
  main.append(h('h2', {}, `Edit ${region.name}`), h('div', { class: 'panel' }, form));
  inputs[0].focus();
}

async function regenerate(region, action, label) {
  const result = await act(`Could not regenerate the ${label}`, () => api('POST', `/api/regions/${region.id}/${action}`));
  if (result) {
    const pairs = result.apiKey ? [[label, result.apiKey]] : [['Username', result.username], ['Password', result.password]];
    showSecrets(`New ${label}`, 'Shown this once; the previous one no longer works.', pairs);
  }
}

// ---- runners -------------------------------------------------------------------------------
function bars(runner) {
  const usage = runner.usage || {};
  const rows = [['cpu', 'cpu', 'currentCpuUsagePercentage', ''], ['memory', 'memoryGiB', 'currentMemoryUsagePercentage', ' GiB'], ['disk', 'diskGiB', 'currentDiskUsagePercentage', ' GiB']];
  return h('div', { class: 'bars' }, rows.flatMap(([label, field, usageField, unit]) => {
    const capacity = runner.capacity[field] || 0;
    const allocated = runner.allocated[field] || 0;
    const share = capacity ? Math.min(100, (100 * allocated) / capacity) : 0;
    const used = usage[usageField];
    return [
      h('span', {}, label),
      h('div', { class: 'bar', role: 'img', 'data-resource': field, 'data-capacity': capacity, 'data-allocated': allocated,
        'aria-label': `${label}: ${allocated} of ${capacity}${unit} allocated${used === undefined ? '' : `, ${Math.round(used)}% in use`}` },
      h('div', { class: 'allocated', style: `width:${share}%` }),
      used === undefined ? null : h('div', { class: 'usage', style: `left:${Math.min(99, used)}%` })),
      h('span', {}, `${allocated}/${capacity}${unit}`),
    ];
  }));
}

const runnerFilter = { regionId: '' };

async function runnersPage() {
  const query = runnerFilter.regionId ? `?regionId=${encodeURIComponent(runnerFilter.regionId)}` : '';
  const [regions, runners] = await Promise.all([api('GET', '/api/regions'), api('GET', `/api/runners${query}`)]);
  const custom = regions.filter((r) => r.regionType === 'custom');
  const regionSelect = h('select', { id: 'runners-region', onchange: () => { runnerFilter.regionId = regionSelect.value; route(true); } },
    h('option', { value: '' }, 'all regions'),
    custom.map((r) => h('option', { value: r.id, selected: runnerFilter.regionId === r.id }, r.name)));
  const regionName = Object.fromEntries(regions.map((r) => [r.id, r.name]));
  const rows = runners.map((r) => h('tr', { 'data-runner': r.name },
    h('td', {}, h('strong', {}, r.name), h('div', { class: 'mono' }, r.id)),
    h('td', {}, regionName[r.regionId] || r.regionId),
    h('td', { class: 'state' }, badge(r.state), r.draining ? [' ', badge('draining')] : null),
    h('td', {}, r.schedulable ? 'yes' : 'no'),
    h('td', {}, Object.entries(r.tags || {}).map(([k, v]) => h('div', { class: 'mono' }, `${k}=${v}`)), Object.keys(r.tags || {}).length ? null : '—'),
    h('td', {}, r.version || '—', h('div', {}, `sandboxes: ${r.startedSandboxes}`)),
    h('td', {}, when(r.lastCheckedAt)),
    h('td', {}, bars(r)),
    h('td', { class: 'actions' },
      h('button', { type: 'button', class: 'quiet', onclick: () => act(`Could not change scheduling of ${r.name}`, () => api('PATCH', `/api/runners/${r.id}/scheduling`, { schedulable: !r.schedulable })) }, r.schedulable ? 'Stop scheduling' : 'Allow scheduling'),
      h('button', { type: 'button', class: 'quiet', 'data-action': 'drain', onclick: () => act(`Could not change draining of ${r.name}`, () => api('PATCH', `/api/runners/${r.id}/draining`, { draining: !r.draining })) }, r.draining ? 'End draining' : 'Drain'),
      h('button', { type: 'button', class: 'quiet', onclick: () => newToken(r) }, 'New token'),
      h('button', { type: 'button', class: 'danger', onclick: () => act(`Could not delete runner ${r.name}`, () => api('DELETE', `/api/runners/${r.id}`), `Runner ${r.name} deleted.`) }, 'Delete'))));
  const name = h('input', { id: 'runner-name', required: true, pattern: '[A-Za-z0-9._-]+', maxlength: 63 });
  const region = h('select', { id: 'runner-region', required: true },
    custom.map((r) => h('option', { value: r.id, selected: runnerFilter.regionId === r.id }, r.name)));
  const create = custom.length
    ? h('form', { class: 'inline', id: 'create-runner', onsubmit: async (ev) => {
      ev.preventDefault();
      const created = await act('Could not create the runner', () => api('POST', '/api/runners', { name: name.value.trim(), regionId: region.value }));
      if (created) await showRunnerToken(created.apiKey, `Runner ${name.value.trim()} created`);
    } },
    h('label', { for: 'runner-name' }, 'Name', name), h('label', { for: 'runner-region' }, 'Custom region', region),
    h('button', { type: 'submit' }, 'Create runner'))
    : h('p', { class: 'empty' }, 'Runners join custom regions: create one on the Regions page first.');
  return [
    h('h1', {}, 'Runners'),
    h('form', { class: 'inline panel', 'aria-label': 'Region', onsubmit: (ev) => ev.preventDefault() },
      h('label', { for: 'runners-region' }, 'Region', regionSelect)),
    table(['Runner', 'Region', 'State', 'Schedulable', 'Tags', 'Version', 'Last report', 'Capacity · allocated · usage', 'Actions'], rows,
      'No runners yet. Create one below and start `corral runner` on the machine with the token it shows.'),
    h('h2', {}, 'New runner'), h('div', { class: 'panel' }, create),
  ];
}

async function showRunnerToken(token, title) {
  // The command line names the cluster's nodes when this key may read the cluster's members.
  let endpoints = '<node1:raft-port>,<node2:raft-port>,<node3:raft-port>';
  try {
    const cluster = await api('GET', '/api/admin/cluster');
    endpoints = cluster.members.map((m) => m.raftAddr).join(',');
  } catch { /* an organization key: leave the placeholder */ }
  const command = `CORRAL_RUNNER_TOKEN='${token}' corral runner --endpoints ${endpoints} \\\n  --ca-cert ca.pem --cert runner.pem --key runner-key.pem`;
  showSecrets(title, 'The runner token is shown this once. Start the agent on the runner machine with it:', [['Token', token]],
    h('div', {}, h('p', {}, 'Command line:'), h('pre', { id: 'runner-command' }, command)));
}

async function newToken(runner) {
  const result = await act(`Could not regenerate the token of ${runner.name}`, () => api('POST', `/api/runners/${runner.id}/regenerate-token`));
  if (result) await showRunnerToken(result.apiKey, `New token for ${runner.name} (the old one stopped working)`);
}

// ---- sandboxes -----------------------------------------------------------------------------
const filters = { state: '', regionId: '', runnerId: '' };

async function sandboxesPage() {
  const query = new URLSearchParams(Object.entries(filters).filter(([, v]) => v)).toString();
  const [regions, sandboxes, runners] = await Promise.all([
    api('GET', '/api/regions'), api('GET', `/api/sandboxes${query ? `?${query}` : ''}`), api('GET', '/api/runners')]);
  const runnerName = Object.fromEntries(runners.map((r) => [r.id, r.name]));
  const rows = sandboxes.map((s) => h('tr', { 'data-sandbox': s.id },
    h('td', { class: 'mono' }, s.id),
    h('td', {}, s.target),
    h('td', { class: 'runner' }, runnerName[s.runnerId] || short(s.runnerId)),
    h('td', { class: 'state' }, badge(s.state)),
    h('td', {}, `${s.cpu} cpu · ${s.memoryGiB} GiB · ${s.diskGiB} GiB disk${s.gpu ? ` · ${s.gpu} gpu` : ''}`),
    h('td', {}, when(s.createdAt)),
    h('td', { class: 'actions' },
      s.state === 'started' ? h('button', { type: 'button', class: 'quiet', onclick: () => act('Could not stop the sandbox', () => api('POST', `/api/sandboxes/${s.id}/stop`)) }, 'Stop') : null,
      s.state === 'stopped' ? h('button', { type: 'button', class: 'quiet', onclick: () => act('Could not start the sandbox', () => api('POST', `/api/sandboxes/${s.id}/start`)) }, 'Start') : null,
      h('button', { type: 'button', class: 'danger', onclick: () => act('Could not delete the sandbox', () => api('DELETE', `/api/sandboxes/${s.id}`), 'Sandbox deleted.') }, 'Delete'))));
  const select = (id, label, key, options) => {
    const el = h('select', { id, onchange: () => { filters[key] = el.value; route(true); } },
      h('option', { value: '' }, 'any'), options.map(([value, text]) => h('option', { value, selected: filters[key] === value }, text)));
    return h('label', { for: id }, label, el);
  };
  const target = h('select', { id: 'sandbox-target', required: true }, regions.map((r) => h('option', { value: r.name }, `${r.name} (${r.regionType})`)));
  const numbers = [['cpu', 'CPU cores', 1], ['memoryGiB', 'Memory GiB', 1], ['diskGiB', 'Disk GiB', 3]]
    .map(([field, label, value]) => [field, h('input', { id: `sandbox-${field}`, type: 'number', min: 1, value }), label]);
  const create = h('form', { class: 'inline', id: 'create-sandbox', onsubmit: async (ev) => {
    ev.preventDefault();
    const body = { target: target.value };
    for (const [field, input] of numbers) body[field] = Number(input.value);
    const created = await act('Could not create the sandbox', () => api('POST', '/api/sandboxes', body));
    if (created) showInfo(`Sandbox ${created.id} placed on runner ${runnerName[created.runnerId] || created.runnerId}.`);
  } }, h('label', { for: 'sandbox-target' }, 'Region', target),
  numbers.map(([field, input, label]) => h('label', { for: `sandbox-${field}` }, label, input)),
  h('button', { type: 'submit' }, 'Create sandbox'));
  return [
    h('h1', {}, 'Sandboxes'),
    h('form', { class: 'inline panel', 'aria-label': 'Filters', onsubmit: (ev) => ev.preventDefault() },
      select('filter-state', 'State', 'state', ['pending', 'started', 'stopped', 'error', 'destroyed'].map((s) => [s, s])),
      select('filter-region', 'Region', 'regionId', regions.map((r) => [r.id, r.name])),
      select('filter-runner', 'Runner', 'runnerId', runners.map((r) => [r.id, r.name]))),
    table(['Sandbox', 'Region', 'Runner', 'State', 'Resources', 'Created', 'Actions'], rows,
      query ? 'No sandbox matches these filters.' : 'No sandboxes yet. Create one below: the leader places it on a runner of the region with room.'),
    h('h2', {}, 'New sandbox'), h('div', { class: 'panel' }, create),
  ];
}

// ---- cluster -------------------------------------------------------------------------------
async function fetchWithin(ms, path, base) {
  return Promise.race([api('GET', path, undefined, base),
    new Promise((_, reject) => setTimeout(() => reject(new ApiError(0, 'unreachable', 'no answer')), ms))]);
}

// The last on-demand comparison of the members' state hashes (each reads its whole state, so
// the page never polls them): { at, views } with one { nodeId, appliedIndex, stateHash } or null per member.
let hashCheck = null;

async function compareHashes(members, here) {
  const scheme = location.protocol;
  const views = await Promise.all(members.map(async (m) => {
    const base = m.nodeId === here.nodeId ? undefined : `${scheme}//${m.apiAddr}`;
    try { return await fetchWithin(10000, '/api/admin/cluster/hash', base); } catch { return null; }
  }));
  hashCheck = { at: new Date(), views: Object.fromEntries(members.map((m, i) => [m.nodeId, views[i]])) };
}

function hashVerdict() {
  if (!hashCheck) return 'not compared yet';
  const views = Object.values(hashCheck.views);
  if (views.some((v) => !v)) return `a member did not answer (${hashCheck.at.toLocaleTimeString()})`;
  const indexes = new Set(views.map((v) => v.appliedIndex));
  const hashes = new Set(views.map((v) => `${v.appliedIndex}:${v.stateHash}`));
  if (hashes.size === 1) return `in step: one applied index and state hash (${hashCheck.at.toLocaleTimeString()})`;
  if (indexes.size === 1) return `DIVERGED: same applied index, different state hashes (${hashCheck.at.toLocaleTimeString()})`;
  return `applied indexes differ (writes in flight); compare again when writes pause (${hashCheck.at.toLocaleTimeString()})`;
}

async function clusterPage() {
  const here = await api('GET', '/api/admin/cluster');
  const scheme = location.protocol;
  const views = await Promise.all(here.members.map(async (m) => {
    if (m.nodeId === here.nodeId) return here;
    try { return await fetchWithin(400, '/api/admin/cluster', `${scheme}//${m.apiAddr}`); } catch { return null; }
  }));
  const liveness = Object.fromEntries(here.gossip.map((g) => [g.nodeId, g.liveness]));
  const rows = here.members.map((m, i) => {
    const v = views[i];
    const hashed = hashCheck && hashCheck.views[m.nodeId];
    return h('tr', { 'data-node': m.nodeId },
      h('td', {}, `node ${m.nodeId}`, m.nodeId === here.nodeId ? ' (this node)' : ''),
      h('td', {}, v ? badge(v.role, v.role === 'leader' ? 'leader' : v.role) : badge('unreachable')),
      h('td', {}, badge(liveness[m.nodeId] || (m.nodeId === here.nodeId ? 'alive' : 'unknown'))),
      h('td', {}, v ? v.term : '—'), h('td', {}, v ? (v.appliedIndex ?? '—') : '—'),
      h('td', { class: 'mono' }, hashed ? `${hashed.stateHash.slice(0, 12)} @ ${hashed.appliedIndex ?? '—'}` : '—'),
      h('td', {}, v ? v.runnersReporting : '—'),
      h('td', { class: 'mono' }, m.apiAddr), h('td', {}, m.voter ? 'voter' : 'learner'));
  });
  const applied = new Set(views.filter(Boolean).map((v) => v.appliedIndex));
  return [
    h('h1', {}, 'Cluster'),
    h('div', { class: 'panel kv', id: 'cluster-summary' },
      h('span', {}, 'Leader'), h('strong', { id: 'leader', 'data-leader': here.leaderId ?? '' }, here.leaderId ? `node ${here.leaderId}` : 'none (election in progress)'),
      h('span', {}, 'Term'), h('span', { id: 'term' }, here.term),
      h('span', {}, 'Applied index (this node)'), h('span', {}, here.appliedIndex ?? '—'),
      h('span', {}, 'Applied indexes'), h('span', {}, views.some((v) => !v) ? 'a member is unreachable'
        : applied.size === 1 ? 'one: every member has applied the same' : 'members differ (catching up, or writes in flight)'),
      h('span', {}, 'State hashes'), h('span', { id: 'hash-verdict' }, hashVerdict(),
        ' ', h('button', { type: 'button', class: 'quiet', id: 'compare-hashes',
          onclick: () => act('Could not compare state hashes', () => compareHashes(here.members, here)) }, 'Compare now')),
      h('span', {}, 'Runners reporting here'), h('span', {}, here.runnersReporting)),
    table(['Node', 'Raft role', 'Gossip', 'Term', 'Applied', 'State hash', 'Runners', 'API', 'Membership'], rows, 'No members.'),
    h('p', { class: 'empty' }, `Refreshes every second; state hashes only on "Compare now" (each member reads its whole state). Served by node ${here.nodeId}.`),
  ];
}

// ---- routing -------------------------------------------------------------------------------
const pages = { regions: regionsPage, runners: runnersPage, sandboxes: sandboxesPage, cluster: clusterPage };
const live = new Set(['runners', 'sandboxes', 'cluster']);

function stopRefresh() { if (refreshTimer) { clearTimeout(refreshTimer); refreshTimer = null; } }

let rendering = false;
async function route(force = false) {
  stopRefresh();
  const signedIn = Boolean(session.key);
  document.getElementById('nav').hidden = !signedIn;
  document.getElementById('sign-out').hidden = !signedIn;
  document.getElementById('who').textContent = signedIn ? (session.org ? `admin key for ${session.org}` : 'organization key') : '';
  if (!signedIn) { signIn(); return; }
  const name = (location.hash.match(/^#\/(\w+)/) || [])[1] || 'regions';
  const page = pages[name] || pages.regions;
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.page === name) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  // A form being filled in is not wiped by a refresh.
  const typing = !force && main.contains(document.activeElement) && ['INPUT', 'SELECT'].includes(document.activeElement.tagName);
  if (!(rendering || typing)) {
    rendering = true;
    try {
      const content = await page();
      main.replaceChildren(...content.filter(Boolean));
      main.dataset.page = name;
    } catch (e) {
      if (e.status === 401) { session.clear(); showError('Signed out', e); signIn(); rendering = false; return; }
      main.replaceChildren(h('h1', {}, name[0].toUpperCase() + name.slice(1)),
        h('p', { class: 'empty' }, e.status === 403 && name === 'cluster' ? 'The cluster page needs the cluster admin key: sign in with it.' : 'This page could not be loaded.'));
      showError(`Could not load ${name}`, e);
    } finally {
      rendering = false;
    }
  }
  if (live.has(name) && !document.getElementById('secret-dialog').open) refreshTimer = setTimeout(route, REFRESH_MS);
}

document.getElementById('sign-out').addEventListener('click', () => { session.clear(); clearAlert(); route(); });
document.getElementById('secret-dialog').addEventListener('close', () => route());
window.addEventListener('hashchange', () => { clearAlert(); route(); main.focus(); });
route();
