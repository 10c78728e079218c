// wdr-pipe browse: the page. Plain JavaScript, no library, nothing loaded from elsewhere.
// Everything that comes from the store (label names, image ids, URLs) is put on the page as text
// (textContent, attributes set one by one), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, labels: [], byId: new Map(), chips: [], photo: null, photoPage: 1, again: null, active: -1 };

// -- small helpers ----------------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
function fmt(p) { return p === null || p === undefined ? "–" : Number(p).toFixed(3); }
function labelText(l) { return l.name || String(l.id); }
function link(params) { const q = new URLSearchParams(params).toString(); return q ? "?" + q : "/"; }
function tagHref(id) { return link({ tags: String(id) }); }
function imageHref(r) { return link({ image: r.image_id, split: r.split }); }

async function api(path, options) {
  let res;
  try {
    res = await fetch(path, options);
  } catch (e) {
    throw new Error("the server cannot be reached (" + e.message + "); is 'wdr-pipe browse' still running?");
  }
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) throw new Error((body && body.error) || ("HTTP " + res.status));
  return body;
}

function setStatus(text) { $("status").textContent = text || ""; }
function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

// -- header, labels, splits --------------------------------------------------------------------------
function renderHeader(info) {
  const parts = [`store ${info.store}`, `${info.images} images`];
  if (info.run) parts.push(`run ${info.run.name} (${info.run.labels} labels, thresholds ${info.run.thresholds})`);
  else parts.push("no run: photo search only");
  if (info.embeddings) parts.push(`embeddings ${info.embeddings.key} (${info.embeddings.backbone})`);
  $("about").textContent = parts.join(" · ");
  if (info.network) {
    const banner = $("network");
    banner.textContent = `This page is reachable from the network at ${info.address}: anyone who can reach ` +
      "this machine sees the store's images and labels.";
    banner.hidden = false;
  }
  if (info.notes && info.notes.length) {
    const notes = clear($("notes"));
    for (const n of info.notes) notes.append(el("li", { text: n }));
    notes.hidden = false;
  }
  const select = $("split");
  for (const s of info.splits) {
    const extra = s.searchable ? "" : ", no photo search";
    select.append(el("option", { value: s.name, text: `${s.name} (${s.images} images${extra})` }));
  }
  $("url-form").hidden = !info.allow_urls;
  if (!info.run) {
    const box = $("match-true");
    box.checked = true;
    box.disabled = true;
    box.parentElement.append(" (no run: true labels only)");
  }
}

// -- tabs ------------------------------------------------------------------------------------------------
function selectTab(name, focus) {
  for (const t of ["photo", "tags"]) {
    const on = t === name;
    $("tab-" + t).setAttribute("aria-selected", on ? "true" : "false");
    $("tab-" + t).tabIndex = on ? 0 : -1;
    $("panel-" + t).hidden = !on;
  }
  if (focus) $("tab-" + name).focus();
}

// -- rendering results -------------------------------------------------------------------------------------
function tagChip(t, withP) {
  const a = el("a", { class: "tag" + (t.on ? " on" : ""), href: tagHref(t.id), title: t.task || null },
    labelText(t));
  if (withP && t.p !== undefined && t.p !== null) a.append(el("span", { class: "p", text: fmt(t.p) }));
  return el("li", {}, a);
}

function tagList(tags, withP, label) {
  const ul = el("ul", { class: "taglist", "aria-label": label });
  for (const t of tags) ul.append(tagChip(t, withP));
  return ul;
}

function card(r, scoreName) {
  const img = el("img", { src: r.thumb, alt: `image ${r.image_id} (${r.split})`, loading: "lazy",
                          width: r.width, height: r.height });
  const a = el("a", { class: "thumb", href: imageHref(r), "data-image": r.image_id },
    img, el("span", { class: "score", title: scoreName, text: fmt(r.score) }));
  const li = el("li", { class: "card" }, a, el("div", { class: "id", text: `${r.image_id} · ${r.split}` }));
  if (r.labels) {
    li.append(el("div", { class: "what", text: "true labels" }), tagList(r.labels, false, "true labels"));
  }
  if (r.predicted) {
    li.append(el("div", { class: "what", text: r.readable === false ? "model could not read it" : "predicted" }),
      tagList(r.predicted.map((t) => ({ ...t, on: true })), true, "predicted tags"));
  }
  return li;
}

function renderGrid(doc, title, scoreName, pageHref) {
  const grid = clear($("grid"));
  for (const r of doc.results) grid.append(card(r, scoreName));
  const h = $("grid-title");
  h.textContent = title;
  h.hidden = false;
  const pager = clear($("pager"));
  pager.hidden = doc.pages <= 1;
  if (doc.pages > 1) {
    const go = (page, text) => pageHref ? el("a", { href: pageHref(page), rel: text === "Next" ? "next" : "prev" }, text)
      : el("button", { type: "button", onclick: () => state.again(page) }, text);
    if (doc.page > 1) pager.append(go(doc.page - 1, "Previous"));
    pager.append(el("span", { text: `page ${doc.page} of ${doc.pages} (${doc.total} results)` }));
    if (doc.page < doc.pages) pager.append(go(doc.page + 1, "Next"));
  }
  setStatus(doc.total ? `${doc.total} results` + (doc.seconds ? ` in ${timing(doc.seconds)}` : "") : "no results");
}

function timing(seconds) {
  const total = seconds.total !== undefined ? seconds.total : Object.values(seconds).reduce((a, b) => a + b, 0);
  return `${Math.round(total * 1000)} ms`;
}

function resetViews() {
  showError("");
  for (const id of ["query", "view"]) { clear($(id)).hidden = true; }
  clear($("grid"));
  clear($("pager")).hidden = true;
  $("grid-title").hidden = true;
}

function renderQueryTags(box, tags) {
  if (!tags) return;
  const on = tags.filter((t) => t.on);
  box.append(el("h2", { text: on.length ? "Predicted tags" : "No tag reaches its threshold; the top ones:" }),
    tagList(tags, true, "predicted tags"),
    el("p", { class: "hint", text: "Green: at or above the run's tuned threshold. Numbers: the model's probability." }));
}

// -- the searches -----------------------------------------------------------------------------------------
async function photoSearch(blob, page) {
  state.photo = blob;
  state.photoPage = page || 1;
  state.again = (p) => photoSearch(blob, p);  // the pager asks again with the same bytes
  const cap = state.info ? state.info.max_upload_bytes : Infinity;
  resetViews();
  if (blob.size === 0) { showError("upload: the file is empty; choose a photo"); return; }
  if (blob.size > cap) { showError(`upload: ${(blob.size / 2 ** 20).toFixed(1)} MB is over the cap of ${cap / 2 ** 20} MB; choose a smaller photo`); return; }
  if (location.search) history.pushState({ photo: true }, "", "/");
  await searchByPhoto({ page: String(state.photoPage) }, {
    method: "POST", body: blob, headers: { "Content-Type": blob.type || "application/octet-stream" } },
    el("img", { class: "preview", src: URL.createObjectURL(blob), alt: "your photo" }), "Your photo");
}

async function urlSearch(url, page) {
  resetViews();
  state.again = (p) => urlSearch(url, p);
  await searchByPhoto({ url, page: String(page || 1) }, { method: "POST" }, null, "Photo at " + url);
}

// POST /api/search/photo (the bytes, or ?url=), then the photo, its tags and the grid of similar images
async function searchByPhoto(params, request, preview, title) {
  setStatus(params.url ? "fetching the photo…" : "searching…");
  if ($("split").value) params.in = $("split").value;
  try {
    const doc = await api("/api/search/photo?" + new URLSearchParams(params), request);
    const side = el("div", { class: "side" }, el("h2", { text: title }));
    renderQueryTags(side, doc.query.tags);
    $("query").append(...[preview, side].filter(Boolean));
    $("query").hidden = false;
    renderGrid(doc, "Most similar stored images", "cosine similarity", null);
  } catch (e) {
    showError(e.message);
    setStatus("");
  }
}

async function tagSearch(q) {
  resetViews();
  selectTab("tags", false);
  setStatus("searching…");
  const params = new URLSearchParams({ tags: q.get("tags"), mode: q.get("mode") || "and",
                                       page: q.get("page") || "1" });
  if (q.get("match")) params.set("match", q.get("match"));
  if (q.get("in")) params.set("in", q.get("in"));
  try {
    const doc = await api("/api/search/tags?" + params);
    syncTagForm(doc.query);
    const names = doc.query.tags.map(labelText).join(doc.query.mode === "and" ? " AND " : " OR ");
    const how = doc.query.match === "true" ? "with these true labels, ranked by the model's score"
      : "ranked by the model's probability";
    const scoreName = doc.query.match === "true" && !state.info.run ? "share of the labels matched"
      : (doc.query.mode === "and" ? "product of the probabilities" : "probability of any");
    renderGrid(doc, `${names}: images ${how}` + (doc.query.in ? ` (split ${doc.query.in})` : ""), scoreName,
      (page) => { const p = new URLSearchParams(q); p.set("page", String(page)); return "?" + p; });
    if (doc.predicted !== null && doc.total) {
      const which = doc.query.mode === "and" ? "all of these labels" : "any of these labels";
      setStatus(`${doc.total} results; the run predicts ${which} for ${doc.predicted} of them · ` +
                timing(doc.seconds));
    }
  } catch (e) {
    showError(e.message);
    setStatus("");
  }
}

async function likeSearch(q) {
  resetViews();
  setStatus("searching…");
  const params = new URLSearchParams({ id: q.get("like"), page: q.get("page") || "1" });
  if (q.get("split")) params.set("split", q.get("split"));
  if (q.get("in")) params.set("in", q.get("in"));
  try {
    const doc = await api("/api/search/like?" + params);
    const r = doc.query;
    const box = $("query");
    const side = el("div", { class: "side" },
      el("h2", {}, "More like ", el("a", { href: imageHref(r), text: `image ${r.image_id} (${r.split})` })));
    box.append(el("img", { class: "preview", src: r.thumb, alt: `image ${r.image_id}` }), side);
    renderQueryTags(side, r.tags);
    box.hidden = false;
    renderGrid(doc, "Most similar stored images", "cosine similarity",
      (page) => { const p = new URLSearchParams(q); p.set("page", String(page)); return "?" + p; });
  } catch (e) {
    showError(e.message);
    setStatus("");
  }
}

function statusCell(s) {
  const text = { correct: "✓ correct", missed: "✗ missed", extra: "+ extra", predicted: "predicted" }[s] || "";
  return el("td", { class: s ? "status-" + s : null, text });
}

async function showImage(q) {
  resetViews();
  setStatus("loading…");
  const params = new URLSearchParams({ id: q.get("image") });
  if (q.get("split")) params.set("split", q.get("split"));
  try {
    const r = await api("/api/image?" + params);
    const view = $("view");
    const side = el("div", { class: "side" });
    view.append(el("img", { class: "large", src: r.jpeg, alt: `image ${r.image_id} (${r.split})`,
                            width: r.width, height: r.height }), side);
    side.append(el("h2", { text: `Image ${r.image_id}` }),
      el("p", {}, `split ${r.split} · ${r.width}×${r.height} px stored · source `, el("code", { text: r.url })),
      el("p", {}, el("a", { href: link({ like: r.image_id, split: r.split }) }, "More like this →")));
    if (r.labels) side.append(el("div", { class: "what", text: "true labels" }), tagList(r.labels, false, "true labels"));
    else side.append(el("p", { class: "hint", text: "An unlabelled split: no true labels." }));
    if (r.tags) {
      const table = el("table", { class: "labels" },
        el("caption", { class: "hint", text: "The model's labels against the true ones (✓ both, ✗ missed, + extra)" }),
        el("thead", {}, el("tr", {}, el("th", { text: "label" }), el("th", { text: "probability" }),
          el("th", { text: "threshold" }), el("th", { text: "" }))));
      const body = el("tbody");
      for (const t of r.tags) {
        body.append(el("tr", {}, el("td", {}, el("a", { href: tagHref(t.id) }, labelText(t))),
          el("td", { class: "num", text: fmt(t.p) }), el("td", { class: "num", text: fmt(t.threshold) }),
          statusCell(t.status)));
      }
      table.append(body);
      side.append(table, saliencyPicker(r));
    } else if (r.readable === false) {
      side.append(el("p", { class: "hint", text: "The model could not read this image (it failed to decode)." }));
    }
    view.hidden = false;
    if (r.similar && r.similar.results.length) {
      renderGrid({ ...r.similar, pages: 1 }, "Similar stored images", "cosine similarity", null);
      setStatus(`image ${r.image_id} (${r.split}): its ${r.similar.results.length} most similar stored images below; ` +
                "“More like this” pages through all of them");
    } else {
      setStatus(r.similar ? "" : "no similar images: this image's split has no embeddings");
    }
  } catch (e) {
    showError(e.message);
    setStatus("");
  }
}

function saliencyPicker(r) {
  const usable = r.tags.filter((t) => t.p !== null);
  const select = el("select", { id: "saliency-label" });
  for (const t of usable) select.append(el("option", { value: String(t.id), text: `${labelText(t)} (${fmt(t.p)})` }));
  const img = el("img", { alt: "", hidden: true });
  const note = el("span", { class: "hint", role: "status" });
  const show = () => {
    note.textContent = "computing Grad-CAM…";
    img.hidden = true;
    const p = new URLSearchParams({ id: r.image_id, split: r.split, label: select.value });
    img.onload = () => { note.textContent = ""; img.hidden = false; };
    img.onerror = () => { note.textContent = "the map could not be computed"; };
    img.alt = `Grad-CAM of image ${r.image_id} for ${select.options[select.selectedIndex].text}`;
    img.src = "/api/image/saliency?" + p;
  };
  return el("div", { class: "saliency" },
    el("label", { for: "saliency-label" }, "Where the model looks for "), select, " ",
    el("button", { type: "button", onclick: show }, "Show saliency"), " ", note, img);
}

// -- the tag picker -----------------------------------------------------------------------------------------
function renderChips() {
  const box = clear($("chips"));
  for (const l of state.chips) {
    box.append(el("li", { class: "chip" }, labelText(l),
      el("button", { type: "button", "aria-label": `remove ${labelText(l)}`,
                     onclick: () => { state.chips = state.chips.filter((c) => c.id !== l.id); renderChips(); $("tag-input").focus(); } }, "×")));
  }
}

function addChip(l) {
  if (!state.chips.some((c) => c.id === l.id)) state.chips.push(l);
  renderChips();
  $("tag-input").value = "";
  closeSuggest();
}

function matches(text) {
  const t = text.trim().toLowerCase();
  if (!t) return [];
  const scored = [];
  for (const l of state.labels) {
    const name = (l.name || "").toLowerCase();
    const id = String(l.id);
    let rank = -1;
    if (name.startsWith(t) || id === t) rank = 0;
    else if (name.includes(t)) rank = 1;
    else if ((l.task || "").toLowerCase().includes(t) || id.startsWith(t)) rank = 2;
    if (rank >= 0 && !state.chips.some((c) => c.id === l.id)) scored.push([rank, l]);
  }
  scored.sort((a, b) => a[0] - b[0] || (b[1].images - a[1].images));
  return scored.slice(0, 12).map((x) => x[1]);
}

function closeSuggest() {
  $("suggest").hidden = true;
  $("tag-input").setAttribute("aria-expanded", "false");
  $("tag-input").removeAttribute("aria-activedescendant");
  state.active = -1;
}

function showSuggest() {
  const list = clear($("suggest"));
  const found = matches($("tag-input").value);
  state.found = found;
  state.active = found.length ? 0 : -1;
  found.forEach((l, i) => {
    list.append(el("li", { role: "option", id: "opt-" + i, "aria-selected": i === 0 ? "true" : "false",
                           onmousedown: (ev) => { ev.preventDefault(); addChip(l); } },
      el("span", { text: labelText(l) }),
      el("span", { class: "meta", text: [l.task, "id " + l.id, l.images + " images"].filter(Boolean).join(" · ") })));
  });
  list.hidden = !found.length;
  $("tag-input").setAttribute("aria-expanded", found.length ? "true" : "false");
  if (found.length) $("tag-input").setAttribute("aria-activedescendant", "opt-0");
}

function moveActive(step) {
  const items = $("suggest").children;
  if (!items.length) return;
  state.active = (state.active + step + items.length) % items.length;
  for (let i = 0; i < items.length; i++) items[i].setAttribute("aria-selected", i === state.active ? "true" : "false");
  items[state.active].scrollIntoView({ block: "nearest" });
  $("tag-input").setAttribute("aria-activedescendant", "opt-" + state.active);
}

function syncTagForm(query) {
  state.chips = query.tags.map((t) => state.byId.get(t.id) || t);
  renderChips();
  for (const r of document.querySelectorAll("input[name=mode]")) r.checked = r.value === query.mode;
  if (state.info.run) $("match-true").checked = query.match === "true";
  $("split").value = query.in || "";
}

function submitTags() {
  const text = $("tag-input").value.trim();
  if (text) {  // a typed label not picked from the list: take the best match, or let the server say why not
    const m = matches(text);
    if (m.length) addChip(m[0]);
    else { showError(`no label matches ${JSON.stringify(text)}; pick one from the list`); return; }
  }
  if (!state.chips.length) { showError("pick one or more labels first"); return; }
  const params = { tags: state.chips.map((c) => c.id).join(","),
                   mode: document.querySelector("input[name=mode]:checked").value };
  if ($("match-true").checked && state.info.run) params.match = "true";
  if ($("split").value) params.in = $("split").value;
  navigate(link(params));
}

// -- routing ------------------------------------------------------------------------------------------------
function navigate(href) {
  history.pushState({}, "", href);
  route();
}

function route() {
  const q = new URLSearchParams(location.search);
  closeSuggest();
  if (q.get("image")) return showImage(q);
  if (q.get("like")) return likeSearch(q);
  if (q.get("tags")) return tagSearch(q);
  resetViews();
  if (history.state && history.state.photo && state.photo) return photoSearch(state.photo, state.photoPage);
  setStatus(state.info ? `Search ${state.info.images} stored images by photo` + (state.info.run ? " or by tags." : ".") : "");
}

// -- wiring ---------------------------------------------------------------------------------------------------
function wire() {
  $("tab-photo").addEventListener("click", () => selectTab("photo", true));
  $("tab-tags").addEventListener("click", () => selectTab("tags", true));
  for (const t of ["photo", "tags"]) {
    $("tab-" + t).addEventListener("keydown", (ev) => {
      if (ev.key === "ArrowRight" || ev.key === "ArrowLeft") selectTab(t === "photo" ? "tags" : "photo", true);
    });
  }
  const drop = $("drop");
  const file = $("file");
  drop.addEventListener("click", () => file.click());
  drop.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); file.click(); } });
  file.addEventListener("change", () => { if (file.files.length) photoSearch(file.files[0], 1); file.value = ""; });
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    const f = ev.dataTransfer.files[0];
    if (f) photoSearch(f, 1); else showError("drop an image file (from the file manager, or save it first)");
  });
  document.addEventListener("paste", (ev) => {
    if (ev.target instanceof HTMLInputElement) return;  // pasting text into a field
    const item = [...(ev.clipboardData || {}).items || []].find((i) => i.kind === "file");
    if (item) { ev.preventDefault(); selectTab("photo", false); photoSearch(item.getAsFile(), 1); }
  });
  $("url-form").addEventListener("submit", (ev) => { ev.preventDefault(); if ($("url").value) urlSearch($("url").value); });
  const input = $("tag-input");
  input.addEventListener("input", showSuggest);
  input.addEventListener("blur", () => setTimeout(closeSuggest, 150));
  input.addEventListener("keydown", (ev) => {
    const open = !$("suggest").hidden;
    if (ev.key === "ArrowDown") { ev.preventDefault(); if (!open) showSuggest(); else moveActive(1); }
    else if (ev.key === "ArrowUp") { ev.preventDefault(); moveActive(-1); }
    else if (ev.key === "Escape") closeSuggest();
    else if (ev.key === "Enter" && open && state.active >= 0) { ev.preventDefault(); addChip(state.found[state.active]); }
    else if (ev.key === "Backspace" && !input.value && state.chips.length) { state.chips.pop(); renderChips(); }
  });
  $("tag-form").addEventListener("submit", (ev) => { ev.preventDefault(); submitTags(); });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "/" && !(ev.target instanceof HTMLInputElement) && !(ev.target instanceof HTMLSelectElement)) {
      ev.preventDefault();
      selectTab("tags", false);
      input.focus();
    }
  });
  // links inside the page change the view without a reload (they stay real links: new tab, bookmark, share)
  document.addEventListener("click", (ev) => {
    const a = ev.target.closest && ev.target.closest("a[href]");
    if (!a || ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
    const url = new URL(a.href, location.href);
    if (url.origin !== location.origin || url.pathname !== "/") return;
    ev.preventDefault();
    navigate(url.search || "/");
    $("main").focus({ preventScroll: true });
    window.scrollTo(0, 0);
  });
  window.addEventListener("popstate", route);
}

async function start() {
  wire();
  try {
    const [info, labels] = await Promise.all([api("/api/info"), api("/api/labels")]);
    state.info = info;
    state.labels = labels.labels;
    for (const l of state.labels) state.byId.set(l.id, l);
    renderHeader(info);
  } catch (e) {
    showError(e.message);
    return;
  }
  document.body.dataset.ready = "1";
  route();
}

document.addEventListener("DOMContentLoaded", start);
