// queuectl dashboard: plain JS, no framework, no CDN. Every value from the
// server reaches the page through textContent or setAttribute (the h() and
// svg() builders below), never through innerHTML, so nothing is interpreted
// as HTML. Each panel polls its own endpoint on its own interval, and polling
// pauses while the tab is hidden.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);

  /** Builds an element: h('td', {class: 'num'}, 'text', childNode, ...). */
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, kids);
    return el;
  }
  const SVGNS = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, ...kids) {
    const el = document.createElementNS(SVGNS, tag);
    setAttrs(el, attrs);
    append(el, kids);
    return el;
  }
  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'style') el.style.cssText = String(v); // CSSOM: allowed by the page's CSP, unlike a style attribute
      else el.setAttribute(k, String(v));
    }
  }
  function append(el, kids) {
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.appendChild(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
  }
  function fill(el, ...kids) {
    el.replaceChildren();
    append(el, kids);
  }

  // ---- time -------------------------------------------------------------
  let skew = 0; // server clock minus this browser's clock, in ms
  const now = () => Date.now() + skew;
  const plural = (n, w) => `${n} ${w}${n === 1 ? '' : 's'}`;
  /** "5 hours, 30 min", like the CLI. */
  function span(ms) {
    const s = Math.floor(Math.abs(ms) / 1000);
    const d = Math.floor(s / 86400), hr = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d > 0) return `${plural(d, 'day')}, ${plural(hr, 'hour')}`;
    if (hr > 0) return `${plural(hr, 'hour')}, ${m} min`;
    if (m > 0) return `${m} min`;
    if (s > 0) return `${s} s`;
    return 'less than a second';
  }
  /** "in 5 hours, 30 min" / "3 min ago". */
  function rel(ts) {
    if (!ts) return '–';
    const t = Date.parse(ts);
    if (Number.isNaN(t)) return String(ts);
    const d = t - now();
    if (Math.abs(d) < 1000) return 'now';
    return d > 0 ? `in ${span(d)}` : `${span(d)} ago`;
  }
  function abs(ts) {
    if (!ts) return '';
    const t = new Date(ts);
    return Number.isNaN(t.getTime()) ? String(ts) : t.toLocaleString();
  }
  function timeEl(ts) {
    return ts ? h('time', { datetime: ts, title: abs(ts) }, rel(ts)) : '–';
  }
  const fmtMs = (v) => (v === null || v === undefined ? '–' : v < 1000 ? `${Math.round(v)} ms` : v < 60000 ? `${(v / 1000).toFixed(1)} s` : span(v));
  const fmtPct = (v) => (v === null || v === undefined ? '–' : `${(v * 100).toFixed(1)}%`);
  const fmtNum = (v) => (v === null || v === undefined ? '–' : Number(v).toLocaleString());
  const fmtSecs = (v) => (v === null || v === undefined ? '–' : span(v * 1000));
  function preview(v, max) {
    const s = typeof v === 'string' ? v : JSON.stringify(v);
    if (s === undefined || s === null) return '';
    const one = s.replace(/\s+/g, ' ');
    return one.length > max ? one.slice(0, max - 1) + '…' : one;
  }
  /** A Postgres interval as JSON gives it ("00:00:30", "1 day 02:00:00", "168:00:00") as "30 s"; else as it is. */
  function fmtInterval(v) {
    if (v === null || v === undefined) return '–';
    const m = /^(?:(\d+) days? )?(\d+):(\d\d):(\d\d(?:\.\d+)?)$/.exec(String(v));
    if (!m) return String(v);
    const ms = (((Number(m[1] || 0) * 24 + Number(m[2])) * 60 + Number(m[3])) * 60 + Number(m[4])) * 1000;
    return ms === 0 ? '0 s' : span(ms);
  }
  const PRIO_NAME = { '-20': 'critical', '-10': 'high', 0: 'normal', 10: 'low' };
  const fmtPrio = (p) => (p === null || p === undefined ? '–' : PRIO_NAME[p] ? `${PRIO_NAME[p]} (${p})` : String(p));

  // ---- server -----------------------------------------------------------
  async function api(path, opts) {
    const res = await fetch(path, Object.assign({ headers: { Accept: 'application/json' } }, opts || {}));
    let body = null;
    try { body = await res.json(); } catch (_) { /* not JSON */ }
    if (!res.ok) throw new Error((body && body.error) || `${res.status} ${res.statusText}`);
    return body;
  }
  const post = (path) => api(path, { method: 'POST', headers: { 'X-Queuectl': '1', Accept: 'application/json' } });

  let toastTimer = null;
  function toast(msg, isError) {
    const t = $('toast');
    t.textContent = msg;
    t.className = 'toast' + (isError ? ' error' : '');
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, isError ? 7000 : 3500);
  }

  // ---- panels: each on its own interval, paused while hidden --------------
  const panels = {};
  function panel(id, interval, load) {
    panels[id] = { id, interval, load, timer: null, busy: false, again: false, failed: false };
  }
  function setLive() {
    const hidden = document.visibilityState === 'hidden';
    const down = Object.values(panels).some((p) => p.failed);
    $('live-dot').className = 'dot' + (hidden ? ' paused' : down ? ' down' : '');
    $('live-text').textContent = hidden ? 'paused' : down ? 'connection problem' : 'live';
  }
  async function refresh(id) {
    const p = panels[id];
    if (!p) return;
    // A refresh asked for while one runs (e.g. right after Pause) runs again
    // after it: the running one may have read the state from before the action.
    if (p.busy) { p.again = true; return; }
    p.busy = true;
    p.again = false;
    const foot = $(id + '-foot');
    try {
      await p.load();
      p.failed = false;
      if (foot) {
        foot.className = 'panel-foot';
        foot.textContent = `updated ${new Date().toLocaleTimeString()} · every ${p.interval / 1000} s`;
      }
    } catch (e) {
      p.failed = true;
      if (foot) {
        foot.className = 'panel-foot error';
        foot.textContent = `update failed: ${e.message} (retrying every ${p.interval / 1000} s)`;
      }
    } finally {
      p.busy = false;
      setLive();
      if (p.again) refresh(id);
    }
  }
  function arm(id) {
    const p = panels[id];
    clearTimeout(p.timer);
    p.timer = null;
    if (document.visibilityState === 'hidden') return;
    p.timer = setTimeout(async () => { await refresh(id); arm(id); }, p.interval);
  }
  function startAll() {
    for (const id of Object.keys(panels)) { refresh(id); arm(id); }
  }
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'hidden') {
      for (const p of Object.values(panels)) { clearTimeout(p.timer); p.timer = null; }
    } else {
      startAll();
    }
    setLive();
  });

  // ---- queue statistics ---------------------------------------------------
  const knownQueues = new Set();
  function syncQueueSelect(sel, names) {
    const cur = sel.value;
    const want = [''].concat(names);
    const have = Array.from(sel.options).map((o) => o.value);
    if (want.join('\n') === have.join('\n')) return;
    fill(sel, want.map((q) => h('option', { value: q }, q === '' ? 'all queues' : q)));
    sel.value = want.includes(cur) ? cur : '';
  }
  function stat(label, value, cls) {
    return h('div', { class: 'stat' + (cls ? ' ' + cls : '') }, h('b', {}, value), h('span', {}, label));
  }
  const PRIO_RANK = { critical: -20, high: -10, normal: 0, low: 10 };
  function priorityChips(breakdown) {
    const items = Object.entries(breakdown || {});
    if (!items.length) return h('span', { class: 'muted small' }, 'nothing waiting');
    items.sort((a, b) => (PRIO_RANK[a[0]] ?? Number(a[0])) - (PRIO_RANK[b[0]] ?? Number(b[0])));
    return items.map(([k, v]) => h('span', { class: 'chip', 'data-priority': k }, `${k} ${fmtNum(v)}`));
  }

  /** Per-minute throughput over the last hour as an SVG bar chart (completed + failed stacked, pushed as a line). */
  let throughputError = null;
  function chart(rows) {
    if (!rows.length) {
      return h('div', { class: 'nodata', 'data-chart': 'empty', title: throughputError || 'no jobs pushed or finished in the last hour' },
        throughputError ? 'no data (throughput unavailable)' : 'no data');
    }
    const minutes = 60, W = 600, H = 80, bw = W / minutes;
    const end = Math.floor(now() / 60000) * 60000;
    const start = end - (minutes - 1) * 60000;
    const buckets = Array.from({ length: minutes }, () => ({ pushed: 0, completed: 0, failed: 0 }));
    for (const r of rows) {
      const i = Math.round((Date.parse(r.minute) - start) / 60000);
      if (i < 0 || i >= minutes) continue;
      buckets[i].pushed += Number(r.pushed || 0);
      buckets[i].completed += Number(r.completed || 0);
      buckets[i].failed += Number(r.failed || 0);
    }
    const max = Math.max(1, ...buckets.map((b) => Math.max(b.pushed, b.completed + b.failed)));
    const y = (v) => H - (v / max) * (H - 4);
    const bars = [];
    const pts = [];
    buckets.forEach((b, i) => {
      const x = i * bw;
      const label = `${new Date(start + i * 60000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}: ` +
        `${b.pushed} pushed, ${b.completed} completed, ${b.failed} failed`;
      const g = svg('g', {}, svg('title', {}, label));
      if (b.completed) g.appendChild(svg('rect', { x: x + 1, y: y(b.completed), width: bw - 2, height: H - y(b.completed), style: 'fill:var(--green)' }));
      if (b.failed) g.appendChild(svg('rect', { x: x + 1, y: y(b.completed + b.failed), width: bw - 2, height: H - y(b.failed), style: 'fill:var(--red)' }));
      g.appendChild(svg('rect', { x, y: 0, width: bw, height: H, fill: 'transparent' }));
      bars.push(g);
      pts.push(`${(x + bw / 2).toFixed(1)},${y(b.pushed).toFixed(1)}`);
    });
    const line = svg('polyline', { points: pts.join(' '), style: 'fill:none;stroke:var(--blue);stroke-width:1.5px', 'vector-effect': 'non-scaling-stroke' });
    const base = svg('line', { x1: 0, y1: H, x2: W, y2: H, style: 'stroke:var(--line)', 'vector-effect': 'non-scaling-stroke' });
    const total = buckets.reduce((a, b) => ({ p: a.p + b.pushed, c: a.c + b.completed, f: a.f + b.failed }), { p: 0, c: 0, f: 0 });
    return h('div', { 'data-chart': 'ok' },
      svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': `throughput, last hour, peak ${max} per minute` }, base, bars, line),
      h('div', { class: 'legend' },
        h('span', {}, h('i', { style: 'background:var(--blue)' }), `pushed ${total.p}`),
        h('span', {}, h('i', { style: 'background:var(--green)' }), `completed ${total.c}`),
        h('span', {}, h('i', { style: 'background:var(--red)' }), `failed ${total.f}`),
        h('span', { style: 'margin-left:auto' }, `peak ${max}/min · last hour`)));
  }

  /** Pause / Resume of one queue: a POST like Retry, then the panel is redrawn from the server. */
  function pauseButton(q) {
    const paused = q.paused === true;
    const verb = paused ? 'resume' : 'pause';
    return h('button', {
      // No data-queue here: that attribute names the card (tests and styles find it by it).
      class: `queue-${verb}`,
      title: paused ? 'Hand its jobs out again and wake its workers' : 'Hand out none of its jobs (pushes go on, running jobs finish)',
      onclick: (ev) => act(ev.currentTarget, `/api/queues/${encodeURIComponent(q.queue)}/${verb}`,
        (r) => (r.changed ? `${paused ? 'resumed' : 'paused'} ${q.queue}` : `${q.queue} ${paused ? 'was not paused' : 'was already paused'}`),
        () => refresh('stats')),
    }, paused ? '▶ Resume' : 'Pause');
  }

  /**
   * The queue's row of queue_settings(): since when and by whom it is paused,
   * and the push defaults of queue_configure (retention where the extension
   * has it); "global defaults" when it has none of its own. Nothing from a
   * server that does not send settings.
   */
  function queueSettings(q) {
    if (q.settings === undefined) return null;
    const st = q.settings || {};
    const defaults = [
      ['priority', fmtPrio(st.priority), st.priority],
      ['max attempts', st.max_attempts, st.max_attempts],
      ['timeout', fmtInterval(st.timeout), st.timeout],
      ['backoff base', fmtInterval(st.backoff_base), st.backoff_base],
      ['backoff max', fmtInterval(st.backoff_max), st.backoff_max],
      ['retention', fmtInterval(st.retention), st.retention],
    ].filter(([, , raw]) => raw !== null && raw !== undefined);
    return h('div', { class: 'settings small', 'data-field': 'settings' },
      st.paused ? h('span', { 'data-field': 'paused-since' }, 'paused ', timeEl(st.paused_at), st.paused_by ? ` by ${st.paused_by}` : '') : null,
      h('span', { class: 'muted' }, 'defaults:'),
      defaults.length
        ? defaults.map(([k, v]) => h('span', { class: 'setting', 'data-setting': k.replace(/ /g, '_') }, `${k} `, h('b', {}, String(v))))
        : h('span', { class: 'muted', 'data-setting': 'none' }, 'global'));
  }

  function queueCard(q, rows) {
    const s = q.stats || {}, m = q.metrics || {};
    const paused = q.paused === true;
    // queue_list has `paused` only where the extension can pause: no button otherwise.
    const canPause = typeof q.paused === 'boolean';
    return h('article', { class: 'card' + (paused ? ' is-paused' : ''), 'data-queue': q.queue, 'data-paused': canPause ? String(paused) : null },
      h('div', { class: 'card-head' }, h('h4', {}, q.queue),
        paused ? h('span', { class: 'badge warn', 'data-badge': 'paused', title: 'no job is handed out until Resume' }, 'paused') : null,
        h('span', { class: 'muted' }, 'active ', timeEl(s.last_activity))),
      h('div', { class: 'kv' },
        h('div', {}, h('b', { 'data-field': 'waiting' }, fmtNum(s.total_size)), h('span', {}, 'waiting')),
        h('div', {}, h('b', {}, fmtNum(s.pending)), h('span', {}, 'pending')),
        h('div', {}, h('b', {}, fmtNum(s.scheduled)), h('span', {}, 'scheduled')),
        h('div', {}, h('b', {}, fmtNum(s.retrying)), h('span', {}, 'retrying')),
        h('div', {}, h('b', {}, fmtNum(s.processing)), h('span', {}, 'processing')),
        // Waiting for their dependencies (not in "waiting"); – before the extension had them.
        h('div', { title: 'jobs waiting for the jobs they depend on to complete' }, h('b', { 'data-field': 'blocked' }, fmtNum(s.blocked)), h('span', {}, 'blocked')),
        h('div', {}, h('b', {}, m.throughput_per_minute === undefined || m.throughput_per_minute === null ? '–' : Number(m.throughput_per_minute).toFixed(2)), h('span', {}, 'done / min')),
        h('div', {}, h('b', {}, fmtPct(m.success_rate)), h('span', {}, 'success')),
        h('div', { class: 'wide' }, h('b', {}, `${fmtMs(m.avg_run_ms)} / ${fmtMs(m.p95_run_ms)}`), h('span', {}, 'avg / p95 run'))),
      h('div', { class: 'chips' }, priorityChips(s.priority_breakdown)),
      queueSettings(q),
      h('div', { class: 'small muted' },
        `last hour: ${fmtNum(m.executions)} finished (${fmtNum(m.completed)} ok, ${fmtNum(m.failed)} failed, ${fmtNum(m.expired)} expired) · ` +
        `oldest waiting ${fmtSecs(s.oldest_pending_age)} · ${fmtNum(s.total_pushed)} pushed in all`),
      h('div', { class: 'chart' }, chart(rows)),
      canPause ? h('div', { class: 'card-actions' }, pauseButton(q)) : null);
  }

  panel('stats', 5000, async () => {
    const [ov, tp] = await Promise.all([api('/api/overview'), api('/api/throughput').then((rows) => { throughputError = null; return rows; }, (e) => { throughputError = e.message; return []; })]);
    if (ov.now) skew = Date.parse(ov.now) - Date.now();
    const t = ov.total || {}, m = ov.metrics || {};
    fill($('stats-summary'),
      stat('waiting', fmtNum(t.total_size)),
      stat('pending', fmtNum(t.pending)),
      stat('scheduled', fmtNum(t.scheduled)),
      stat('retrying', fmtNum(t.retrying), t.retrying ? 'amber' : ''),
      stat('processing', fmtNum(t.processing)),
      t.blocked === undefined ? null : stat('blocked', fmtNum(t.blocked)),
      stat('finished, last hour', fmtNum(m.executions)),
      stat('success rate', fmtPct(m.success_rate), m.success_rate !== null && m.success_rate < 0.9 ? 'red' : 'green'),
      stat('avg / p95 run', `${fmtMs(m.avg_run_ms)} / ${fmtMs(m.p95_run_ms)}`),
      t.paused_queues === undefined ? null : stat('paused', fmtNum(t.paused_queues), t.paused_queues ? 'amber' : ''));
    const byQueue = {};
    for (const r of tp || []) (byQueue[r.queue_name] = byQueue[r.queue_name] || []).push(r);
    const names = ov.queues.map((q) => q.queue);
    names.forEach((n) => knownQueues.add(n));
    syncQueueSelect($('failed-queue'), names);
    syncQueueSelect($('browse-queue'), names);
    fill($('stats-body'), ov.queues.length
      ? ov.queues.map((q) => queueCard(q, byQueue[q.queue] || []))
      : h('p', { class: 'empty' }, 'No queues yet: a queue exists once it had a job.'));
  });

  // ---- workers ------------------------------------------------------------
  panel('workers', 5000, async () => {
    const ws = await api('/api/workers');
    const healthy = ws.filter((w) => w.healthy).length;
    const running = ws.reduce((a, w) => a + Number(w.running_jobs || 0), 0);
    fill($('workers-summary'),
      stat('healthy', `${healthy} / ${ws.length}`, healthy < ws.length ? 'amber' : 'green'),
      stat('jobs in progress', fmtNum(running)));
    if (!ws.length) {
      fill($('workers-body'), h('p', { class: 'empty' }, 'No worker has sent a heartbeat (queue_heartbeat).'));
      return;
    }
    fill($('workers-body'), h('table', {},
      h('thead', {}, h('tr', {}, ['worker', 'state', 'running', 'last heartbeat', 'host', 'pid', 'queues', 'info', 'started']
        .map((c, i) => h('th', { class: i === 2 || i === 5 ? 'num' : '' }, c)))),
      h('tbody', {}, ws.map((w) => {
        const info = w.info || {};
        const rest = Object.assign({}, info);
        ['host', 'pid', 'queues', 'started_at', 'running'].forEach((k) => delete rest[k]);
        return h('tr', { 'data-worker': w.worker },
          h('td', { class: 'mono' }, w.worker),
          h('td', {}, w.healthy ? h('span', { class: 'badge ok' }, '✓ healthy') : h('span', { class: 'badge bad' }, '⚠ stale')),
          h('td', { class: 'num' }, fmtNum(w.running_jobs)),
          h('td', {}, timeEl(w.last_heartbeat)),
          h('td', {}, info.host ?? '–'),
          h('td', { class: 'num' }, info.pid ?? '–'),
          h('td', {}, Array.isArray(info.queues) ? info.queues.join(', ') : '–'),
          h('td', { class: 'info', title: preview(rest, 400) }, [
            [rest.library, rest.version].filter(Boolean).join(' ') || null,
            rest.concurrency !== undefined ? `concurrency ${rest.concurrency}` : null,
            rest.pooler ? 'pooler' : null,
          ].filter(Boolean).join(' · ') || (Object.keys(rest).length ? preview(rest, 60) : '–')),
          h('td', {}, timeEl(w.started_at)));
      }))));
  });

  // ---- failed jobs ----------------------------------------------------------
  async function act(btn, path, okMsg, after) {
    btn.disabled = true;
    try {
      const res = await post(path);
      toast(okMsg(res));
      if (after) after(res);
    } catch (e) {
      toast(e.message, true);
      btn.disabled = false;
    }
  }
  function jobLink(id) {
    return h('a', { href: `#/job/${id}`, class: 'mono' }, `#${id}`);
  }
  function batchLink(id) {
    return h('a', { href: `#/batch/${id}`, class: 'mono', 'data-batch': id }, `batch #${id}`);
  }
  /** A job's tags (queue_job / queue_jobs `tags`, null for none) as chips. */
  function tagChips(tags) {
    if (!Array.isArray(tags) || !tags.length) return '–';
    return h('span', { class: 'chips' }, tags.map((t) => h('span', { class: 'chip tag', 'data-tag': t }, t)));
  }
  function leave(row) {
    if (row) row.classList.add('leaving');
    setTimeout(() => { refresh('failed'); refresh('stats'); }, 250);
  }

  panel('failed', 10000, async () => {
    const q = $('failed-queue').value;
    const rows = await api('/api/failed?limit=50' + (q ? '&queue=' + encodeURIComponent(q) : ''));
    const perQueue = {};
    rows.forEach((r) => { perQueue[r.queue] = (perQueue[r.queue] || 0) + 1; });
    fill($('failed-retry-all'), Object.keys(perQueue).sort().map((name) =>
      h('button', {
        class: 'retry-all', 'data-queue': name,
        onclick: (ev) => {
          if (!window.confirm(`Retry every dead job of ${name}?`)) return;
          act(ev.currentTarget, `/api/queues/${encodeURIComponent(name)}/retry-all`, (r) => `${r.retried} jobs of ${name} pending again`, () => leave(null));
        },
      }, `Retry all in ${name}`)));
    if (!rows.length) {
      fill($('failed-body'), h('p', { class: 'empty', 'data-empty': 'failed' }, '✨ No failed jobs: everything running smoothly.'));
      return;
    }
    fill($('failed-body'), h('table', {},
      h('thead', {}, h('tr', {}, ['job', 'queue', 'status', 'error', 'attempts', 'payload', 'failed', ''].map((c, i) => h('th', { class: i === 4 ? 'num' : '' }, c)))),
      h('tbody', {}, rows.map((r) => {
        const row = h('tr', { 'data-job-id': r.id },
          h('td', {}, jobLink(r.id)),
          h('td', {}, r.queue),
          h('td', {}, h('span', { class: 'badge bad' }, r.status)),
          h('td', { class: 'err', title: r.last_error || '' }, preview(r.last_error || '', 160)),
          h('td', { class: 'num' }, `${r.attempts}/${r.max_attempts}`),
          h('td', { class: 'payload mono' }, preview(r.payload, 100)),
          h('td', {}, timeEl(r.finished_at)),
          h('td', { class: 'actions' },
            h('button', { class: 'retry primary', title: 'Back to pending, attempts reset', onclick: (ev) => act(ev.currentTarget, `/api/jobs/${r.id}/retry`, () => `job ${r.id} is pending again`, () => leave(row)) }, '↻ Retry'),
            ' ',
            h('button', { class: 'delete danger', title: 'Delete for good', onclick: (ev) => {
              if (!window.confirm(`Delete job ${r.id} for good?`)) return;
              act(ev.currentTarget, `/api/jobs/${r.id}/delete`, () => `job ${r.id} deleted`, () => leave(row));
            } }, '✕ Delete')));
        return row;
      }))));
  });
  $('failed-queue').addEventListener('change', () => refresh('failed'));

  // ---- scheduler timeline ---------------------------------------------------
  function kindBadge(kind) {
    const k = String(kind || 'manual').toLowerCase();
    return h('span', { class: `badge ${['cron', 'interval', 'once', 'manual'].includes(k) ? k : ''}` }, k.toUpperCase());
  }
  panel('timeline', 30000, async () => {
    const tl = await api('/api/timeline?horizon=1d&limit=20');
    if (tl.now) skew = Date.parse(tl.now) - Date.now();
    const dueNames = new Set(tl.runs.filter((r) => r.is_due).map((r) => r.name));
    const schedules = tl.schedules.slice();
    const isDue = (s) => s.enabled && (dueNames.has(s.name) || (s.next_run_at && Date.parse(s.next_run_at) <= now()));
    const next = schedules.filter((s) => s.enabled && s.next_run_at).map((s) => s.next_run_at).sort()[0];
    fill($('timeline-summary'),
      stat('schedules', fmtNum(schedules.length)),
      stat('due now', fmtNum(schedules.filter(isDue).length), schedules.some(isDue) ? 'red' : ''),
      stat('next execution', next ? rel(next) : '–'));
    schedules.sort((a, b) => (a.next_run_at || '9999').localeCompare(b.next_run_at || '9999'));
    fill($('timeline-body'), schedules.length ? h('div', { class: 'sched' }, schedules.map((s) => {
      const due = isDue(s);
      return h('div', { class: 'sched-item' + (due ? ' is-due' : ''), 'data-schedule': s.name },
        h('div', {},
          h('div', {}, h('span', { class: 'name' }, s.name), ' ', kindBadge(s.kind), ' ',
            due ? h('span', { class: 'badge due' }, 'DUE') : null,
            !s.enabled ? h('span', { class: 'badge' }, 'disabled') : null),
          h('div', { class: 'meta' }, h('code', {}, s.schedule), ` → ${s.queue}`,
            s.last_run_at ? [' · last run ', timeEl(s.last_run_at)] : ' · never run',
            s.last_job_id ? [' (', jobLink(s.last_job_id), ')'] : null),
          s.last_error ? h('div', { class: 'meta error' }, s.last_error) : null),
        h('div', { style: 'text-align:right' },
          h('div', { class: 'when' }, !s.enabled ? 'disabled' : s.next_run_at ? rel(s.next_run_at) : 'manual only'),
          h('button', { class: 'run-now', onclick: (ev) => act(ev.currentTarget, `/api/schedules/${encodeURIComponent(s.name)}/trigger`, (r) => `${s.name}: pushed job ${r.job_id}`, () => { refresh('timeline'); refresh('stats'); }) }, '▶ Run now')));
    })) : h('p', { class: 'empty' }, '📅 No scheduled tasks.'));
    fill($('timeline-runs'), tl.runs.length ? tl.runs.map((r) => h('li', {},
      h('span', { class: 'rel', title: abs(r.run_at) }, rel(r.run_at)), kindBadge(r.kind), h('b', {}, r.name), h('span', { class: 'muted' }, `→ ${r.queue}`),
      r.is_due ? h('span', { class: 'badge due' }, 'DUE') : null)) : h('li', { class: 'muted' }, 'no runs within a day'));
  });

  // ---- job browser ------------------------------------------------------------
  $('find-job').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const id = $('find-id').value.trim();
    if (/^\d+$/.test(id)) location.hash = `#/job/${id}`;
  });
  $('browse-jobs').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const q = $('browse-queue').value, st = $('browse-status').value, tag = $('browse-tag').value.trim();
    const body = $('browse-body');
    try {
      const rows = await api(`/api/jobs?limit=100&status=${encodeURIComponent(st)}` + (q ? `&queue=${encodeURIComponent(q)}` : '') +
        (tag ? `&tag=${encodeURIComponent(tag)}` : ''));
      if (!rows.length) { fill(body, h('p', { class: 'empty' }, 'no jobs')); return; }
      // queue_peek's rows (pending jobs of a queue, no tag) have a priority; queue_jobs' have a status and tags.
      const pending = rows[0].status === undefined;
      const withTags = rows.some((r) => r.tags !== undefined);
      const cols = (pending ? ['job', 'queue', 'priority', 'group', 'attempts', 'created', 'payload'] : ['job', 'queue', 'status', 'error', 'attempts', 'finished', 'payload'])
        .concat(withTags ? ['tags'] : []);
      fill(body, h('table', {}, h('thead', {}, h('tr', {}, cols.map((c) => h('th', {}, c)))),
        h('tbody', {}, rows.map((r) => h('tr', { 'data-job-id': r.id },
          h('td', {}, jobLink(r.id)), h('td', {}, r.queue),
          pending ? [h('td', {}, r.priority), h('td', {}, r.serial_group || '–'), h('td', {}, r.attempts), h('td', {}, timeEl(r.created_at))]
            : [h('td', {}, h('span', { class: `badge ${STATUS_CLASS[r.status] ?? ''}` }, r.status)), h('td', { class: 'err' }, preview(r.last_error || '', 120)),
               // queue_dead names the claim count attempts, queue_jobs attempt.
               h('td', {}, `${r.attempts ?? r.attempt}/${r.max_attempts}`), h('td', {}, r.finished_at ? timeEl(r.finished_at) : '–')],
          h('td', { class: 'payload mono' }, preview(r.payload, 100)),
          withTags ? h('td', { 'data-field': 'tags' }, tagChips(r.tags)) : null)))));
    } catch (e) {
      fill(body, h('p', { class: 'error' }, e.message));
    }
  });
  $('find-batch').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const id = $('find-batch-id').value.trim();
    if (/^\d+$/.test(id)) location.hash = `#/batch/${id}`;
  });

  // ---- job page ---------------------------------------------------------------
  const FINAL = ['completed', 'failed', 'expired', 'cancelled'];
  const STATUS_CLASS = { completed: 'ok', failed: 'bad', expired: 'bad', cancelled: '', processing: 'info', retrying: 'warn', pending: 'info', scheduled: '', blocked: 'warn' };
  let jobTimer = null;
  function pretty(v) { return h('pre', { class: 'mono' }, JSON.stringify(v, null, 2)); }
  function diff(a, b) {
    if (!a || !b) return '–';
    const d = Date.parse(b) - Date.parse(a);
    return Number.isNaN(d) ? '–' : fmtMs(Math.max(0, d));
  }
  /** queue_dependencies rows: one per job this one waits for, in id order. */
  function dependencies(rows) {
    if (!rows.length) return h('p', { class: 'muted small' }, 'none visible to this role');
    return h('div', { class: 'scroll' }, h('table', { class: 'deps' },
      h('thead', {}, h('tr', {}, ['job', 'queue', 'status', 'resolved', 'run anyway', 'finished'].map((c) => h('th', {}, c)))),
      h('tbody', {}, rows.map((d) => h('tr', { 'data-dependency': d.dependency, 'data-resolved': String(d.resolved === true) },
        h('td', {}, jobLink(d.dependency)), h('td', {}, d.queue ?? '–'),
        // A completed dependency whose history is gone has no status.
        h('td', {}, d.status ? h('span', { class: `badge ${STATUS_CLASS[d.status] ?? ''}` }, d.status) : h('span', { class: 'muted', title: 'completed; its history is gone' }, '–')),
        h('td', {}, d.resolved ? h('span', { class: 'badge ok' }, 'yes') : h('span', { class: 'badge' }, 'no')),
        h('td', {}, d.run_anyway ? 'yes' : 'no'),
        h('td', {}, timeEl(d.finished_at)))))));
  }
  async function showJob(id) {
    clearTimeout(jobTimer);
    const sec = $('job');
    sec.hidden = false;
    $('job-title').textContent = `Job #${id}`;
    const body = $('job-body');
    let j;
    try {
      j = await api(`/api/jobs/${id}`);
    } catch (e) {
      fill(body, h('p', { class: 'error' }, e.message));
      return;
    }
    const dl = (pairs) => h('dl', { class: 'props' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
    const p = j.progress;
    const actions = [];
    if (j.status === 'failed' || j.status === 'expired') actions.push(h('button', { class: 'primary', onclick: (ev) => act(ev.currentTarget, `/api/jobs/${id}/retry`, () => `job ${id} is pending again`, () => { showJob(id); refresh('failed'); }) }, '↻ Retry'));
    if (['scheduled', 'pending', 'retrying', 'blocked'].includes(j.status)) actions.push(h('button', { onclick: (ev) => act(ev.currentTarget, `/api/jobs/${id}/cancel`, () => `job ${id} cancelled`, () => showJob(id)) }, 'Cancel'));
    if (j.status !== 'processing') actions.push(h('button', { class: 'danger', onclick: (ev) => { if (window.confirm(`Delete job ${id} for good?`)) act(ev.currentTarget, `/api/jobs/${id}/delete`, () => `job ${id} deleted`, () => { refresh('failed'); showJob(id); }); } }, '✕ Delete'));
    fill(body,
      h('div', { class: 'toolbar' }, h('span', { class: `badge ${STATUS_CLASS[j.status] || ''}`, 'data-status': j.status }, j.status),
        h('span', {}, `queue ${j.queue}`), j.waiting_for_group ? h('span', { class: 'badge warn' }, 'waiting for its serial group') : null, actions),
      h('div', { class: 'job-grid' },
        h('div', {}, h('h3', {}, 'Job'), dl([
          ['queue', j.queue], ['priority', String(j.priority)], ['attempts', `${j.attempts} of ${j.max_attempts}`],
          ['serial group', j.serial_group || '–'], ['dedupe key', j.dedupe_key || '–'], ['worker', j.worker || '–'],
          ['timeout', j.timeout || '–'], ['backoff', `${j.backoff_base || '–'} … ${j.backoff_max || '–'}`],
          j.retry_delays ? ['retry delays', j.retry_delays.join(', ')] : null,
          // queue_job's tags and batch_id (absent before the extension had them); `batch` is queue_batch(batch_id).
          j.tags === undefined ? null : ['tags', h('span', { 'data-field': 'tags' }, tagChips(j.tags))],
          j.batch_id === undefined ? null : ['batch', j.batch_id === null ? '–' : h('span', { 'data-field': 'batch' }, batchLink(j.batch_id),
            j.batch ? ` · ${j.batch.state} · ${fmtNum(j.batch.total - j.batch.pending)} of ${fmtNum(j.batch.total)} final` : '')],
          // queue_job's depends_on and blocked_by (absent before the extension had dependencies).
          j.depends_on === undefined ? null : ['depends on', Array.isArray(j.depends_on) && j.depends_on.length
            ? h('span', { 'data-field': 'depends-on' }, j.depends_on.map((d, i) => [i ? ', ' : '', jobLink(d)])) : '–'],
          j.blocked_by === undefined ? null : ['blocked by', h('span', { 'data-field': 'blocked-by' },
            Array.isArray(j.depends_on) && j.depends_on.length
              ? `${fmtNum(j.blocked_by)} of ${j.depends_on.length} ${j.depends_on.length === 1 ? 'dependency' : 'dependencies'} not resolved`
              : fmtNum(j.blocked_by))]])),
        h('div', {}, h('h3', {}, 'Timings'), dl([
          ['created', timeEl(j.created_at)], ['run at', timeEl(j.run_at)], ['started', timeEl(j.started_at)],
          ['lease until', timeEl(j.lease_until)], ['finished', timeEl(j.finished_at)],
          ['waited', diff(j.run_at, j.started_at)], ['ran', j.finished_at ? diff(j.started_at, j.finished_at) : j.started_at ? `${diff(j.started_at, new Date(now()).toISOString())} so far` : '–']])),
        h('div', {}, h('h3', {}, 'Progress'), p ? [
          h('div', { class: 'progress', role: 'progressbar', 'aria-valuenow': p.percent, 'aria-valuemin': 0, 'aria-valuemax': 100 }, h('div', { style: `width:${Math.max(0, Math.min(100, Number(p.percent) || 0))}%` })),
          h('p', { class: 'small' }, `${p.current} / ${p.total} (${p.percent}%) ${p.message || ''}`, ' · ', timeEl(p.updated_at))] : h('p', { class: 'muted small' }, 'no progress reported'))),
      Array.isArray(j.dependencies) ? [h('h3', {}, 'Dependencies'), dependencies(j.dependencies)] : null,
      h('h3', {}, 'Payload'), pretty(j.payload),
      h('h3', {}, 'Result'), j.result === null || j.result === undefined ? h('p', { class: 'muted small' }, 'none') : pretty(j.result),
      h('h3', {}, 'Error history'),
      // queue_job's errors: one entry per failed attempt, oldest first.
      (j.errors || []).length
        ? h('table', { class: 'errors' }, h('thead', {}, h('tr', {}, ['attempt', 'when', 'error'].map((c) => h('th', {}, c)))),
          h('tbody', {}, j.errors.map((e) => h('tr', { 'data-attempt': e.attempt },
            h('td', {}, e.attempt), h('td', {}, timeEl(e.at)), h('td', {}, h('pre', { class: 'mono error' }, e.error || '(no message)'))))))
        : j.last_error ? h('pre', { class: 'mono error' }, j.last_error) : h('p', { class: 'muted small' }, 'no error'));
    if (!FINAL.includes(j.status) && document.visibilityState !== 'hidden') {
      jobTimer = setTimeout(() => { if (location.hash === `#/job/${id}`) showJob(id); }, 5000);
    }
  }
  // ---- batch page ---------------------------------------------------------------
  // queue_batch(id): opened from the Batches list, a job's batch link or the
  // job browser's batch id.
  const BATCH_CLASS = { open: 'info', closed: 'warn', done: 'ok', cancelled: '' };
  let batchTimer = null;
  function callback(spec, jobId) {
    if (!spec) return '–';
    return [h('code', {}, preview(spec, 160)), ' ', jobId ? ['→ ', jobLink(jobId)] : h('span', { class: 'muted' }, '(not pushed)')];
  }
  async function showBatch(id) {
    clearTimeout(batchTimer);
    $('batch').hidden = false;
    $('batch-title').textContent = `Batch #${id}`;
    const body = $('batch-body');
    let b;
    try {
      b = await api(`/api/batches/${id}`);
    } catch (e) {
      fill(body, h('p', { class: 'error' }, e.message));
      return;
    }
    const finals = b.total - b.pending;
    const pct = b.progress === null || b.progress === undefined ? null : Number(b.progress) * 100;
    const count = (label, key) => h('div', {}, h('b', { 'data-field': key }, fmtNum(b[key])), h('span', {}, label));
    const dl = (pairs) => h('dl', { class: 'props' }, pairs.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
    fill(body,
      h('div', { class: 'toolbar' }, h('span', { class: `badge ${BATCH_CLASS[b.state] ?? ''}`, 'data-state': b.state }, b.state),
        b.state === 'open' ? h('span', { class: 'muted small' }, 'jobs may still join (queue_batch_close ends that)') : null),
      h('div', { class: 'progress', role: 'progressbar', 'aria-valuenow': pct === null ? 0 : pct.toFixed(1), 'aria-valuemin': 0, 'aria-valuemax': 100 },
        h('div', { style: `width:${pct === null ? 0 : Math.max(0, Math.min(100, pct))}%` })),
      h('p', { class: 'small', 'data-field': 'progress' }, `${fmtNum(finals)} of ${fmtNum(b.total)} final (${fmtPct(b.progress)})`),
      h('div', { class: 'kv' }, count('total', 'total'), count('pending', 'pending'), count('running', 'running'),
        count('completed', 'completed'), count('failed', 'failed'), count('cancelled', 'cancelled')),
      h('div', { class: 'job-grid' },
        h('div', {}, h('h3', {}, 'Callbacks'), dl([
          ['on complete', h('span', { 'data-field': 'on-complete' }, callback(b.on_complete, b.complete_job))],
          ['on failure', h('span', { 'data-field': 'on-failure' }, callback(b.on_failure, b.failure_job))]])),
        h('div', {}, h('h3', {}, 'Timings'), dl([
          ['created', timeEl(b.created_at)], ['closed', timeEl(b.closed_at)], ['finished', timeEl(b.finished_at)]]))));
    if (b.state === 'open' || b.state === 'closed') {
      // Not while the tab is hidden (as the panels): the visibilitychange
      // handler below shows it again when the tab is back.
      batchTimer = setTimeout(() => {
        if (location.hash === `#/batch/${id}` && document.visibilityState !== 'hidden') showBatch(id);
      }, 5000);
    }
  }

  // ---- batches list -------------------------------------------------------------
  // queue_batches, newest first. Its counts are kept from a batch's close, so
  // an open batch (or one cancelled before its close) has none: its page
  // counts it from its jobs.
  panel('batches', 10000, async () => {
    const st = $('batches-state').value;
    const rows = await api('/api/batches?limit=50' + (st ? '&state=' + encodeURIComponent(st) : ''));
    if (!rows.length) {
      fill($('batches-body'), h('p', { class: 'empty', 'data-empty': 'batches' },
        st ? `No ${st} batches.` : 'No batches yet (queuectl batch open opens one).'));
      return;
    }
    const cols = ['batch', 'state', 'progress', 'total', 'pending', 'completed', 'failed', 'cancelled', 'created', 'closed', 'finished', 'callback jobs'];
    const num = (v, key) => h('td', { class: 'num', 'data-field': key }, fmtNum(v));
    fill($('batches-body'), h('table', { class: 'batches' },
      h('thead', {}, h('tr', {}, cols.map((c, i) => h('th', { class: i >= 3 && i <= 7 ? 'num' : '' }, c)))),
      h('tbody', {}, rows.map((b) => {
        const counted = b.total !== null && b.total !== undefined;
        const finals = counted ? b.total - b.pending : null;
        const pct = counted && b.total > 0 ? (finals / b.total) * 100 : null;
        return h('tr', { 'data-batch-id': b.id, 'data-state': b.state },
          h('td', {}, h('a', { href: `#/batch/${b.id}`, class: 'mono', 'data-batch': b.id }, `#${b.id}`)),
          h('td', {}, h('span', { class: `badge ${BATCH_CLASS[b.state] ?? ''}` }, b.state)),
          h('td', {}, counted
            ? [h('div', { class: 'progress', role: 'progressbar', 'aria-valuenow': pct === null ? 0 : pct.toFixed(1), 'aria-valuemin': 0, 'aria-valuemax': 100 },
                h('div', { style: `width:${pct === null ? 0 : Math.max(0, Math.min(100, pct))}%` })),
              h('span', { class: 'small', 'data-field': 'progress' }, `${fmtNum(finals)}/${fmtNum(b.total)}`)]
            : h('span', { class: 'muted small', 'data-field': 'progress', title: 'counted from its jobs on its page' }, 'not counted yet')),
          num(b.total, 'total'), num(b.pending, 'pending'), num(b.completed, 'completed'), num(b.failed, 'failed'), num(b.cancelled, 'cancelled'),
          h('td', {}, timeEl(b.created_at)), h('td', {}, timeEl(b.closed_at)), h('td', {}, timeEl(b.finished_at)),
          h('td', { 'data-field': 'callbacks' },
            b.complete_job ? h('span', { 'data-field': 'complete-job' }, 'complete ', jobLink(b.complete_job)) : null,
            b.complete_job && b.failure_job ? ' · ' : null,
            b.failure_job ? h('span', { 'data-field': 'failure-job' }, 'failure ', jobLink(b.failure_job)) : null,
            b.complete_job || b.failure_job ? null : '–'));
      }))));
  });
  $('batches-state').addEventListener('change', () => refresh('batches'));

  function route() {
    const m = /^#\/job\/(\d+)$/.exec(location.hash);
    const b = /^#\/batch\/(\d+)$/.exec(location.hash);
    if (!m) { clearTimeout(jobTimer); $('job').hidden = true; }
    if (!b) { clearTimeout(batchTimer); $('batch').hidden = true; }
    if (m) showJob(m[1]).then(() => $('job').scrollIntoView({ block: 'start' }));
    if (b) showBatch(b[1]).then(() => $('batch').scrollIntoView({ block: 'start' }));
  }
  window.addEventListener('hashchange', route);
  document.addEventListener('visibilitychange', () => {
    const b = /^#\/batch\/(\d+)$/.exec(location.hash);
    if (b && document.visibilityState !== 'hidden') showBatch(b[1]);
  });

  // ---- start --------------------------------------------------------------------
  api('/api/info').then((info) => {
    $('target').textContent = info.database + (info.read_only ? ' (read-only)' : '');
    $('version').textContent = `queuectl ${info.version}`;
  }).catch((e) => { $('target').textContent = e.message; });
  startAll();
  route();
  setLive();
})();
