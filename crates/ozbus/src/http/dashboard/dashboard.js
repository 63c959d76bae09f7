// The live dashboard's behaviour: polls /v1/summary and /v1/transactions once a second and
// renders them (the rate chart in SVG, the tables, the store's state), and ends a transaction
// through DELETE /v1/transactions/{tx} after the user confirms. Owns presentation, keyboard
// use (focus kept across refreshes, the confirmation dialog) and credentials (with users
// configured: a bearer token from POST /v1/tokens, asked for with the Basic credentials the
// browser cached for the page). Never: counts or aggregates outcomes (the server does; the
// browser could not take every outcome under load), decides what a user may see (the
// endpoints do), or loads anything from elsewhere.
"use strict";

(() => {
  const USERS = document.querySelector('meta[name="ozbus-users"]').content === "users";
  const PERIOD_MS = 1000;
  const CLASSES = ["success", "failure", "management"];
  const PALETTE = ["#0ea5e9", "#f59e0b", "#10b981", "#e11d48", "#8b5cf6", "#14b8a6", "#f97316", "#6366f1"];
  const $ = (id) => document.getElementById(id);
  const number = new Intl.NumberFormat("en", { maximumFractionDigits: 1 });
  const whole = new Intl.NumberFormat("en", { maximumFractionDigits: 0 });

  const state = {
    token: null,
    view: "class",
    window: 300,
    summary: null,
    transactions: null,
    lastOk: 0,
    failing: false,
    seenLatest: new Set(),
    rollStart: new Map(),
    ending: null,
  };

  // ---- requests -------------------------------------------------------------------------

  /** A bearer token for the user whose Basic credentials the browser cached for this page. */
  async function fetchToken() {
    const response = await fetch("/v1/tokens", { method: "POST", cache: "no-store" });
    state.token = response.ok ? (await response.json()).token : null;
  }

  async function api(path, init = {}) {
    if (USERS && !state.token) await fetchToken();
    const send = () => {
      const headers = new Headers(init.headers || {});
      if (state.token) headers.set("Authorization", "Bearer " + state.token);
      return fetch(path, { ...init, headers, cache: "no-store" });
    };
    let response = await send();
    if (response.status === 401 && USERS) {
      // The token expired (or the server restarted): one more, then the request again.
      await fetchToken();
      response = await send();
    }
    return response;
  }

  async function problemText(response) {
    try {
      const problem = await response.json();
      return problem.detail || problem.title || response.statusText;
    } catch {
      return response.status + " " + response.statusText;
    }
  }

  // ---- helpers --------------------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      // Through the CSSOM: the Content-Security-Policy allows no inline style attribute.
      else if (name === "style") Object.assign(node.style, value);
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function svg(tag, attrs = {}) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    return node;
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return number.format(n) + " " + units[i];
  }

  function mean(series, n) {
    const tail = series.slice(-n);
    return tail.length ? tail.reduce((a, b) => a + b, 0) / tail.length : 0;
  }

  function clock(iso) {
    const at = new Date(iso);
    return isNaN(at) ? iso : at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  }

  /** Changes a status pill only when its state changes (a live region announces each change). */
  function setPill(node, kind, text) {
    if (node.textContent === text && node.classList.contains("pill-" + kind)) return;
    node.className = "pill pill-" + kind;
    node.textContent = text;
  }

  function announce(text) {
    setPill($("link"), "ok", text);
  }

  // ---- the chart ------------------------------------------------------------------------

  function seriesToDraw(summary) {
    if (state.view === "class") {
      return CLASSES.map((name) => ({
        name: name[0].toUpperCase() + name.slice(1),
        color: getComputedStyle(document.documentElement).getPropertyValue("--" + name).trim(),
        values: summary.classes[name],
      }));
    }
    const list = summary.campaigns.map((c, i) => ({
      name: c.tenant ? c.tenant + " / " + c.campaign : c.campaign,
      color: PALETTE[i % PALETTE.length],
      values: c.per_second,
    }));
    if (summary.other_campaigns.some((v) => v > 0)) {
      list.push({ name: "Other campaigns", color: "#94a3b8", values: summary.other_campaigns });
    }
    return list;
  }

  /** A scale for `value`: a round step (1, 2 or 5 times a power of ten) and at most 5 of them. */
  function scale(value) {
    for (let power = 1; ; power *= 10) {
      for (const step of [power, 2 * power, 5 * power]) {
        const ticks = Math.max(1, Math.ceil(value / step));
        if (ticks <= 5) return { step, ticks, top: step * ticks };
      }
    }
  }

  function drawChart() {
    const summary = state.summary;
    const chart = $("chart");
    if (!summary) return;
    const width = Math.max(chart.clientWidth, 200);
    const height = Math.max(chart.clientHeight, 120);
    const pad = { left: 46, right: 10, top: 10, bottom: 24 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const series = seriesToDraw(summary);
    const n = summary.window;
    let highest = 0;
    for (const s of series) for (const v of s.values) highest = Math.max(highest, v);
    const { step: tick, ticks, top } = scale(Math.max(highest, 5));
    const x = (i) => pad.left + (n <= 1 ? plotW : (i / (n - 1)) * plotW);
    const y = (v) => pad.top + plotH - (v / top) * plotH;

    chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
    chart.replaceChildren();
    for (let k = 0; k <= ticks; k++) {
      const value = tick * k;
      chart.append(svg("line", { class: "grid", x1: pad.left, x2: width - pad.right, y1: y(value), y2: y(value) }));
      const label = svg("text", { class: "axis", x: pad.left - 8, y: y(value) + 4, "text-anchor": "end" });
      label.textContent = whole.format(value);
      chart.append(label);
    }
    const step = n > 120 ? 60 : n > 30 ? 10 : 5;
    for (let ago = 0; ago < n; ago += step) {
      const label = svg("text", { class: "axis", x: x(n - 1 - ago), y: height - 6, "text-anchor": ago === 0 ? "end" : "middle" });
      label.textContent = ago === 0 ? "now" : ago % 60 === 0 ? `−${ago / 60} min` : `−${ago} s`;
      chart.append(label);
    }
    for (const s of series) {
      const points = s.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
      if (state.view === "class") {
        chart.append(svg("polygon", {
          class: "area", fill: s.color,
          points: `${x(0)},${y(0)} ${points} ${x(n - 1)},${y(0)}`,
        }));
      }
      chart.append(svg("polyline", { class: "series", stroke: s.color, points }));
    }

    const legend = $("legend");
    legend.replaceChildren();
    const described = [];
    for (const s of series) {
      const rate = mean(s.values, 10);
      described.push(`${s.name} ${number.format(rate)} per second`);
      legend.append(el("li", {},
        el("span", { class: "swatch", style: { background: s.color } }),
        el("span", { class: "name", text: s.name, title: s.name }),
        el("span", { class: "value", text: number.format(rate) + "/s" })));
    }
    if (!series.length) legend.append(el("li", { class: "muted", text: "No outcomes in this window." }));
    $("chart-desc").textContent =
      `Outcomes per second over the last ${n >= 60 ? n / 60 + " minutes" : n + " seconds"}` +
      (described.length ? ": " + described.join(", ") + "." : ".");
  }

  // ---- the summary ----------------------------------------------------------------------

  function renderSummary(summary) {
    state.summary = summary;
    const rates = CLASSES.map((c) => mean(summary.classes[c], 10));
    $("kpi-total").textContent = number.format(rates.reduce((a, b) => a + b, 0));
    CLASSES.forEach((c, i) => { $("kpi-" + c).textContent = number.format(rates[i]); });
    drawChart();

    // Latest outcomes: newest first; rows not seen before are highlighted once.
    const body = $("latest-body");
    const rows = summary.latest.map((o) => {
      const fresh = state.seenLatest.size > 0 && !state.seenLatest.has(o.seq);
      const cls = o.class || "plain";
      return el("tr", { class: fresh ? "fresh" : null },
        el("td", { "data-label": "Time", text: clock(o.time), title: o.time }),
        el("td", { "data-label": "Class" }, el("span", { class: "badge badge-" + cls, text: o.class || "" })),
        el("td", { "data-label": "Campaign", class: "wrap" }, el("span", { text: o.campaign }),
          o.tenant ? el("span", { class: "sub-line", text: "tenant " + o.tenant }) : ""),
        el("td", { "data-label": "Agent", class: "wrap", text: o.agent || "—" }),
        el("td", { "data-label": "Session", class: "mono wrap", text: o.session + (o.number ? " (" + o.number + ")" : "") }),
        el("td", { "data-label": "RE", class: "num", text: String(o.reason) }),
        el("td", { "data-label": "AO", class: "num", text: o.outcome === undefined ? "—" : String(o.outcome) }));
    });
    body.replaceChildren(...rows);
    state.seenLatest = new Set(summary.latest.map((o) => o.seq));
    $("latest-empty").hidden = rows.length > 0;

    // Rejections by EC.
    const rejections = summary.rejections.slice().sort((a, b) => b.last_minute - a.last_minute || b.total - a.total);
    $("rej-body").replaceChildren(...rejections.map((r) =>
      el("tr", {},
        el("td", { "data-label": "EC" }, el("a", { href: "/docs#ec-" + r.ec, class: "mono", text: String(r.ec) })),
        el("td", { "data-label": "Meaning", class: "wrap", text: r.title }),
        el("td", { "data-label": "Last min", class: "num", text: whole.format(r.last_minute) }),
        el("td", { "data-label": "Total", class: "num", text: whole.format(r.total) }))));
    $("rej-empty").hidden = rejections.length > 0;

    // The store.
    const store = summary.store;
    const [kind, text] = store.failed ? ["bad", "failed: stopping"]
      : store.full ? ["bad", "disk full: refusing reports"]
      : ["ok", "writable"];
    setPill($("health"), kind, "store " + text);
    $("store-state").textContent = text[0].toUpperCase() + text.slice(1);
    $("store-state").className = kind === "ok" ? "good" : "bad";
    $("store-first").textContent = store.first_seq === undefined ? "— (empty)" : whole.format(store.first_seq);
    $("store-last").textContent = whole.format(store.last_seq);
    $("store-bytes").textContent = bytes(store.log_bytes);
    $("store-commits").textContent = number.format(store.commits_per_second);
    $("store-latency").textContent = store.commit_ms === undefined ? "—" : number.format(store.commit_ms) + " ms";
  }

  // ---- transactions ---------------------------------------------------------------------

  const txKey = (t) => t.tenant + "\u0000" + t.transaction;

  function txCells(t, maxBacklog) {
    const holder = t.holder
      ? [el("span", { text: (t.holder.front_end || "").toUpperCase() + " #" + t.holder.connection }),
         el("span", { class: "sub-line mono", text: t.holder.peer || "" })]
      : [el("span", { class: "badge badge-plain", text: "released" }),
         el("span", { class: "sub-line", text: t.released_at ? "since " + clock(t.released_at) : "" })];
    const filter = [t.filter.tenant && "tenant " + t.filter.tenant, t.filter.campaign && "campaign " + t.filter.campaign]
      .filter(Boolean).join(", ") || "every campaign";
    const classes = t.filter.classes.length === 3 ? "all classes" : t.filter.classes.join(", ");
    const share = maxBacklog > 0 ? Math.max(t.backlog > 0 ? 3 : 0, Math.round((t.backlog / maxBacklog) * 100)) : 0;
    let roll = [el("span", { class: "muted", text: "—" })];
    if (t.roll_forward) {
      const key = txKey(t);
      const start = Math.max(state.rollStart.get(key) || 0, t.roll_forward.remaining);
      state.rollStart.set(key, start);
      const done = start > 0 ? Math.round((1 - t.roll_forward.remaining / start) * 100) : 100;
      roll = [el("span", { text: `${whole.format(t.roll_forward.remaining)} left at ${whole.format(t.roll_forward.rate)}/s` }),
              el("span", { class: "meter", role: "progressbar", "aria-label": "Roll-forward progress", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": String(done) },
                 el("span", { style: { width: done + "%" } }))];
    } else {
      state.rollStart.delete(txKey(t));
    }
    return [
      [{ "data-label": "Transaction", class: "wrap" },
        [el("span", { class: "mono", text: t.transaction }), el("span", { class: "sub-line", text: "tenant " + t.tenant })]],
      [{ "data-label": "Holder" }, holder],
      [{ "data-label": "Filter", class: "wrap" }, [el("span", { text: filter }), el("span", { class: "sub-line", text: classes })]],
      [{ "data-label": "Cursor", class: "num mono" }, [whole.format(t.cursor)]],
      [{ "data-label": "Backlog", class: "num" },
        [el("span", { class: "mono backlog", text: whole.format(t.backlog) }),
         el("span", { class: "meter" + (t.backlog > 10000 ? " hot" : ""), "aria-hidden": "true" }, el("span", { style: { width: share + "%" } }))]],
      [{ "data-label": "Roll-forward" }, roll],
      [{ "data-label": "Persisted" }, [t.persisted
        ? el("span", { class: "badge badge-success", text: "yes" , title: "PersistToken " + t.persist })
        : el("span", { class: "badge badge-plain", text: "no" })]],
    ];
  }

  function fillRow(row, t, maxBacklog) {
    const cells = txCells(t, maxBacklog);
    cells.forEach(([attrs, content], i) => {
      const td = row.children[i];
      for (const [name, value] of Object.entries(attrs)) td.setAttribute(name, value);
      td.replaceChildren(...content);
    });
  }

  function newRow(t) {
    const row = el("tr", { "data-key": txKey(t) });
    for (let i = 0; i < 7; i++) row.append(el("td"));
    const button = el("button", {
      type: "button", class: "btn btn-end",
      "aria-label": `End transaction ${t.transaction} (tenant ${t.tenant})`,
      text: "End",
    });
    button.addEventListener("click", () => confirmEnd(row.txData, button));
    row.append(el("td", { class: "cell-action num", "data-label": "Action" }, button));
    return row;
  }

  function renderTransactions(list) {
    state.transactions = list;
    const txs = list.transactions.slice().sort((a, b) =>
      a.tenant.localeCompare(b.tenant) || a.transaction.localeCompare(b.transaction));
    const maxBacklog = txs.reduce((m, t) => Math.max(m, t.backlog), 0);
    $("kpi-transactions").textContent = whole.format(txs.length);
    $("kpi-backlog").textContent = whole.format(maxBacklog);
    $("tx-note").textContent = `log end ${whole.format(list.log_end)}`;

    const body = $("tx-body");
    const existing = new Map([...body.children].map((row) => [row.dataset.key, row]));
    const wanted = new Set(txs.map(txKey));
    for (const [key, row] of existing) {
      if (!wanted.has(key)) {
        if (row.contains(document.activeElement)) {
          // Keep the keyboard user in the table: the next row's action, else the heading.
          const next = row.nextElementSibling || row.previousElementSibling;
          const target = next && next.querySelector("button");
          (target || $("tx-title")).focus?.();
        }
        row.remove();
        state.rollStart.delete(key);
      }
    }
    let previous = null;
    for (const t of txs) {
      const key = txKey(t);
      let row = existing.get(key);
      if (!row || !row.isConnected) {
        row = newRow(t);
        body.insertBefore(row, previous ? previous.nextSibling : body.firstChild);
      }
      row.txData = t;
      fillRow(row, t, maxBacklog);
      previous = row;
    }
    $("tx-empty").hidden = txs.length > 0;
  }

  // ---- ending a transaction -------------------------------------------------------------

  function confirmEnd(t, opener) {
    const dialog = $("end-dialog");
    state.ending = { t, opener };
    $("end-text").textContent =
      `Transaction ${t.transaction} of tenant ${t.tenant} ends now` +
      (t.holder ? `; its holder (${(t.holder.front_end || "").toUpperCase()} ${t.holder.peer || ""}) receives its end (EF)` : "") +
      (t.persisted ? ". It is persisted: its PersistToken and cursor are forgotten." : ".");
    $("end-error").hidden = true;
    $("end-confirm").disabled = false;
    dialog.showModal();
    $("end-cancel").focus();
  }

  function closeDialog() {
    const dialog = $("end-dialog");
    if (dialog.open) dialog.close();
  }

  $("end-dialog").addEventListener("close", () => {
    const ending = state.ending;
    state.ending = null;
    // Back to the button that opened it; if that row is gone (the transaction ended), the
    // refresh has put the focus on the next row's button already, or else on the heading.
    if (ending && ending.opener.isConnected) ending.opener.focus();
    else if (!document.activeElement || document.activeElement === document.body) $("tx-title").focus();
  });
  $("end-cancel").addEventListener("click", closeDialog);
  $("end-confirm").addEventListener("click", async () => {
    const ending = state.ending;
    if (!ending) return;
    const { t } = ending;
    $("end-confirm").disabled = true;
    try {
      // With users, the tenant it lives in (a landlord must name it; a supervisor's own is
      // allowed); without users every TX lives in one namespace, and the EF carries no TD.
      const path = "/v1/transactions/" + encodeURIComponent(t.transaction) +
        (USERS ? "?tenant=" + encodeURIComponent(t.tenant) : "");
      const response = await api(path, { method: "DELETE" });
      if (response.status === 204 || response.status === 404) {
        closeDialog();
        announce(`ended ${t.transaction}`);
        await refreshTransactions();
      } else {
        $("end-error").textContent = await problemText(response);
        $("end-error").hidden = false;
        $("end-confirm").disabled = false;
      }
    } catch (error) {
      $("end-error").textContent = "The server did not answer: " + error.message;
      $("end-error").hidden = false;
      $("end-confirm").disabled = false;
    }
  });
  $("tx-title").setAttribute("tabindex", "-1");

  // ---- the loop -------------------------------------------------------------------------

  async function refreshTransactions() {
    const response = await api("/v1/transactions");
    if (response.ok) {
      renderTransactions(await response.json());
    } else {
      $("tx-note").textContent = await problemText(response);
    }
    return response.ok;
  }

  async function refreshSummary() {
    const response = await api("/v1/summary?window=" + state.window);
    if (response.ok) {
      renderSummary(await response.json());
    } else {
      $("chart-desc").textContent = await problemText(response);
      $("legend").replaceChildren(el("li", { class: "error", text: $("chart-desc").textContent }));
    }
    return response.ok;
  }

  async function tick() {
    const results = await Promise.allSettled([refreshSummary(), refreshTransactions()]);
    const ok = results.every((r) => r.status === "fulfilled");
    if (ok) {
      state.lastOk = Date.now();
      if (state.failing || $("link").textContent !== "live") setPill($("link"), "ok", "live");
      state.failing = false;
    } else if (!state.failing) {
      state.failing = true;
      setPill($("link"), "bad", "reconnecting…");
    }
    $("updated").textContent = state.lastOk ? "Updated " + new Date(state.lastOk).toLocaleTimeString([], { hour12: false }) + "." : "";
    setTimeout(tick, ok ? PERIOD_MS : 3 * PERIOD_MS);
  }

  // ---- controls -------------------------------------------------------------------------

  function press(group, pressed) {
    for (const button of group) button.setAttribute("aria-pressed", String(button === pressed));
  }
  const viewButtons = [$("by-class"), $("by-campaign")];
  viewButtons.forEach((button) => button.addEventListener("click", () => {
    state.view = button.id === "by-class" ? "class" : "campaign";
    press(viewButtons, button);
    drawChart();
  }));
  const windowButtons = [...document.querySelectorAll("[data-window]")];
  windowButtons.forEach((button) => button.addEventListener("click", () => {
    state.window = Number(button.dataset.window);
    press(windowButtons, button);
    refreshSummary().catch(() => {});
  }));
  let resizing = 0;
  window.addEventListener("resize", () => {
    cancelAnimationFrame(resizing);
    resizing = requestAnimationFrame(drawChart);
  });

  tick();
})();
