// The station page: plain JavaScript, no build step. Talks only to the daemon that served it.
"use strict";
const $ = (id) => document.getElementById(id);
let csrf = "";
let scoresData = null;
let liveSource = null;
const statsHistory = [];
const STATS_POINTS = 120;

async function api(path) {
  const response = await fetch(path, {credentials: "same-origin"});
  const body = await response.json();
  if (!response.ok) throw new Error(body.reason || response.statusText);
  return body;
}

async function post(path, data) {
  const response = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
    body: JSON.stringify(data || {}),
  });
  const body = await response.json().catch(() => ({ok: false, reason: response.statusText}));
  return {ok: response.ok && body.ok !== false, reason: body.reason || "", status: response.status};
}

function text(id, value) { $(id).textContent = value; }
function fmt(value) { return value === null || value === undefined ? "-" : Number(value).toPrecision(6); }

// --- session and login ---

async function startSession() {
  const session = await api("/api/session");
  csrf = session.csrf;
  const needLogin = !session.may_read || (session.password_required && !session.authenticated);
  $("login").hidden = !needLogin;
  if (session.may_read) startPage();
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const result = await post("/api/login", {password: $("password").value});
  $("password").value = "";
  if (!result.ok) { text("login-error", result.reason); return; }
  text("login-error", "");
  $("login").hidden = true;
  startPage();
});

let started = false;
function startPage() {
  if (started) return;
  started = true;
  startLive();
  refreshState();
  pollStats();
  setInterval(pollStats, 2000);
}

// --- tabs ---

document.querySelectorAll(".tab").forEach((button) => button.addEventListener("click", () => {
  document.querySelectorAll(".tab").forEach((b) => b.classList.toggle("active", b === button));
  document.querySelectorAll(".panel").forEach((p) => { p.hidden = p.id !== "tab-" + button.dataset.tab; });
  if (button.dataset.tab === "review") loadReview();
  if (button.dataset.tab === "threshold") loadScores();
}));

async function refreshState() {
  const state = await api("/api/state");
  text("device", state.device_id);
  text("model", `${state.model.name} (${state.model.sha256.slice(0, 12)}) · source ${state.source}`);
  return state;
}

// --- live view: server-sent events carry the verdict, the picture is fetched by version ---

function startLive() {
  liveSource = new EventSource("/api/live/events");
  liveSource.onmessage = (event) => {
    const v = JSON.parse(event.data);
    $("live-image").src = `/api/live.jpg?v=${v.version}`;
    $("live-image").dataset.seq = v.seq;
    $("live-image").dataset.verdict = v.verdict;
    text("live-verdict", v.verdict.toUpperCase());
    $("live-verdict").className = "verdict-" + v.verdict;
    text("live-score", fmt(v.score));
    text("live-threshold", fmt(v.threshold));
    text("live-seq", v.seq);
    text("live-part", v.part_id || "-");
    text("live-name", v.image);
    text("live-regions", v.regions.length ? v.regions.map((r) => `${r.w}x${r.h} at ${r.x},${r.y}`).join("; ") : "none");
  };
}

// --- review ---

function isoOf(inputId) {
  const value = $(inputId).value;
  return value ? new Date(value).toISOString() : "";
}

let reviewRequests = 0;  // only the newest request draws the list: an older answer may arrive after it

async function loadReview() {
  const request = ++reviewRequests;
  const query = new URLSearchParams({filter: $("review-filter").value});
  if (isoOf("review-since")) query.set("since", isoOf("review-since"));
  if (isoOf("review-until")) query.set("until", isoOf("review-until"));
  let data;
  try { data = await api("/api/review?" + query); } catch (error) {
    if (request === reviewRequests) text("review-message", error.message);
    return;
  }
  if (request !== reviewRequests) return;
  const list = $("review-list");
  list.replaceChildren();
  const shown = $("review-with-regions").checked ? data.verdicts.filter((v) => v.regions.length) : data.verdicts;
  text("review-count", `${shown.length} verdict(s)`);
  reviewShown = shown;
  for (const v of shown) list.appendChild(reviewItem(v));
}

function reviewItem(v) {
  const item = document.createElement("div");
  item.className = "item";
  item.dataset.seq = v.seq;
  item.dataset.verdict = v.verdict;
  if (v.evidence) {
    for (const kind of ["frame", "heat"]) {
      const img = document.createElement("img");
      img.src = `/api/evidence/${v.seq}/${kind}`;
      img.alt = `${kind} of seq ${v.seq}`;
      img.addEventListener("click", () => openViewer(v.seq));
      item.appendChild(img);
    }
  }
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.innerHTML = "";
  const lines = [`seq ${v.seq} · ${v.verdict.toUpperCase()} · score ${fmt(v.score)} / ${fmt(v.threshold)}`,
    `${v.image}${v.part_id ? " · part " + v.part_id : ""} · ${v.ts}`,
    `model ${v.model.name} ${v.model.sha256.slice(0, 12)}`,
    v.regions.length ? `regions: ${v.regions.map((r) => `${r.w}x${r.h} at ${r.x},${r.y}`).join("; ")}` : (v.reason || "")];
  for (const line of lines) { const div = document.createElement("div"); div.textContent = line; meta.appendChild(div); }
  item.appendChild(meta);
  if (v.held) {
    for (const [label, caption] of [["good", "Good part (false reject)"], ["defect", "Defect (missed)"]]) {
      const button = document.createElement("button");
      button.className = "mark-" + label;
      button.textContent = caption;
      button.addEventListener("click", async () => {
        const result = await post("/api/feedback", {seq: v.seq, label: label});
        text("review-message", result.ok ? result.reason : "refused: " + result.reason);
      });
      item.appendChild(button);
    }
  }
  return item;
}

$("review-refresh").addEventListener("click", loadReview);
$("review-filter").addEventListener("change", loadReview);
$("review-with-regions").addEventListener("change", loadReview);

// --- review viewer: the chosen frame large, its heatmap and region boxes in the frame's own pixels ---

let reviewShown = [];  // the cards of the Review list, in their order
let viewerIndex = -1;

function openViewer(seq) {
  viewerIndex = reviewShown.findIndex((v) => v.seq === seq);
  if (viewerIndex < 0) return;
  $("review-viewer").hidden = false;
  showViewer();
}

function closeViewer() { $("review-viewer").hidden = true; viewerIndex = -1; }

function stepViewer(step) {
  const next = viewerIndex + step;
  if (viewerIndex < 0 || next < 0 || next >= reviewShown.length) return;
  viewerIndex = next;
  showViewer();
}

function showViewer() {
  const v = reviewShown[viewerIndex];
  const raw = $("viewer-raw").checked;
  const image = $("viewer-image");
  image.dataset.seq = v.seq;
  image.dataset.kind = !v.evidence ? "none" : raw || !$("viewer-overlay").checked ? "frame" : "heat";
  if (v.evidence) image.src = `/api/evidence/${v.seq}/${image.dataset.kind}`;
  else image.removeAttribute("src");
  text("viewer-caption", `${viewerIndex + 1} of ${reviewShown.length} · seq ${v.seq} · ${v.verdict.toUpperCase()} · ` +
    `score ${fmt(v.score)} / ${fmt(v.threshold)} · ${v.image} · ${v.ts}` + (v.evidence ? "" : " · no evidence image kept"));
  $("viewer-prev").disabled = viewerIndex === 0;
  $("viewer-next").disabled = viewerIndex === reviewShown.length - 1;
  if (image.complete && image.naturalWidth) fitViewer();
}

function fitViewer() {
  // Drawn at a size chosen here (never letterboxed by CSS), so the SVG over it maps frame pixels exactly.
  const image = $("viewer-image"), v = reviewShown[viewerIndex];
  if (!v || !image.naturalWidth) return;
  const w = image.naturalWidth, h = image.naturalHeight;
  const zoom = Math.min((window.innerWidth - 40) / w, (window.innerHeight - 120) / h, 8);
  image.style.width = `${Math.round(w * zoom)}px`;
  image.style.height = `${Math.round(h * zoom)}px`;
  const boxes = $("viewer-boxes");
  boxes.setAttribute("viewBox", `0 0 ${w} ${h}`);
  boxes.replaceChildren();
  if ($("viewer-raw").checked || !$("viewer-regions").checked) return;
  for (const r of v.regions) {
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    for (const [key, value] of Object.entries({x: r.x, y: r.y, width: r.w, height: r.h})) rect.setAttribute(key, value);
    boxes.appendChild(rect);
  }
}

$("viewer-image").addEventListener("load", fitViewer);
$("viewer-prev").addEventListener("click", () => stepViewer(-1));
$("viewer-next").addEventListener("click", () => stepViewer(1));
$("viewer-close").addEventListener("click", closeViewer);
for (const id of ["viewer-overlay", "viewer-regions", "viewer-raw"]) $(id).addEventListener("change", showViewer);
document.addEventListener("keydown", (event) => {
  if ($("review-viewer").hidden) return;
  if (event.key === "ArrowRight") { event.preventDefault(); stepViewer(1); }
  else if (event.key === "ArrowLeft") { event.preventDefault(); stepViewer(-1); }
  else if (event.key === "Escape") closeViewer();
});

// --- threshold by eye: an axis around the data (linear, or log), the slider or a typed value, the change log ---

let axisCache = null;  // [low, high] of the axis; cleared when the scores or the scale change

function axisDomain() {
  if (!axisCache) axisCache = dataDomain();
  return axisCache;
}

function dataDomain() {
  // The scores shown and both thresholds, with a margin, within the range the model accepts.
  const state = scoresData.state;
  const [low, high] = state.threshold_range;
  const values = [...scoresData.calibration.map((c) => c.score), ...scoresData.recent.map((r) => r.score),
    state.threshold, state.bundle_threshold].filter((v) => Number.isFinite(v) && v > 0);
  if (!values.length) return [low, high];
  const log = $("threshold-log").checked;
  const f = log ? Math.log : (v) => v, inverse = log ? Math.exp : (v) => v;
  let a = f(Math.min(...values)), b = f(Math.max(...values));
  const margin = (b - a) * 0.08 || Math.abs(a) * 0.1 || 1;
  return [Math.max(low, inverse(a - margin)), Math.min(high, inverse(b + margin))];
}

function axisFraction(value) {
  // 0..1 along the axis; outside the domain it is clamped to an end.
  const [a, b] = axisDomain();
  const v = Math.min(Math.max(value, a), b);
  return $("threshold-log").checked ? (Math.log(v) - Math.log(a)) / (Math.log(b) - Math.log(a)) : (v - a) / (b - a);
}

function axisValue(fraction) {
  const [a, b] = axisDomain();
  return $("threshold-log").checked ? Math.exp(Math.log(a) + (Math.log(b) - Math.log(a)) * fraction) : a + (b - a) * fraction;
}

function axisTicks() {
  // Round numbers across the domain: 1, 2, 5 x 10^k steps (linear) or 1, 2, 5 x each power of ten (log).
  const [a, b] = axisDomain();
  if ($("threshold-log").checked) {
    const ticks = [];
    for (let k = Math.floor(Math.log10(a)); k <= Math.ceil(Math.log10(b)); k++) {
      for (const m of [1, 2, 5]) { const t = m * 10 ** k; if (t >= a && t <= b) ticks.push(t); }
    }
    return ticks;
  }
  const rough = (b - a) / 8, power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough);
  const ticks = [];
  for (let t = Math.ceil(a / step) * step; t <= b + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

function sliderToThreshold(value) { return axisValue(value / 1000); }
function thresholdToSlider(threshold) { return Math.round(1000 * axisFraction(threshold)); }

async function loadScores() {
  scoresData = await api("/api/scores");
  axisCache = null;
  const state = scoresData.state;
  text("threshold-current", fmt(state.threshold));
  text("threshold-bundle", fmt(state.bundle_threshold));
  const stored = state.stored_threshold;
  text("threshold-origin", stored && stored.error ? stored.error
    : stored ? `set by ${stored.set_by || "command"} at ${stored.ts}`
    : state.configured_threshold ? "from inference.threshold" : "the bundle's own");
  text("threshold-fitness", state.fitness.text);
  const [low, high] = state.threshold_range;
  Object.assign($("threshold-input"), {min: low, max: high, title: `${fmt(low)} to ${fmt(high)}`});
  $("threshold-slider").value = thresholdToSlider(state.threshold);
  showCandidate(state.threshold);  // the running value exactly, not the slider's nearest step
  loadAudit();
}

async function loadAudit() {
  let data;
  try { data = await api("/api/threshold/audit"); } catch (error) { text("threshold-audit-message", error.message); return; }
  text("threshold-audit-message", data.changes.length ? "" : "no change of the stored threshold recorded yet");
  const body = $("threshold-audit").querySelector("tbody");
  body.replaceChildren();
  for (const c of data.changes) {
    const row = document.createElement("tr");
    row.dataset.to = c.to === null ? "" : c.to;
    for (const cell of [c.ts, c.who, c.action, fmt(c.from), fmt(c.to), c.why || ""]) {
      const td = document.createElement("td");
      td.textContent = cell;
      row.appendChild(td);
    }
    body.appendChild(row);
  }
}

function candidate() { return Number($("threshold-value").dataset.threshold); }

function showCandidate(typed) {
  // typed: a value from the number field, kept exactly; otherwise the slider's position.
  const threshold = typed === undefined ? sliderToThreshold(Number($("threshold-slider").value)) : typed;
  $("threshold-value").dataset.threshold = threshold;
  text("threshold-value", fmt(threshold));
  if (typed === undefined) $("threshold-input").value = Number(threshold.toPrecision(6));
  const running = scoresData.state.threshold;
  const flips = scoresData.recent.filter((r) => (r.score >= threshold) !== (r.score >= running));
  text("flip-count", flips.length);
  $("flip-count").dataset.count = flips.length;
  const list = $("flip-list");
  list.replaceChildren();
  for (const r of flips) {
    const li = document.createElement("li");
    li.dataset.seq = r.seq;
    li.textContent = `seq ${r.seq} ${r.image}: score ${fmt(r.score)}, ${r.verdict} -> ${r.score >= threshold ? "fail" : "pass"}`;
    list.appendChild(li);
  }
  drawHistogram(threshold);
}

function drawHistogram(threshold) {
  const canvas = $("histogram");
  const ctx = canvas.getContext("2d");
  const bins = 80, axisHeight = 22, plotHeight = canvas.height - axisHeight;
  const x = (s) => axisFraction(s) * canvas.width;
  const count = (scores) => {
    const h = new Array(bins).fill(0);
    for (const s of scores) h[Math.min(bins - 1, Math.floor(axisFraction(s) * bins))]++;
    const total = scores.length || 1;
    return h.map((n) => n / total);
  };
  const series = [
    [count(scoresData.calibration.filter((c) => c.label === 0).map((c) => c.score)), "#7fc98f"],
    [count(scoresData.calibration.filter((c) => c.label === 1).map((c) => c.score)), "#e07b7b"],
    [count(scoresData.recent.map((r) => r.score)), "#2f6fd6"],
  ];
  const peak = Math.max(0.01, ...series.flatMap(([h]) => h));
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const width = canvas.width / bins;
  for (const [h, color] of series) {
    ctx.fillStyle = color + "b0";
    h.forEach((v, i) => { const height = v / peak * (plotHeight - 20); ctx.fillRect(i * width, plotHeight - height, width - 1, height); });
  }
  for (const [value, color, dash] of [[scoresData.state.threshold, "#555", [6, 4]], [threshold, "#c0162b", []]]) {
    ctx.strokeStyle = color; ctx.setLineDash(dash); ctx.lineWidth = 2;
    ctx.beginPath(); ctx.moveTo(x(value), 0); ctx.lineTo(x(value), plotHeight); ctx.stroke();
  }
  ctx.setLineDash([]);
  ctx.strokeStyle = "#333"; ctx.lineWidth = 1; ctx.fillStyle = "#333"; ctx.font = "12px system-ui, sans-serif";
  ctx.beginPath(); ctx.moveTo(0, plotHeight + .5); ctx.lineTo(canvas.width, plotHeight + .5); ctx.stroke();
  ctx.textAlign = "center";
  for (const t of axisTicks()) {
    const px = Math.round(x(t)) + .5;
    ctx.beginPath(); ctx.moveTo(px, plotHeight); ctx.lineTo(px, plotHeight + 5); ctx.stroke();
    ctx.fillText(String(Number(t.toPrecision(4))), Math.min(Math.max(px, 14), canvas.width - 14), plotHeight + 17);
  }
  ctx.textAlign = "right";
  ctx.fillText(`score (${$("threshold-log").checked ? "log" : "linear"} scale)`, canvas.width - 4, 12);
  ctx.textAlign = "start";
}

$("threshold-slider").addEventListener("input", () => showCandidate());
$("threshold-log").addEventListener("change", () => {
  const keep = candidate();  // the candidate stays; the axis and the slider's scale change under it
  axisCache = null;
  $("threshold-slider").value = thresholdToSlider(keep);
  showCandidate(keep);
});
$("threshold-input").addEventListener("input", () => {
  const typed = Number($("threshold-input").value);
  if (!$("threshold-input").value || !Number.isFinite(typed) || typed <= 0) return;
  $("threshold-slider").value = thresholdToSlider(typed);
  showCandidate(typed);
});
$("threshold-input").addEventListener("keydown", (event) => { if (event.key === "Enter") $("threshold-apply").click(); });
$("histogram").addEventListener("click", (event) => {
  const rect = event.target.getBoundingClientRect();
  $("threshold-slider").value = Math.round(1000 * (event.clientX - rect.left) / rect.width);
  showCandidate();
});
$("threshold-apply").addEventListener("click", async () => {
  const why = $("threshold-why").value.trim();
  const result = await post("/api/threshold", {threshold: candidate(), ...(why ? {why} : {})});
  text("threshold-message", result.ok ? result.reason : "refused: " + result.reason);
  if (result.ok) $("threshold-why").value = "";
  await loadScores();
});
$("threshold-reset").addEventListener("click", async () => {
  const why = $("threshold-why").value.trim();
  const result = await post("/api/threshold/reset", why ? {why} : {});
  text("threshold-message", result.ok ? result.reason : "refused: " + result.reason);
  if (result.ok) $("threshold-why").value = "";
  await loadScores();
});

// --- stats ---

async function pollStats() {
  refreshState().catch(() => {});
  let stats;
  try { stats = await api("/api/stats"); } catch (error) { return; }
  const judged = stats.pass + stats.fail;
  const cards = {
    "fps": stats.fps, "frames": stats.frames, "pass": stats.pass, "fail": stats.fail, "unscorable": stats.unscorable,
    "fail rate": judged ? (100 * stats.fail / judged).toFixed(1) + " %" : "-",
    "latency p50": stats.latency_ms.p50 === null ? "-" : stats.latency_ms.p50.toFixed(1) + " ms",
    "latency p95": stats.latency_ms.p95 === null ? "-" : stats.latency_ms.p95.toFixed(1) + " ms",
    "outbox depth": stats.outbox.depth, "source": stats.source.state || "-", "MQTT": stats.mqtt_connected ? "connected" : "not connected",
    "CPU temp": stats.cpu_temp_c === null ? "-" : stats.cpu_temp_c.toFixed(1) + " °C", "threshold": fmt(stats.threshold),
  };
  showDrift(stats.drift);
  showReasons(stats.components);
  if (stats.drift) cards["drift"] = !stats.drift.enabled ? "off" : stats.drift.drift ? "yes" : "no";
  if (stats.shadow && stats.shadow.model) Object.assign(cards, shadowCards(stats.shadow));
  const box = $("stats-cards");
  box.replaceChildren();
  for (const [name, value] of Object.entries(cards)) {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.name = name;
    card.append(name);
    const b = document.createElement("b");
    b.textContent = value;
    card.appendChild(b);
    box.appendChild(card);
  }
  statsHistory.push({fps: stats.fps, failRate: judged ? 100 * stats.fail / judged : 0});
  if (statsHistory.length > STATS_POINTS) statsHistory.shift();
  drawStats();
}

function shadowCards(shadow) {
  // The candidate beside the live model: agreement, the latest disagreeing seqs, both fail rates (Wilson 95 %).
  const pct = (x) => x === null ? "-" : (100 * x).toFixed(1) + " %";
  const rate = (r) => r.rate === null ? "-" : `${pct(r.rate)} (${pct(r.low)} to ${pct(r.high)})`;
  return {
    "shadow": `${shadow.model.name}: agree ${pct(shadow.agreement)} of ${shadow.frames}, skipped ${shadow.skipped}`,
    "shadow differs at seq": shadow.last_disagreements.length ? shadow.last_disagreements.join(", ") : "-",
    "fail rate live": rate(shadow.fail_rate.live), "fail rate shadow": rate(shadow.fail_rate.shadow),
  };
}

function showReasons(parts) {
  // One short line in the header, on every tab, while a part is down: "source: cannot open camera ...".
  const down = Object.entries(parts || {}).filter(([, part]) => part.up === false);
  const line = $("reasons");
  line.hidden = down.length === 0;
  line.textContent = down.map(([name, part]) => {
    const why = part.last_error || part.state;
    return why.startsWith(name) ? why : `${name}: ${why}`;
  }).join(" · ");
}

function showDrift(drift) {
  // One line in the header while the drift watch has tripped: what moved, by how much, over how many frames.
  const line = $("drift");
  line.hidden = !(drift && drift.drift);
  line.textContent = line.hidden ? "" : "drift: " + drift.reason;
}

function drawStats() {
  const canvas = $("stats-chart");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (const [key, color] of [["fps", "#2f6fd6"], ["failRate", "#e07b7b"]]) {
    const peak = Math.max(1, ...statsHistory.map((p) => p[key]));
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    statsHistory.forEach((p, i) => {
      const px = i / (STATS_POINTS - 1) * canvas.width, py = canvas.height - p[key] / peak * (canvas.height - 10);
      i ? ctx.lineTo(px, py) : ctx.moveTo(px, py);
    });
    ctx.stroke();
  }
}

$("reload-button").addEventListener("click", async () => {
  const result = await post("/api/reload");
  text("reload-message", result.ok ? result.reason : "refused: " + result.reason);
  refreshState();
});

startSession();
