// twill dashboard: polls this node's JSON API every 2 s and draws it. No framework and
// no innerHTML with data: every text from the API goes in through textContent.
"use strict";
(() => {
  const POLL_MS = 2000;
  const HISTORY = 60; // samples kept for the sparklines (2 minutes)
  const STATES = ["programmed", "pending", "error"];

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  };

  const view = { nodes: [], filter: "", state: "all", selected: null, gridKey: "" };
  const history = { leases: [], callRate: [], errors: [] };
  let lastCalls = null;

  async function getJSON(path) {
    const r = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    return r.json();
  }

  async function poll() {
    try {
      const [status, leases, peers, plugins] = await Promise.all(
        ["/v1/status", "/v1/leases", "/v1/peers", "/v1/plugins"].map(getJSON));
      render(status, leases.leases, peers.peers, plugins.plugins);
      setConn(`updated ${new Date().toLocaleTimeString()}`, false);
      $("main").dataset.loaded = "true";
    } catch (e) {
      setConn(`cannot reach the node (${e.message}); retrying`, true);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  function setConn(text, lost) {
    const c = $("conn");
    c.textContent = text;
    c.classList.toggle("lost", lost);
  }

  // What the probes say of a peer: reachable, unreachable, or unchecked (not decided,
  // probes off); null for our own node and for a lease that is no peer.
  const healthOf = (peer) => !peer ? null : !peer.health ? "unchecked" : peer.health.reachable ? "reachable" : "unreachable";

  // Every lease is a node; a peer adds its state and health. A peer without a lease
  // (briefly, while a removal is handled) is still shown. Unreachable peers come first.
  function nodesOf(leases, peers) {
    const bySubnet = new Map(peers.map((p) => [p.subnet, p]));
    const nodes = leases.map((l) => {
      const peer = bySubnet.get(l.subnet);
      bySubnet.delete(l.subnet);
      return { ...l, peer, state: l.own ? "own" : peer ? peer.state : "unknown", health: l.own ? null : healthOf(peer) };
    });
    for (const p of bySubnet.values()) nodes.push({ ...p, own: false, expires_at: null, peer: p, state: p.state, health: healthOf(p) });
    const rank = (n) => (n.health === "unreachable" ? 0 : 1);
    return nodes.map((n, i) => [n, i]).sort(([a, i], [b, j]) => rank(a) - rank(b) || i - j).map(([n]) => n);
  }

  const rttText = (node) => {
    const h = node.peer?.health;
    if (!h) return "";
    return h.reachable ? `${h.rtt_ms.toFixed(1)} ms` : "unreachable";
  };

  function render(status, leases, peers, plugins) {
    view.nodes = nodesOf(leases, peers);
    renderHeader(status);
    renderStatus(status);
    renderPlugin(plugins[0]);
    renderMetrics(leases, peers, plugins);
    renderCluster();
  }

  function renderHeader(s) {
    $("node-name").textContent = `${s.node_name} · ${s.subnet ?? "no subnet yet"}`;
    const b = $("ready");
    b.textContent = s.ready ? "ready" : "not ready";
    b.className = `badge ${s.ready ? "ok" : "bad"}`;
    b.title = s.not_ready_reason ?? "";
    document.title = `twill · ${s.node_name}`;
  }

  function facts(dl, rows) {
    const frag = document.createDocumentFragment();
    for (const [name, value, cls] of rows) {
      frag.append(el("dt", null, name), el("dd", cls, value ?? "—"));
    }
    dl.replaceChildren(frag);
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return null;
    const neg = seconds < 0;
    let s = Math.abs(seconds);
    const parts = [];
    for (const [unit, n] of [["d", 86400], ["h", 3600], ["m", 60]]) {
      if (s >= n) { parts.push(`${Math.floor(s / n)}${unit}`); s %= n; }
    }
    if (parts.length < 2) parts.push(`${s}s`);
    return (neg ? "-" : "") + parts.slice(0, 2).join(" ");
  }

  function renderStatus(s) {
    facts($("status"), [
      ["node", s.node_name],
      ["public IP", s.public_ip],
      ["interface", s.interface],
      ["subnet", s.subnet],
      ["MTU", s.mtu],
      ["backend", s.backend_type],
      ["plugin", s.plugin],
      ["store", `${s.store.state} since ${s.store.since}`, s.store.state === "connected" ? null : "error"],
      ["endpoints", s.store.endpoints.join(", ")],
      ["lease expires", s.lease_expires_at ? `in ${duration(s.lease_expires_in_seconds)} (${s.lease_expires_at})` : "no TTL / not held"],
      ["ready", s.ready ? "yes" : s.not_ready_reason, s.ready ? null : "error"],
      ["twill", `${s.version}, up ${duration(s.uptime_seconds)}`],
    ]);
  }

  const counts = (map) => Object.entries(map).map(([k, v]) => `${k} ${v}`).join(", ") || "none";

  function renderPlugin(p) {
    if (!p) { facts($("plugin"), [["plugin", "none loaded"]]); return; }
    facts($("plugin"), [
      ["name", `${p.name} ${p.version}`],
      ["WIT", p.wit_version],
      ["source", p.source],
      ["sha256", p.sha256.slice(0, 16) + "…"],
      ["imports", p.capabilities.join(", ")],
      ["calls", counts(p.calls)],
      ["denied", counts(p.denied), Object.keys(p.denied).length ? "error" : null],
      ["traps / restarts", `${p.traps} / ${p.restarts}`, p.traps ? "error" : null],
      ["last error", p.last_error ? `${p.last_error.message} (since ${p.last_error.since})` : null, p.last_error ? "error" : null],
    ]);
  }

  function push(series, v) {
    series.push(v);
    if (series.length > HISTORY) series.shift();
  }

  function sparkline(series) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${HISTORY - 1} 20`);
    svg.setAttribute("preserveAspectRatio", "none");
    const max = Math.max(1, ...series);
    const line = document.createElementNS(ns, "polyline");
    const offset = HISTORY - series.length;
    line.setAttribute("points", series.map((v, i) => `${i + offset},${19 - (v / max) * 18}`).join(" "));
    line.setAttribute("vector-effect", "non-scaling-stroke");
    svg.append(line);
    return svg;
  }

  function renderMetrics(leases, peers, plugins) {
    const by = Object.fromEntries(STATES.map((s) => [s, 0]));
    for (const p of peers) by[p.state] = (by[p.state] ?? 0) + 1;
    const calls = plugins.reduce((n, p) => n + Object.values(p.calls).reduce((a, b) => a + b, 0), 0);
    const rate = lastCalls === null ? 0 : Math.max(0, calls - lastCalls) / (POLL_MS / 1000);
    lastCalls = calls;
    push(history.leases, leases.length);
    push(history.callRate, rate);
    push(history.errors, by.error);
    const unreachable = peers.filter((p) => p.health && !p.health.reachable).length;

    const card = (label, value, cls, series) => {
      const c = el("div", `metric ${cls ?? ""}`);
      c.dataset.metric = label;
      c.append(el("div", "label", label), el("div", "value", value));
      if (series) c.append(sparkline(series));
      return c;
    };
    $("metrics").replaceChildren(
      card("leases known", leases.length, null, history.leases),
      card("peers programmed", by.programmed, "programmed"),
      card("peers pending", by.pending, "pending"),
      card("peers in error", by.error, "error", history.errors),
      card("peers unreachable", unreachable, "error"),
      card("plugin calls", calls),
      card("calls / s", rate.toFixed(1), null, history.callRate),
    );
  }

  function stateCounts() {
    const n = { programmed: 0, pending: 0, error: 0, unknown: 0, unreachable: 0 };
    for (const node of view.nodes) {
      if (!node.own) n[node.state] = (n[node.state] ?? 0) + 1;
      if (node.health === "unreachable") n.unreachable += 1;
    }
    return n;
  }

  function renderCluster() {
    const n = stateCounts();
    $("summary").textContent = `${view.nodes.length} nodes · ${n.programmed} programmed · ${n.pending} pending · ${n.error} error` +
      (n.unknown ? ` · ${n.unknown} not a peer` : "") + ` · ${n.unreachable} unreachable`;

    const bar = $("state-bar");
    bar.replaceChildren(...STATES.concat("unknown").filter((s) => n[s]).map((s) => {
      const seg = el("span", s);
      seg.style.flexGrow = String(n[s]);
      seg.title = `${n[s]} ${s}`;
      return seg;
    }));

    const chips = $("state-filter");
    chips.replaceChildren(...["all", ...STATES].map((s) => {
      const b = el("button");
      b.type = "button";
      if (s !== "all") { b.className = s; b.append(el("span", "dot")); }
      b.append(s === "all" ? `all ${view.nodes.length}` : `${s} ${n[s]}`);
      b.setAttribute("aria-pressed", String(view.state === s));
      b.addEventListener("click", () => { view.state = s; renderCluster(); });
      return b;
    }));

    renderGrid();
    renderDetail();
  }

  function visible(node) {
    if (view.state !== "all" && node.state !== view.state) return false;
    if (!view.filter) return true;
    const hay = `${node.subnet} ${node.public_ip} ${node.backend_type} ${node.peer?.last_error?.message ?? ""}`.toLowerCase();
    return hay.includes(view.filter);
  }

  function tileTitle(node) {
    const lines = [`${node.subnet} — ${node.public_ip} (${node.backend_type || "udp"})`,
      node.own ? "this node" : `state: ${node.state}`];
    if (node.peer?.state === "error" && node.peer.last_error) lines.push(`error: ${node.peer.last_error.message}`);
    if (node.health) lines.push(`probes: ${node.health}${node.peer?.health?.reachable ? `, ${rttText(node)}` : ""}`);
    return lines.join("\n");
  }

  // Rebuilt only when something shown changed, so hover and focus survive a poll.
  function renderGrid() {
    const shown = view.nodes.filter(visible);
    const key = JSON.stringify([view.selected, shown.map((x) => [x.subnet, x.public_ip, x.backend_type, x.state, x.health, x.peer?.last_error?.message])]);
    if (key === view.gridKey) {
      // Only the round-trip times moved: change their text in place (hover and focus stay).
      for (const node of shown) {
        const rtt = $("nodes").querySelector(`.node[data-subnet="${node.subnet}"] .rtt`);
        if (rtt) rtt.textContent = rttText(node);
      }
      return;
    }
    view.gridKey = key;
    const frag = document.createDocumentFragment();
    for (const node of shown) {
      const t = el("div", `node ${node.own ? "own" : node.state}${node.health ? ` h-${node.health}` : ""}`);
      t.setAttribute("role", "listitem");
      t.tabIndex = 0;
      t.dataset.subnet = node.subnet;
      t.dataset.publicIp = node.public_ip;
      t.dataset.state = node.state;
      if (node.health) t.dataset.health = node.health;
      if (node.subnet === view.selected) t.classList.add("selected");
      t.title = tileTitle(node);
      t.append(el("span", "subnet", node.subnet), el("span", "type", node.backend_type || "udp"),
        el("span", "ip", node.public_ip), el("span", "rtt", rttText(node)));
      frag.append(t);
    }
    $("nodes").replaceChildren(frag);
    $("empty").hidden = shown.length > 0;
  }

  function renderDetail() {
    const box = $("detail");
    const node = view.nodes.find((x) => x.subnet === view.selected);
    if (!node) { box.hidden = true; return; }
    box.hidden = false;
    $("detail-title").textContent = `${node.subnet}${node.own ? " (this node)" : ""}`;
    const p = node.peer;
    facts($("detail-facts"), [
      ["public IP", node.public_ip],
      ["backend", node.backend_type || "udp"],
      ["backend data", node.backend_data === null ? null : JSON.stringify(node.backend_data)],
      ["lease expires", node.expires_at ?? "no TTL"],
      ["state", node.own ? "this node" : p ? `${p.state} since ${p.state_since}` : "not a peer", p?.state === "error" ? "error" : null],
      ["probes", p?.health ? (p.health.reachable
        ? `reachable since ${p.health.since}, ${rttText(node)} (checked ${p.health.checked_at})`
        : `unreachable since ${p.health.since}: ${p.health.lost_in_a_row} probes unanswered`) : p ? "not decided yet" : null,
      p?.health && !p.health.reachable ? "error" : null],
      ["programmed", p?.programmed || null],
      ["last error", p?.last_error ? `${p.last_error.message} (since ${p.last_error.since})` : null, p?.state === "error" ? "error" : null],
    ]);
  }

  function select(target) {
    const tile = target.closest(".node");
    if (!tile) return;
    view.selected = view.selected === tile.dataset.subnet ? null : tile.dataset.subnet;
    renderGrid();
    renderDetail();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("nodes").addEventListener("click", (e) => select(e.target));
    $("nodes").addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(e.target); }
    });
    $("detail-close").addEventListener("click", () => { view.selected = null; renderGrid(); renderDetail(); });
    $("filter").addEventListener("input", (e) => { view.filter = e.target.value.trim().toLowerCase(); renderGrid(); });
    poll();
  });
})();
