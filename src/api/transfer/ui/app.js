// gantry's dashboard: plain JavaScript, no framework, no build step. Every call goes to the
// transfer API of the listener that served this page, with the token when one is needed.
'use strict';

const base = location.pathname.replace(/\/ui\/[^/]*$/, '');
const api = base + '/api';
const $ = (id) => document.getElementById(id);
const apps = new Map();
let token = sessionStorage.getItem('gantry-token') || '';
let following = false;
let logsOf = null;

class Unauthorized extends Error {}

const auth = () => (token ? { Authorization: 'Bearer ' + token } : {});

async function call(method, path, body) {
  const r = await fetch(api + path, { method, headers: auth(), body, cache: 'no-store' });
  if (r.status === 401) {
    showLogin(token ? 'The token was refused.' : '');
    throw new Unauthorized('unauthorized');
  }
  return r;
}

async function problem(r) {
  try {
    const p = await r.json();
    return p.detail || p.title || r.statusText;
  } catch (_) {
    return r.status + ' ' + r.statusText;
  }
}

async function getJson(path) {
  const r = await call('GET', path);
  if (r.status === 204) return null;
  if (!r.ok) throw new Error(await problem(r));
  return r.json();
}

function showError(e) {
  if (!(e instanceof Unauthorized)) $('error').textContent = e.message || String(e);
}

function clearError() {
  $('error').textContent = '';
}

// --- sign in ----------------------------------------------------------------------------

function showLogin(message) {
  $('main').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message;
}

$('login-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  token = $('token').value.trim();
  sessionStorage.setItem('gantry-token', token);
  start();
});

// --- apps -------------------------------------------------------------------------------

const enc = encodeURIComponent;

function statusClass(s) {
  return 'status-' + String(s || 'unknown').toLowerCase().replace(/ /g, '-');
}

function button(label, cls, onClick, disabled) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = label;
  b.className = cls;
  b.disabled = disabled;
  b.addEventListener('click', onClick);
  return b;
}

function renderApp(app) {
  let row = document.querySelector('#apps tr[data-id="' + CSS.escape(app.Id) + '"]');
  if (!row) {
    row = document.createElement('tr');
    row.dataset.id = app.Id;
    for (const c of ['name', 'status', 'containers', 'imported', 'actions']) {
      const td = document.createElement('td');
      td.className = c;
      row.appendChild(td);
    }
    $('apps').tBodies[0].appendChild(row);
  }
  const cells = row.cells;
  cells[0].textContent = app.Id;
  cells[1].textContent = app.Busy ? app.Status + ' (busy)' : app.Status;
  cells[1].className = 'status ' + statusClass(app.Status);
  row.dataset.status = app.Status;
  row.dataset.busy = app.Busy ? 'true' : 'false';
  const cs = app.Containers || [];
  cells[2].textContent = cs.filter((c) => c.Running).length + ' of ' + cs.length + ' running';
  cells[3].textContent = (app.App && app.App.Imported) || '';
  const act = cells[4];
  act.replaceChildren(
    button('Start', 'start', () => lifecycle(app.Id, 'start'), app.Busy || app.Status === 'Running'),
    button('Stop', 'stop', () => lifecycle(app.Id, 'stop'), app.Busy || app.Status === 'Stopped'),
    button('Logs', 'logs', () => openLogs(app.Id), false),
  );
  act.className = 'actions';
  $('no-apps').hidden = true;
}

function removeApp(id) {
  apps.delete(id);
  const row = document.querySelector('#apps tr[data-id="' + CSS.escape(id) + '"]');
  if (row) row.remove();
  $('no-apps').hidden = apps.size > 0;
}

function upsert(app) {
  apps.set(app.Id, app);
  renderApp(app);
}

async function loadApps() {
  const list = (await getJson('/transfer/apps')) || [];
  for (const id of [...apps.keys()]) {
    if (!list.some((a) => a.Id === id)) removeApp(id);
  }
  list.forEach(upsert);
  $('no-apps').hidden = list.length > 0;
}

async function lifecycle(id, action) {
  clearError();
  try {
    const r = await call('PUT', '/transfer/apps/' + enc(id) + '/' + action);
    if (!r.ok) throw new Error(action + ' ' + id + ': ' + (await problem(r)));
    upsert(await getJson('/transfer/apps/' + enc(id)));
  } catch (e) {
    showError(e);
  }
}

// --- live updates (server-sent events, read through fetch so the token can be sent) -----

function handleEvent(block) {
  let name = 'message';
  let data = '';
  for (const line of block.split('\n')) {
    if (line.startsWith('event: ')) name = line.slice(7);
    else if (line.startsWith('data: ')) data += line.slice(6);
  }
  if (name === 'App' || name === 'Import') upsert(JSON.parse(data));
  else if (name === 'Remove') removeApp(JSON.parse(data).Id);
}

function setLive(on) {
  $('live').className = on ? 'on' : 'off';
  $('live').textContent = on ? 'live' : 'offline';
}

async function readEvents() {
  const r = await call('GET', '/events');
  if (!r.ok) throw new Error(await problem(r));
  setLive(true);
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      handleEvent(buf.slice(0, i));
      buf = buf.slice(i + 2);
    }
  }
}

async function follow() {
  if (following) return;
  following = true;
  for (;;) {
    try {
      await readEvents();
    } catch (e) {
      if (e instanceof Unauthorized) break;
    }
    setLive(false);
    await new Promise((done) => setTimeout(done, 2000));
    try {
      await loadApps();
    } catch (e) {
      if (e instanceof Unauthorized) break;
    }
  }
  following = false;
}

// --- import -----------------------------------------------------------------------------

function uuid() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 15) | 64;
  b[8] = (b[8] & 63) | 128;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return [h.slice(0, 8), h.slice(8, 12), h.slice(12, 16), h.slice(16, 20), h.slice(20)].join('-');
}

function size(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return (i ? n.toFixed(1) : n) + ' ' + units[i];
}

function addStep(text) {
  const steps = $('import-steps');
  if (steps.lastChild && steps.lastChild.textContent === text) return;
  const li = document.createElement('li');
  li.textContent = text;
  steps.appendChild(li);
}

function uploadText(sent, total, began) {
  const secs = (performance.now() - began) / 1000;
  const rate = secs > 0 ? sent / secs : 0;
  let t = size(sent) + ' of ' + size(total);
  if (rate > 0) t += ' \u00b7 ' + size(rate) + '/s';
  if (rate > 0 && sent < total) t += ' \u00b7 ETA ' + Math.ceil((total - sent) / rate) + ' s';
  return t;
}

async function pollTask(id) {
  try {
    const tasks = (await getJson('/tasks')) || [];
    const t = tasks.find((x) => x.Id === id);
    if (t && t.Step) {
      addStep(t.Step);
      if (t.Progress != null) $('import-bar').value = t.Progress;
    }
  } catch (_) {
    // The next poll tries again.
  }
}

function importApp(file, replace) {
  const id = uuid();
  const began = performance.now();
  const xhr = new XMLHttpRequest();
  let url = api + '/transfer/import?cancel_id=' + id;
  if (replace) url += '&replace=true';
  xhr.open('POST', url);
  if (token) xhr.setRequestHeader('Authorization', 'Bearer ' + token);
  $('import-steps').replaceChildren();
  $('import-progress').hidden = false;
  $('import-cancel').hidden = false;
  $('import-button').disabled = true;
  $('import-result').textContent = '';
  $('import-cancel').onclick = () => call('PUT', '/cancel/' + id).catch(showError);
  xhr.upload.onprogress = (e) => {
    $('import-bar').value = e.total ? e.loaded / e.total : 0;
    $('import-text').textContent = uploadText(e.loaded, e.total, began);
  };
  xhr.upload.onload = () => addStep('upload complete');
  const poll = setInterval(() => pollTask(id), 400);
  const done = (text) => {
    clearInterval(poll);
    $('import-cancel').hidden = true;
    $('import-button').disabled = false;
    $('import-result').textContent = text;
  };
  xhr.onload = () => {
    let body = {};
    try {
      body = JSON.parse(xhr.responseText);
    } catch (_) {}
    if (xhr.status === 200) {
      $('import-bar').value = 1;
      addStep('imported');
      upsert(body);
      done('Imported ' + body.Id + '.');
    } else {
      done('Import failed: ' + (body.detail || xhr.status + ' ' + xhr.statusText));
    }
  };
  xhr.onerror = () => done('Import failed: the connection broke.');
  const form = new FormData();
  form.append('app', file);
  xhr.send(form);
}

$('import-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const file = $('import-file').files[0];
  if (file) importApp(file, $('import-replace').checked);
});

// --- logs -------------------------------------------------------------------------------

async function showLogs() {
  if (!logsOf) return;
  try {
    const r = await getJson('/transfer/apps/' + enc(logsOf) + '/logs?lines=500');
    $('logs').textContent = ((r && r.Lines) || []).map((l) => l.Line).join('\n');
  } catch (e) {
    showError(e);
  }
}

function openLogs(id) {
  logsOf = id;
  $('logs-app').textContent = id;
  $('logs-section').hidden = false;
  showLogs();
}

$('logs-refresh').addEventListener('click', showLogs);
$('logs-close').addEventListener('click', () => {
  logsOf = null;
  $('logs-section').hidden = true;
});
setInterval(showLogs, 5000);

// --- header: device name and versions ----------------------------------------------------

async function loadHeader() {
  const name = await getJson('/devicename');
  $('device').textContent = name || '(no device name)';
  $('rename').hidden = false;
  const parts = [];
  try {
    // /healthz says only ok or degraded; the versions are behind the listener's auth.
    const h = await (await fetch('/gantry/status', { headers: auth(), cache: 'no-store' })).json();
    parts.push('gantry ' + h.version);
    parts.push(h.docker.reachable ? 'Docker ' + h.docker.version : 'Docker unreachable');
  } catch (_) {}
  const versions = (await getJson('/versions')) || [];
  parts.push('API ' + versions.map((v) => v.Version).join(', '));
  $('versions').textContent = parts.join(' \u00b7 ');
}

$('rename').addEventListener('click', async () => {
  const name = prompt('Device name', $('device').textContent);
  if (!name) return;
  try {
    const r = await call('PUT', '/devicename?name=' + enc(name));
    if (!r.ok) throw new Error(await problem(r));
    $('device').textContent = await r.json();
  } catch (e) {
    showError(e);
  }
});

// --- start ------------------------------------------------------------------------------

async function start() {
  try {
    await loadApps();
  } catch (e) {
    if (!(e instanceof Unauthorized)) showError(e);
    if (e instanceof Unauthorized) return;
  }
  $('login').hidden = true;
  $('main').hidden = false;
  loadHeader().catch(showError);
  follow();
}

start();
