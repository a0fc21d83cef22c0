// proxyfleet dashboard: follows the coordinator's event stream and draws jobs, workers, pools
// and sources. Everything from the server is written as text (textContent), never as markup.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);

  /** An element with a class, attributes and children (strings become text nodes). */
  function el(tag, className, children, attrs) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    for (const child of [].concat(children === undefined ? [] : children)) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const td = (text, className, attrs) => el('td', className, [text], attrs);

  // What the page knows, replaced on every (re)connection.
  const view = {
    locked: false,
    maxMembers: Infinity,
    jobs: new Map(),
    order: [],
    workers: [],
    heads: [],
    pools: new Map(),
    selected: null,
    sort: { key: 'score', dir: -1 },
  };

  function reset() {
    view.jobs.clear();
    view.order = [];
    view.workers = [];
    view.heads = [];
    view.pools.clear();
  }

  // Formatting.
  const number = new Intl.NumberFormat();
  const fmt = (n) => (n === null || n === undefined ? '–' : number.format(n));
  function duration(ms) {
    if (ms === null || ms === undefined) return '–';
    if (ms < 1000) return `${Math.round(ms)} ms`;
    const s = ms / 1000;
    if (s < 10) return `${s.toFixed(1)}s`;
    if (s < 60) return `${Math.round(s)}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${Math.round(s % 60)}s`;
    const h = Math.floor(m / 60);
    return h < 48 ? `${h}h ${m % 60}m` : `${Math.floor(h / 24)}d ${h % 24}h`;
  }
  const ago = (wallMs) => (wallMs ? `${duration(Math.max(0, Date.now() - wallMs))} ago` : 'never');
  function bytes(n) {
    if (!n) return '0 B';
    const units = ['B', 'KiB', 'MiB', 'GiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }
  const rate = (r) => (r === null || r === undefined ? '–' : r < 10 ? r.toFixed(1) : fmt(Math.round(r)));

  const STATE_CLASS = {
    QUEUED: '', SCRAPING: 'run', CHECKING: 'run', SUCCEEDED: 'ok',
    INSUFFICIENT: 'warn', FAILED: 'bad', CANCELLED: '',
    active: 'ok', draining: 'warn', silent: 'bad',
    pending: '', fetching: 'run', fetched: 'ok', failed: 'bad',
    elite: 'ok', anonymous: 'run', transparent: 'warn', unknown: '',
  };
  const badge = (text) => el('span', `badge ${STATE_CLASS[text] || ''}`, [text]);

  // Drawing, at most every 150 ms.
  let drawTimer = null;
  function redraw() {
    if (drawTimer === null) drawTimer = setTimeout(draw, 150);
  }
  function draw() {
    drawTimer = null;
    drawSummary();
    drawJobs();
    drawWorkers();
    drawPools();
    drawSources();
  }

  function shownJobs() {
    const rounds = $('show-rounds').checked;
    return view.order
      .map((id) => view.jobs.get(id))
      .filter((job) => job && (rounds || job.kind !== 'revalidation'));
  }

  function drawSummary() {
    const running = [...view.jobs.values()].filter((j) => !j.terminal);
    $('sum-jobs').textContent = fmt(running.length);
    $('sum-rate').textContent = rate(running.reduce((sum, j) => sum + j.checks_per_second, 0));
    const active = view.workers.filter((w) => w.status === 'active');
    $('sum-workers').textContent = `${fmt(active.length)} / ${fmt(view.workers.length)}`;
    $('sum-slots').textContent = fmt(active.reduce((sum, w) => sum + w.max_checks, 0));
    $('sum-live').textContent = fmt(view.heads.reduce((sum, p) => sum + p.live, 0));
  }

  /** A job's name, with its id (and kind) under it when the name is not the id. */
  function jobTitle(job) {
    const title = [el('div', 'name', [job.name || job.id])];
    const sub = [job.name ? job.id : '', job.kind === 'revalidation' ? 'revalidation' : ''].filter(Boolean);
    if (sub.length) title.push(el('div', 'sub mono', [sub.join(' · ')]));
    return title;
  }

  function drawJobs() {
    const rows = shownJobs().map((job) => {
      const share = job.total ? job.checked / job.total : job.terminal ? 1 : 0;
      const fill = el('div', `fill ${STATE_CLASS[job.state] === 'run' ? '' : STATE_CLASS[job.state] || ''}`);
      fill.style.width = `${(share * 100).toFixed(1)}%`;
      const progress = el('div', 'progress', [
        el('div', 'track', [fill], { role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': job.total, 'aria-valuenow': job.checked }),
        el('span', 'count', [`${fmt(job.checked)} / ${fmt(job.total)}`]),
      ]);
      const title = jobTitle(job);
      let time = duration(job.elapsed_ms);
      if (!job.terminal && job.eta_ms !== null) time += ` · eta ${duration(job.eta_ms)}`;
      const unchecked = job.unchecked ? `${fmt(job.unchecked)} left unchecked${job.poison ? `, ${fmt(job.poison)} poison` : ''}` : '';
      return el('tr', '', [
        el('td', '', title),
        td(job.pool),
        el('td', 'state', [badge(job.state)]),
        el('td', '', [progress]),
        el('td', 'num usable', [fmt(job.usable), el('div', 'sub', [`min ${fmt(job.min_usable)}`])]),
        td(job.terminal ? '–' : rate(job.checks_per_second), 'num'),
        td(time, 'num'),
        td([job.reason, unchecked].filter(Boolean).join('; '), 'wrap muted reason'),
      ], { 'data-job': job.id, 'data-state': job.state });
    });
    $('jobs').tBodies[0].replaceChildren(...rows);
    $('jobs-empty').hidden = rows.length > 0;
  }

  function drawWorkers() {
    const rows = view.workers.map((w) => {
      const judges = w.judges.length === 0 ? '–'
        : w.judges.every((j) => j.ok) ? `${w.judges.length} ok`
          : w.judges.filter((j) => !j.ok).map((j) => `${j.url}: ${j.error || 'failing'}`).join('; ');
      return el('tr', '', [
        el('td', '', [el('div', 'name', [w.name || w.id])].concat(w.name && w.name !== w.id ? [el('div', 'sub mono', [w.id])] : [])),
        el('td', '', [badge(w.status)]),
        td(w.peer, 'mono'),
        td(`${fmt(w.leases.length)} / ${fmt(w.capacity)}`, 'num', { title: w.leases.length ? `leases ${w.leases.join(', ')}` : 'no lease' }),
        td(fmt(w.max_checks), 'num'),
        td(`${duration(w.last_seen_ms)} ago`, 'num'),
        td(duration(w.connected_ms), 'num'),
        td(fmt(w.verdicts), 'num'),
        td(rate(w.verdicts_per_second), 'num'),
        td(judges, 'wrap muted'),
      ], { 'data-worker': w.id });
    });
    $('workers').tBodies[0].replaceChildren(...rows);
    $('workers-empty').hidden = rows.length > 0;
  }

  const ANONYMITY_RANK = { unknown: 0, transparent: 1, anonymous: 2, elite: 3 };
  const MAX_ROWS = 1000;

  function drawPools() {
    if (!view.selected || !view.heads.some((p) => p.pool === view.selected)) {
      const preferred = view.heads.find((p) => p.pool === 'default') || view.heads[0];
      view.selected = preferred ? preferred.pool : null;
    }
    const tabs = view.heads.map((p) => {
      const tab = el('button', 'tab', [`${p.pool} `, el('span', 'muted', [`${fmt(p.live)} live`])], {
        type: 'button', role: 'tab', 'aria-selected': p.pool === view.selected, 'data-pool': p.pool,
      });
      tab.addEventListener('click', () => { view.selected = p.pool; draw(); });
      return tab;
    });
    $('pool-tabs').replaceChildren(...tabs);

    const pool = view.selected ? view.pools.get(view.selected) : null;
    const all = pool ? [...pool.members.values()] : [];
    const text = $('pool-filter').value.trim().toLowerCase();
    const protocol = $('pool-protocol').value;
    const minRank = ANONYMITY_RANK[$('pool-anonymity').value] || 0;
    const kept = all.filter((m) =>
      (!protocol || m.protocol === protocol) &&
      (ANONYMITY_RANK[m.anonymity] || 0) >= minRank &&
      (!text || [m.proxy, m.country, m.exit_ip, m.anonymity, m.protocol].some((f) => f && f.toLowerCase().includes(text))));
    const { key, dir } = view.sort;
    kept.sort((a, b) => {
      const x = a[key];
      const y = b[key];
      const order = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y));
      return order * dir || a.proxy.localeCompare(b.proxy);
    });
    for (const th of $('pool-members').tHead.rows[0].cells) {
      if (th.dataset.key === key) th.setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
      else th.removeAttribute('aria-sort');
    }
    const rows = kept.slice(0, MAX_ROWS).map((m) => el('tr', '', [
      td(m.proxy, 'mono proxy'),
      td(m.protocol),
      td(`${fmt(m.latency_ms)} ms`, 'num'),
      el('td', '', [badge(m.anonymity)]),
      td(m.score.toFixed(1), 'num'),
      td(m.country || '–'),
      td(m.exit_ip || '–', 'mono'),
      td(`${Math.round(m.uptime * 100)}%`, 'num'),
      td(ago(m.last_checked_ms), 'num'),
    ], { 'data-member': m.key }));
    $('pool-members').tBodies[0].replaceChildren(...rows);
    const head = view.heads.find((p) => p.pool === view.selected);
    let count = pool ? `${fmt(kept.length)} of ${fmt(all.length)} live` : '';
    if (head && all.length >= view.maxMembers && head.live > all.length) count += ` (the best ${fmt(all.length)} of ${fmt(head.live)} by score)`;
    if (kept.length > MAX_ROWS) count += ` · first ${fmt(MAX_ROWS)} shown`;
    $('pool-count').textContent = count;
    $('pool-empty').hidden = view.heads.length > 0;
  }

  function drawSources() {
    const rows = [];
    for (const job of shownJobs()) {
      for (const s of job.sources) {
        rows.push(el('tr', '', [
          el('td', '', jobTitle(job)),
          td(s.url, 'wrap mono source'),
          el('td', '', [badge(s.state)]),
          td(fmt(s.candidates), 'num'),
          td(fmt(s.rejected), 'num'),
          td(bytes(s.bytes), 'num'),
          td(s.error || '', 'wrap error'),
        ], { 'data-job': job.id }));
      }
    }
    $('sources').tBodies[0].replaceChildren(...rows);
    $('sources-empty').hidden = rows.length > 0;
  }

  // The event stream.
  const handlers = {
    hello(data) {
      reset();
      view.locked = data.locked;
      view.maxMembers = data.max_members;
      $('logout').hidden = !data.locked;
    },
    jobs(data) {
      view.order = data.ids;
      for (const id of [...view.jobs.keys()]) if (!data.ids.includes(id)) view.jobs.delete(id);
    },
    job(data) {
      view.jobs.set(data.id, data);
      if (!view.order.includes(data.id)) view.order.unshift(data.id);
    },
    workers(data) { view.workers = data.workers; },
    pools(data) { view.heads = data.pools; },
    pool(data) {
      view.pools.set(data.pool, { members: new Map(data.members.map((m) => [m.key, m])) });
    },
    members(data) {
      let pool = view.pools.get(data.pool);
      if (!pool) { pool = { members: new Map() }; view.pools.set(data.pool, pool); }
      for (const key of data.remove) pool.members.delete(key);
      for (const m of data.upsert) pool.members.set(m.key, m);
    },
  };

  function setConnection(state, text) {
    $('conn').dataset.state = state;
    $('conn-text').textContent = text;
  }

  let source = null;
  function connect() {
    source = new EventSource('/dashboard/events');
    source.onopen = () => setConnection('live', 'live');
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (signed out, session ended) or not a stream: try again in a while.
        setConnection('down', 'disconnected: reload the page to sign in again');
        source.close();
        setTimeout(connect, 5000);
      } else {
        setConnection('connecting', 'reconnecting');
      }
    };
    for (const [name, handle] of Object.entries(handlers)) {
      source.addEventListener(name, (event) => {
        handle(JSON.parse(event.data));
        redraw();
      });
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    for (const th of $('pool-members').tHead.rows[0].cells) {
      th.addEventListener('click', () => {
        const key = th.dataset.key;
        const descending = ['score', 'uptime', 'last_checked_ms'].includes(key);
        view.sort = view.sort.key === key
          ? { key, dir: -view.sort.dir }
          : { key, dir: descending ? -1 : 1 };
        draw();
      });
    }
    for (const id of ['pool-filter', 'pool-protocol', 'pool-anonymity', 'show-rounds']) {
      $(id).addEventListener('input', draw);
    }
    setInterval(redraw, 1000);
    connect();
  });
})();
