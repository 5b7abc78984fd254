"use strict";
// The page at /: a listing's photo and text to the API (same origin), its answers as text in tables.

const SIMILAR = 5;
const byId = (id) => document.getElementById(id);
const percent = new Intl.NumberFormat("en-GB", { style: "percent", maximumFractionDigits: 1 });
const pounds = new Intl.NumberFormat("en-GB", { style: "currency", currency: "GBP" });
let served = null; // GET /health's answer
let previewUrl = null;

// POST a form to an endpoint; its JSON answer, or an Error with the API's detail.
async function post(path, fields) {
  const body = new FormData();
  for (const [name, value] of Object.entries(fields)) body.append(name, value);
  const response = await fetch(path, { method: "POST", body, headers: { accept: "application/json" } });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.detail || `${path} answered ${response.status}`);
  return answer;
}

// The prediction endpoint for what was given: [path, the fields it reads], or null.
function predictor(photo, text) {
  const models = served.models;
  if (photo && text && models.includes("combined")) return ["/predict/combined", { image: photo, text }];
  if (photo && models.includes("image")) return ["/predict/image", { image: photo }];
  if (text && models.includes("text")) return ["/predict/text", { text }];
  return null;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell.number) td.className = "number";
    td.append(...cell.content);
    tr.append(td);
  }
  return tr;
}

function showPrediction(path, prediction) {
  byId("category").textContent = prediction.category;
  byId("predicted-by").textContent = `by ${path}`;
  byId("probabilities").tBodies[0].replaceChildren(...prediction.top.map(({ category, probability }) => {
    const meter = document.createElement("meter");
    meter.min = 0;
    meter.max = 1;
    meter.value = probability;
    meter.setAttribute("aria-hidden", "true");
    return row([{ content: [category] }, { content: [meter, percent.format(probability)] }]);
  }));
}

// A listing's first photo from GET /photos/{id} when the server serves photos and it has one; else nothing.
function firstPhoto(listing) {
  if (!served.photos || listing.photos.length === 0) return [];
  const image = document.createElement("img");
  image.className = "thumbnail";
  image.alt = `Photo of ${listing.name}`;
  image.loading = "lazy";
  image.src = `/photos/${encodeURIComponent(listing.photos[0])}`;
  return [image];
}

function showSimilar(listings) {
  byId("similar-caption").textContent = listings === null
    ? "This bundle has no search index: no similar listings."
    : "The most similar listings of the catalogue";
  byId("similar").tBodies[0].replaceChildren(...(listings || []).map((listing) => row([
    { content: firstPhoto(listing) },
    { content: [listing.name] },
    { content: [listing.category_path] },
    { content: [pounds.format(listing.price)], number: true },
    { content: [listing.score.toFixed(3)], number: true },
  ])));
}

function showError(message) {
  const error = byId("error");
  error.textContent = message;
  error.hidden = message === "";
}

async function submit(event) {
  event.preventDefault();
  const photo = byId("photo").files[0] || null;
  const text = [byId("title").value, byId("description").value].map((part) => part.trim()).filter(Boolean).join(". ");
  showError("");
  if (served === null) return showError("The server has not said what it serves yet.");
  const chosen = predictor(photo, text);
  if (chosen === null) return showError("Give a photo or a title and description this server's models can read.");
  const search = { k: SIMILAR };
  if (photo) search.image = photo;
  if (text) search.text = text;
  const button = byId("submit");
  button.disabled = true;
  byId("results").setAttribute("aria-busy", "true");
  try {
    const [prediction, similar] = await Promise.all([
      post(...chosen),
      served.indexed_products ? post("/recommend", search) : Promise.resolve(null),
    ]);
    showPrediction(chosen[0], prediction);
    showSimilar(similar && similar.results);
    byId("results").hidden = false;
  } catch (error) {
    showError(error.message);
  } finally {
    button.disabled = false;
    byId("results").removeAttribute("aria-busy");
  }
}

function preview() {
  const photo = byId("photo").files[0];
  const image = byId("preview");
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = photo ? URL.createObjectURL(photo) : null;
  image.hidden = previewUrl === null;
  if (previewUrl) image.src = previewUrl;
}

async function start() {
  byId("listing").addEventListener("submit", submit);
  byId("photo").addEventListener("change", preview);
  try {
    const response = await fetch("/health", { headers: { accept: "application/json" } });
    if (!response.ok) throw new Error(`/health answered ${response.status}`);
    served = await response.json();
    const index = served.indexed_products ? `, ${served.indexed_products.toLocaleString("en-GB")} listings indexed` : ", no search index";
    byId("status").textContent = `Serving ${served.models.join(", ")} over ${served.classes} categories${index}.`;
  } catch (error) {
    byId("status").textContent = "";
    showError(`The server did not answer: ${error.message}`);
  }
}

start();
