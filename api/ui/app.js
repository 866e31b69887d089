// volsnap web UI: plain script, no build step, nothing fetched but this origin's API.
//
// Rules this file keeps (docs/ui.md explains them):
// - API data reaches the page only through textContent and DOM properties, never as
//   markup: workload names and error messages are other people's input. The page's
//   CSP enforces Trusted Types, so a markup sink would throw instead of rendering.
// - The bearer token lives in sessionStorage only (never in persistent storage, a cookie or a
//   URL); any 401 clears it and returns to the sign-in form with the API's message.
//   Persistent storage holds one thing: the language the operator chose.
// - Every visible string comes from the catalogues (i18n/en.js, i18n/ru.js) via t().
// - Lists are fetched a page at a time with the API's cursor; live updates touch only
//   the rows whose job changed, and keep the focused control focused.
// - The token's name and role come from GET /api/whoami; signing in sends only reads.
(function () {
  'use strict';

  const TOKEN_KEY = 'volsnap.token';
  const LANG_KEY = 'volsnap.lang';
  const BATCH_KEY = 'volsnap.batch.'; // sessionStorage: a batch request's per-item answer
  const POLL_MS = 2000; // jobs list refresh while the tab is visible
  const HIDDEN_POLL_MS = 10000; // ... and while it is not
  const JOB_WAIT_SECS = 2; // job view: ?wait= per request (answers at once when final)
  const PAGE_SIZE = 100;
  const ACTIVE_LIMIT = 500;
  const MAX_SINGLE_REFRESH = 20; // finished jobs re-read one by one per refresh, at most
  const JOB_STATES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];
  const ACTIVE_STATES = ['queued', 'running'];
  const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  const FILTER_KEYS = ['state', 'kind', 'workload', 'project', 'stage', 'node', 'batch', 'q'];
  // Share of the whole job each phase stands for, [from, to] in percent: one overall
  // figure that never jumps back when the next phase starts its own byte count.
  const PHASE_SPANS = {
    restore: {
      queued: [0, 0], preflight: [0, 2], verifying: [2, 15], extracting: [15, 55],
      quiescing: [55, 57], swapping: [57, 59], redeploying: [59, 62],
      'archiving pre-restore copy': [62, 97], 'cleaning up': [97, 100],
    },
    capture: { queued: [0, 0], preflight: [0, 3], capturing: [3, 100] },
  };

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- i18n

  const CATALOGUES = window.VOLSNAP_I18N || {};
  const LANGS = ['en', 'ru'];

  function initialLang() {
    let saved = null;
    try {
      saved = localStorage.getItem(LANG_KEY);
    } catch (_) {
      saved = null;
    }
    if (saved && LANGS.includes(saved)) return saved;
    for (const l of navigator.languages || [navigator.language]) {
      const base = String(l || '').toLowerCase().split('-')[0];
      if (LANGS.includes(base)) return base;
    }
    return 'en';
  }

  let lang = initialLang();

  function message(key) {
    const cat = CATALOGUES[lang] || {};
    if (Object.prototype.hasOwnProperty.call(cat, key)) return cat[key];
    const en = CATALOGUES.en || {};
    return Object.prototype.hasOwnProperty.call(en, key) ? en[key] : key;
  }

  function template(key, params) {
    let m = message(key);
    if (m && typeof m === 'object') {
      const form = new Intl.PluralRules(lang).select(Number(params && params.n));
      m = m[form] || m.other;
    }
    return String(m);
  }

  const hasKey = (key) => Object.prototype.hasOwnProperty.call(CATALOGUES.en || {}, key);

  /** A message as text, parameters filled in. */
  function t(key, params) {
    const p = params || {};
    return template(key, p).replace(/\{(\w+)\}/g, (all, k) =>
      (Object.prototype.hasOwnProperty.call(p, k) ? (k === 'n' ? fmtNum(p[k]) : String(p[k])) : all));
  }

  /** A message as nodes: parameters may be elements (links, code). */
  function tn(key, params) {
    const p = params || {};
    const out = [];
    const parts = template(key, p).split(/\{(\w+)\}/);
    parts.forEach((part, i) => {
      if (i % 2 === 0) {
        if (part) out.push(part);
      } else if (Object.prototype.hasOwnProperty.call(p, part)) {
        const v = p[part];
        out.push(v instanceof Node ? v : (part === 'n' ? fmtNum(v) : String(v)));
      } else {
        out.push(`{${part}}`);
      }
    });
    return out;
  }

  const fmtNum = (n) => new Intl.NumberFormat(lang).format(Number(n));
  const fmtPct = (x) => new Intl.NumberFormat(lang, { style: 'percent', maximumFractionDigits: 0 }).format(x);

  /** Local date and time, to the second; the exact UTC instant is in the title. */
  function fmtTime(iso) {
    if (!iso) return t('none');
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return new Intl.DateTimeFormat(lang, { dateStyle: 'medium', timeStyle: 'medium' }).format(d);
  }

  function fmtClock(d) {
    return new Intl.DateTimeFormat(lang, { timeStyle: 'medium' }).format(d);
  }

  function timeEl(iso) {
    if (!iso) return t('none');
    return h('time', { datetime: iso, title: iso }, fmtTime(iso));
  }

  /** Bytes with decimal units (kB = 1000 B), in the language's number format. */
  function fmtBytes(n) {
    if (n === null || n === undefined) return t('none');
    const units = ['byte', 'kilobyte', 'megabyte', 'gigabyte', 'terabyte'];
    let v = Number(n);
    let i = 0;
    while (v >= 1000 && i < units.length - 1) {
      v /= 1000;
      i++;
    }
    // Intl's short form of "byte" is the whole word; the other units have symbols.
    if (i === 0) return t('unit.bytes', { v: fmtNum(v) });
    return new Intl.NumberFormat(lang, {
      style: 'unit', unit: units[i], unitDisplay: 'short', maximumFractionDigits: 1,
    }).format(v);
  }

  /** A duration: "1 h 4 min", "12 s", "350 ms". */
  function fmtDuration(ms) {
    if (ms === null || ms === undefined || !Number.isFinite(ms)) return t('none');
    const unit = (v, u, digits) => new Intl.NumberFormat(lang, {
      style: 'unit', unit: u, unitDisplay: 'short', maximumFractionDigits: digits || 0,
    }).format(v);
    if (ms < 1000) return unit(Math.max(0, Math.round(ms)), 'millisecond');
    if (ms < 60000) return unit(ms / 1000, 'second', ms < 10000 ? 1 : 0);
    const s = Math.round(ms / 1000);
    const hh = Math.floor(s / 3600);
    const mm = Math.floor((s % 3600) / 60);
    const ss = s % 60;
    const parts = [];
    if (hh) parts.push(unit(hh, 'hour'));
    if (mm || hh) parts.push(unit(mm, 'minute'));
    if (!hh) parts.push(unit(ss, 'second'));
    return parts.join(' ');
  }

  const stateWord = (s) => (hasKey(`state.${s}`) ? t(`state.${s}`) : s);
  const kindWord = (k) => (hasKey(`kind.${k}`) ? t(`kind.${k}`) : k);
  const phaseWord = (p) => (hasKey(`phase.${p}`) ? t(`phase.${p}`) : p);

  /** The catalogue's explanation of an API or worker error code, if it has one. */
  function explain(code) {
    if (!code) return null;
    if (hasKey(`err.${code}`)) return t(`err.${code}`);
    if (code.startsWith('archive_')) return t('err.archive_');
    if (code.startsWith('http_')) return null;
    return null;
  }

  /** Static text of the page: data-i18n (text), data-i18n-placeholder, -title, -label. */
  function applyStatic() {
    document.documentElement.lang = lang;
    for (const el of document.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
    for (const el of document.querySelectorAll('[data-i18n-placeholder]')) el.placeholder = t(el.dataset.i18nPlaceholder);
    $('lang').value = lang;
  }

  function setLang(l) {
    if (!LANGS.includes(l) || l === lang) return;
    lang = l;
    try {
      localStorage.setItem(LANG_KEY, lang);
    } catch (_) {
      // not remembered: this page still switches
    }
    applyStatic();
    rerenderAll();
  }

  // ---------------------------------------------------------------- DOM helpers

  /** An element with attributes and children; strings become text nodes. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    appendAll(el, children);
    return el;
  }

  function appendAll(parent, children) {
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      if (Array.isArray(c)) appendAll(parent, c);
      else if (c instanceof Node) parent.appendChild(c);
      else parent.appendChild(document.createTextNode(String(c)));
    }
  }

  function setContent(el, ...children) {
    el.replaceChildren();
    appendAll(el, children);
  }

  /** A table cell that names its column (shown as a label when tables stack at 390 px). */
  function td(colKey, attrs, ...children) {
    return h('td', Object.assign({ 'data-label': colKey ? t(colKey) : null }, attrs || {}), ...children);
  }

  /**
   * Re-render inside `container` without losing the keyboard focus: the focused control
   * carries a data-fk key, and the control with the same key in the new content gets
   * the focus back.
   */
  function keepFocus(container, render) {
    const a = document.activeElement;
    const key = a && a !== document.body && container.contains(a) ? a.dataset.fk : null;
    render();
    if (!key) return;
    for (const el of container.querySelectorAll('[data-fk]')) {
      if (el.dataset.fk === key) {
        el.focus();
        return;
      }
    }
  }

  const isUuid = (s) => typeof s === 'string' && UUID_RE.test(s);
  // Ids are UUIDv7: the leading digits are a timestamp shared by everything made in
  // the same few seconds, so the short form is the random tail.
  const shortId = (id) => '…' + String(id).slice(-8);
  const isActive = (state) => ACTIVE_STATES.includes(state);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const enc = encodeURIComponent;

  /** Sort key of an RFC 3339 UTC time with any number of fraction digits. */
  function timeKey(iso) {
    const m = /^(.*?)(?:\.(\d+))?Z$/.exec(iso || '');
    return m ? `${m[1]}.${(m[2] || '').padEnd(9, '0')}` : String(iso);
  }

  /** The API's job order: created_at DESC, id DESC. True when a comes before b. */
  function before(a, b) {
    const ka = timeKey(a.created_at);
    const kb = timeKey(b.created_at);
    if (ka !== kb) return ka > kb;
    return a.id > b.id;
  }

  function jobLink(id, text) {
    if (!isUuid(id)) return text;
    return h('a', { href: `#/jobs/${id.toLowerCase()}`, class: 'job-link', title: `${t('col.job')} ${id}` }, text);
  }

  function batchLink(id, text) {
    if (!isUuid(id)) return text;
    return h('a', { href: `#/batches/${id.toLowerCase()}`, class: 'batch-link' }, text);
  }

  // ---------------------------------------------------------------- session and API

  const session = {
    token: null,
    /** 'admin', 'viewer', or null (unknown: the API still decides every write). */
    role: null,
    /** The token's name, as GET /api/whoami gives it (null until known). */
    name: null,
    /** A GET /api/whoami is out (a retry while the role is unknown). */
    asking: false,
    /** Bumped on every sign-in and sign-out: answers from an older session are dropped. */
    gen: 0,
  };

  class ApiError extends Error {
    constructor(status, code, message, detail) {
      super(message);
      this.status = status;
      this.code = code;
      this.jobId = detail && detail.job_id;
    }
  }

  /** The session ended (401 or sign-out) while a request was out: nothing to show. */
  class SessionEnded extends Error {}

  const quiet = (e) => e instanceof SessionEnded || (e && e.name === 'AbortError');

  async function api(method, path, opts) {
    const o = opts || {};
    const gen = session.gen;
    if (!session.token) throw new SessionEnded();
    const headers = Object.assign(
      { Authorization: `Bearer ${session.token}`, Accept: 'application/json' },
      o.body !== undefined ? { 'Content-Type': 'application/json' } : {},
      o.headers || {},
    );
    let resp;
    try {
      resp = await fetch(path, {
        method,
        headers,
        body: o.body !== undefined ? JSON.stringify(o.body) : undefined,
        signal: o.signal,
        cache: 'no-store',
        credentials: 'omit',
        redirect: 'error',
      });
    } catch (e) {
      if (quiet(e)) throw e;
      throw new ApiError(0, 'network_error', String(e && e.message ? e.message : e));
    }
    const text = await resp.text();
    let body = null;
    if (text) {
      try {
        body = JSON.parse(text);
      } catch (_) {
        body = null;
      }
    }
    if (gen !== session.gen) throw new SessionEnded();
    const err = body && typeof body.error === 'object' && body.error ? body.error : {};
    if (resp.status === 401) {
      const why = err.message ? `: ${err.message}` : '';
      endSession(t('refused', { status: 401, code: err.code || 'unauthorized', why }), true);
      throw new SessionEnded();
    }
    if (!resp.ok) {
      throw new ApiError(resp.status, err.code || `http_${resp.status}`,
        err.message || resp.statusText || '', err);
    }
    return { status: resp.status, body };
  }

  /** The API's error answer, in words: status, code, its explanation, the message, the job. */
  function errorContent(e) {
    if (!(e instanceof ApiError)) return [h('strong', null, t('unexpected')), `: ${e}`];
    const why = explain(e.code);
    const parts = [h('strong', { class: 'code' }, e.status ? `${e.status} ${e.code}` : e.code)];
    if (why) parts.push(`: ${why}`);
    if (e.message) parts.push(why ? ` (${e.message})` : `: ${e.message}`);
    if (e.status === 403) parts.push(t('viewer403'));
    if (isUuid(e.jobId)) parts.push(' ', jobLink(e.jobId, t('openJob', { id: e.jobId })));
    return parts;
  }

  function showError(box, e) {
    if (quiet(e)) return;
    setContent(box, ...errorContent(e));
    delete box.dataset.whoami;
    box.hidden = false;
    if (e instanceof ApiError && e.status === 403) becomeViewer();
  }

  function hideError(box) {
    box.hidden = true;
    box.replaceChildren();
    delete box.dataset.whoami;
  }

  const NOTICES = ['workloads-notice', 'snapshots-notice', 'jobs-notice', 'job-notice', 'batch-notice'];

  /** A notice next to the action that caused it. */
  function notify(boxId, ...parts) {
    const box = $(boxId);
    setContent(box, h('span', null, ...parts), ' ',
      h('button', { type: 'button', class: 'link', onclick: () => { box.hidden = true; } }, t('dismiss')));
    box.hidden = false;
  }

  function clearNotices() {
    for (const id of NOTICES) {
      $(id).hidden = true;
      $(id).replaceChildren();
    }
  }

  const live = { ok: true, at: null, error: null };

  function setLive(ok, e) {
    live.ok = ok;
    live.at = ok ? new Date() : live.at;
    live.error = ok ? null : e;
    renderLive();
  }

  function renderLive() {
    const el = $('live');
    if (!session.token) {
      el.textContent = '';
      return;
    }
    el.className = live.ok ? 'live ok' : 'live bad';
    if (live.ok && live.at) el.textContent = t('live.ok', { time: fmtClock(live.at) });
    else if (!live.ok) setContent(el, ...tn('live.bad', { error: h('span', null, ...errorContent(live.error)) }));
  }

  /**
   * The token's name and role from GET /api/whoami (read-only; any valid token may ask).
   * A 401 ends the session (api() does that); any other failure leaves them unknown and
   * is thrown: the page still works, and the API still decides every write.
   */
  async function whoami() {
    const { body } = await api('GET', '/api/whoami');
    const role = body && (body.role === 'admin' || body.role === 'viewer') ? body.role : null;
    const name = body && typeof body.name === 'string' ? body.name : null;
    if (!role) throw new ApiError(0, 'bad_answer', 'GET /api/whoami');
    return { name, role };
  }

  /** Show who is signed in, and enable or disable the write buttons to match. */
  function setIdentity(name, role) {
    const changed = session.role !== role;
    session.name = name;
    session.role = role;
    renderWhoami();
    if (changed) rerenderAll();
  }

  /** The role is still unknown (whoami failed, not with 401): ask again, one at a time. */
  async function retryWhoami() {
    if (session.role || session.asking || !session.token) return;
    session.asking = true;
    const gen = session.gen;
    try {
      const me = await whoami();
      if (gen === session.gen && !session.role) {
        setIdentity(me.name, me.role);
        const box = $('page-error');
        if (box.dataset.whoami) hideError(box);
      }
    } catch (_) {
      // still unknown; the next jobs refresh asks again
    } finally {
      if (gen === session.gen) session.asking = false;
    }
  }

  async function signIn(token) {
    session.gen++;
    session.token = token;
    session.role = null;
    session.name = null;
    session.asking = false;
    try {
      sessionStorage.setItem(TOKEN_KEY, token);
    } catch (_) {
      // storage refused (private mode quota): the session lasts as long as the page
    }
    let me = null;
    let failure = null;
    try {
      me = await whoami();
    } catch (e) {
      if (quiet(e)) return;
      failure = e;
    }
    if (me) {
      session.name = me.name;
      session.role = me.role;
    }
    enterApp();
    if (failure) {
      const box = $('page-error');
      setContent(box, ...tn('who.failed', { error: h('span', null, ...errorContent(failure)) }));
      box.dataset.whoami = 'unknown';
      box.hidden = false;
    }
  }

  /** Forget the token and go back to the sign-in form. */
  function endSession(msg, isError) {
    session.gen++;
    session.token = null;
    session.role = null;
    session.name = null;
    session.asking = false;
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) {
      // nothing stored
    }
    stopJobs();
    closeJobView();
    closeBatchView();
    resetJobs();
    workloads.byId.clear();
    workloads.selected = null;
    active.byWorkload.clear();
    active.last.clear();
    for (const id of ['restore-dialog', 'delete-dialog', 'undo-dialog']) {
      if ($(id).open) $(id).close();
    }
    showLogin(msg, isError);
  }

  function showLogin(msg, isError) {
    $('app-view').hidden = true;
    $('whoami').hidden = true;
    $('signout').hidden = true;
    $('live').textContent = '';
    $('login-view').hidden = false;
    const box = $('login-message');
    box.textContent = msg || '';
    box.className = isError ? 'error' : 'info';
    box.hidden = !msg;
    const input = $('token');
    input.value = '';
    input.focus();
  }

  /** "signed in as NAME (ROLE)"; the name is someone's input, so it is text only. */
  function renderWhoami() {
    const el = $('whoami');
    if (!session.token) return;
    el.hidden = false;
    const role = session.role === 'viewer' ? t('role.viewer')
      : session.role === 'admin' ? t('role.admin') : t('role.unknown');
    setContent(el, ...tn('who.as', {
      name: h('strong', { id: 'whoami-name', translate: 'no' }, session.name === null ? t('who.unknownToken') : session.name),
    }), ` (${role})`);
    el.className = session.role ? `badge ${session.role}` : 'badge';
    if (session.role) el.dataset.role = session.role;
    else delete el.dataset.role;
  }

  function enterApp() {
    $('login-view').hidden = true;
    $('app-view').hidden = false;
    $('signout').hidden = false;
    hideError($('page-error'));
    clearNotices();
    renderWhoami();
    // Workloads first, so the jobs list can name them without one request per row.
    const gen = session.gen;
    loadWorkloads(false).finally(() => {
      if (gen === session.gen) route();
    });
  }

  /** A write was refused with 403: show the page as the read-only page it is. */
  function becomeViewer() {
    if (session.role !== 'viewer') setIdentity(session.name, 'viewer');
  }

  const writeBlocker = () => (session.role === 'viewer' ? t('needsAdmin') : null);

  /** Everything drawn from data again (language or role changed). */
  function rerenderAll() {
    if (!session.token) return;
    renderWhoami();
    renderLive();
    renderWorkloadRows();
    if (workloads.selected) renderSnapshots();
    for (const row of jobsList.rows.values()) replaceRow(row, row.job);
    updateJobsFooter();
    renderFilterChips();
    renderTriage();
    if (jobView.job) renderJob(jobView.job);
    if (batchView.status) renderBatch();
    if (!$('batch-new-view').hidden) renderLauncher();
    if ($('restore-dialog').open) fillRestoreDialog();
    if ($('delete-dialog').open) fillDeleteDialog();
    if ($('undo-dialog').open) fillUndoDialog();
  }

  // ---------------------------------------------------------------- routing

  /** The list view's filters from the URL's hash: #/?state=failed&kind=restore&… */
  function filtersFromHash() {
    const f = {};
    const i = location.hash.indexOf('?');
    if (!location.hash.startsWith('#/') || i < 0) return f;
    const q = new URLSearchParams(location.hash.slice(i + 1));
    for (const k of FILTER_KEYS) {
      const v = (q.get(k) || '').trim();
      if (!v) continue;
      if ((k === 'workload' || k === 'batch') && !isUuid(v)) continue;
      f[k] = v;
    }
    return f;
  }

  function hashOf(f) {
    const q = new URLSearchParams();
    for (const k of FILTER_KEYS) if (f[k]) q.set(k, f[k]);
    const s = q.toString();
    return s ? `#/?${s}` : '#/';
  }

  function showView(id) {
    for (const v of ['list-view', 'job-view', 'batch-view', 'batch-new-view']) $(v).hidden = v !== id;
  }

  let lastRoute = null;

  function route() {
    if (!session.token) return;
    for (const id of ['restore-dialog', 'delete-dialog', 'undo-dialog']) {
      if ($(id).open) $(id).close();
    }
    const hash = location.hash;
    const routeKey = hash.split('?')[0];
    if (routeKey !== lastRoute) clearNotices();
    lastRoute = routeKey;
    let m = /^#\/jobs\/([0-9a-fA-F-]{36})$/.exec(hash);
    if (m && isUuid(m[1])) {
      showView('job-view');
      stopJobs();
      closeBatchView();
      openJobView(m[1].toLowerCase());
      return;
    }
    closeJobView();
    if (hash === '#/batches/new') {
      showView('batch-new-view');
      stopJobs();
      closeBatchView();
      openLauncher();
      return;
    }
    m = /^#\/batches\/([0-9a-fA-F-]{36})$/.exec(hash);
    if (m && isUuid(m[1])) {
      showView('batch-view');
      stopJobs();
      openBatchView(m[1].toLowerCase());
      return;
    }
    closeBatchView();
    showView('list-view');
    applyFilters(filtersFromHash());
    startJobs();
  }

  // ---------------------------------------------------------------- workloads

  const workloads = {
    byId: new Map(),
    order: [],
    cursor: null,
    selected: null,
    fetching: new Set(),
  };

  const fullName = (w) => `${w.project}/${w.stage}/${w.name}`;

  /** project/stage/name, the name stressed: one workload, never two. */
  function workloadLabel(w) {
    if (!w) return '';
    if (w.gone) return t('deletedWorkload', { id: shortId(w.id) });
    return h('span', { class: 'wl', title: w.id, translate: 'no' }, h('span', { class: 'wl-ps' }, `${w.project}/${w.stage}/`),
      h('strong', { class: 'wl-name' }, w.name));
  }

  async function loadWorkloads(more) {
    const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (more) {
      if (!workloads.cursor) return;
      q.set('cursor', workloads.cursor);
    }
    const btn = $('workloads-more');
    btn.disabled = true;
    try {
      const { body } = await api('GET', `/api/workloads?${q}`);
      if (!more) workloads.order = [];
      for (const w of body.items) {
        workloads.byId.set(w.id, w);
        if (!workloads.order.includes(w.id)) workloads.order.push(w.id);
      }
      workloads.cursor = body.next_cursor || null;
      renderWorkloadRows();
      refreshWorkloadNames();
      if (workloads.selected) renderSnapshotsTitle();
    } catch (e) {
      showError($('page-error'), e);
    } finally {
      btn.disabled = false;
    }
  }

  /** Every workload (the batch launcher filters them), a page at a time. */
  async function loadAllWorkloads() {
    if (!workloads.order.length) await loadWorkloads(false);
    for (let i = 0; i < 50 && workloads.cursor; i++) await loadWorkloads(true);
  }

  function renderWorkloadRows() {
    const tbody = $('workloads-table').tBodies[0];
    keepFocus(tbody, () => {
      tbody.replaceChildren(...workloads.order.map((id) => workloadRow(workloads.byId.get(id))).filter(Boolean));
    });
    $('workloads-more').hidden = !workloads.cursor;
    $('workloads-empty').hidden = workloads.order.length > 0;
  }

  function renderWorkloadRow(id) {
    const tbody = $('workloads-table').tBodies[0];
    const old = tbody.querySelector(`tr[data-workload-id="${id}"]`);
    const w = workloads.byId.get(id);
    if (!old || !w) return;
    keepFocus(tbody, () => old.replaceWith(workloadRow(w)));
  }

  /** What a busy workload shows instead of its restore/capture buttons. */
  function busyLink(job) {
    const pct = overallPct(job);
    const key = job.kind === 'capture'
      ? (pct === null ? 'w.capturing' : 'w.capturingPct')
      : job.kind === 'undo' ? 'w.undoing'
        : (pct === null ? 'w.restoring' : 'w.restoringPct');
    const phase = job.state === 'queued' ? t('w.queuedFor') : phaseWord(job.phase);
    return h('a', {
      class: 'busy', href: `#/jobs/${job.id}`, 'data-job-id': job.id, 'data-fk': `busy:${job.workload_id}`,
    }, t(key, { phase, pct: pct === null ? '' : fmtPct(pct / 100) }));
  }

  function lastResult(wid) {
    const j = active.last.get(wid);
    if (!j) return null;
    return h('a', { class: `last s-${j.state}`, href: `#/jobs/${j.id}`, 'data-state': j.state },
      t('w.last', { kind: kindWord(j.kind), state: stateWord(j.state) }));
  }

  function workloadRow(w) {
    const job = active.byWorkload.get(w.id);
    const blocked = writeBlocker();
    return h('tr', { 'data-workload-id': w.id, class: w.id === workloads.selected ? 'selected' : null },
      td('col.workload', { class: 'name' }, workloadLabel(w)),
      td('col.node', { class: 'node' }, w.node),
      td('col.source', null, hasKey(`source.${w.source_kind}`) ? t(`source.${w.source_kind}`) : w.source_kind,
        w.image ? h('span', { class: 'sub' }, w.image) : null),
      td(null, { class: 'actions' },
        h('button', {
          type: 'button', class: 'show-snapshots', 'aria-label': t('w.snapshotsOf', { name: fullName(w) }),
          'data-fk': `snaps:${w.id}`, onclick: () => selectWorkload(w.id),
        }, t('w.snapshots')),
        ' ',
        h('button', {
          type: 'button', class: 'show-jobs', 'aria-label': t('w.jobsOf', { name: fullName(w) }),
          'data-fk': `jobs:${w.id}`, onclick: () => filterJobsByWorkload(w.id),
        }, t('w.jobs')),
        ' ',
        job ? busyLink(job) : h('button', {
          type: 'button', class: 'capture', disabled: Boolean(blocked),
          title: blocked || t('w.captureOf', { name: fullName(w) }),
          'aria-label': t('w.captureOf', { name: fullName(w) }),
          'data-fk': `capture:${w.id}`, onclick: (ev) => capture(w, ev.currentTarget),
        }, t('w.capture')),
        job ? null : lastResult(w.id)));
  }

  /** A job names its workload by id; fetch the ones the list has not shown yet. */
  async function fetchWorkload(id) {
    if (!isUuid(id) || workloads.byId.has(id) || workloads.fetching.has(id)) return;
    workloads.fetching.add(id);
    try {
      const { body } = await api('GET', `/api/workloads/${enc(id)}`);
      workloads.byId.set(body.id, body);
    } catch (e) {
      if (quiet(e)) return;
      if (e.status === 404) workloads.byId.set(id, { id, name: shortId(id), gone: true });
      else return; // try again with the next row that needs it
    } finally {
      workloads.fetching.delete(id);
    }
    refreshWorkloadNames(id);
  }

  function workloadCell(id) {
    const w = workloads.byId.get(id);
    if (w) return workloadLabel(w);
    fetchWorkload(id);
    return shortId(id);
  }

  function workloadText(id) {
    const w = workloads.byId.get(id);
    return w && !w.gone ? fullName(w) : shortId(id);
  }

  /** Re-render the job rows whose workload name is now known. */
  function refreshWorkloadNames(onlyId) {
    for (const row of jobsList.rows.values()) {
      if (onlyId && row.job.workload_id !== onlyId) continue;
      if (row.sig !== jobSig(row.job)) replaceRow(row, row.job);
    }
    if (jobView.job && (!onlyId || jobView.job.workload_id === onlyId)) renderJob(jobView.job);
    if (batchView.status) renderBatch();
    renderFilterChips();
    renderTriage();
  }

  async function capture(w, btn) {
    if (btn) btn.disabled = true;
    hideError($('page-error'));
    try {
      const { body } = await api('POST', `/api/workloads/${enc(w.id)}/snapshots`);
      const job = body.job;
      setActive(job);
      notify('workloads-notice', ...tn('capture.queued', { name: h('strong', null, fullName(w)), job: jobLink(job.id, job.id) }));
      applyJob(job, true);
      if (w.id === workloads.selected) loadSnapshots(false);
      jobsNow();
    } catch (e) {
      showError($('page-error'), e);
      if (btn && btn.isConnected) btn.disabled = Boolean(writeBlocker());
    }
  }

  // ---------------------------------------------------------------- active jobs (busy state)

  const active = {
    byWorkload: new Map(), // workload id -> its queued or running job
    last: new Map(), // workload id -> its job that finished while this page watched
  };

  function setActive(job) {
    const was = active.byWorkload.get(job.workload_id);
    if (isActive(job.state)) {
      active.byWorkload.set(job.workload_id, job);
    } else if (was && was.id === job.id) {
      active.byWorkload.delete(job.workload_id);
      active.last.set(job.workload_id, job);
    } else if (!was) {
      const prev = active.last.get(job.workload_id);
      if (prev && prev.id === job.id) active.last.set(job.workload_id, job);
    }
    const sig = (j) => (j ? [j.id, j.state, j.phase, j.progress_done, j.progress_total].join('|') : '');
    if (sig(was) !== sig(active.byWorkload.get(job.workload_id)) || !isActive(job.state)) {
      renderWorkloadRow(job.workload_id);
      if (job.workload_id === workloads.selected) renderSnapshots();
    }
  }

  /** Every queued or running job (one request), so each workload row shows its state. */
  async function refreshActive(signal) {
    const { body } = await api('GET', `/api/jobs?state=queued,running&limit=${ACTIVE_LIMIT}`, { signal });
    const now = new Map(body.items.map((j) => [j.workload_id, j]));
    const ended = [...active.byWorkload.values()].filter((j) => {
      const n = now.get(j.workload_id);
      return !n || n.id !== j.id;
    });
    for (const j of now.values()) setActive(j);
    for (const j of ended.slice(0, MAX_SINGLE_REFRESH)) {
      try {
        const { body: fin } = await api('GET', `/api/jobs/${enc(j.id)}`, { signal });
        setActive(fin);
        if (fin.workload_id === workloads.selected) loadSnapshots(false);
      } catch (e) {
        if (e instanceof ApiError && e.status === 404) {
          active.byWorkload.delete(j.workload_id);
          renderWorkloadRow(j.workload_id);
        } else throw e;
      }
    }
    return new Set(body.items.map((j) => j.id));
  }

  // ---------------------------------------------------------------- triage

  const triage = { counts: null, failed: [] };

  async function refreshTriage(signal) {
    const [{ body: counts }, { body: failed }] = await Promise.all([
      api('GET', '/api/triage', { signal }),
      api('GET', '/api/jobs?state=failed&kind=restore&limit=5', { signal }),
    ]);
    const dayAgo = Date.now() - 24 * 3600 * 1000;
    triage.counts = counts;
    triage.failed = failed.items.filter((j) => j.finished_at && new Date(j.finished_at).getTime() > dayAgo);
    renderTriage();
  }

  function renderTriage() {
    const c = triage.counts;
    if (!c) return;
    $('triage-running').textContent = t('triage.running', { n: c.running });
    $('triage-queued').textContent = t('triage.queued', { n: c.queued });
    $('triage-failed').textContent = t('triage.failed', { n: c.failed_24h });
    const list = $('failed-restores-list');
    keepFocus(list, () => {
      list.replaceChildren(...triage.failed.map((j) => h('li', { 'data-job-id': j.id },
        jobLink(j.id, shortId(j.id)), ' ', workloadCell(j.workload_id), ' ',
        j.error_code ? h('code', null, j.error_code) : null, ' ',
        explain(j.error_code) || '', ' · ', timeEl(j.finished_at))));
    });
    $('failed-restores-empty').hidden = triage.failed.length > 0;
  }

  // ---------------------------------------------------------------- snapshots

  const snapshots = { cursor: null, gen: 0, items: [], missing: new Map() };

  function renderSnapshotsTitle() {
    const w = workloads.byId.get(workloads.selected);
    setContent($('snapshots-title'), ...tn('snap.title', { name: w ? workloadLabel(w) : workloads.selected }));
    const note = $('snapshots-note');
    note.hidden = !w || w.source_kind === 'image';
    note.textContent = w && w.source_kind !== 'image' ? t('snap.notImage', { kind: w.source_kind }) : '';
  }

  function selectWorkload(id) {
    workloads.selected = id;
    for (const tr of $('workloads-table').tBodies[0].rows) {
      tr.classList.toggle('selected', tr.dataset.workloadId === id);
    }
    $('snapshots-section').hidden = false;
    $('snapshots-notice').hidden = true;
    renderSnapshotsTitle();
    snapshots.items = [];
    renderSnapshots();
    loadSnapshots(false);
  }

  async function loadSnapshots(more) {
    const w = workloads.byId.get(workloads.selected);
    if (!w) return;
    const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (more) {
      if (!snapshots.cursor) return;
      q.set('cursor', snapshots.cursor);
    }
    const gen = more ? snapshots.gen : ++snapshots.gen;
    const btn = $('snapshots-more');
    btn.disabled = true;
    try {
      const { body } = await api('GET', `/api/workloads/${enc(w.id)}/snapshots?${q}`);
      if (gen !== snapshots.gen || workloads.selected !== w.id) return;
      if (!more) {
        snapshots.items = [];
        snapshots.missing.clear();
      }
      snapshots.items.push(...body.items);
      for (const m of body.files_missing || []) snapshots.missing.set(m.snapshot_id, m.since);
      snapshots.cursor = body.next_cursor || null;
      renderSnapshots();
    } catch (e) {
      showError($('page-error'), e);
    } finally {
      btn.disabled = false;
    }
  }

  function renderSnapshots() {
    const w = workloads.byId.get(workloads.selected);
    const tbody = $('snapshots-table').tBodies[0];
    keepFocus(tbody, () => tbody.replaceChildren(...snapshots.items.map((s) => snapshotRow(w, s))));
    $('snapshots-empty').hidden = snapshots.items.length > 0;
    $('snapshots-more').hidden = !snapshots.cursor;
  }

  function restoreBlocker(w, s) {
    const write = writeBlocker();
    if (write) return write;
    if (!w || w.source_kind !== 'image') return t('snap.onlyImage');
    if (s.state !== 'ready') return t('snap.onlyReady', { state: snapStateWord(s.state) });
    if (snapshots.missing.has(s.id)) return t('snap.fileMissingSince', { time: fmtTime(snapshots.missing.get(s.id)) });
    return null;
  }

  const snapStateWord = (s) => (hasKey(`snapstate.${s}`) ? t(`snapstate.${s}`) : s);
  const snapKindWord = (k) => (hasKey(`snapkind.${k}`) ? t(`snapkind.${k}`) : k);

  function snapshotRow(w, s) {
    const blocked = restoreBlocker(w, s);
    const job = w && active.byWorkload.get(w.id);
    const missing = snapshots.missing.get(s.id);
    const badge = s.state === 'ready' ? 'succeeded' : s.state === 'failed' ? 'failed' : 'running';
    return h('tr', { 'data-snapshot-id': s.id, class: missing ? 'missing' : null },
      td('col.snapshot', { class: 'id' }, h('code', { title: s.id }, shortId(s.id))),
      td('col.kind', null, snapKindWord(s.kind)),
      td('col.state', null, h('span', { class: `state-badge s-${badge}` }, snapStateWord(s.state)),
        missing ? [' ', h('span', { class: 'state-badge s-failed file-missing', title: t('snap.fileMissingSince', { time: fmtTime(missing) }) },
          t('snap.fileMissing'))] : null),
      td('col.size', { class: 'size' }, fmtBytes(s.size_bytes)),
      td('col.created', null, timeEl(s.created_at)),
      td(null, { class: 'actions' },
        job ? busyLink(job) : (missing ? null : h('button', {
          type: 'button',
          class: 'restore danger',
          disabled: Boolean(blocked),
          title: blocked || t('snap.restoreTitle', { id: s.id, name: w ? fullName(w) : '' }),
          'aria-label': t('snap.restoreLabel', { id: shortId(s.id) }),
          'data-fk': `restore:${s.id}`,
          onclick: (ev) => openRestore(w, s, ev.currentTarget),
        }, t('snap.restore'))),
        ' ',
        h('button', {
          type: 'button',
          class: 'delete',
          disabled: Boolean(writeBlocker()),
          title: writeBlocker() || t('snap.deleteLabel', { id: s.id }),
          'aria-label': t('snap.deleteLabel', { id: shortId(s.id) }),
          'data-fk': `delete:${s.id}`,
          onclick: (ev) => openDelete(w, s, ev.currentTarget),
        }, t('snap.delete'))));
  }

  // ---------------------------------------------------------------- restore dialog

  const restore = { w: null, s: null, trigger: null, busy: false, noticeBox: 'snapshots-notice' };

  function openRestore(w, s, trigger, noticeBox) {
    if (!w || !s) return;
    Object.assign(restore, { w, s, trigger, busy: false, noticeBox: noticeBox || 'snapshots-notice' });
    $('restore-confirm').value = '';
    hideError($('restore-error'));
    fillRestoreDialog();
    $('restore-dialog').showModal();
    $('restore-confirm').focus();
  }

  function fillRestoreDialog() {
    const { w, s } = restore;
    setContent($('restore-question'), ...tn('restore.what', {
      id: h('code', { id: 'restore-snapshot' }, s.id),
      time: fmtTime(s.created_at),
      name: h('strong', { id: 'restore-workload' }, fullName(w)),
      node: w.node,
    }));
    setContent($('restore-label'), ...tn('restore.type', { name: h('strong', { id: 'restore-expected' }, fullName(w)) }));
    $('restore-submit').textContent = restore.busy ? t('restore.busy') : t('restore.submit');
    syncRestoreButton();
  }

  function syncRestoreButton() {
    const typed = $('restore-confirm').value.trim();
    $('restore-submit').disabled = restore.busy || !restore.w || typed !== fullName(restore.w);
  }

  async function submitRestore(ev) {
    ev.preventDefault();
    syncRestoreButton();
    if ($('restore-submit').disabled) return;
    const { w, s } = restore;
    const dlg = $('restore-dialog');
    restore.busy = true;
    $('restore-submit').textContent = t('restore.busy');
    syncRestoreButton();
    hideError($('restore-error'));
    try {
      const { body } = await api('POST', `/api/workloads/${enc(w.id)}/snapshots/${enc(s.id)}/restore`, {
        headers: { 'X-Confirm-Restore': s.id },
      });
      const job = body.job;
      setActive(job);
      if (dlg.open) dlg.close();
      notify(restore.noticeBox, ...tn('restore.queued', {
        id: h('code', null, shortId(s.id)), name: h('strong', null, fullName(w)), job: jobLink(job.id, job.id),
      }));
      applyJob(job, true);
      jobsNow();
    } catch (e) {
      if (quiet(e)) return;
      showError(dlg.open ? $('restore-error') : $('page-error'), e);
    } finally {
      restore.busy = false;
      $('restore-submit').textContent = t('restore.submit');
      syncRestoreButton();
    }
  }

  // ---------------------------------------------------------------- delete dialog

  const del = { w: null, s: null, trigger: null };

  function openDelete(w, s, trigger) {
    Object.assign(del, { w, s, trigger });
    hideError($('delete-error'));
    fillDeleteDialog();
    $('delete-dialog').showModal();
    $('delete-cancel').focus();
  }

  function fillDeleteDialog() {
    const { w, s } = del;
    setContent($('delete-what'), ...tn('delete.what', {
      id: h('code', null, s.id), kind: snapKindWord(s.kind), time: fmtTime(s.created_at),
      name: h('strong', null, w ? fullName(w) : ''),
    }));
  }

  async function submitDelete(ev) {
    ev.preventDefault();
    const btn = $('delete-submit');
    btn.disabled = true;
    hideError($('delete-error'));
    try {
      await api('DELETE', `/api/snapshots/${enc(del.s.id)}`);
      $('delete-dialog').close();
      notify('snapshots-notice', ...tn('delete.done', { id: h('code', null, shortId(del.s.id)) }));
      loadSnapshots(false);
    } catch (e) {
      if (!quiet(e)) showError($('delete-error'), e);
    } finally {
      btn.disabled = false;
    }
  }

  // ---------------------------------------------------------------- jobs list

  const jobsList = {
    rows: new Map(), // job id -> { job, tr, sig }
    cursor: null, // next_cursor after the last page shown; null: nothing older
    loaded: false,
    epoch: 0, // bumped when the list restarts (filter change): older answers are dropped
    running: false,
    timer: null,
    seq: 0,
    ctrl: null,
    filter: {}, // the filters in force (as in the URL)
    filterKey: null,
  };

  function applyFilters(f) {
    const key = JSON.stringify(FILTER_KEYS.map((k) => f[k] || ''));
    $('filter-state').value = f.state || '';
    if ($('filter-state').value !== (f.state || '')) $('filter-state').value = '';
    $('filter-kind').value = f.kind || '';
    for (const [k, id] of [['project', 'filter-project'], ['stage', 'filter-stage'], ['node', 'filter-node'], ['q', 'filter-text']]) {
      if ($(id).value.trim() !== (f[k] || '')) $(id).value = f[k] || '';
    }
    if (key === jobsList.filterKey) return;
    jobsList.filter = f;
    jobsList.filterKey = key;
    resetJobs();
    renderFilterChips();
    if (f.workload && workloads.byId.has(f.workload) && workloads.selected !== f.workload) selectWorkload(f.workload);
    jobsNow();
  }

  function renderFilterChips() {
    const f = jobsList.filter;
    $('filter-workload').hidden = !f.workload;
    setContent($('filter-workload-name'), f.workload ? workloadCell(f.workload) : '');
    $('filter-batch').hidden = !f.batch;
    const a = $('filter-batch-link');
    a.textContent = f.batch ? shortId(f.batch) : '';
    if (f.batch) a.href = `#/batches/${f.batch}`;
    else a.removeAttribute('href');
  }

  /** The filter controls changed: the URL says so, and route() applies it. */
  function filterControlsChanged(patch) {
    const f = Object.assign({}, jobsList.filter, {
      state: $('filter-state').value,
      kind: $('filter-kind').value,
      project: $('filter-project').value.trim(),
      stage: $('filter-stage').value.trim(),
      node: $('filter-node').value.trim(),
      q: $('filter-text').value.trim(),
    }, patch || {});
    const next = hashOf(f);
    if (next !== location.hash) location.hash = next;
  }

  function jobsUrl(extra) {
    const f = jobsList.filter;
    const q = new URLSearchParams();
    for (const k of FILTER_KEYS) if (f[k]) q.set(k, f[k]);
    q.set('limit', String(PAGE_SIZE));
    for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
    return `/api/jobs?${q}`;
  }

  /** Whether a fresh copy of a job still belongs in the list (the filters the page can check). */
  function matchesFilter(job) {
    const f = jobsList.filter;
    if (f.state && !f.state.split(',').includes(job.state)) return false;
    if (f.kind && job.kind !== f.kind) return false;
    if (f.workload && job.workload_id !== f.workload) return false;
    if (f.batch && job.batch_id !== f.batch) return false;
    if (f.node && job.node !== f.node) return false;
    const w = workloads.byId.get(job.workload_id);
    if (w && f.project && w.project !== f.project) return false;
    if (w && f.stage && w.stage !== f.stage) return false;
    return true;
  }

  function stateBadge(job) {
    const known = JOB_STATES.includes(job.state) ? job.state : 'unknown';
    const flags = [];
    if (job.cancel_requested && isActive(job.state)) flags.push(t('flag.cancelRequested'));
    if (job.recovering && isActive(job.state)) flags.push(t('flag.recovering'));
    return [h('span', { class: `state-badge s-${known}` }, stateWord(job.state)),
      flags.length ? h('span', { class: 'sub' }, flags.join(', ')) : null];
  }

  /** The job's overall progress in percent (0–100) across its phases; null if unknown. */
  function overallPct(job) {
    if (job.state === 'succeeded') return 100;
    const spans = PHASE_SPANS[job.kind] || {};
    const span = spans[job.phase];
    if (!span) return null;
    const frac = job.progress_total > 0 ? Math.min(1, job.progress_done / job.progress_total) : 0;
    return span[0] + (span[1] - span[0]) * frac;
  }

  function phaseText(job) {
    const pct = isActive(job.state) ? overallPct(job) : null;
    const p = phaseWord(job.phase);
    return pct === null ? p : `${p} · ${fmtPct(pct / 100)}`;
  }

  function errorCell(job) {
    if (!job.error_code && !job.error_message) return '';
    const why = explain(job.error_code);
    return [job.error_code ? h('code', null, job.error_code) : null, ' ',
      why ? h('span', { class: 'why' }, why) : null, why && job.error_message ? ' — ' : '',
      job.error_message ? h('span', { translate: 'no', class: 'msg' }, job.error_message) : ''];
  }

  function cancelBlocker(job) {
    return writeBlocker()
      || (job.past_point_of_no_return ? t('job.ponr') : null)
      || (job.cancel_requested ? t('job.cancelRequestedAlready') : null);
  }

  function cancelButton(job, box) {
    if (!isActive(job.state)) return null;
    const blocked = cancelBlocker(job);
    return h('button', {
      type: 'button',
      class: 'cancel',
      disabled: Boolean(blocked),
      title: blocked || t('job.cancelLabel', { id: job.id }),
      'aria-label': t('job.cancelLabel', { id: shortId(job.id) }),
      'data-fk': `cancel:${job.id}`,
      onclick: (ev) => cancelJob(job.id, ev.currentTarget, box),
    }, t('job.cancel'));
  }

  function jobSig(job) {
    return [job.state, job.phase, job.progress_done, job.progress_total, job.attempt, job.recovering,
      job.cancel_requested, job.past_point_of_no_return, job.error_code, job.error_message, job.started_at,
      job.finished_at, workloadText(job.workload_id), session.role, lang].join('\u0000');
  }

  function jobRow(job) {
    return h('tr', { 'data-job-id': job.id, 'data-state': job.state },
      td('col.job', { class: 'id' }, jobLink(job.id, shortId(job.id))),
      td('col.kind', { class: 'kind' }, kindWord(job.kind)),
      td('col.workload', { class: 'workload' }, workloadCell(job.workload_id)),
      td('col.state', { class: 'state' }, stateBadge(job)),
      td('col.phase', { class: 'phase' }, phaseText(job)),
      td('col.attempt', { class: 'attempt' }, String(job.attempt)),
      td('col.error', { class: 'err' }, errorCell(job)),
      td('col.created', { class: 'created' }, timeEl(job.created_at)),
      td('col.started', { class: 'started' }, timeEl(job.started_at)),
      td('col.finished', { class: 'finished' }, timeEl(job.finished_at)),
      td(null, { class: 'actions' }, cancelButton(job, $('jobs-error'))));
  }

  const tbodyOfJobs = () => $('jobs-table').tBodies[0];

  function addRow(job, beforeTr) {
    const row = { job, tr: jobRow(job), sig: jobSig(job) };
    jobsList.rows.set(job.id, row);
    tbodyOfJobs().insertBefore(row.tr, beforeTr || null);
  }

  function replaceRow(row, job) {
    const tr = jobRow(job);
    keepFocus(tbodyOfJobs(), () => row.tr.replaceWith(tr));
    row.tr = tr;
    row.job = job;
    row.sig = jobSig(job);
  }

  function removeRow(id) {
    const row = jobsList.rows.get(id);
    if (!row) return;
    row.tr.remove();
    jobsList.rows.delete(id);
  }

  /** Put a new job where the API's order puts it, if that is within what is shown. */
  function insertSorted(job) {
    for (const tr of tbodyOfJobs().rows) {
      const other = jobsList.rows.get(tr.dataset.jobId);
      if (other && before(job, other.job)) {
        addRow(job, tr);
        return;
      }
    }
    // Older than every row shown: it belongs here only when nothing older exists.
    if (!jobsList.cursor) addRow(job, null);
  }

  /** A fresh copy of a job: update its row (or add it), drop it if it left the filter. */
  function upsert(job, insert) {
    const row = jobsList.rows.get(job.id);
    if (!matchesFilter(job)) {
      if (row) removeRow(job.id);
      return;
    }
    if (row) {
      if (row.sig !== jobSig(job)) replaceRow(row, job);
    } else if (insert) {
      insertSorted(job);
    }
  }

  /** Any fresh copy of a job (an action's answer): list row, busy state and job view alike. */
  function applyJob(job, insert) {
    const f = jobsList.filter;
    // Only what the page can check itself: a text filter needs the API.
    if (jobsList.loaded && !f.q) upsert(job, insert);
    else if (jobsList.loaded && jobsList.rows.has(job.id)) upsert(job, false);
    updateJobsFooter();
    setActive(job);
    if (jobView.id === job.id) renderJob(job);
  }

  function updateJobsFooter() {
    const n = jobsList.rows.size;
    $('jobs-empty').hidden = !jobsList.loaded || n > 0;
    $('jobs-more').hidden = !jobsList.cursor;
    $('jobs-count').textContent = jobsList.loaded ? t(jobsList.cursor ? 'jobs.shownMore' : 'jobs.shown', { n }) : '';
  }

  function resetJobs() {
    jobsList.epoch++;
    if (jobsList.ctrl) jobsList.ctrl.abort();
    jobsList.rows.clear();
    tbodyOfJobs().replaceChildren();
    jobsList.cursor = null;
    jobsList.loaded = false;
    hideError($('jobs-error'));
    updateJobsFooter();
  }

  function showPage(page) {
    for (const j of page.items) {
      if (!jobsList.rows.has(j.id) && matchesFilter(j)) addRow(j, null);
    }
    jobsList.cursor = page.next_cursor || null;
  }

  /** Merge the newest page into the list. */
  function mergeNewest(page) {
    const items = page.items;
    if (!jobsList.loaded) {
      showPage(page);
      jobsList.loaded = true;
      return;
    }
    const first = tbodyOfJobs().rows[0];
    const newestShown = first && jobsList.rows.get(first.dataset.jobId);
    const oldestNew = items[items.length - 1];
    // More jobs arrived than one page holds: there would be a gap; restart from the newest.
    if (page.next_cursor && newestShown && oldestNew && before(oldestNew, newestShown.job)) {
      jobsList.rows.clear();
      tbodyOfJobs().replaceChildren();
      showPage(page);
      return;
    }
    for (const j of items) upsert(j, true);
  }

  /** Active jobs shown but not on the newest page may have changed: re-read them. */
  async function refreshOlderActive(seen, activeIds, signal, epoch) {
    const stale = [...jobsList.rows.values()]
      .filter((r) => isActive(r.job.state) && !seen.has(r.job.id) && !activeIds.has(r.job.id))
      .slice(0, MAX_SINGLE_REFRESH);
    for (const r of stale) {
      try {
        const { body: job } = await api('GET', `/api/jobs/${enc(r.job.id)}`, { signal });
        if (epoch !== jobsList.epoch) return;
        upsert(job, false);
      } catch (e) {
        if (e instanceof ApiError && e.status === 404) removeRow(r.job.id);
        else throw e;
      }
    }
    // Still active ones: the active list has their fresh copies.
    for (const j of active.byWorkload.values()) {
      if (jobsList.rows.has(j.id) && !seen.has(j.id)) upsert(j, false);
    }
  }

  async function jobsTick() {
    jobsList.timer = null;
    if (!jobsList.running) return;
    const seq = ++jobsList.seq;
    const epoch = jobsList.epoch;
    const ctrl = new AbortController();
    jobsList.ctrl = ctrl;
    try {
      const { body } = await api('GET', jobsUrl(), { signal: ctrl.signal });
      if (epoch !== jobsList.epoch) return;
      mergeNewest(body);
      const activeIds = await refreshActive(ctrl.signal);
      if (epoch !== jobsList.epoch) return;
      await refreshOlderActive(new Set(body.items.map((j) => j.id)), activeIds, ctrl.signal, epoch);
      await refreshTriage(ctrl.signal);
      setLive(true);
      retryWhoami();
    } catch (e) {
      if (!quiet(e)) setLive(false, e);
    } finally {
      if (jobsList.ctrl === ctrl) jobsList.ctrl = null;
      updateJobsFooter();
      if (seq === jobsList.seq && jobsList.running && session.token) {
        jobsList.timer = setTimeout(jobsTick, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
      }
    }
  }

  /** Refresh now (and go on polling from there). */
  function jobsNow() {
    if (!jobsList.running) return;
    clearTimeout(jobsList.timer);
    jobsList.timer = null;
    if (jobsList.ctrl) jobsList.ctrl.abort();
    jobsTick();
  }

  function startJobs() {
    if (jobsList.running) return;
    jobsList.running = true;
    jobsTick();
  }

  function stopJobs() {
    jobsList.running = false;
    jobsList.seq++;
    clearTimeout(jobsList.timer);
    jobsList.timer = null;
    if (jobsList.ctrl) jobsList.ctrl.abort();
  }

  async function loadMoreJobs() {
    if (!jobsList.cursor) return;
    const btn = $('jobs-more');
    btn.disabled = true;
    const epoch = jobsList.epoch;
    try {
      const { body } = await api('GET', jobsUrl({ cursor: jobsList.cursor }));
      if (epoch !== jobsList.epoch) return;
      showPage(body);
    } catch (e) {
      showError($('jobs-error'), e);
    } finally {
      btn.disabled = false;
      updateJobsFooter();
    }
  }

  function filterJobsByWorkload(id) {
    filterControlsChanged({ workload: id });
    $('jobs-title').scrollIntoView({ block: 'start' });
  }

  async function cancelJob(id, btn, box) {
    if (btn) btn.disabled = true;
    hideError(box);
    const noticeBox = box === $('job-error') ? 'job-notice' : 'jobs-notice';
    try {
      const { body: job } = await api('POST', `/api/jobs/${enc(id)}/cancel`);
      applyJob(job, false);
      if (job.state === 'cancelled') notify(noticeBox, ...tn('job.cancelled', { id: jobLink(id, id) }));
      else notify(noticeBox, ...tn('job.cancelRequested', { id: jobLink(id, id) }));
    } catch (e) {
      showError(box, e);
      if (e instanceof ApiError && e.status === 409 && jobView.id === id) followAgain();
    } finally {
      if (btn && btn.isConnected) btn.disabled = Boolean(writeBlocker());
    }
  }

  // ---------------------------------------------------------------- job view

  const jobView = { id: null, job: null, phases: [], samples: [], seq: 0, ctrl: null, readFailed: false };

  function openJobView(id) {
    if (jobView.id === id) return;
    closeJobView();
    jobView.id = id;
    $('job-id').textContent = id;
    $('job-fields').replaceChildren();
    $('job-timeline').replaceChildren();
    $('job-overall').replaceChildren();
    $('job-cancel').hidden = true;
    $('job-cancel-why').hidden = true;
    $('job-undo').hidden = true;
    hideError($('job-error'));
    $('job-title').focus();
    followJob(id, ++jobView.seq);
  }

  function closeJobView() {
    jobView.seq++;
    jobView.id = null;
    jobView.job = null;
    jobView.phases = [];
    jobView.samples = [];
    if (jobView.ctrl) jobView.ctrl.abort();
    jobView.ctrl = null;
  }

  function followAgain() {
    if (jobView.id) followJob(jobView.id, ++jobView.seq);
  }

  /** Read the job, then hold ?wait= requests until it is final (each answers at once then). */
  async function followJob(id, seq) {
    let waited = false;
    while (seq === jobView.seq && session.token) {
      const ctrl = new AbortController();
      jobView.ctrl = ctrl;
      try {
        const { body } = await api('GET', `/api/jobs/${enc(id)}${waited ? `?wait=${JOB_WAIT_SECS}` : ''}`, { signal: ctrl.signal });
        if (seq !== jobView.seq) return;
        const { body: ph } = await api('GET', `/api/jobs/${enc(id)}/phases`, { signal: ctrl.signal });
        if (seq !== jobView.seq) return;
        if (jobView.readFailed) hideError($('job-error')); // not an action's error: keep those
        jobView.readFailed = false;
        jobView.phases = ph.items || [];
        setLive(true);
        setActive(body); // the workload's busy state follows the job shown (no list polls here)
        renderJob(body);
        if (!isActive(body.state)) return;
        waited = true;
      } catch (e) {
        if (quiet(e) || seq !== jobView.seq) return;
        showError($('job-error'), e);
        jobView.readFailed = true;
        if (e instanceof ApiError && e.status === 404) return;
        await sleep(POLL_MS);
      }
    }
  }

  const yesNo = (b) => (b ? t('yes') : t('no'));
  const ms = (iso) => (iso ? new Date(iso).getTime() : null);

  /** Bytes per second over the last samples of the current phase. */
  function phaseRate(job) {
    const now = Date.now();
    const s = jobView.samples;
    const last = s[s.length - 1];
    if (!last || last.phase !== job.phase || last.done !== job.progress_done) {
      s.push({ at: now, phase: job.phase, done: job.progress_done });
      while (s.length > 20) s.shift();
    }
    const same = s.filter((x) => x.phase === job.phase && now - x.at < 15000);
    if (same.length < 2) return null;
    const a = same[0];
    const b = same[same.length - 1];
    if (b.at <= a.at || b.done <= a.done) return null;
    return ((b.done - a.done) * 1000) / (b.at - a.at);
  }

  /** Downtime from the timeline: the app stopped (quiescing) until the phase after redeploying. */
  function downtimeMs(job) {
    const p = jobView.phases;
    const stop = p.find((x) => x.phase === 'quiescing');
    const redeploy = p.findIndex((x) => x.phase === 'redeploying');
    if (!stop || redeploy < 0) return null;
    const after = p.slice(redeploy + 1).find((x) => x.phase !== 'redeploying');
    const end = after ? ms(after.at) : (job.finished_at ? ms(job.finished_at) : null);
    return end ? end - ms(stop.at) : null;
  }

  function renderOverall(job) {
    const pct = overallPct(job);
    const box = $('job-overall');
    if (pct === null) {
      box.replaceChildren();
      return;
    }
    const parts = [h('strong', null, t('job.overall')), ' ',
      h('progress', { max: 100, value: Math.round(pct), 'aria-label': t('job.overall') }), ' ',
      h('span', { class: 'pct' }, fmtPct(pct / 100)), ' · ', phaseWord(job.phase)];
    if (isActive(job.state)) {
      const rate = phaseRate(job);
      if (rate) {
        parts.push(' · ', t('job.rate', { rate: fmtBytes(rate) }));
        if (job.progress_total > job.progress_done) {
          parts.push(' · ', t('job.eta', { time: fmtDuration(((job.progress_total - job.progress_done) / rate) * 1000) }));
        }
      }
    }
    setContent(box, ...parts);
  }

  function renderTimeline(job) {
    const p = jobView.phases;
    const ol = $('job-timeline');
    ol.replaceChildren(...p.map((x, i) => {
      const next = p[i + 1];
      const end = next ? ms(next.at) : (isActive(job.state) ? Date.now() : ms(job.finished_at || x.at));
      const label = x.state === 'queued' || x.state === 'running' ? phaseWord(x.phase) : stateWord(x.state);
      const final = !isActive(x.state);
      return h('li', { 'data-phase': x.phase, 'data-state': x.state },
        final ? t('job.phaseAt', { phase: label, time: fmtTime(x.at) })
          : t('job.phaseFor', { phase: label, time: fmtTime(x.at), dur: fmtDuration(end - ms(x.at)) }),
        x.attempt > 1 ? h('span', { class: 'sub' }, t('job.attemptN', { n: x.attempt })) : null);
    }));
  }

  function snapshotLink(w, sid) {
    if (!sid) return t('none');
    if (!w || w.gone) return h('code', null, sid);
    return h('a', { href: hashOf({ workload: w.id }), class: 'snapshot-link' }, h('code', null, sid));
  }

  function renderJob(job) {
    jobView.job = job;
    const w = workloads.byId.get(job.workload_id);
    if (!w) fetchWorkload(job.workload_id);
    const started = ms(job.started_at);
    const duration = started ? (ms(job.finished_at) || Date.now()) - started : null;
    const down = downtimeMs(job);
    const progress = job.progress_total > 0
      ? [h('progress', { max: job.progress_total, value: job.progress_done, 'aria-label': t('jf.progress') }), ' ',
        t('bytesOf', { done: fmtBytes(job.progress_done), total: fmtBytes(job.progress_total) })]
      : t('none');
    const fields = [
      ['state', 'jf.state', stateBadge(job)],
      ['kind', 'jf.kind', kindWord(job.kind)],
      ['workload', 'jf.workload', w && !w.gone
        ? h('a', { href: hashOf({ workload: w.id }), class: 'workload-link' }, workloadLabel(w))
        : h('code', null, job.workload_id)],
      ['snapshot', 'jf.snapshot', snapshotLink(w, job.snapshot_id)],
      ['node', 'jf.node', job.node],
      ['phase', 'jf.phase', phaseWord(job.phase)],
      ['progress', 'jf.progress', progress],
      ['duration', 'jf.duration', duration === null ? t('none') : fmtDuration(duration)],
      ['downtime', 'jf.downtime', down === null ? t('none') : [fmtDuration(down), ' ', h('span', { class: 'sub' }, t('jf.downtimeHow'))]],
      ['attempt', 'jf.attempt', String(job.attempt)],
      ['error', 'jf.error', errorCell(job) || t('none')],
      ['recovering', 'jf.recovering', yesNo(job.recovering)],
      ['cancel-requested', 'jf.cancelRequested', yesNo(job.cancel_requested)],
      ['point-of-no-return', 'jf.ponr', yesNo(job.past_point_of_no_return)],
      ['worker', 'jf.worker', job.worker_id ? h('span', { translate: 'no' }, job.worker_id) : t('none')],
      ['pre-restore', 'jf.preRestore', snapshotLink(w, job.pre_restore_snapshot_id)],
      ['batch', 'jf.batch', job.batch_id ? batchLink(job.batch_id, h('code', null, job.batch_id)) : t('none')],
      ['requested-by', 'jf.requestedBy', job.requested_by ? h('span', { translate: 'no' }, job.requested_by) : t('none')],
      ['created', 'jf.created', timeEl(job.created_at)],
      ['started', 'jf.started', timeEl(job.started_at)],
      ['finished', 'jf.finished', timeEl(job.finished_at)],
      ['heartbeat', 'jf.heartbeat', timeEl(job.heartbeat_at)],
    ];
    $('job-fields').replaceChildren(...fields.flatMap(([key, label, value]) =>
      [h('dt', null, t(label)), h('dd', { 'data-field': key }, value)]));
    renderOverall(job);
    renderTimeline(job);
    const btn = $('job-cancel');
    const blocked = cancelBlocker(job);
    btn.hidden = !isActive(job.state);
    btn.disabled = Boolean(blocked);
    btn.title = blocked || t('job.cancelLabel', { id: job.id });
    const why = $('job-cancel-why');
    why.hidden = btn.hidden || !blocked;
    why.textContent = blocked || '';
    if (blocked) btn.setAttribute('aria-describedby', 'job-cancel-why');
    else btn.removeAttribute('aria-describedby');
    const undo = $('job-undo');
    const busy = Boolean(w && active.byWorkload.has(w.id));
    const undoBlocked = writeBlocker() || (busy ? t('w.busy') : null);
    undo.hidden = !undoable(job);
    undo.disabled = Boolean(undoBlocked);
    undo.title = undoBlocked || t(job.kind === 'undo' ? 'job.undoHintUndo' : 'job.undoHint');
  }

  /** A succeeded restore or undo: what POST /api/jobs/{id}/undo accepts (the API decides). */
  const undoable = (job) => (job.kind === 'restore' || job.kind === 'undo') && job.state === 'succeeded';

  // ---------------------------------------------------------------- undo dialog

  const undoState = { job: null, w: null, trigger: null, busy: false };

  /** "Undo…": put back the data this restore (or undo) replaced, once the name is typed. */
  async function openUndo(ev) {
    const job = jobView.job;
    if (!job || !undoable(job)) return;
    const trigger = ev.currentTarget;
    hideError($('job-error'));
    let w = workloads.byId.get(job.workload_id);
    if (!w) {
      try {
        const { body } = await api('GET', `/api/workloads/${enc(job.workload_id)}`);
        workloads.byId.set(body.id, body);
        w = body;
      } catch (e) {
        showError($('job-error'), e);
        return;
      }
    }
    if (w.gone || jobView.job !== job) return;
    Object.assign(undoState, { job, w, trigger, busy: false });
    $('undo-confirm').value = '';
    hideError($('undo-error'));
    fillUndoDialog();
    $('undo-dialog').showModal();
    $('undo-confirm').focus();
  }

  function fillUndoDialog() {
    const { job, w } = undoState;
    if (!job || !w) return;
    const which = job.kind === 'undo' ? 'Undo' : 'Restore';
    setContent($('undo-question'), ...tn(`undo.what${which}`, {
      job: h('code', { id: 'undo-job' }, job.id),
      name: h('strong', { id: 'undo-workload' }, fullName(w)),
      node: w.node,
    }));
    setContent($('undo-explain'), ...tn(`undo.explain${which}`, { name: h('strong', null, fullName(w)) }));
    setContent($('undo-label'), ...tn('restore.type', { name: h('strong', { id: 'undo-expected' }, fullName(w)) }));
    $('undo-submit').textContent = undoState.busy ? t('undo.busy') : t('undo.submit');
    syncUndoButton();
  }

  function syncUndoButton() {
    const typed = $('undo-confirm').value.trim();
    $('undo-submit').disabled = undoState.busy || !undoState.w || typed !== fullName(undoState.w);
  }

  function setUndoBusy(busy) {
    undoState.busy = busy;
    $('undo-submit').textContent = busy ? t('undo.busy') : t('undo.submit');
    if (busy) $('undo-form').setAttribute('aria-busy', 'true');
    else $('undo-form').removeAttribute('aria-busy');
    syncUndoButton();
  }

  async function submitUndo(ev) {
    ev.preventDefault();
    syncUndoButton();
    if ($('undo-submit').disabled) return;
    const { job } = undoState;
    const dlg = $('undo-dialog');
    setUndoBusy(true);
    hideError($('undo-error'));
    try {
      const { body } = await api('POST', `/api/jobs/${enc(job.id)}/undo`, {
        headers: { 'X-Confirm-Restore': job.id },
      });
      const undone = body.job;
      setActive(undone);
      applyJob(undone, true);
      undoState.trigger = null; // focus goes to the new job's page, not back to the button
      if (dlg.open) dlg.close();
      location.hash = `#/jobs/${undone.id}`;
    } catch (e) {
      if (quiet(e)) return;
      showError(dlg.open ? $('undo-error') : $('job-error'), e);
    } finally {
      setUndoBusy(false);
    }
  }

  // ---------------------------------------------------------------- batch launcher

  const launcher = { newest: new Map(), gen: 0, loading: 0 };

  function launcherMatches() {
    const project = $('batch-project').value.trim();
    const stage = $('batch-stage').value.trim();
    const name = $('batch-name').value.trim().toLowerCase();
    return workloads.order.map((id) => workloads.byId.get(id)).filter((w) => w && w.source_kind === 'image'
      && (!project || w.project === project) && (!stage || w.stage === stage)
      && (!name || w.name.toLowerCase().includes(name)));
  }

  async function openLauncher() {
    hideError($('batch-error'));
    $('batch-confirm').value = '';
    launcher.newest.clear();
    renderLauncher();
    await loadAllWorkloads();
    launcherChanged();
  }

  /** Each matched workload's newest ready snapshot with its file present. */
  async function launcherChanged() {
    const gen = ++launcher.gen;
    renderLauncher();
    const todo = launcherMatches().filter((w) => !launcher.newest.has(w.id));
    $('batch-loading').hidden = !todo.length;
    let i = 0;
    const worker = async () => {
      while (i < todo.length && gen === launcher.gen) {
        const w = todo[i++];
        try {
          const { body } = await api('GET', `/api/workloads/${enc(w.id)}/snapshots?limit=50`);
          const missing = new Set((body.files_missing || []).map((m) => m.snapshot_id));
          launcher.newest.set(w.id, body.items.find((s) => s.state === 'ready' && !missing.has(s.id)) || null);
        } catch (e) {
          if (quiet(e)) return;
          launcher.newest.set(w.id, null);
        }
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    if (gen === launcher.gen) {
      $('batch-loading').hidden = true;
      renderLauncher();
    }
  }

  function launcherItems() {
    const out = [];
    for (const tr of $('batch-items').tBodies[0].rows) {
      const box = tr.querySelector('input[type=checkbox]');
      const s = launcher.newest.get(tr.dataset.workloadId);
      if (box && box.checked && s) out.push({ workload_id: tr.dataset.workloadId, snapshot_id: s.id });
    }
    return out;
  }

  function renderLauncher() {
    const tbody = $('batch-items').tBodies[0];
    const was = new Map([...tbody.rows].map((tr) => [tr.dataset.workloadId, tr.querySelector('input').checked]));
    const matches = launcherMatches();
    keepFocus(tbody, () => tbody.replaceChildren(...matches.map((w) => {
      const s = launcher.newest.get(w.id);
      const known = launcher.newest.has(w.id);
      return h('tr', { 'data-workload-id': w.id },
        td(null, null, h('input', {
          type: 'checkbox', checked: s && was.get(w.id) !== false, disabled: !s,
          'aria-label': t('batch.include', { name: fullName(w) }), 'data-fk': `pick:${w.id}`,
          onchange: syncLauncher,
        })),
        td('col.workload', { class: 'name' }, workloadLabel(w)),
        td('col.snapshot', null, s ? h('code', { title: s.id }, shortId(s.id)) : (known ? t('batch.noSnapshot') : '…')),
        td('col.created', null, s ? timeEl(s.created_at) : ''));
    })));
    $('batch-none').hidden = matches.length > 0;
    syncLauncher();
  }

  function syncLauncher() {
    const n = launcherItems().length;
    $('batch-count').textContent = t('batch.items', { n });
    setContent($('batch-confirm-label'), ...tn('batch.type', { n: h('strong', null, fmtNum(n)) }));
    $('batch-submit').disabled = Boolean(writeBlocker()) || n === 0 || $('batch-confirm').value.trim() !== String(n);
    $('batch-submit').title = writeBlocker() || '';
  }

  function positiveOrNull(id) {
    const v = $(id).value.trim();
    if (!v) return null;
    const n = Number(v);
    return Number.isInteger(n) && n >= 1 ? n : NaN;
  }

  async function postBatch(items, options, errorBox) {
    const body = { items };
    if (options.max_parallel) body.max_parallel = options.max_parallel;
    if (options.stop_after_failures) body.stop_after_failures = options.stop_after_failures;
    const { body: answer } = await api('POST', '/api/restores', {
      body, headers: { 'X-Confirm-Restore': String(items.length) },
    });
    try {
      sessionStorage.setItem(BATCH_KEY + answer.batch_id, JSON.stringify(answer.items));
    } catch (_) {
      // the batch page then shows the refused items' count only
    }
    hideError(errorBox);
    location.hash = `#/batches/${answer.batch_id}`;
    notify('batch-notice', ...tn('batch.newMade', {
      id: h('code', null, shortId(answer.batch_id)), accepted: fmtNum(answer.accepted), n: items.length,
    }));
  }

  async function submitLauncher(ev) {
    ev.preventDefault();
    syncLauncher();
    if ($('batch-submit').disabled) return;
    const items = launcherItems();
    const mp = positiveOrNull('batch-max-parallel');
    const saf = positiveOrNull('batch-stop-after');
    $('batch-submit').disabled = true;
    try {
      await postBatch(items, { max_parallel: mp, stop_after_failures: saf }, $('batch-error'));
    } catch (e) {
      showError($('batch-error'), e);
      syncLauncher();
    }
  }

  // ---------------------------------------------------------------- batch view

  const batchView = { id: null, status: null, seq: 0, refused: null };

  function openBatchView(id) {
    if (batchView.id === id) return;
    closeBatchView();
    batchView.id = id;
    $('batch-id').textContent = id;
    $('batch-jobs').tBodies[0].replaceChildren();
    $('batch-summary').replaceChildren();
    $('batch-counts').replaceChildren();
    $('batch-overall').replaceChildren();
    $('batch-retry-form').hidden = true;
    hideError($('batch-view-error'));
    let stored = null;
    try {
      stored = JSON.parse(sessionStorage.getItem(BATCH_KEY + id) || 'null');
    } catch (_) {
      stored = null;
    }
    batchView.refused = Array.isArray(stored) ? stored.filter((i) => i.status !== 202) : null;
    followBatch(id, ++batchView.seq);
  }

  function closeBatchView() {
    batchView.seq++;
    batchView.id = null;
    batchView.status = null;
  }

  async function followBatch(id, seq) {
    while (seq === batchView.seq && session.token) {
      try {
        const { body } = await api('GET', `/api/batches/${enc(id)}`);
        if (seq !== batchView.seq) return;
        batchView.status = body;
        for (const j of body.jobs) if (!workloads.byId.has(j.workload_id)) fetchWorkload(j.workload_id);
        renderBatch();
        setLive(true);
        if (body.done) return;
      } catch (e) {
        if (quiet(e) || seq !== batchView.seq) return;
        showError($('batch-view-error'), e);
        if (e instanceof ApiError && e.status === 404) return;
      }
      await sleep(POLL_MS);
    }
  }

  function renderBatch() {
    const st = batchView.status;
    if (!st) return;
    const b = st.batch;
    const c = st.counts;
    const total = st.jobs.length;
    const finished = c.succeeded + c.failed + c.cancelled;
    setContent($('batch-summary'), h('span', { class: `state-badge ${st.done ? 's-succeeded' : 's-running'}` },
      st.done ? t('batch.done') : t('batch.running')), ' ', timeEl(b.created_at), ' · ',
    h('span', { translate: 'no' }, b.requested_by || ''), ' · ',
    t('batch.options', {
      mp: b.max_parallel ? fmtNum(b.max_parallel) : t('batch.unlimited'),
      saf: b.stop_after_failures ? fmtNum(b.stop_after_failures) : t('batch.never'),
    }));
    setContent($('batch-overall'), h('progress', { max: Math.max(total, 1), value: finished, 'aria-label': t('batch.overall', { done: finished, total }) }),
      ' ', h('span', { id: 'batch-overall-text' }, t('batch.overall', { done: fmtNum(finished), total: fmtNum(total) })));
    const chips = JOB_STATES.map((s) => h('span', { class: `count s-${s}`, 'data-state': s }, `${stateWord(s)}: ${fmtNum(c[s])}`));
    if (st.rejected) chips.push(h('span', { class: 'count s-failed', 'data-state': 'refused' }, t('batch.refused', { n: st.rejected })));
    setContent($('batch-counts'), ...chips);
    const refused = batchView.refused || [];
    const note = $('batch-refused-note');
    note.hidden = !st.rejected;
    note.textContent = st.rejected ? t('batch.refusedDetail', { why: refused.length ? t('batch.refusedHere') : '' }) : '';
    const tbody = $('batch-jobs').tBodies[0];
    keepFocus(tbody, () => tbody.replaceChildren(
      ...st.jobs.map((j) => h('tr', { 'data-job-id': j.id, 'data-state': j.state },
        td('col.workload', { class: 'workload' }, workloadCell(j.workload_id)),
        td('col.job', null, jobLink(j.id, shortId(j.id))),
        td('col.outcome', { class: 'state' }, stateBadge(j)),
        td('col.phase', null, phaseText(j)),
        td('col.error', { class: 'err' }, errorCell(j)))),
      ...refused.map((i) => h('tr', { class: 'refused', 'data-state': 'refused', 'data-workload-id': i.workload_id },
        td('col.workload', { class: 'workload' }, workloadCell(i.workload_id)),
        td('col.job', null, i.job_id ? jobLink(i.job_id, shortId(i.job_id)) : t('none')),
        td('col.outcome', { class: 'state' }, h('span', { class: 'state-badge s-failed' }, t('batch.refusedItem'))),
        td('col.phase', null, t('none')),
        td('col.error', { class: 'err' }, i.error ? [h('code', null, `${i.status} ${i.error.code}`), ' ',
          explain(i.error.code) || '', ' — ', i.error.message || ''] : '')))));
    const rest = cancellableOf(st);
    const cancelBtn = $('batch-cancel-rest');
    cancelBtn.disabled = Boolean(writeBlocker()) || rest.length === 0;
    cancelBtn.title = writeBlocker() || '';
    const failed = st.jobs.filter((j) => j.state === 'failed' && j.snapshot_id);
    const retry = $('batch-retry');
    retry.disabled = Boolean(writeBlocker()) || failed.length === 0;
    retry.title = writeBlocker() || '';
    setContent($('batch-retry-label'), ...tn('batch.retryType', { n: h('strong', null, fmtNum(failed.length)) }));
    syncRetry();
  }

  const cancellableOf = (st) => st.jobs.filter((j) => j.state === 'queued'
    || (j.state === 'running' && !j.past_point_of_no_return && !j.cancel_requested));

  async function cancelRest(ev) {
    const st = batchView.status;
    if (!st) return;
    const btn = ev.currentTarget;
    btn.disabled = true;
    hideError($('batch-view-error'));
    let n = 0;
    for (const j of cancellableOf(st)) {
      try {
        await api('POST', `/api/jobs/${enc(j.id)}/cancel`);
        n++;
      } catch (e) {
        if (quiet(e)) return;
        // too_late / already_final: it finished meanwhile; the next read shows it
        if (!(e instanceof ApiError && e.status === 409)) showError($('batch-view-error'), e);
      }
    }
    notify('batch-notice', t('batch.cancelledRest', { n }));
    const id = batchView.id;
    batchView.seq++;
    followBatch(id, batchView.seq);
  }

  function syncRetry() {
    const st = batchView.status;
    const n = st ? st.jobs.filter((j) => j.state === 'failed' && j.snapshot_id).length : 0;
    $('batch-retry-submit').disabled = Boolean(writeBlocker()) || n === 0 || $('batch-retry-confirm').value.trim() !== String(n);
  }

  async function submitRetry(ev) {
    ev.preventDefault();
    syncRetry();
    if ($('batch-retry-submit').disabled) return;
    const st = batchView.status;
    const items = st.jobs.filter((j) => j.state === 'failed' && j.snapshot_id)
      .map((j) => ({ workload_id: j.workload_id, snapshot_id: j.snapshot_id }));
    $('batch-retry-submit').disabled = true;
    try {
      await postBatch(items, {
        max_parallel: st.batch.max_parallel, stop_after_failures: st.batch.stop_after_failures,
      }, $('batch-view-error'));
    } catch (e) {
      showError($('batch-view-error'), e);
      syncRetry();
    }
  }

  // ---------------------------------------------------------------- wiring

  function boot() {
    applyStatic();
    $('lang').addEventListener('change', (ev) => setLang(ev.currentTarget.value));
    $('login-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const token = $('token').value.trim();
      if (!token) return;
      const btn = $('signin');
      btn.disabled = true;
      btn.textContent = t('signin.busy');
      try {
        await signIn(token);
      } finally {
        btn.disabled = false;
        btn.textContent = t('signin.button');
      }
    });
    $('signout').addEventListener('click', () => endSession(t('signedout'), false));
    $('workloads-refresh').addEventListener('click', () => loadWorkloads(false));
    $('workloads-more').addEventListener('click', () => loadWorkloads(true));
    $('snapshots-refresh').addEventListener('click', () => loadSnapshots(false));
    $('snapshots-more').addEventListener('click', () => loadSnapshots(true));
    $('jobs-more').addEventListener('click', loadMoreJobs);
    $('jobs-filter').addEventListener('submit', (ev) => {
      ev.preventDefault();
      filterControlsChanged();
    });
    $('filter-state').addEventListener('change', () => filterControlsChanged());
    $('filter-kind').addEventListener('change', () => filterControlsChanged());
    let typing = null;
    for (const id of ['filter-project', 'filter-stage', 'filter-node', 'filter-text']) {
      $(id).addEventListener('input', () => {
        clearTimeout(typing);
        typing = setTimeout(() => filterControlsChanged(), 400);
      });
      $(id).addEventListener('change', () => filterControlsChanged());
    }
    $('filter-workload-clear').addEventListener('click', () => filterControlsChanged({ workload: '' }));
    $('filter-batch-clear').addEventListener('click', () => filterControlsChanged({ batch: '' }));
    $('filter-clear').addEventListener('click', () => {
      location.hash = '#/';
    });
    $('job-cancel').addEventListener('click', (ev) => {
      if (jobView.id) cancelJob(jobView.id, ev.currentTarget, $('job-error'));
    });
    $('job-undo').addEventListener('click', openUndo);
    $('undo-form').addEventListener('submit', submitUndo);
    $('undo-confirm').addEventListener('input', syncUndoButton);
    $('undo-cancel').addEventListener('click', () => $('undo-dialog').close());
    $('undo-dialog').addEventListener('close', () => {
      const tr = undoState.trigger;
      undoState.trigger = null;
      if (tr && tr.isConnected) tr.focus();
    });
    $('restore-form').addEventListener('submit', submitRestore);
    $('restore-confirm').addEventListener('input', syncRestoreButton);
    $('restore-cancel').addEventListener('click', () => $('restore-dialog').close());
    $('restore-dialog').addEventListener('close', () => {
      const tr = restore.trigger;
      restore.trigger = null;
      if (tr && tr.isConnected) tr.focus();
    });
    $('delete-form').addEventListener('submit', submitDelete);
    $('delete-cancel').addEventListener('click', () => $('delete-dialog').close());
    $('delete-dialog').addEventListener('close', () => {
      const tr = del.trigger;
      del.trigger = null;
      if (tr && tr.isConnected) tr.focus();
    });
    for (const id of ['batch-project', 'batch-stage', 'batch-name']) $(id).addEventListener('input', launcherChanged);
    $('batch-confirm').addEventListener('input', syncLauncher);
    $('batch-form').addEventListener('submit', submitLauncher);
    $('batch-cancel-rest').addEventListener('click', cancelRest);
    $('batch-retry').addEventListener('click', () => {
      $('batch-retry-form').hidden = false;
      $('batch-retry-confirm').value = '';
      syncRetry();
      $('batch-retry-confirm').focus();
    });
    $('batch-retry-confirm').addEventListener('input', syncRetry);
    $('batch-retry-form').addEventListener('submit', submitRetry);
    window.addEventListener('hashchange', route);
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) jobsNow();
    });
    $('job-title').setAttribute('tabindex', '-1');

    let stored = null;
    try {
      stored = sessionStorage.getItem(TOKEN_KEY);
    } catch (_) {
      stored = null;
    }
    if (stored) signIn(stored);
    else showLogin(null, false);
  }

  boot();
}());
