// The mask editor on the Review viewer: ignore polygons drawn in FRAME pixels (the viewer shows the whole frame,
// scaled), previewed on the frames the station holds, applied and stored like the threshold.
"use strict";
const MASK_NS = "http://www.w3.org/2000/svg";
const MASK_MAX_POINTS = 64, MASK_MAX_POLYGONS = 32;
let maskPolygons = [];   // closed polygons, [[x, y], ...] in frame pixels
let maskPoints = [];     // the polygon being drawn
let maskStored = [];     // the stored mask in force (from /api/state)
let maskFrame = null;    // [height, width] of the frames inspected (the evidence image may be scaled down)

function maskSize() {
  const image = $("viewer-image");
  return maskFrame ? [maskFrame[1], maskFrame[0]] : [image.naturalWidth, image.naturalHeight];
}

function maskFramePoint(event) {
  // Screen -> frame pixels: the image is drawn at a chosen size, its natural size is the frame's.
  const image = $("viewer-image"), box = image.getBoundingClientRect();
  const [w, h] = maskSize();
  const x = (event.clientX - box.left) / box.width * w, y = (event.clientY - box.top) / box.height * h;
  const clamp = (v, most) => Math.min(Math.max(Math.round(v * 10) / 10, 0), most);
  return [clamp(x, w), clamp(y, h)];
}

function maskDraw() {
  const image = $("viewer-image"), svg = $("viewer-mask");
  $("viewer-stage").classList.toggle("drawing", $("mask-draw").checked);
  if (!image.naturalWidth) return;
  const [w, h] = maskSize();
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.replaceChildren();
  const add = (tag, attrs) => {
    const node = document.createElementNS(MASK_NS, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    svg.appendChild(node);
  };
  for (const p of maskStored) add("polygon", {points: p.map((xy) => xy.join(",")).join(" "), class: "stored"});
  for (const p of maskPolygons) add("polygon", {points: p.map((xy) => xy.join(",")).join(" ")});
  if (maskPoints.length) add("polyline", {points: maskPoints.map((xy) => xy.join(",")).join(" ")});
  const r = Math.max(w / 200, 1);
  for (const [x, y] of maskPoints) add("circle", {cx: x, cy: y, r});
}

function maskSay(message) { text("mask-message", message); }

function maskClosePolygon() {
  if (maskPoints.length < 3) { maskSay("a polygon needs at least 3 points"); return false; }
  if (maskPolygons.length >= MASK_MAX_POLYGONS) { maskSay(`at most ${MASK_MAX_POLYGONS} polygons`); return false; }
  maskPolygons.push(maskPoints);
  maskPoints = [];
  maskSay(`${maskPolygons.length} polygon(s) drawn`);
  maskDraw();
  return true;
}

function maskAll() {
  // What Preview and Apply send: the drawn polygons, the one being drawn if it can close.
  if (maskPoints.length >= 3) maskClosePolygon();
  return maskPolygons;
}

async function maskPreview() {
  const polygons = maskAll();
  const v = reviewShown[viewerIndex];
  const response = await fetch("/api/mask/preview", {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
    body: JSON.stringify({polygons, seq: v ? v.seq : 0}),
  });
  const body = await response.json().catch(() => ({ok: false, reason: response.statusText}));
  const table = $("mask-preview-table"), rows = table.querySelector("tbody");
  rows.replaceChildren();
  if (!response.ok) { table.hidden = true; maskSay(`preview refused: ${body.reason}`); return; }
  for (const f of body.frames) {
    const row = document.createElement("tr");
    row.dataset.seq = f.seq; row.dataset.score = f.score; row.dataset.verdict = f.verdict;
    const cells = [f.seq, f.image, `${fmt(f.old_score)} ${f.old_verdict.toUpperCase()}`,
                   `${fmt(f.score)} ${f.verdict.toUpperCase()}`];
    for (const cell of cells) {
      const td = document.createElement("td");
      td.textContent = cell;
      row.appendChild(td);
    }
    rows.appendChild(row);
  }
  table.hidden = false;
  maskSay(`preview of ${polygons.length} polygon(s) on ${body.frames.length} held frame(s)` +
          (maskStored.length ? " (instead of the stored mask)" : ""));
}

async function maskLoadStored() {
  try {
    const state = await api("/api/state");
    maskStored = Array.isArray(state.mask_in_force) ? state.mask_in_force : [];
    maskFrame = Array.isArray(state.frame_size) ? state.frame_size : null;
  } catch (error) { maskStored = []; }
  maskDraw();
}

async function maskApply() {
  const polygons = maskAll();
  if (!polygons.length) { maskSay("draw a polygon first (or remove the stored mask)"); return; }
  const reply = await post("/api/mask", {polygons});
  maskSay(reply.ok ? `applied: ${reply.reason}` : `refused: ${reply.reason}`);
  if (reply.ok) { maskPolygons = []; maskPoints = []; await maskLoadStored(); }
}

async function maskRemove() {
  const reply = await post("/api/mask/reset", {});
  maskSay(reply.ok ? `removed: ${reply.reason}` : `refused: ${reply.reason}`);
  await maskLoadStored();
}

$("viewer-image").addEventListener("click", (event) => {
  if (!$("mask-draw").checked || !$("viewer-image").naturalWidth) return;
  if (maskPoints.length >= MASK_MAX_POINTS) { maskSay(`at most ${MASK_MAX_POINTS} points: close the polygon`); return; }
  maskPoints.push(maskFramePoint(event));
  maskSay(`${maskPoints.length} point(s); close the polygon when done`);
  maskDraw();
});
$("viewer-image").addEventListener("load", maskLoadStored);
$("mask-draw").addEventListener("change", maskDraw);
$("mask-close-polygon").addEventListener("click", maskClosePolygon);
$("mask-undo").addEventListener("click", () => {
  if (maskPoints.length) maskPoints.pop();
  else if (maskPolygons.length) maskPoints = maskPolygons.pop();
  maskDraw();
});
$("mask-clear").addEventListener("click", () => {
  maskPolygons = []; maskPoints = []; $("mask-preview-table").hidden = true; maskSay(""); maskDraw();
});
$("mask-preview").addEventListener("click", maskPreview);
$("mask-apply").addEventListener("click", maskApply);
$("mask-remove").addEventListener("click", maskRemove);
window.addEventListener("resize", maskDraw);
