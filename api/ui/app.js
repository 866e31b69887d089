// volsnap web UI: plain script, no build step, nothing fetched but this origin's API.
//
// Rules this file keeps (docs/ui.md explains them):
// - API data reaches the page only through textContent and DOM properties, never as
//   markup: workload names and error messages are other people's input. The page's
//   CSP enforces Trusted Types, so a markup sink would throw instead of rendering.
// - The bearer token lives in sessionStorage only (never in persistent storage, a cookie or a
//   URL); any 401 clears it and returns to the sign-in form with the API's message.
// - Lists are fetched a page at a time with the API's cursor; live updates touch only
//   the rows whose job changed.
// - The token's name and role come from GET /api/whoami; signing in sends only reads.
(function () {
  'use strict';

  const TOKEN_KEY = 'volsnap.token';
  const POLL_MS = 2000; // jobs list refresh while the tab is visible
  const HIDDEN_POLL_MS = 10000; // ... and while it is not
  const JOB_WAIT_SECS = 2; // job view: ?wait= per request (answers at once when final)
  const PAGE_SIZE = 100;
  const ACTIVE_LIMIT = 500;
  const MAX_SINGLE_REFRESH = 20; // finished jobs re-read one by one per refresh, at most
  const JOB_STATES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];
  const ACTIVE_STATES = ['queued', 'running'];
  const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

  const $ = (id) => document.getElementById(id);

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

  const isUuid = (s) => typeof s === 'string' && UUID_RE.test(s);
  // Ids are UUIDv7: the leading digits are a timestamp shared by everything made in
  // the same few seconds, so the short form is the random tail.
  const shortId = (id) => '…' + String(id).slice(-8);
  const isActive = (state) => ACTIVE_STATES.includes(state);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const enc = encodeURIComponent;

  function pad(n) {
    return String(n).padStart(2, '0');
  }

  /** Local time, to the second; the exact UTC instant is in the title. */
  function fmtTime(iso) {
    if (!iso) return '—';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function timeEl(iso) {
    if (!iso) return '—';
    return h('time', { datetime: iso, title: iso }, fmtTime(iso));
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let v = Number(n);
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
  }

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
    return h('a', { href: `#/jobs/${id.toLowerCase()}`, class: 'job-link', title: `job ${id}` }, text);
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
      o.headers || {},
    );
    let resp;
    try {
      resp = await fetch(path, {
        method,
        headers,
        signal: o.signal,
        cache: 'no-store',
        credentials: 'omit',
        redirect: 'error',
      });
    } catch (e) {
      if (quiet(e)) throw e;
      throw new ApiError(0, 'network_error', `the API could not be reached (${e && e.message ? e.message : e})`);
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
      endSession(`The API refused the token (401 ${err.code || 'unauthorized'}${why}). Sign in again.`, true);
      throw new SessionEnded();
    }
    if (!resp.ok) {
      throw new ApiError(resp.status, err.code || `http_${resp.status}`,
        err.message || resp.statusText || 'request failed', err);
    }
    return { status: resp.status, body };
  }

  /** The API's error answer, in words: status, code, message, the job it names. */
  function errorContent(e) {
    if (!(e instanceof ApiError)) return [h('strong', null, 'Unexpected error'), `: ${e}`];
    const parts = [h('strong', { class: 'code' }, e.status ? `${e.status} ${e.code}` : e.code), `: ${e.message}`];
    if (e.status === 403) parts.push(' — this is a viewer token: it can look, not change anything.');
    if (isUuid(e.jobId)) parts.push(' ', jobLink(e.jobId, `Open job ${e.jobId}`));
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

  function notify(...parts) {
    const box = $('notice');
    setContent(box, h('span', null, ...parts), ' ',
      h('button', { type: 'button', class: 'link', onclick: () => { box.hidden = true; } }, 'Dismiss'));
    box.hidden = false;
  }

  function setLive(ok, e) {
    const el = $('live');
    el.className = ok ? 'live ok' : 'live bad';
    if (ok) el.textContent = `Live · updated ${fmtTime(new Date().toISOString()).slice(11)}`;
    else setContent(el, 'Not updating: ', ...errorContent(e), ' (retrying)');
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
    if (!role) throw new ApiError(0, 'bad_answer', 'GET /api/whoami gave no role');
    return { name, role };
  }

  /** Show who is signed in, and enable or disable the write buttons to match. */
  function setIdentity(name, role) {
    const changed = session.role !== role;
    session.name = name;
    session.role = role;
    renderWhoami();
    if (!changed) return;
    renderSnapshotButtons();
    for (const row of jobsList.rows.values()) replaceRow(row, row.job);
    if (jobView.job) renderJob(jobView.job);
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
      setContent(box, 'Could not tell whether this token is admin or viewer (',
        ...errorContent(failure), '); the buttons stay enabled and the API decides. Asking again…');
      box.dataset.whoami = 'unknown';
      box.hidden = false;
    }
  }

  /** Forget the token and go back to the sign-in form. */
  function endSession(message, isError) {
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
    resetJobs();
    workloads.byId.clear();
    workloads.selected = null;
    const dlg = $('restore-dialog');
    if (dlg.open) dlg.close();
    showLogin(message, isError);
  }

  function showLogin(message, isError) {
    $('app-view').hidden = true;
    $('whoami').hidden = true;
    $('signout').hidden = true;
    $('live').textContent = '';
    $('login-view').hidden = false;
    const msg = $('login-message');
    msg.textContent = message || '';
    msg.className = isError ? 'error' : 'info';
    msg.hidden = !message;
    const input = $('token');
    input.value = '';
    input.focus();
  }

  /** "signed in as NAME (ROLE)"; the name is someone's input, so it is text only. */
  function renderWhoami() {
    const el = $('whoami');
    el.hidden = false;
    const role = session.role === 'viewer' ? 'viewer · read-only'
      : session.role === 'admin' ? 'admin' : 'role unknown';
    setContent(el, 'signed in as ',
      h('strong', { id: 'whoami-name' }, session.name === null ? '(unknown token)' : session.name),
      ` (${role})`);
    el.className = session.role ? `badge ${session.role}` : 'badge';
    if (session.role) el.dataset.role = session.role;
    else delete el.dataset.role;
  }

  function enterApp() {
    $('login-view').hidden = true;
    $('app-view').hidden = false;
    $('signout').hidden = false;
    hideError($('page-error'));
    $('notice').hidden = true;
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

  const writeBlocker = () =>
    (session.role === 'viewer' ? 'needs an admin token (you are signed in with a viewer token)' : null);

  // ---------------------------------------------------------------- routing

  function route() {
    if (!session.token) return;
    const dlg = $('restore-dialog');
    if (dlg.open) dlg.close();
    const m = /^#\/jobs\/([0-9a-fA-F-]{36})$/.exec(location.hash);
    if (m && isUuid(m[1])) {
      $('list-view').hidden = true;
      $('job-view').hidden = false;
      stopJobs();
      openJobView(m[1].toLowerCase());
    } else {
      closeJobView();
      $('job-view').hidden = true;
      $('list-view').hidden = false;
      startJobs();
    }
  }

  // ---------------------------------------------------------------- workloads

  const workloads = {
    byId: new Map(),
    cursor: null,
    selected: null,
    fetching: new Set(),
  };

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
      const tbody = $('workloads-table').tBodies[0];
      if (!more) tbody.replaceChildren();
      for (const w of body.items) {
        workloads.byId.set(w.id, w);
        tbody.appendChild(workloadRow(w));
      }
      workloads.cursor = body.next_cursor || null;
      btn.hidden = !workloads.cursor;
      $('workloads-empty').hidden = tbody.rows.length > 0;
      refreshWorkloadNames();
      if (workloads.selected && workloads.byId.has(workloads.selected)) {
        $('snapshots-workload').textContent = workloads.byId.get(workloads.selected).name;
      }
    } catch (e) {
      showError($('page-error'), e);
    } finally {
      btn.disabled = false;
    }
  }

  function workloadRow(w) {
    return h('tr', { 'data-workload-id': w.id, class: w.id === workloads.selected ? 'selected' : null },
      h('td', { class: 'name' }, w.name),
      h('td', null, `${w.project} / ${w.stage}`),
      h('td', null, w.node),
      h('td', null, w.source_kind, w.image ? h('div', { class: 'sub' }, w.image) : null),
      h('td', { class: 'actions' },
        h('button', {
          type: 'button', class: 'show-snapshots', 'aria-label': `Snapshots of ${w.name}`,
          onclick: () => selectWorkload(w.id),
        }, 'Snapshots'),
        ' ',
        h('button', {
          type: 'button', class: 'show-jobs', 'aria-label': `Jobs of ${w.name}`,
          onclick: () => filterJobsByWorkload(w.id),
        }, 'Jobs')));
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
      if (e.status === 404) workloads.byId.set(id, { id, name: `(deleted workload ${shortId(id)})`, gone: true });
      else return; // try again with the next row that needs it
    } finally {
      workloads.fetching.delete(id);
    }
    refreshWorkloadNames(id);
  }

  function workloadName(id) {
    const w = workloads.byId.get(id);
    if (w) return w.name;
    fetchWorkload(id);
    return shortId(id);
  }

  /** Re-render the job rows whose workload name is now known. */
  function refreshWorkloadNames(onlyId) {
    for (const row of jobsList.rows.values()) {
      if (onlyId && row.job.workload_id !== onlyId) continue;
      const cell = row.tr.querySelector('td.workload');
      const w = workloads.byId.get(row.job.workload_id);
      if (w && cell && cell.textContent !== w.name) replaceRow(row, row.job);
    }
    if (jobView.job && (!onlyId || jobView.job.workload_id === onlyId)) renderJob(jobView.job);
  }

  // ---------------------------------------------------------------- snapshots

  const snapshots = { cursor: null, gen: 0, items: [] };

  function selectWorkload(id) {
    workloads.selected = id;
    for (const tr of $('workloads-table').tBodies[0].rows) {
      tr.classList.toggle('selected', tr.dataset.workloadId === id);
    }
    const w = workloads.byId.get(id);
    $('snapshots-section').hidden = false;
    $('snapshots-workload').textContent = w ? w.name : id;
    const note = $('snapshots-note');
    note.hidden = !w || w.source_kind === 'image';
    note.textContent = w && w.source_kind !== 'image'
      ? `Only image workloads can be restored; this one is ${w.source_kind}.` : '';
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
      if (!more) snapshots.items = [];
      snapshots.items.push(...body.items);
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
    tbody.replaceChildren(...snapshots.items.map((s) => snapshotRow(w, s)));
    $('snapshots-empty').hidden = snapshots.items.length > 0;
    $('snapshots-more').hidden = !snapshots.cursor;
  }

  const renderSnapshotButtons = () => {
    if (workloads.selected) renderSnapshots();
  };

  function restoreBlocker(w, s) {
    const write = writeBlocker();
    if (write) return write;
    if (!w || w.source_kind !== 'image') return 'only image workloads can be restored';
    if (s.state !== 'ready') return `only ready snapshots can be restored (this one is ${s.state})`;
    return null;
  }

  function snapshotRow(w, s) {
    const blocked = restoreBlocker(w, s);
    return h('tr', { 'data-snapshot-id': s.id },
      h('td', { class: 'id' }, h('code', { title: s.id }, shortId(s.id))),
      h('td', null, s.kind),
      h('td', null, h('span', { class: `state-badge s-${s.state === 'ready' ? 'succeeded' : s.state === 'failed' ? 'failed' : 'running'}` }, s.state)),
      h('td', null, fmtBytes(s.size_bytes)),
      h('td', null, timeEl(s.created_at)),
      h('td', { class: 'actions' },
        h('button', {
          type: 'button',
          class: 'restore danger',
          disabled: Boolean(blocked),
          title: blocked || `Restore snapshot ${s.id} onto ${w ? w.name : 'its workload'}`,
          'aria-label': `Restore snapshot ${shortId(s.id)}`,
          onclick: (ev) => openRestore(w, s, ev.currentTarget),
        }, 'Restore…')));
  }

  // ---------------------------------------------------------------- restore dialog

  const restore = { w: null, s: null, trigger: null, busy: false };

  function openRestore(w, s, trigger) {
    if (!w || !s) return;
    Object.assign(restore, { w, s, trigger, busy: false });
    $('restore-snapshot').textContent = s.id;
    $('restore-taken').textContent = fmtTime(s.created_at);
    $('restore-workload').textContent = w.name;
    $('restore-where').textContent = `project ${w.project}, stage ${w.stage}, node ${w.node}`;
    $('restore-expected').textContent = w.name;
    const input = $('restore-confirm');
    input.value = '';
    hideError($('restore-error'));
    $('restore-submit').textContent = 'Restore';
    syncRestoreButton();
    $('restore-dialog').showModal();
    input.focus();
  }

  function syncRestoreButton() {
    const typed = $('restore-confirm').value.trim();
    $('restore-submit').disabled = restore.busy || !restore.w || typed !== restore.w.name;
  }

  async function submitRestore(ev) {
    ev.preventDefault();
    syncRestoreButton();
    if ($('restore-submit').disabled) return;
    const { w, s } = restore;
    const dlg = $('restore-dialog');
    restore.busy = true;
    $('restore-submit').textContent = 'Restoring…';
    syncRestoreButton();
    hideError($('restore-error'));
    try {
      const { body } = await api('POST', `/api/workloads/${enc(w.id)}/snapshots/${enc(s.id)}/restore`, {
        headers: { 'X-Confirm-Restore': s.id },
      });
      const job = body.job;
      if (dlg.open) dlg.close();
      notify('Restore of snapshot ', h('code', null, shortId(s.id)), ' onto ', h('strong', null, w.name),
        ' queued as job ', jobLink(job.id, job.id), '.');
      applyJob(job, true);
      jobsNow();
    } catch (e) {
      if (quiet(e)) return;
      showError(dlg.open ? $('restore-error') : $('page-error'), e);
    } finally {
      restore.busy = false;
      $('restore-submit').textContent = 'Restore';
      syncRestoreButton();
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
    workload: null, // workload filter (id)
  };

  function jobFilter() {
    return { state: $('filter-state').value, kind: $('filter-kind').value, workload: jobsList.workload };
  }

  function jobsUrl(extra, ignoreState) {
    const f = jobFilter();
    const q = new URLSearchParams();
    if (f.state && !ignoreState) q.set('state', f.state);
    if (f.kind) q.set('kind', f.kind);
    if (f.workload) q.set('workload', f.workload);
    q.set('limit', String(PAGE_SIZE));
    for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
    return `/api/jobs?${q}`;
  }

  function matchesFilter(job) {
    const f = jobFilter();
    if (f.state && !f.state.split(',').includes(job.state)) return false;
    if (f.kind && job.kind !== f.kind) return false;
    if (f.workload && job.workload_id !== f.workload) return false;
    return true;
  }

  function stateBadge(job) {
    const known = JOB_STATES.includes(job.state) ? job.state : 'unknown';
    const flags = [];
    if (job.cancel_requested && isActive(job.state)) flags.push('cancel requested');
    if (job.recovering && isActive(job.state)) flags.push('recovering');
    return [h('span', { class: `state-badge s-${known}` }, job.state),
      flags.length ? h('span', { class: 'sub' }, flags.join(', ')) : null];
  }

  function phaseText(job) {
    if (job.progress_total > 0) {
      const pct = Math.min(100, Math.floor((100 * job.progress_done) / job.progress_total));
      return `${job.phase} (${pct}%)`;
    }
    return job.phase;
  }

  function errorCell(job) {
    if (!job.error_code && !job.error_message) return '';
    return [job.error_code ? h('code', null, job.error_code) : null, ' ', job.error_message || ''];
  }

  function cancelButton(job, box) {
    if (!isActive(job.state)) return null;
    const blocked = writeBlocker() || (job.cancel_requested ? 'cancel already requested' : null);
    return h('button', {
      type: 'button',
      class: 'cancel',
      disabled: Boolean(blocked),
      title: blocked || `Cancel job ${job.id}`,
      'aria-label': `Cancel job ${shortId(job.id)}`,
      onclick: (ev) => cancelJob(job.id, ev.currentTarget, box),
    }, 'Cancel');
  }

  function jobSig(job) {
    const w = workloads.byId.get(job.workload_id);
    return [job.state, job.phase, job.progress_done, job.progress_total, job.attempt, job.recovering,
      job.cancel_requested, job.error_code, job.error_message, job.started_at, job.finished_at,
      w ? w.name : '', session.role].join('\u0000');
  }

  function jobRow(job) {
    const w = workloads.byId.get(job.workload_id);
    return h('tr', { 'data-job-id': job.id, 'data-state': job.state },
      h('td', { class: 'id' }, jobLink(job.id, shortId(job.id))),
      h('td', { class: 'kind' }, job.kind),
      h('td', { class: 'workload', title: w && !w.gone ? `${w.project} / ${w.stage} · ${job.workload_id}` : job.workload_id },
        workloadName(job.workload_id)),
      h('td', { class: 'state' }, stateBadge(job)),
      h('td', { class: 'phase' }, phaseText(job)),
      h('td', { class: 'attempt' }, String(job.attempt)),
      h('td', { class: 'err' }, errorCell(job)),
      h('td', { class: 'created' }, timeEl(job.created_at)),
      h('td', { class: 'started' }, timeEl(job.started_at)),
      h('td', { class: 'finished' }, timeEl(job.finished_at)),
      h('td', { class: 'actions' }, cancelButton(job, $('jobs-error'))));
  }

  function tbodyOfJobs() {
    return $('jobs-table').tBodies[0];
  }

  function addRow(job, beforeTr) {
    const row = { job, tr: jobRow(job), sig: jobSig(job) };
    jobsList.rows.set(job.id, row);
    tbodyOfJobs().insertBefore(row.tr, beforeTr || null);
  }

  function replaceRow(row, job) {
    const tr = jobRow(job);
    row.tr.replaceWith(tr);
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
      const finished = isActive(row.job.state) && !isActive(job.state);
      if (row.sig !== jobSig(job)) replaceRow(row, job);
      if (finished && job.workload_id === workloads.selected) loadSnapshots(false);
    } else if (insert) {
      insertSorted(job);
    }
  }

  /** Any fresh copy of a job (an action's answer): list row and job view alike. */
  function applyJob(job, insert) {
    if (jobsList.loaded) upsert(job, insert);
    updateJobsFooter();
    if (jobView.id === job.id) renderJob(job);
  }

  function updateJobsFooter() {
    const n = jobsList.rows.size;
    $('jobs-empty').hidden = !jobsList.loaded || n > 0;
    $('jobs-more').hidden = !jobsList.cursor;
    $('jobs-count').textContent = jobsList.loaded
      ? `${n} job${n === 1 ? '' : 's'} shown${jobsList.cursor ? '; older ones are a page away' : ''}.`
      : '';
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
  async function refreshOlderActive(seen, signal, epoch) {
    let stale = [...jobsList.rows.values()].filter((r) => isActive(r.job.state) && !seen.has(r.job.id));
    if (!stale.length) return;
    const { body } = await api('GET', jobsUrl({ state: ACTIVE_STATES.join(','), limit: String(ACTIVE_LIMIT) }, true), { signal });
    if (epoch !== jobsList.epoch) return;
    const active = new Set();
    for (const j of body.items) {
      active.add(j.id);
      if (jobsList.rows.has(j.id)) upsert(j, false);
    }
    // The rest finished since: read each (a few per refresh).
    stale = stale.filter((r) => !active.has(r.job.id)).slice(0, MAX_SINGLE_REFRESH);
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
      await refreshOlderActive(new Set(body.items.map((j) => j.id)), ctrl.signal, epoch);
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

  function filterChanged() {
    resetJobs();
    const id = jobsList.workload;
    $('filter-workload').hidden = !id;
    $('filter-workload-name').textContent = id ? workloadName(id) : '';
    jobsNow();
  }

  function filterJobsByWorkload(id) {
    jobsList.workload = id;
    filterChanged();
    $('jobs-title').scrollIntoView({ block: 'start' });
  }

  async function cancelJob(id, btn, box) {
    if (btn) btn.disabled = true;
    hideError(box);
    try {
      const { body: job } = await api('POST', `/api/jobs/${enc(id)}/cancel`);
      applyJob(job, false);
      if (job.state === 'cancelled') notify('Job ', jobLink(id, id), ' cancelled.');
      else notify('Cancel requested for job ', jobLink(id, id), ': its worker stops it before it touches the workload.');
    } catch (e) {
      showError(box, e);
      if (e instanceof ApiError && e.status === 409 && jobView.id === id) followAgain();
    } finally {
      if (btn && btn.isConnected) btn.disabled = Boolean(writeBlocker());
    }
  }

  // ---------------------------------------------------------------- job view

  const jobView = { id: null, job: null, seq: 0, ctrl: null, readFailed: false };

  function openJobView(id) {
    if (jobView.id === id) return;
    closeJobView();
    jobView.id = id;
    $('job-id').textContent = id;
    $('job-fields').replaceChildren();
    $('job-cancel').hidden = true;
    hideError($('job-error'));
    $('job-title').focus();
    followJob(id, ++jobView.seq);
  }

  function closeJobView() {
    jobView.seq++;
    jobView.id = null;
    jobView.job = null;
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
        if (jobView.readFailed) hideError($('job-error')); // not an action's error: keep those
        jobView.readFailed = false;
        setLive(true);
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

  function yesNo(b) {
    return b ? 'yes' : 'no';
  }

  function renderJob(job) {
    jobView.job = job;
    const w = workloads.byId.get(job.workload_id);
    const progress = job.progress_total > 0
      ? [h('progress', { max: job.progress_total, value: job.progress_done }),
        ` ${fmtBytes(job.progress_done)} of ${fmtBytes(job.progress_total)}`]
      : '—';
    const fields = [
      ['state', 'State', stateBadge(job)],
      ['kind', 'Kind', job.kind],
      ['workload', 'Workload', [workloadName(job.workload_id), ' ',
        h('code', { class: 'sub' }, w && !w.gone ? `${w.project} / ${w.stage} · ${job.workload_id}` : job.workload_id)]],
      ['snapshot', 'Snapshot', job.snapshot_id ? h('code', null, job.snapshot_id) : '—'],
      ['node', 'Node', job.node],
      ['phase', 'Phase', job.phase],
      ['progress', 'Progress', progress],
      ['attempt', 'Attempt', String(job.attempt)],
      ['error', 'Error', errorCell(job) || '—'],
      ['recovering', 'Recovering', yesNo(job.recovering)],
      ['cancel-requested', 'Cancel requested', yesNo(job.cancel_requested)],
      ['point-of-no-return', 'Past point of no return', yesNo(job.past_point_of_no_return)],
      ['worker', 'Worker', job.worker_id || '—'],
      ['pre-restore', 'Pre-restore snapshot', job.pre_restore_snapshot_id ? h('code', null, job.pre_restore_snapshot_id) : '—'],
      ['batch', 'Batch', job.batch_id ? h('code', null, job.batch_id) : '—'],
      ['requested-by', 'Requested by', job.requested_by || '—'],
      ['created', 'Created', timeEl(job.created_at)],
      ['started', 'Started', timeEl(job.started_at)],
      ['finished', 'Finished', timeEl(job.finished_at)],
      ['heartbeat', 'Last heartbeat', timeEl(job.heartbeat_at)],
    ];
    $('job-fields').replaceChildren(...fields.flatMap(([key, label, value]) =>
      [h('dt', null, label), h('dd', { 'data-field': key }, value)]));
    const btn = $('job-cancel');
    const blocked = writeBlocker() || (job.cancel_requested ? 'cancel already requested' : null);
    btn.hidden = !isActive(job.state);
    btn.disabled = Boolean(blocked);
    btn.title = blocked || `Cancel job ${job.id}`;
  }

  // ---------------------------------------------------------------- wiring

  function boot() {
    $('login-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const token = $('token').value.trim();
      if (!token) return;
      const btn = $('signin');
      btn.disabled = true;
      btn.textContent = 'Signing in…';
      try {
        await signIn(token);
      } finally {
        btn.disabled = false;
        btn.textContent = 'Sign in';
      }
    });
    $('signout').addEventListener('click', () => endSession('Signed out.', false));
    $('workloads-refresh').addEventListener('click', () => loadWorkloads(false));
    $('workloads-more').addEventListener('click', () => loadWorkloads(true));
    $('snapshots-refresh').addEventListener('click', () => loadSnapshots(false));
    $('snapshots-more').addEventListener('click', () => loadSnapshots(true));
    $('jobs-more').addEventListener('click', loadMoreJobs);
    $('jobs-filter').addEventListener('submit', (ev) => ev.preventDefault());
    $('filter-state').addEventListener('change', filterChanged);
    $('filter-kind').addEventListener('change', filterChanged);
    $('filter-workload-clear').addEventListener('click', () => {
      jobsList.workload = null;
      filterChanged();
    });
    $('job-cancel').addEventListener('click', (ev) => {
      if (jobView.id) cancelJob(jobView.id, ev.currentTarget, $('job-error'));
    });
    $('restore-form').addEventListener('submit', submitRestore);
    $('restore-confirm').addEventListener('input', syncRestoreButton);
    $('restore-cancel').addEventListener('click', () => $('restore-dialog').close());
    $('restore-dialog').addEventListener('close', () => {
      const t = restore.trigger;
      restore.trigger = null;
      if (t && t.isConnected) t.focus();
    });
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
