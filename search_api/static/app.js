// FashionBERT search demo page: plain ES module, no dependencies, no build step.
// Every string that comes from the catalog or the API is put into the DOM with
// textContent / attributes, never parsed as HTML.

const API = "/api/v1";
const GRID_FALLBACK = 8;
const STAGE_ORDER = ["cache", "decode", "features", "queue", "encode", "faiss", "rerank", "total"];

const $ = (id) => document.getElementById(id);
const els = {
  form: $("search-form"),
  query: $("query"),
  category: $("category"),
  k: $("k"),
  rerank: $("rerank"),
  photo: $("photo"),
  photoChip: $("photo-chip"),
  photoPreview: $("photo-preview"),
  photoName: $("photo-name"),
  photoClear: $("photo-clear"),
  button: $("search-button"),
  status: $("status"),
  error: $("error"),
  errorMessage: $("error-message"),
  errorClose: $("error-close"),
  results: $("results"),
  empty: $("empty"),
  detail: $("detail"),
  detailTitle: $("detail-title"),
  detailAltTitle: $("detail-alt-title"),
  detailMeta: $("detail-meta"),
  detailClose: $("detail-close"),
  detailImage: $("detail-image"),
  detailNoImage: $("detail-noimage"),
  heatmap: $("heatmap"),
  heatmapWrap: $("heatmap-wrap"),
  heatmapToggle: $("heatmap-toggle"),
  heatmapNote: $("heatmap-note"),
  detailScores: $("detail-scores"),
  detailDescription: $("detail-description"),
  detailTags: $("detail-tags"),
  detailExtra: $("detail-extra"),
  similar: $("similar"),
  similarStatus: $("similar-status"),
  suggested: $("suggested"),
  suggestedTags: $("suggested-tags"),
  suggestedNote: $("suggested-note"),
};

const state = {
  photo: null, // File
  photoUrl: null, // object URL of the preview
  lastQuery: null, // the server-normalised text of the shown results (null for photo-only)
  searchController: null,
  searchSeq: 0,
  detailSeq: 0,
  openedFrom: null, // element to give focus back to when the panel closes
  hits: new Map(), // product_id -> hit of the current results
};

// ---------------------------------------------------------------- API helpers

class ApiError extends Error {
  constructor(message, { status = 0, code = null, field = null } = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { headers: { Accept: "application/json" }, ...options });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(`Could not reach the search service (${err.message}).`);
  }
  let body = null;
  const text = await response.text();
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const e = body && body.error;
    if (e && typeof e.message === "string") {
      throw new ApiError(e.message, { status: response.status, code: e.code, field: e.field });
    }
    throw new ApiError(`The server answered ${response.status} ${response.statusText || ""}`.trim(), { status: response.status });
  }
  if (body === null) throw new ApiError("The server sent an empty or unreadable answer.", { status: response.status });
  return body;
}

// ---------------------------------------------------------------- small DOM helpers

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function formatMs(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "?";
  if (ms < 0.05) return "<0.1 ms";
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  return `${Math.round(ms)} ms`;
}

function formatTimings(timings) {
  const keys = Object.keys(timings || {});
  keys.sort((a, b) => {
    const ia = STAGE_ORDER.indexOf(a), ib = STAGE_ORDER.indexOf(b);
    return (ia < 0 ? STAGE_ORDER.length - 1 : ia) - (ib < 0 ? STAGE_ORDER.length - 1 : ib);
  });
  // "total" always last, whatever other stages a newer server reports
  const ordered = keys.filter((k) => k !== "total").concat(keys.includes("total") ? ["total"] : []);
  return ordered.map((k) => `${k} ${formatMs(timings[k])}`).join(" · ");
}

function formatPrice(price, extra) {
  if (typeof price !== "number" || !Number.isFinite(price)) return null;
  const currency = extra && typeof extra.currency === "string" ? extra.currency : null;
  if (currency) {
    try {
      return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(price);
    } catch {
      /* unknown currency code: plain number below */
    }
  }
  return new Intl.NumberFormat(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 }).format(price);
}

const fmtScore = (x) => (typeof x === "number" && Number.isFinite(x) ? x.toFixed(3) : "–");

/** The catalog's title in the other language, when the catalog has both (title_en / title_zh). */
function altTitle(hit) {
  const extra = hit.extra || {};
  for (const key of ["title_en", "title_zh"]) {
    const t = extra[key];
    if (typeof t === "string" && t.trim() && t.trim() !== (hit.title || "").trim()) return t;
  }
  return null;
}

function placeholder(kind = "") {
  return el("div", { class: kind ? `image-placeholder ${kind}-placeholder` : "image-placeholder", role: "img", "aria-label": "No photo available" },
    el("span", { text: "No photo" }));
}

/** A lazy product image that turns into a neutral placeholder when there is none or it fails. */
function productImage(url, alt, className) {
  if (!url) return placeholder(className);
  const img = el("img", { class: className, src: url, alt, loading: "lazy", decoding: "async" });
  img.addEventListener("error", () => img.replaceWith(placeholder(className)), { once: true });
  return img;
}

// ---------------------------------------------------------------- error banner & status

function showError(message) {
  els.errorMessage.textContent = message;
  els.error.hidden = false;
}

function clearError() {
  els.error.hidden = true;
  els.errorMessage.textContent = "";
}

function setStatus(parts) {
  els.status.replaceChildren(...parts.filter(Boolean));
}

function describeResponse(body, mode) {
  const n = body.results.length;
  const items = [
    el("span", { id: "status-count", class: "status-strong", text: `${n} result${n === 1 ? "" : "s"}` }),
    el("span", { class: "status-mode", text: mode }),
    el("span", { id: "status-version", text: `index ${body.index_version}` }),
    el("span", { id: "status-cache", class: body.cached ? "badge badge-cached" : "badge", text: body.cached ? "cached" : "fresh" }),
    el("span", { class: body.reranked ? "badge badge-rerank" : "badge badge-muted",
                 text: body.reranked ? "re-ranked" : "not re-ranked" }),
    el("span", { id: "status-timings", class: "timings", text: formatTimings(body.timings_ms) }),
  ];
  const out = [];
  items.forEach((item, i) => {
    if (i > 0) out.push(el("span", { class: "sep", "aria-hidden": "true", text: "·" }));
    out.push(item);
  });
  return out;
}

// ---------------------------------------------------------------- categories

async function loadCategories(attempt = 0) {
  try {
    const body = await api(`${API}/categories`);
    const selected = els.category.value;
    const options = [el("option", { value: "", text: "All categories" })];
    for (const c of body.categories) {
      options.push(el("option", { value: c.name, text: `${c.name} (${c.count})` }));
    }
    els.category.replaceChildren(...options);
    if ([...els.category.options].some((o) => o.value === selected)) els.category.value = selected;
    els.category.dataset.loaded = "true";
    if (!els.results.childElementCount) {
      setStatus([el("span", { text: `Ready · index ${body.index_version} · ${body.categories.reduce((s, c) => s + c.count, 0)} products` })]);
    }
  } catch (err) {
    if (err.code === "loading" && attempt < 30) {
      setStatus([el("span", { text: "The service is still loading its model and index…" })]);
      setTimeout(() => loadCategories(attempt + 1), 2000);
      return;
    }
    showError(`Could not load the categories: ${err.message}`);
    setStatus([el("span", { text: "Categories unavailable; search still works without a filter." })]);
  }
}

// ---------------------------------------------------------------- photo input

function setPhoto(file) {
  if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
  state.photo = file || null;
  state.photoUrl = file ? URL.createObjectURL(file) : null;
  els.photoChip.hidden = !file;
  if (file) {
    els.photoPreview.src = state.photoUrl;
    els.photoName.textContent = file.name || "photo";
    els.photoChip.title = file.name || "photo";
  } else {
    els.photoPreview.removeAttribute("src");
    els.photoName.textContent = "";
    els.photo.value = "";
  }
}

function acceptPhoto(file) {
  if (!file) return;
  if (!/^image\/(jpeg|png|webp)$/.test(file.type)) {
    showError(`"${file.name}" is not a JPEG, PNG or WebP image.`);
    return;
  }
  clearError();
  setPhoto(file);
}

// ---------------------------------------------------------------- search

function currentParams() {
  return {
    query: els.query.value.trim(),
    category: els.category.value || null,
    k: Number.parseInt(els.k.value, 10) || 20,
    rerank: els.rerank.checked,
  };
}

function syncUrl(params) {
  const url = new URL(window.location.href);
  const q = url.searchParams;
  for (const key of ["q", "category", "k", "rerank"]) q.delete(key);
  if (params.query) q.set("q", params.query);
  if (params.category) q.set("category", params.category);
  if (params.k !== 20) q.set("k", String(params.k));
  if (!params.rerank) q.set("rerank", "0");
  window.history.replaceState(null, "", url);
}

async function runSearch() {
  const params = currentParams();
  if (!params.query && !state.photo) {
    showError("Type what you are looking for, add a photo, or both.");
    els.query.focus();
    return;
  }
  clearError();
  if (state.searchController) state.searchController.abort();
  const controller = new AbortController();
  state.searchController = controller;
  const seq = ++state.searchSeq;

  els.button.disabled = true;
  els.button.classList.add("busy");
  els.results.setAttribute("aria-busy", "true");
  els.results.dataset.state = "loading";
  setStatus([el("span", { text: "Searching…" })]);

  let request;
  if (state.photo) {
    const form = new FormData();
    form.append("file", state.photo, state.photo.name || "photo");
    if (params.query) form.append("query", params.query);
    form.append("k", String(params.k));
    if (params.category) form.append("category", params.category);
    form.append("rerank", params.rerank ? "true" : "false");
    request = api(`${API}/search/image`, { method: "POST", body: form, signal: controller.signal });
  } else {
    request = api(`${API}/search`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ query: params.query, k: params.k, category: params.category, rerank: params.rerank }),
      signal: controller.signal,
    });
  }
  const mode = state.photo ? (params.query ? "photo + text" : "photo") : "text";

  try {
    const body = await request;
    if (seq !== state.searchSeq) return;
    syncUrl(params);
    state.lastQuery = body.query || null;
    closeDetail(false); // the heatmap belongs to the previous query
    renderResults(body.results);
    els.results.dataset.state = "ready";
    const statusParts = describeResponse(body, mode);
    if (params.rerank && !body.reranked && !body.query) {
      statusParts.push(el("span", { class: "sep", "aria-hidden": "true", text: "·" }),
        el("span", { class: "muted", text: "re-ranking needs words" }));
    }
    setStatus(statusParts);
  } catch (err) {
    if (err.name === "AbortError" || seq !== state.searchSeq) return;
    showError(err.message);
    els.results.dataset.state = "error";
    setStatus([el("span", { text: els.results.childElementCount
      ? "The search failed (message above); the results below are from your previous search."
      : "The search failed; see the message above." })]);
  } finally {
    if (seq === state.searchSeq) {
      els.button.disabled = false;
      els.button.classList.remove("busy");
      els.results.setAttribute("aria-busy", "false");
      state.searchController = null;
    }
  }
}

const SCORE_HELP = {
  score: "The score the results are ordered by; when re-ranked, the cross encoder's match log-odds plus the weighted, temperature-scaled stage-1 cosine",
  retrieval: "Stage 1: cosine similarity of the query and the product vectors",
  rerank: "Stage 2: the cross-encoder's match probability",
};

/** Scores as a small label-over-value table; retrieval and rerank only when they add something. */
function scoreTable(hit, className = "scores") {
  const items = [];
  const add = (label, value, extraClass = "") => items.push(
    el("div", { class: `score ${extraClass}`.trim(), title: SCORE_HELP[label] || null },
      el("dt", { text: label }), el("dd", { text: value })));
  if (typeof hit.score === "number") add("score", fmtScore(hit.score), "score-main");
  const reranked = typeof hit.rerank_score === "number";
  if (typeof hit.retrieval_score === "number" && (reranked || hit.retrieval_score !== hit.score)) {
    add("retrieval", fmtScore(hit.retrieval_score));
  }
  if (reranked) add("rerank", fmtScore(hit.rerank_score));
  return el("dl", { class: className }, items);
}

function resultCard(hit) {
  const title = hit.title || hit.product_id;
  const why = el("button", { type: "button", class: "why-button", text: "Why?",
                             "aria-label": `Why this result: ${title}`, title: "Show where the query looks on the photo" });
  const price = formatPrice(hit.price, hit.extra);
  const alt = altTitle(hit);
  const card = el("article", { class: "result-card", dataset: { productId: hit.product_id } },
    el("div", { class: "card-media" },
      productImage(hit.image_url, title, "result-image"),
      el("span", { class: "rank", "aria-label": `Rank ${hit.rank}`, text: `#${hit.rank}` })),
    el("div", { class: "card-body" },
      el("h3", { class: "result-title", text: title, title }),
      alt ? el("p", { class: "result-alt-title", text: alt, title: alt }) : null,
      el("p", { class: "result-taxonomy" },
        el("span", { class: "result-category", text: hit.category || "" }),
        hit.sub_category ? el("span", { class: "result-subcategory", text: hit.sub_category }) : null),
      el("div", { class: "card-footer" },
        price ? el("span", { class: "price", text: price }) : el("span", { class: "price muted", text: "no price" }),
        why),
      scoreTable(hit)));
  card.addEventListener("click", (event) => {
    if (event.target.closest("a")) return;
    openDetail(hit, event.target.closest("button") || why);
  });
  return card;
}

function renderResults(results) {
  state.hits = new Map(results.map((h) => [h.product_id, h]));
  els.results.replaceChildren(...results.map(resultCard));
  els.empty.hidden = results.length > 0;
  if (!results.length) {
    els.empty.replaceChildren(
      el("p", { class: "empty-title", text: "No products match." }),
      el("p", { text: els.category.value ? "Try another wording, or search all categories." : "Try another wording or a different photo." }));
  }
}

// ---------------------------------------------------------------- detail panel

function closeDetail(restoreFocus = true) {
  if (els.detail.hidden) return;
  els.detail.hidden = true;
  document.body.classList.remove("detail-open");
  state.detailSeq++;
  for (const c of els.results.querySelectorAll(".result-card.selected")) c.classList.remove("selected");
  const back = state.openedFrom;
  state.openedFrom = null;
  if (restoreFocus && back && document.contains(back)) back.focus();
}

function clearHeatmap() {
  const ctx = els.heatmap.getContext("2d");
  ctx.clearRect(0, 0, els.heatmap.width, els.heatmap.height);
  els.heatmap.dataset.drawn = "false";
}

function extraRows(extra) {
  const rows = [];
  for (const [key, value] of Object.entries(extra || {})) {
    let text;
    if (value === null || value === undefined) text = "–";
    else if (Array.isArray(value) && value.every((v) => Array.isArray(v) && v.length === 2)) text = value.map(([a, b]) => `${a}: ${b}`).join(", ");
    else if (Array.isArray(value)) text = value.map((v) => (typeof v === "object" ? JSON.stringify(v) : String(v))).join(", ");
    else if (typeof value === "object") text = JSON.stringify(value);
    else text = String(value);
    rows.push(el("dt", { text: key }), el("dd", { text }));
  }
  return rows;
}

async function openDetail(hit, opener) {
  const seq = ++state.detailSeq;
  state.openedFrom = opener || null;
  for (const c of els.results.querySelectorAll(".result-card.selected")) c.classList.remove("selected");
  const card = els.results.querySelector(`.result-card[data-product-id="${CSS.escape(hit.product_id)}"]`);
  if (card) card.classList.add("selected");

  const title = hit.title || hit.product_id;
  els.detailTitle.textContent = title;
  const alt = altTitle(hit);
  els.detailAltTitle.textContent = alt || "";
  els.detailAltTitle.hidden = !alt;
  const price = formatPrice(hit.price, hit.extra);
  els.detailMeta.replaceChildren(
    el("span", { class: "result-category", text: hit.category || "" }),
    hit.sub_category ? el("span", { class: "result-subcategory", text: hit.sub_category }) : "",
    price ? el("span", { class: "price", text: price }) : "",
    el("span", { class: "muted", text: hit.product_id }));
  els.detailScores.replaceChildren(...scoreTable(hit).children);
  els.detailScores.hidden = !els.detailScores.childElementCount;
  const extra = hit.extra || {};
  els.detailDescription.textContent = typeof extra.description === "string" ? extra.description : "";
  els.detailDescription.hidden = typeof extra.description !== "string";
  const tags = Array.isArray(extra.tags) ? extra.tags.filter((t) => typeof t === "string") : [];
  els.detailTags.replaceChildren(...tags.map((t) => el("li", { text: t })));
  els.detailTags.hidden = !tags.length;
  els.detailExtra.replaceChildren(...extraRows(extra));

  // photo + heatmap
  clearHeatmap();
  els.heatmapWrap.classList.remove("has-heatmap");
  if (hit.image_url) {
    els.detailNoImage.hidden = true;
    els.detailImage.hidden = false;
    els.detailImage.alt = title;
    els.detailImage.onerror = () => {
      els.detailImage.hidden = true;
      els.detailNoImage.hidden = false;
      clearHeatmap();
    };
    els.detailImage.src = hit.image_url;
  } else {
    els.detailImage.hidden = true;
    els.detailImage.removeAttribute("src");
    els.detailNoImage.hidden = false;
  }

  els.detail.hidden = false;
  document.body.classList.add("detail-open");
  els.detailTitle.focus({ preventScroll: true });
  if (window.matchMedia("(min-width: 960px)").matches) {
    const top = els.detail.getBoundingClientRect().top;
    if (top < 0 || top > window.innerHeight * 0.6) els.detail.scrollIntoView({ block: "start", behavior: "smooth" });
  }

  loadHeatmap(hit, seq);
  loadSimilar(hit, seq);
  loadSuggestedTags(hit, seq, tags);
}

async function loadHeatmap(hit, seq) {
  const query = state.lastQuery;
  if (!hit.image_url) {
    els.heatmapNote.textContent = "This product has no usable photo, so there is no attention heatmap.";
    return;
  }
  if (!query) {
    els.heatmapNote.textContent = "The attention heatmap needs a text query: add words to your search to see where they look on the photo.";
    return;
  }
  els.heatmapNote.textContent = `Computing where “${query}” looks…`;
  try {
    const body = await api(`${API}/products/${encodeURIComponent(hit.product_id)}/attention?query=${encodeURIComponent(query)}`);
    if (seq !== state.detailSeq) return;
    drawHeatmap(body.weights, body.grid || GRID_FALLBACK);
    const flat = body.weights.flat();
    const peak = Math.max(...flat);
    const uniform = 1 / flat.length;
    const pct = (x) => `${(x * 100).toFixed(peak < 0.1 ? 2 : 1)}%`;
    const spread = peak < 1.5 * uniform
      ? `Nearly flat (peak ${pct(peak)}, uniform ${pct(uniform)}): colours stretch small differences.`
      : `Peak patch ${pct(peak)} of the attention (uniform ${pct(uniform)}).`;
    els.heatmapNote.textContent =
      `Brighter patches (${body.grid}×${body.grid} grid) get more attention from “${body.query}”. ${spread}`;
  } catch (err) {
    if (seq !== state.detailSeq) return;
    els.heatmapNote.textContent = "No heatmap for this product.";
    showError(err.message);
  }
}

// Inferno-like colour ramp: dark purple -> red -> orange -> pale yellow.
const RAMP = [
  [0.0, [20, 11, 53]],
  [0.25, [101, 21, 110]],
  [0.5, [188, 55, 84]],
  [0.75, [249, 142, 9]],
  [1.0, [252, 255, 164]],
];

function colour(v) {
  for (let i = 1; i < RAMP.length; i++) {
    const [t1, c1] = RAMP[i];
    if (v <= t1) {
      const [t0, c0] = RAMP[i - 1];
      const f = (v - t0) / (t1 - t0);
      return c0.map((c, j) => Math.round(c + f * (c1[j] - c)));
    }
  }
  return RAMP[RAMP.length - 1][1];
}

function drawHeatmap(weights, grid) {
  const flat = weights.flat();
  const lo = Math.min(...flat);
  const hi = Math.max(...flat);
  const span = hi - lo || 1;
  // One pixel per patch, scaled up with smoothing: a soft map aligned with the patch grid.
  const small = document.createElement("canvas");
  small.width = grid;
  small.height = grid;
  const sctx = small.getContext("2d");
  const pixels = sctx.createImageData(grid, grid);
  for (let r = 0; r < grid; r++) {
    for (let c = 0; c < grid; c++) {
      const v = ((weights[r] && weights[r][c]) - lo) / span || 0;
      const [red, green, blue] = colour(v);
      const o = (r * grid + c) * 4;
      pixels.data[o] = red;
      pixels.data[o + 1] = green;
      pixels.data[o + 2] = blue;
      pixels.data[o + 3] = Math.round(255 * (0.06 + 0.66 * v ** 1.4));
    }
  }
  sctx.putImageData(pixels, 0, 0);
  const canvas = els.heatmap;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  // Draw the 8x8 map so that pixel centres land on patch centres (no edge shift).
  const cell = canvas.width / grid;
  ctx.drawImage(small, 0, 0, grid, grid, 0, 0, canvas.width, canvas.height);
  // faint patch grid so the 8x8 structure stays readable
  ctx.strokeStyle = "rgba(255,255,255,0.18)";
  ctx.lineWidth = 1;
  for (let i = 1; i < grid; i++) {
    const p = Math.round(i * cell) + 0.5;
    ctx.beginPath(); ctx.moveTo(p, 0); ctx.lineTo(p, canvas.height); ctx.stroke();
    ctx.beginPath(); ctx.moveTo(0, p); ctx.lineTo(canvas.width, p); ctx.stroke();
  }
  canvas.dataset.drawn = "true";
  els.heatmapWrap.classList.add("has-heatmap");
}

function similarCard(hit) {
  const title = hit.title || hit.product_id;
  const button = el("button", { type: "button", class: "similar-card", dataset: { productId: hit.product_id },
                                title, "aria-label": `${title} (${hit.category})` },
    productImage(hit.image_url, "", "similar-image"),
    el("span", { class: "similar-title", text: title }),
    el("span", { class: "similar-meta", text: `${hit.category} · ${fmtScore(hit.score)}` }));
  button.addEventListener("click", () => {
    const inResults = state.hits.get(hit.product_id);
    openDetail(inResults || { ...hit, rank: null, score: null, retrieval_score: null }, button);
  });
  return button;
}

async function loadSimilar(hit, seq) {
  els.similar.replaceChildren();
  els.similarStatus.textContent = "Loading…";
  try {
    const body = await api(`${API}/products/${encodeURIComponent(hit.product_id)}/similar?k=8`);
    if (seq !== state.detailSeq) return;
    els.similar.replaceChildren(...body.results.map(similarCard));
    els.similarStatus.textContent = body.results.length ? "" : "No similar products in this index.";
  } catch (err) {
    if (seq !== state.detailSeq) return;
    els.similarStatus.textContent = "Similar products are unavailable.";
    showError(err.message);
  }
}

// Tags the tagger suggests from the product's title and photo. Optional: a service without a
// tagger answers 503, and then (as on any failure) the section simply stays hidden.
async function loadSuggestedTags(hit, seq, catalogTags) {
  els.suggested.hidden = true;
  els.suggestedTags.replaceChildren();
  els.suggestedNote.textContent = "";
  let body;
  try {
    body = await api(`${API}/tags`, {
      method: "POST",
      headers: { Accept: "application/json", "Content-Type": "application/json" },
      body: JSON.stringify({ product_id: hit.product_id, k: 6 }),
    });
  } catch {
    return;
  }
  if (seq !== state.detailSeq || !Array.isArray(body.tags) || !body.tags.length) return;
  const known = new Set(catalogTags);
  els.suggestedTags.replaceChildren(...body.tags.map((t) => {
    const pct = `${Math.round(t.score * 100)}%`;
    const isKnown = known.has(t.tag);
    return el("li", { class: isKnown ? "known" : null, dataset: { tag: t.tag },
                      title: `${pct} · ${isKnown ? "already a catalog tag" : "not in the catalog's tags"}` },
      t.tag, el("span", { class: "tag-score", text: pct }));
  }));
  els.suggestedNote.textContent = `Read from the ${(body.inputs || []).join(" and ") || "product"} by ${body.tagger}; ` +
    "outlined tags are new suggestions.";
  els.suggested.hidden = false;
}

// ---------------------------------------------------------------- wiring

function restoreFromUrl() {
  const q = new URLSearchParams(window.location.search);
  if (q.has("q")) els.query.value = q.get("q");
  if (q.has("k") && [...els.k.options].some((o) => o.value === q.get("k"))) els.k.value = q.get("k");
  if (q.get("rerank") === "0") els.rerank.checked = false;
  return q;
}

async function main() {
  const params = restoreFromUrl();
  els.form.addEventListener("submit", (event) => {
    event.preventDefault();
    runSearch();
  });
  els.photo.addEventListener("change", () => acceptPhoto(els.photo.files && els.photo.files[0]));
  els.photoClear.addEventListener("click", () => { setPhoto(null); els.query.focus(); });
  els.errorClose.addEventListener("click", clearError);
  els.detailClose.addEventListener("click", () => closeDetail());
  els.heatmapToggle.addEventListener("change", () => {
    els.heatmap.classList.toggle("off", !els.heatmapToggle.checked);
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !els.detail.hidden) closeDetail();
  });
  // drop or paste a photo anywhere on the search panel
  els.form.addEventListener("dragover", (event) => { event.preventDefault(); els.form.classList.add("dragging"); });
  els.form.addEventListener("dragleave", () => els.form.classList.remove("dragging"));
  els.form.addEventListener("drop", (event) => {
    event.preventDefault();
    els.form.classList.remove("dragging");
    acceptPhoto(event.dataTransfer && event.dataTransfer.files[0]);
  });
  els.query.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) { event.preventDefault(); acceptPhoto(file); }
  });

  await loadCategories();
  if (params.has("category") && [...els.category.options].some((o) => o.value === params.get("category"))) {
    els.category.value = params.get("category");
  }
  if (els.query.value.trim()) runSearch();
}

main();
