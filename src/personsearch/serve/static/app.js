// The search page: text, photo and "more like this" searches over the JSON API; the query lives
// in the URL (?q=... or ?row=N) so a result can be shared. Everything is built with DOM calls and
// textContent: no text from the gallery or a query is ever parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const grid = $("grid"), status = $("status"), viewer = $("viewer");
let current = null; // the hit shown in the viewer
let generation = 0; // later searches win over slower earlier ones

function say(text, isError = false) {
  status.textContent = text;
  status.classList.toggle("error", isError);
}

async function api(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new Error("the server cannot be reached");
  }
  let body = null;
  try { body = await response.json(); } catch (err) { /* not JSON */ }
  if (!response.ok) {
    const message = body && body.message ? body.message : `the server answered ${response.status}`;
    throw new Error(body && body.hint ? `${message} (${body.hint})` : message);
  }
  return body;
}

function topK() { return $("k").value; }

function setUrl(params) {
  const url = new URL(window.location.href);
  url.search = new URLSearchParams(params).toString();
  window.history.replaceState(null, "", url);
}

function render(found, what, mine) {
  if (mine !== generation) return;
  grid.replaceChildren();
  grid.dataset.loaded = "0";
  grid.dataset.failed = "0";
  const hits = found.results || [];
  let settled = 0;
  const settle = (ok) => {
    settled += 1;
    const key = ok ? "loaded" : "failed";
    grid.dataset[key] = String(Number(grid.dataset[key]) + 1);
    if (settled === hits.length) document.body.dataset.state = "ready";
  };
  for (const hit of hits) {
    const card = document.createElement("figure");
    card.className = "card";
    card.tabIndex = 0;
    const img = document.createElement("img");
    img.alt = hit.path;
    img.title = hit.path;
    img.decoding = "async";
    img.addEventListener("load", () => settle(img.naturalWidth > 0));
    img.addEventListener("error", () => settle(false));
    img.src = `${hit.image_url}?size=256`;
    const caption = document.createElement("figcaption");
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = `#${hit.rank}`;
    const score = document.createElement("span");
    score.textContent = hit.score.toFixed(3);
    const pid = document.createElement("span");
    pid.className = "pid";
    pid.textContent = hit.pid === null || hit.pid === undefined ? "" : `id ${hit.pid}`;
    caption.append(rank, score, pid);
    card.append(img, caption);
    card.addEventListener("click", () => show(hit));
    card.addEventListener("keydown", (event) => { if (event.key === "Enter") show(hit); });
    grid.append(card);
  }
  const note = found.note ? ` — ${found.note}` : "";
  say(hits.length ? `${hits.length} results for ${what}${note}` : `no results for ${what}`);
  if (!hits.length) document.body.dataset.state = "ready";
}

async function run(url, what, options) {
  const mine = ++generation;
  document.body.dataset.state = "searching";
  say(`searching for ${what}…`);
  try {
    render(await api(url, options), what, mine);
  } catch (err) {
    if (mine !== generation) return;
    grid.replaceChildren();
    say(err.message, true);
    document.body.dataset.state = "error";
  }
}

function searchText(text) {
  $("query-photo").hidden = true;
  setUrl({ q: text, k: topK() });
  return run(`/api/search?q=${encodeURIComponent(text)}&k=${topK()}`, `“${text}”`);
}

function searchRow(row) {
  $("query-photo").hidden = false;
  $("query-photo-img").src = `/images/${row}?size=256`;
  setUrl({ row: String(row), k: topK() });
  return run(`/api/search/row/${row}?k=${topK()}`, `gallery image ${row}`);
}

function searchPhoto(file) {
  if (!file) return;
  $("query-photo").hidden = false;
  $("query-photo-img").src = URL.createObjectURL(file);
  setUrl({});
  const form = new FormData();
  form.append("file", file, file.name || "photo");
  return run(`/api/search/image?k=${topK()}`, file.name ? `the photo ${file.name}` : "the photo",
             { method: "POST", body: form });
}

function show(hit) {
  current = hit;
  $("viewer-img").src = hit.image_url;
  $("viewer-img").alt = hit.path;
  const pid = hit.pid === null || hit.pid === undefined ? "" : ` · identity ${hit.pid}`;
  $("viewer-caption").textContent = `#${hit.rank} · score ${hit.score.toFixed(4)}${pid} · ${hit.path}`;
  viewer.showModal();
}

async function loadInfo() {
  try {
    const health = await api("/api/health");
    $("info").textContent = `${health.images.toLocaleString()} images · model ${health.model}`;
  } catch (err) {
    $("info").textContent = err.message;
  }
}

function start() {
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("q").value.trim();
    if (text) searchText(text); else say("type a description first", true);
  });
  $("photo").addEventListener("change", (event) => searchPhoto(event.target.files[0]));
  $("similar").addEventListener("click", () => { viewer.close(); if (current) searchRow(current.row); });
  $("close").addEventListener("click", () => viewer.close());
  viewer.addEventListener("click", (event) => { if (event.target === viewer) viewer.close(); });
  let depth = 0;
  document.addEventListener("dragenter", (event) => { event.preventDefault(); depth += 1; $("drop").hidden = false; });
  document.addEventListener("dragleave", () => { depth -= 1; if (depth <= 0) { depth = 0; $("drop").hidden = true; } });
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    $("drop").hidden = true;
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) searchPhoto(file);
  });
  loadInfo();
  const params = new URLSearchParams(window.location.search);
  const k = params.get("k");
  if (k && [...$("k").options].some((option) => option.value === k)) $("k").value = k;
  else if (k && /^\d+$/.test(k)) { const option = new Option(k, k, true, true); $("k").add(option); }
  const q = params.get("q"), row = params.get("row");
  if (q && q.trim()) { $("q").value = q; searchText(q.trim()); }
  else if (row !== null && /^\d+$/.test(row)) searchRow(Number(row));
}

start();
